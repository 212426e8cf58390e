"""Small pieces more than one family uses."""

from __future__ import annotations

from torch import nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    """3x3 convolution with 'same' padding."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=bias)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias)


def init_conv_bn_linear(model: nn.Module) -> None:
    """He (fan-out) init for convolutions, unit BatchNorm, PyTorch's default for the classifier.

    This is torchvision's scheme, so our models start from the same distribution as theirs.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def zero_init_last_norms(model: nn.Module) -> None:
    """Start every residual block of ``model`` as the identity (Goyal et al., 2017).

    Each block knows which of its norms is last and zeroes its scale in ``zero_init_last()``
    (timm's convention), so this one loop serves every family and every block form.
    """
    for module in model.modules():
        if module is not model and callable(getattr(module, "zero_init_last", None)):
            module.zero_init_last()
