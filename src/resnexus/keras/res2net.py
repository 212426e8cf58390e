"""Res2Net and Res2NeXt (v1b included) in Keras, built from the rows of :mod:`resnexus.models.res2net`.

The PyTorch :class:`~resnexus.models.res2net.Res2Net` is the ResNet skeleton with another block,
so the Keras side is :func:`resnexus.keras.resnet.build_resnet` with :func:`bottle2neck`: stems
(the v1b deep stem), stage layout and shortcuts (v1b's average-pool ones) come from there
unchanged, and only the multi-scale 3x3 part is written here. Layer names are the PyTorch module
paths (``layer1.0.convs.2``, ``layer1.0.bns.2``), so :mod:`resnexus.keras.convert` moves the
weights with no Res2Net-specific code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import layers

from ..models.res2net import Res2Net
from .layers import ChannelSlice, avg_pool, batch_norm, conv, relu
from .registry import register_keras_builder
from .resnet import build_resnet, split_grouped_conv

__all__ = ["bottle2neck", "build_res2net"]


def _conv3x3(x: keras.KerasTensor, width: int, *, stride: int, groups: int, name: str, form: str) -> keras.KerasTensor:
    """One scale's 3x3 (grouped for Res2NeXt); ``form="split"`` writes the groups out as in ResNeXt."""
    if form == "split" and groups > 1:
        return split_grouped_conv(x, width, groups, stride=stride, name=name)
    return conv(x, width, 3, stride=stride, groups=groups, name=name)


def bottle2neck(
    x: keras.KerasTensor,
    shortcut: keras.KerasTensor,
    planes: int,
    *,
    stride: int,
    groups: int,
    base_width: int,
    name: str,
    form: str,
    zero_init_last: bool,
    scale: int = 4,
    **_: Any,
) -> keras.KerasTensor:
    """:class:`resnexus.models.res2net.Bottle2neck`: 1x1 to ``width * scale``, hierarchical 3x3s, 1x1 expand.

    Split ``i < scale - 1`` goes through ``convs.i`` / ``bns.i`` / ReLU, after adding the previous
    split's output unless the block is a stage's first (stride or projection shortcut), where the
    splits are convolved apart and the last one is 3x3 average-pooled (zeros counted, as
    ``nn.AvgPool2d``'s default) instead of passed through. The pieces are concatenated in split order.
    """
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"Res2Net scale must be a positive integer, got {scale!r}")
    width = int(planes * base_width / 64) * groups
    if width < 1:
        raise ValueError(f"base_width={base_width} leaves no channels per group for planes={planes}")
    # the PyTorch block's is_first: a stride, or a downsample (which build_resnet adds iff channels change)
    is_first = stride > 1 or x.shape[-1] != planes * bottle2neck.expansion
    out = relu(batch_norm(conv(x, width * scale, 1, name=f"{name}_conv1"), name=f"{name}_bn1"))
    if scale == 1:  # nothing to chain: the plain (ResNeXt) bottleneck, its 3x3 stored as convs.0
        out = _conv3x3(out, width, stride=stride, groups=groups, name=f"{name}_convs_0", form=form)
        out = relu(batch_norm(out, name=f"{name}_bns_0"))
    else:
        splits = [ChannelSlice(i * width, (i + 1) * width, name=f"{name}_split{i}")(out) for i in range(scale)]
        pieces: list[keras.KerasTensor] = []
        for i in range(scale - 1):
            sp = splits[i]
            if i > 0 and not is_first:  # the hierarchy: add the previous scale's output
                sp = layers.Add(name=f"{name}_sum{i}")([pieces[-1], sp])
            sp = _conv3x3(sp, width, stride=stride, groups=groups, name=f"{name}_convs_{i}", form=form)
            sp = relu(batch_norm(sp, name=f"{name}_bns_{i}"))
            pieces.append(sp)
        last = splits[-1]
        if is_first:
            last = avg_pool(last, 3, stride, padding=1, count_padding=True, name=f"{name}_pool")
        pieces.append(last)
        out = layers.Concatenate(axis=-1, name=f"{name}_cat")(pieces)
    out = batch_norm(
        conv(out, planes * bottle2neck.expansion, 1, name=f"{name}_conv3"),
        name=f"{name}_bn3",
        zero_scale=zero_init_last,
    )
    return relu(layers.Add(name=f"{name}_add")([out, shortcut]))


bottle2neck.expansion = 4


def build_res2net(
    inputs: keras.KerasTensor,
    layers: Sequence[int],
    num_classes: int = 1000,
    in_chans: int = 3,
    *,
    scale: int = 4,
    base_width: int = 26,
    cardinality: int = 1,
    stem: str = "imagenet",
    avg_down: bool = False,
    zero_init_last: bool = False,
    **kwargs: Any,
) -> keras.KerasTensor:
    """The Keras graph of :class:`resnexus.models.res2net.Res2Net` for one spec row (same arguments)."""
    return build_resnet(
        inputs,
        bottle2neck,
        layers,
        num_classes=num_classes,
        in_chans=in_chans,
        cardinality=cardinality,
        base_width=base_width,
        stem=stem,
        avg_down=avg_down,
        zero_init_last=zero_init_last,
        block_args={"scale": scale},
        **kwargs,
    )


register_keras_builder(Res2Net, build_res2net)
