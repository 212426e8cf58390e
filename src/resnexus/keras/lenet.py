"""LeNet-5 (ReLU, max-pool) in Keras, built from the row of :mod:`resnexus.models.lenet`.

The one place where channels-last changes the numbers is the flatten before ``fc1``: PyTorch
flattens a ``C x H x W`` map, Keras an ``H x W x C`` one. The builder permutes the map to
channels-first before :class:`keras.layers.Flatten`, so ``fc1``'s kernel is the PyTorch weight
transposed, exactly as for every other linear layer, and :mod:`resnexus.keras.convert` needs no
LeNet rule. Layers start from PyTorch's default initialisation (LeNet does not re-initialise).
"""

from __future__ import annotations

import math

import keras
from keras import layers

from ..models.lenet import LeNet, lenet_feature_size
from .layers import linear_default, relu
from .registry import register_keras_builder

__all__ = ["build_lenet"]


def _torch_bias_init(fan_in: int) -> keras.initializers.Initializer:
    """PyTorch's default bias of a conv / linear layer: uniform on +-1/sqrt(fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def _conv(x: keras.KerasTensor, filters: int, in_channels: int, *, name: str) -> keras.KerasTensor:
    """``nn.Conv2d(in, filters, 5)``: unpadded, with bias."""
    return layers.Conv2D(
        filters,
        5,
        padding="valid",
        kernel_initializer=linear_default(),
        bias_initializer=_torch_bias_init(in_channels * 25),
        name=name,
    )(x)


def _linear(x: keras.KerasTensor, units: int, in_features: int, *, name: str) -> keras.KerasTensor:
    return layers.Dense(
        units, kernel_initializer=linear_default(), bias_initializer=_torch_bias_init(in_features), name=name
    )(x)


def build_lenet(
    inputs: keras.KerasTensor,
    num_classes: int = 1000,
    in_chans: int = 3,
    img_size: int = 256,
    *,
    block_form: str = "c",
) -> keras.KerasTensor:
    """The Keras graph of :class:`resnexus.models.lenet.LeNet`: logits (or the 84 features).

    The input must be ``img_size`` square (``fc1``'s width depends on it); pass
    ``input_shape=(img_size, img_size, channels)`` when overriding ``img_size``.
    """
    if block_form != "c":
        raise ValueError(f"LeNet has one block form ('c'), got block_form={block_form!r}")
    height, width = inputs.shape[1:3]
    if (height, width) != (img_size, img_size):
        raise ValueError(
            f"LeNet built for img_size={img_size} takes {img_size}x{img_size} inputs, got {height}x{width}: "
            f"pass input_shape=({img_size}, {img_size}, {in_chans})"
        )
    side = lenet_feature_size(img_size)
    x = relu(_conv(inputs, 6, inputs.shape[-1], name="conv1"), name="act1")
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = relu(_conv(x, 16, 6, name="conv2"), name="act2")
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Permute((3, 1, 2), name="to_channels_first")(x)  # flatten in PyTorch's (C, H, W) order
    x = layers.Flatten(name="flatten")(x)
    x = relu(_linear(x, 120, 16 * side * side, name="fc1"), name="act3")
    x = relu(_linear(x, 84, 120, name="fc2"), name="act4")
    if num_classes <= 0:
        return x
    return _linear(x, num_classes, 84, name="fc")


register_keras_builder(LeNet, build_lenet)
