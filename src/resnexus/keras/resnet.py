"""ResNet and ResNeXt (ImageNet and CIFAR) in Keras, built from the rows of :mod:`resnexus.models.resnet`.

:func:`build_resnet` takes the same keyword arguments as :class:`resnexus.models.resnet.ResNet`
(a spec row plus ``num_classes`` / ``in_chans``), so one table describes both frameworks. The
ResNeXt bottleneck comes in the two forms of the ResNeXt write-up's code: ``block_form="c"``
(the default), one ``Conv2D(groups=C)``; and ``block_form="split"``, the 3x3's input split into C
groups, one convolution per group, and the outputs concatenated, as the study's TensorFlow code
writes it. They hold the same numbers (the split form's C kernels are the slices of the grouped
kernel), so :func:`resnexus.keras.convert_block_form` moves a model between them exactly.

Res2Net (:mod:`resnexus.keras.res2net`) reuses the skeleton with its own block function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import keras
from keras import layers

from ..models.resnet import ResNet
from .layers import ChannelPadShortcut, ChannelSlice, avg_pool, batch_norm, conv, max_pool, relu
from .registry import classifier_head, register_keras_builder

KERAS_BLOCK_FORMS = ("c", "split")


class BlockFn(Protocol):
    """One residual block: ``x`` in, the block's output out; ``shortcut`` is already computed."""

    expansion: int

    def __call__(
        self,
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
        **block_args: Any,
    ) -> keras.KerasTensor: ...


def basic_block(x, shortcut, planes, *, stride, groups, base_width, name, form, zero_init_last, **_):
    """Two 3x3 convolutions (ResNet-18/34), as :class:`resnexus.models.blocks.BasicBlock`."""
    if groups != 1 or base_width != 64:
        raise ValueError("the basic block supports only cardinality 1 and base_width 64")
    out = relu(batch_norm(conv(x, planes, 3, stride=stride, name=f"{name}_conv1"), name=f"{name}_bn1"))
    out = _last_norm(conv(out, planes, 3, name=f"{name}_conv2"), f"{name}_bn2", zero_init_last)
    return relu(layers.Add(name=f"{name}_add")([out, shortcut]))


basic_block.expansion = 1


def bottleneck(x, shortcut, planes, *, stride, groups, base_width, name, form, zero_init_last, **_):
    """1x1 reduce -> 3x3 (grouped for ResNeXt, carries the stride) -> 1x1 expand, as
    :class:`resnexus.models.blocks.Bottleneck`; ``form="split"`` writes the grouped 3x3 as C convolutions."""
    width = int(planes * (base_width / 64.0)) * groups
    out = relu(batch_norm(conv(x, width, 1, name=f"{name}_conv1"), name=f"{name}_bn1"))
    if form == "split" and groups > 1:
        out = split_grouped_conv(out, width, groups, stride=stride, name=f"{name}_conv2")
    else:
        out = conv(out, width, 3, stride=stride, groups=groups, name=f"{name}_conv2")
    out = relu(batch_norm(out, name=f"{name}_bn2"))
    out = _last_norm(conv(out, planes * 4, 1, name=f"{name}_conv3"), f"{name}_bn3", zero_init_last)
    return relu(layers.Add(name=f"{name}_add")([out, shortcut]))


bottleneck.expansion = 4

KERAS_BLOCKS: dict[str, Callable[..., keras.KerasTensor]] = {"basic": basic_block, "bottleneck": bottleneck}


def split_grouped_conv(x: keras.KerasTensor, width: int, groups: int, *, stride: int, name: str) -> keras.KerasTensor:
    """A grouped 3x3 written out: split the channels into ``groups``, convolve each, concatenate.

    Group ``i`` is the layer ``{name}_g{i}``; its kernel is the i-th slice of the grouped kernel
    (:mod:`resnexus.keras.convert` knows the naming).
    """
    d = width // groups
    paths = []
    for i in range(groups):
        part = ChannelSlice(i * d, (i + 1) * d, name=f"{name}_split{i}")(x)
        paths.append(conv(part, d, 3, stride=stride, name=f"{name}_g{i}"))
    return layers.Concatenate(axis=-1, name=f"{name}_concat")(paths)


def _last_norm(x: keras.KerasTensor, name: str, zero_init: bool) -> keras.KerasTensor:
    """The block's last BN; zero scale when asked, so the block starts as the identity."""
    return batch_norm(x, name=name, zero_scale=zero_init)


def resnet_stem(x: keras.KerasTensor, kind: str, width: int) -> keras.KerasTensor:
    """The three stems of :func:`resnexus.models.blocks.make_stem`, with the same module names."""
    if kind == "imagenet":
        x = conv(x, width, 7, stride=2, padding=3, name="conv1")
    elif kind == "cifar":
        x = conv(x, width, 3, name="conv1")
    elif kind == "deep":
        mid = width // 2
        x = relu(batch_norm(conv(x, mid, 3, stride=2, name="conv1_0"), name="conv1_1"))
        x = relu(batch_norm(conv(x, mid, 3, name="conv1_3"), name="conv1_4"))
        x = conv(x, width, 3, name="conv1_6")
    else:
        raise ValueError(f"unknown stem {kind!r}: expected 'imagenet', 'cifar' or 'deep'")
    x = relu(batch_norm(x, name="bn1"))
    return x if kind == "cifar" else max_pool(x, 3, 2, 1, name="maxpool")


def shortcut(
    x: keras.KerasTensor, out_channels: int, stride: int, *, name: str, avg_down: bool, zero_pad: bool
) -> keras.KerasTensor:
    """The projection of a stage's first block (``{name}`` is its ``downsample`` module)."""
    if zero_pad:
        return ChannelPadShortcut(out_channels, stride, name=name)(x)
    if not avg_down:
        return batch_norm(conv(x, out_channels, 1, stride=stride, name=f"{name}_0"), name=f"{name}_1")
    if stride > 1:
        x = avg_pool(x, stride, stride, count_padding=False, name=f"{name}_0")
    return batch_norm(conv(x, out_channels, 1, name=f"{name}_1"), name=f"{name}_2")


def build_resnet(
    inputs: keras.KerasTensor,
    block: str | BlockFn,
    layers: Sequence[int],
    num_classes: int = 1000,
    in_chans: int = 3,
    *,
    cardinality: int = 1,
    base_width: int = 64,
    stem: str = "imagenet",
    stem_width: int = 64,
    stage_planes: tuple[int, ...] = (64, 128, 256, 512),
    avg_down: bool = False,
    zero_pad_shortcut: bool = False,
    zero_init_last: bool = False,
    block_form: str = "c",
    block_args: dict[str, Any] | None = None,
) -> keras.KerasTensor:
    """The Keras graph of :class:`resnexus.models.resnet.ResNet` for one spec row: logits (or features)."""
    if block_form not in KERAS_BLOCK_FORMS:
        raise ValueError(
            f"block_form {block_form!r}: the Keras models come in forms {KERAS_BLOCK_FORMS} "
            "('c' = one grouped convolution, 'split' = split + C convolutions + concatenate)"
        )
    block_fn = KERAS_BLOCKS[block] if isinstance(block, str) else block
    if len(stage_planes) != len(layers):
        raise ValueError(f"{len(layers)} stage depths but {len(stage_planes)} stage widths")
    x = resnet_stem(inputs, stem, stem_width)
    in_channels = stem_width
    for index, (depth, planes) in enumerate(zip(layers, stage_planes)):
        stride = 1 if index == 0 else 2
        out_channels = planes * block_fn.expansion
        for b in range(depth):
            name = f"layer{index + 1}_{b}"
            first = b == 0 and (stride != 1 or in_channels != out_channels)
            skip = (
                shortcut(
                    x, out_channels, stride, name=f"{name}_downsample", avg_down=avg_down, zero_pad=zero_pad_shortcut
                )
                if first
                else x
            )
            x = block_fn(
                x,
                skip,
                planes,
                stride=stride if b == 0 else 1,
                groups=cardinality,
                base_width=base_width,
                name=name,
                form=block_form,
                zero_init_last=zero_init_last,
                **(block_args or {}),
            )
            in_channels = out_channels
    return classifier_head(x, num_classes, name="fc")


register_keras_builder(ResNet, build_resnet)
