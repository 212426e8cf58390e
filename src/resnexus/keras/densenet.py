"""DenseNet-BC (ImageNet and CIFAR) in Keras, built from the rows of :mod:`resnexus.models.densenet`.

:func:`build_densenet` takes the keyword arguments of :class:`resnexus.models.densenet.DenseNet`
and names every weighted layer after its torchvision module path (``features.conv0``,
``features.denseblock1.denselayer1.norm1`` ..., ``features.transition1.conv``, ``features.norm5``,
``classifier``), so :mod:`resnexus.keras.convert` copies weights with no DenseNet-specific code.

The dense block is written as the PyTorch model runs it: each layer's ``growth_rate`` new channels
are concatenated after everything before them (block input first, then layer 1, 2, ...), so the
channel order, and with it every 1x1 kernel's input axis, is the same in both frameworks.
``memory_efficient`` (checkpointing dense layers during training) is a PyTorch memory trade-off
with no effect on the numbers; it is accepted and ignored here.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from ..models.densenet import DenseNet
from .layers import BN_EPS, avg_pool, batch_norm, conv, max_pool, relu
from .registry import classifier_head, register_keras_builder

__all__ = ["build_densenet", "dense_layer", "transition"]


def dense_layer(
    x: keras.KerasTensor, growth_rate: int, bn_size: int, drop_rate: float, *, name: str, eps: float
) -> keras.KerasTensor:
    """BN-ReLU-1x1 conv-BN-ReLU-3x3 conv (+ dropout): the ``growth_rate`` new channels of one
    :class:`resnexus.models.densenet.DenseLayer`."""
    out = conv(relu(batch_norm(x, name=f"{name}_norm1", eps=eps)), bn_size * growth_rate, 1, name=f"{name}_conv1")
    out = conv(relu(batch_norm(out, name=f"{name}_norm2", eps=eps)), growth_rate, 3, name=f"{name}_conv2")
    if drop_rate > 0:
        out = layers.Dropout(drop_rate, name=f"{name}_drop")(out)
    return out


def transition(x: keras.KerasTensor, out_channels: int, *, name: str, eps: float) -> keras.KerasTensor:
    """BN-ReLU-1x1 conv-2x2 average pool between dense blocks (compression and downsampling)."""
    x = relu(batch_norm(x, name=f"{name}_norm", eps=eps), name=f"{name}_relu")
    x = conv(x, out_channels, 1, name=f"{name}_conv")
    return avg_pool(x, 2, 2, name=f"{name}_pool")


def build_densenet(
    inputs: keras.KerasTensor,
    growth_rate: int = 32,
    block_config: Sequence[int] = (6, 12, 24, 16),
    num_init_features: int = 64,
    bn_size: int = 4,
    compression: float = 0.5,
    stem: str = "imagenet",
    drop_rate: float = 0.0,
    memory_efficient: bool = False,
    bn_eps: float = BN_EPS,
    num_classes: int = 1000,
    in_chans: int = 3,
    *,
    block_form: str = "c",
) -> keras.KerasTensor:
    """The Keras graph of :class:`resnexus.models.densenet.DenseNet` for one spec row: logits (or features).

    ``block_form`` exists for the common converter signature; DenseNet has only the one form.
    """
    del memory_efficient, in_chans  # a training-memory option of the PyTorch model; channels come from inputs
    if block_form != "c":
        raise ValueError(f"DenseNet has one block form ('c'), got block_form={block_form!r}")
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
    if not 0.0 < compression <= 1.0:
        raise ValueError(f"compression must be in (0, 1], got {compression}")
    if stem == "imagenet":
        x = conv(inputs, num_init_features, 7, stride=2, padding=3, name="features_conv0")
        x = relu(batch_norm(x, name="features_norm0", eps=bn_eps), name="features_relu0")
        x = max_pool(x, 3, 2, 1, name="features_pool0")
    else:
        x = conv(inputs, num_init_features, 3, name="features_conv0")
    channels = num_init_features
    blocks = tuple(block_config)
    for b, num_layers in enumerate(blocks, start=1):
        for j in range(1, num_layers + 1):
            name = f"features_denseblock{b}_denselayer{j}"
            new = dense_layer(x, growth_rate, bn_size, drop_rate, name=name, eps=bn_eps)
            x = layers.Concatenate(axis=-1, name=f"{name}_concat")([x, new])
        channels += num_layers * growth_rate
        if b < len(blocks):
            channels = int(channels * compression)
            x = transition(x, channels, name=f"features_transition{b}", eps=bn_eps)
    x = relu(batch_norm(x, name="features_norm5", eps=bn_eps), name="features_relu5")
    return classifier_head(x, num_classes, name="classifier")


register_keras_builder(DenseNet, build_densenet)
