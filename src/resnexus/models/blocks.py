"""The residual blocks, stems and shortcuts of the ResNet skeleton (:mod:`resnexus.models.resnet`).

They live apart from the skeleton because more than one module builds with them: the ResNeXt
block forms (:mod:`resnexus.models.forms`) convert to and from :class:`Bottleneck`, and Res2Net
reuses the stems and shortcuts through the skeleton. Every residual block has a
``zero_init_last()`` that zeroes the scale of its last BatchNorm, so that the block starts as
the identity (Goyal et al., 2017); :func:`resnexus.models.layers.zero_init_last_norms` calls it.
"""

from __future__ import annotations

from torch import Tensor, nn

from .layers import conv1x1, conv3x3

__all__ = ["BLOCKS", "BasicBlock", "Bottleneck", "ZeroPadShortcut", "make_downsample", "make_stem"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64 (use the bottleneck for ResNeXt)")
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        """Zero the last BN's scale: the residual branch then starts at zero."""
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += shortcut  # in place: BatchNorm's backward does not need its output
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (grouped for ResNeXt, carries the stride) -> 1x1 expand.

    The grouped 3x3 is form (c) of the ResNeXt paper's Figure 3; :mod:`resnexus.models.forms`
    has the equivalent forms (a) and (b). Width = floor(planes * base_width / 64) * groups.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        """Zero the last BN's scale: the residual branch then starts at zero."""
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += shortcut  # in place: BatchNorm's backward does not need its output
        return self.relu(out)


def make_stem(kind: str, in_chans: int, out_channels: int = 64) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(conv1, bn1, maxpool) of the three stems the family uses.

    "imagenet": 7x7/2 conv + 3x3/2 max-pool (stride 4); "cifar": one 3x3/1 conv, no pool;
    "deep": three 3x3 convs (32-32-64, first stride 2) + max-pool, the ResNet-D / Res2Net-v1b stem.
    """
    if kind == "imagenet":
        conv: nn.Module = nn.Conv2d(in_chans, out_channels, 7, stride=2, padding=3, bias=False)
        pool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
    elif kind == "cifar":
        conv, pool = conv3x3(in_chans, out_channels), nn.Identity()
    elif kind == "deep":
        mid = out_channels // 2
        conv = nn.Sequential(
            conv3x3(in_chans, mid, stride=2), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            conv3x3(mid, mid), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            conv3x3(mid, out_channels),
        )  # fmt: skip
        pool = nn.MaxPool2d(3, stride=2, padding=1)
    else:
        raise ValueError(f"unknown stem {kind!r}: expected 'imagenet', 'cifar' or 'deep'")
    return conv, nn.BatchNorm2d(out_channels), pool


def make_downsample(in_channels: int, out_channels: int, stride: int, avg_down: bool) -> nn.Sequential:
    """Projection shortcut: strided 1x1 conv + BN, or (ResNet-D) avg-pool then 1x1 conv + BN.

    The avg-pool variant keeps the pool at index 0 even at stride 1 so that the conv and BN keep
    the keys ``downsample.1`` / ``downsample.2`` of the official Res2Net-v1b and timm files.
    """
    if not avg_down:
        return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
    pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
    return nn.Sequential(pool, conv1x1(in_channels, out_channels), nn.BatchNorm2d(out_channels))


class ZeroPadShortcut(nn.Module):
    """Parameter-free projection ("option A" of the ResNet paper's CIFAR networks).

    Subsample by the stride and append zero channels, so the CIFAR ResNets keep the paper's
    parameter counts (0.27M for ResNet-20).
    """

    def __init__(self, out_channels: int, stride: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.out_channels - x.shape[1]))


# the ``block`` column of the spec tables
BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}
