"""Pre-activation ResNetV2 in Keras, built from the rows of :mod:`resnexus.models.resnet_v2`.

The PyTorch :class:`~resnexus.models.resnet_v2.ResNetV2` already follows ``keras.applications``'
ResNet*V2 layer for layer (biased 7x7 stem with no norm, a zero-padded stem max pool, the stride on
the last block of a stage with a 1x1 max-pool shortcut, BatchNorm epsilon 1.001e-5). This builder
writes the same graph again, but with the PyTorch module paths as layer names
(``stages.0.blocks.0.conv1``, ``post_norm``, ``fc``) instead of Keras' ``conv2_block1_1_conv``, so
that :mod:`resnexus.keras.convert` moves weights by name as for every other family. Loading
``keras.applications`` files goes through the PyTorch side (:meth:`ResNetV2.keras_layers`).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from ..models.resnet_v2 import BN_EPS, EXPANSION, STEM_WIDTH, WIDTHS, ResNetV2
from .layers import batch_norm, conv, relu
from .registry import classifier_head, register_keras_builder

__all__ = ["build_resnet_v2", "preact_bottleneck"]


def _bn(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    return batch_norm(x, name=name, eps=BN_EPS)


def preact_bottleneck(
    x: keras.KerasTensor, width: int, *, stride: int, conv_shortcut: bool, name: str
) -> keras.KerasTensor:
    """:class:`resnexus.models.resnet_v2.PreActBottleneck`: BN-ReLU, 1x1 -> 3x3 (strided) -> biased 1x1.

    The shortcut is a biased 1x1 convolution of the *pre-activated* input (a stage's first block),
    a 1x1 max pool of the raw input (a strided block: every ``stride``-th pixel), or the input itself.
    """
    out_channels = width * EXPANSION
    preact = relu(_bn(x, f"{name}_preact_norm"))
    if conv_shortcut:
        skip = conv(preact, out_channels, 1, stride=stride, bias=True, name=f"{name}_shortcut")
    elif stride > 1:
        skip = layers.MaxPooling2D(1, strides=stride, padding="valid", name=f"{name}_shortcut")(x)
    else:
        if x.shape[-1] != out_channels:
            raise ValueError(f"identity shortcut needs in == out channels, got {x.shape[-1]} != {out_channels}")
        skip = x
    out = relu(_bn(conv(preact, width, 1, name=f"{name}_conv1"), f"{name}_norm1"))
    out = relu(_bn(conv(out, width, 3, stride=stride, name=f"{name}_conv2"), f"{name}_norm2"))
    out = conv(out, out_channels, 1, bias=True, name=f"{name}_conv3")
    return layers.Add(name=f"{name}_add")([skip, out])


def build_resnet_v2(
    inputs: keras.KerasTensor,
    depths: Sequence[int],
    widths: Sequence[int] = WIDTHS,
    num_classes: int = 1000,
    in_chans: int = 3,
    *,
    block_form: str = "c",
) -> keras.KerasTensor:
    """The Keras graph of :class:`resnexus.models.resnet_v2.ResNetV2` for one spec row: logits (or features).

    ``block_form`` is accepted because :func:`resnexus.keras.from_torch` passes it to every builder;
    there is no grouped convolution to write out here, so only ``"c"`` exists.
    """
    if block_form != "c":
        raise ValueError(f"block_form {block_form!r}: ResNetV2 has no grouped convolution, only form 'c' exists")
    if len(depths) != len(widths):
        raise ValueError(f"depths {tuple(depths)} and widths {tuple(widths)} differ in length")
    # stem: biased 7x7/2, then a 3x3/2 max pool over a zero border (no norm, no ReLU before it)
    x = conv(inputs, STEM_WIDTH, 7, stride=2, padding=3, bias=True, name="stem_conv")
    x = layers.ZeroPadding2D(1, name="stem_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="stem_pool")(x)
    for i, (depth, width) in enumerate(zip(depths, widths)):
        stage_stride = 2 if i < len(depths) - 1 else 1
        for b in range(depth):
            x = preact_bottleneck(
                x,
                width,
                stride=stage_stride if b == depth - 1 else 1,
                conv_shortcut=b == 0,
                name=f"stages_{i}_blocks_{b}",
            )
    x = relu(_bn(x, "post_norm"), name="post_act")
    return classifier_head(x, num_classes, name="fc")


register_keras_builder(ResNetV2, build_resnet_v2)
