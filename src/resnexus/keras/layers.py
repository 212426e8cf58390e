"""The pieces every Keras builder uses, each written to compute exactly what its PyTorch twin does.

Three differences between the frameworks matter for equal outputs, and they are handled here
once: Keras' ``padding="same"`` pads *after* the image when a strided window does not fit, where
PyTorch pads both sides equally (so strided layers get an explicit :class:`keras.layers.ZeroPadding2D`);
Keras' BatchNorm defaults (epsilon 1e-3, momentum 0.99) are not PyTorch's (1e-5, 0.9); and images
are channels-last (``NHWC``), so a flattened feature map is ordered differently (the LeNet
builder permutes before flattening).

Every layer that holds weights is named after the PyTorch module that holds the same weights,
with ``_`` for ``.`` (:func:`keras_name`: ``layer1.0.conv2`` -> ``layer1_0_conv2``, ``fc``): that
name is the whole contract :mod:`resnexus.keras.convert` relies on, so no family needs its own
mapping table.
"""

from __future__ import annotations

import keras
from keras import layers, ops

__all__ = [
    "BN_EPS",
    "ChannelPadShortcut",
    "ChannelSlice",
    "avg_pool",
    "batch_norm",
    "conv",
    "conv_bn_relu",
    "he_fan_out",
    "keras_name",
    "linear_default",
    "max_pool",
    "relu",
]

BN_EPS = 1e-5  # PyTorch's default; Keras' own default is 1e-3
BN_MOMENTUM = 0.9  # PyTorch's momentum=0.1 is Keras' 0.9 (the weight of the old running value)


# The initial weights of a model trained from scratch, as the PyTorch models start (torchvision's
# scheme). A new initializer per layer: a Keras initializer draws its seed once, when it is made
# (from Python's `random`, which keras.utils.set_random_seed seeds), and then gives the same values
# on every call, so one shared instance would start every layer of a shape with the same kernel.
def he_fan_out() -> keras.initializers.Initializer:
    """Kaiming normal, fan-out, gain sqrt(2): ``nn.init.kaiming_normal_(mode="fan_out")`` of a conv kernel."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def linear_default() -> keras.initializers.Initializer:
    """``nn.Linear``'s default kernel: uniform in +-1/sqrt(fan_in)."""
    return keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform")


def keras_name(module_path: str) -> str:
    """The Keras layer name of the PyTorch module at ``module_path``: dots become underscores.

    Keras' torch backend refuses dots in names of layers that hold weights, and one name on every
    backend keeps ``.keras`` files portable between them.
    """
    return module_path.replace(".", "_")


def conv(
    x: keras.KerasTensor,
    filters: int,
    kernel: int,
    *,
    name: str,
    stride: int = 1,
    padding: int | None = None,
    groups: int = 1,
    bias: bool = False,
) -> keras.KerasTensor:
    """``nn.Conv2d(in, filters, kernel, stride, padding, groups=groups, bias=bias)``, channels-last.

    ``padding`` defaults to ``kernel // 2`` (the "same" padding every family uses). An odd kernel at
    stride 1 is Keras' own "same"; anything else gets PyTorch's symmetric zero padding first.
    """
    padding = kernel // 2 if padding is None else padding
    if padding and (stride != 1 or kernel % 2 == 0 or padding != kernel // 2):
        x = layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
        mode = "valid"
    else:
        mode = "same" if padding else "valid"
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding=mode,
        groups=groups,
        use_bias=bias,
        kernel_initializer=he_fan_out(),
        name=name,
    )(x)


def batch_norm(x: keras.KerasTensor, *, name: str, eps: float = BN_EPS, zero_scale: bool = False) -> keras.KerasTensor:
    """``nn.BatchNorm2d`` over the channel axis, with PyTorch's epsilon and momentum.

    ``zero_scale`` starts the scale at zero (a residual block's last norm: the block starts as the identity).
    """
    return layers.BatchNormalization(
        axis=-1,
        epsilon=eps,
        momentum=BN_MOMENTUM,
        gamma_initializer="zeros" if zero_scale else "ones",
        name=name,
    )(x)


def relu(x: keras.KerasTensor, name: str | None = None) -> keras.KerasTensor:
    return layers.ReLU(name=name)(x)


def conv_bn_relu(
    x: keras.KerasTensor, filters: int, kernel: int, *, conv_name: str, bn_name: str, stride: int = 1
) -> keras.KerasTensor:
    return relu(batch_norm(conv(x, filters, kernel, stride=stride, name=conv_name), name=bn_name))


def max_pool(x: keras.KerasTensor, size: int, stride: int, padding: int, *, name: str) -> keras.KerasTensor:
    """``nn.MaxPool2d(size, stride, padding)`` on a non-negative input (every use follows a ReLU).

    PyTorch pads with -inf; on a ReLU's output zero padding gives the same maxima, and it is what
    :class:`keras.layers.ZeroPadding2D` offers on every backend.
    """
    if padding:
        x = layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    return layers.MaxPooling2D(size, strides=stride, padding="valid", name=name)(x)


def avg_pool(
    x: keras.KerasTensor, size: int, stride: int, *, name: str, padding: int = 0, count_padding: bool = True
) -> keras.KerasTensor:
    """``nn.AvgPool2d``: ``count_padding=True`` is PyTorch's default ``count_include_pad=True``
    (explicit zeros averaged in); ``count_padding=False`` with ``padding=0`` is the ResNet-D
    shortcut's ``ceil_mode=True, count_include_pad=False`` pool, which is Keras' "same" (a window
    that runs past the edge averages only the pixels it covers)."""
    if not count_padding:
        if padding:
            raise ValueError("count_padding=False is only exact without explicit padding")
        return layers.AveragePooling2D(size, strides=stride, padding="same", name=name)(x)
    if padding:
        x = layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    return layers.AveragePooling2D(size, strides=stride, padding="valid", name=name)(x)


@keras.saving.register_keras_serializable(package="resnexus")
class ChannelPadShortcut(layers.Layer):
    """The CIFAR ResNets' parameter-free shortcut ("option A"): subsample, then append zero channels."""

    def __init__(self, out_channels: int, stride: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.out_channels = out_channels
        self.stride = stride

    def call(self, x):
        x = x[:, :: self.stride, :: self.stride, :]
        extra = self.out_channels - x.shape[-1]
        return ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, extra]])

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        out = [None if d is None else (d + self.stride - 1) // self.stride for d in (h, w)]
        return (n, out[0], out[1], self.out_channels)

    def get_config(self) -> dict:
        return {**super().get_config(), "out_channels": self.out_channels, "stride": self.stride}


@keras.saving.register_keras_serializable(package="resnexus")
class ChannelSlice(layers.Layer):
    """Channels ``start:stop`` of a feature map (the split of a grouped or multi-scale convolution).

    A named layer rather than a ``Lambda``, so that a saved ``.keras`` file reloads without
    ``safe_mode=False``.
    """

    def __init__(self, start: int, stop: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.start = start
        self.stop = stop

    def call(self, x):
        return x[..., self.start : self.stop]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.stop - self.start)

    def get_config(self) -> dict:
        return {**super().get_config(), "start": self.start, "stop": self.stop}
