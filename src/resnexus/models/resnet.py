"""ResNet v1.5 and ResNeXt (He et al., CVPR 2016; Xie et al., CVPR 2017).

One skeleton, :class:`ResNet`, builds every variant from a spec row: the residual block, the
number of blocks per stage, the stem, and for ResNeXt the cardinality C and bottleneck width d
("32x4d" = 32 groups of 4 channels in the first stage). v1.5 puts the stride on the 3x3
convolution, as torchvision and timm do, so their state dicts load without renaming.

The CIFAR ResNeXt-29 of the paper (Table 7) is the same skeleton with a 3x3 stem and three
stages of three blocks: ``resnext29_8x64d`` is one row of the table below.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .base import FeatureInfo, ImageClassifier
from .layers import conv1x1, conv3x3, init_conv_bn_linear
from .registry import CIFAR_MEAN, CIFAR_STD, Reference, register_model


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


class ResNet(ImageClassifier):
    """Stem, four (or, for CIFAR, three) stages of residual blocks, global pool, classifier.

    Module names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv2``, ``downsample.0``,
    ``fc``) so torchvision, timm and official Res2Net checkpoints load as they are.
    """

    def __init__(
        self,
        block: type[nn.Module] | str,
        layers: tuple[int, ...],
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
        block_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        block = BLOCKS[block] if isinstance(block, str) else block
        if len(stage_planes) != len(layers):
            raise ValueError(f"{len(layers)} stage depths but {len(stage_planes)} stage widths")
        self.num_classes = num_classes
        self.conv1, self.bn1, self.maxpool = make_stem(stem, in_chans, stem_width)
        self.relu = nn.ReLU(inplace=True)
        stem_stride = 1 if stem == "cifar" else 4

        in_channels = stem_width
        self.stage_names: list[str] = []
        self.feature_info = []
        stride_so_far = stem_stride
        for index, (depth, planes) in enumerate(zip(layers, stage_planes)):
            stride = 1 if index == 0 else 2
            stride_so_far *= stride
            blocks: list[nn.Module] = []
            for b in range(depth):
                out_channels = planes * block.expansion
                downsample = None
                if b == 0 and (stride != 1 or in_channels != out_channels):
                    downsample = (
                        ZeroPadShortcut(out_channels, stride)
                        if zero_pad_shortcut
                        else make_downsample(in_channels, out_channels, stride, avg_down)
                    )
                blocks.append(
                    block(
                        in_channels,
                        planes,
                        stride=stride if b == 0 else 1,
                        downsample=downsample,
                        groups=cardinality,
                        base_width=base_width,
                        **(block_args or {}),
                    )
                )
                in_channels = out_channels
            name = f"layer{index + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            self.feature_info.append(FeatureInfo(name, in_channels, stride_so_far))
        self.num_features = in_channels
        self.fc = nn.Linear(in_channels, num_classes) if num_classes > 0 else nn.Identity()
        init_conv_bn_linear(self)
        if zero_init_last:  # start every residual branch at zero (Goyal et al., 2017)
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        x = self._stem(x)
        outputs = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outputs.append(x)
        return outputs

    def forward_features(self, x: Tensor) -> Tensor:
        x = self._stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x


BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def build_resnet(num_classes: int = 1000, in_chans: int = 3, **config: Any) -> ResNet:
    """Builder used by the registry: ``config`` is one row of a spec table plus overrides.

    ``block_form`` ('a', 'b' or the default 'c') picks one of the ResNeXt paper's equivalent
    block forms (Figure 3); (a) and (b) live in :mod:`resnexus.models.forms`.
    """
    if config.get("block_form", "c") != "c":
        from .forms import build_resnet_form  # imported late: forms imports this module

        return build_resnet_form(num_classes=num_classes, in_chans=in_chans, **config)
    config.pop("block_form", None)
    block = config.pop("block")
    layers = tuple(config.pop("layers"))
    return ResNet(block, layers, num_classes=num_classes, in_chans=in_chans, **config)


def _tv_timm(name: str) -> dict[str, str]:
    return {"torchvision": name, "timm": name}


_HE2016 = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016"
_XIE2017 = "Xie et al., Aggregated Residual Transformations for Deep Neural Networks, CVPR 2017"

# name               block         stage depths   C   d    (ResNet paper Table 1; ResNeXt Tables 1, 3, 5)
RESNET_SPECS: dict[str, dict[str, Any]] = {
    "resnet18":          dict(block="basic",      layers=(2, 2, 2, 2)),
    "resnet34":          dict(block="basic",      layers=(3, 4, 6, 3)),
    "resnet50":          dict(block="bottleneck", layers=(3, 4, 6, 3)),
    "resnet101":         dict(block="bottleneck", layers=(3, 4, 23, 3)),
    "resnet152":         dict(block="bottleneck", layers=(3, 8, 36, 3)),
    "resnext50_32x4d":   dict(block="bottleneck", layers=(3, 4, 6, 3),  cardinality=32, base_width=4),
    "resnext101_32x4d":  dict(block="bottleneck", layers=(3, 4, 23, 3), cardinality=32, base_width=4),
    "resnext101_32x8d":  dict(block="bottleneck", layers=(3, 4, 23, 3), cardinality=32, base_width=8),
    "resnext101_64x4d":  dict(block="bottleneck", layers=(3, 4, 23, 3), cardinality=64, base_width=4),
}  # fmt: skip

# CIFAR ResNeXt-29 (Table 7): 3x3 stem, 3 stages x 3 bottlenecks, output widths 256-512-1024.
CIFAR_RESNEXT_SPECS: dict[str, dict[str, Any]] = {
    "resnext29_8x64d":   dict(block="bottleneck", layers=(3, 3, 3), cardinality=8,  base_width=64,
                              stem="cifar", stage_planes=(64, 128, 256)),
    "resnext29_16x64d":  dict(block="bottleneck", layers=(3, 3, 3), cardinality=16, base_width=64,
                              stem="cifar", stage_planes=(64, 128, 256)),
}  # fmt: skip

# CIFAR ResNets (ResNet paper, Section 4.2): 6n+2 layers, widths 16-32-64, zero-padding shortcuts.
_CIFAR_RESNET = dict(block="basic", stem="cifar", stem_width=16, stage_planes=(16, 32, 64), zero_pad_shortcut=True)
CIFAR_RESNET_SPECS: dict[str, dict[str, Any]] = {
    "resnet20_cifar":    dict(_CIFAR_RESNET, layers=(3, 3, 3)),
    "resnet32_cifar":    dict(_CIFAR_RESNET, layers=(5, 5, 5)),
    "resnet44_cifar":    dict(_CIFAR_RESNET, layers=(7, 7, 7)),
    "resnet56_cifar":    dict(_CIFAR_RESNET, layers=(9, 9, 9)),
    "resnet110_cifar":   dict(_CIFAR_RESNET, layers=(18, 18, 18)),
}  # fmt: skip

RESNET_REFERENCES: dict[str, Reference] = {
    # ResNet paper, Table 3 (10-crop testing, ImageNet val); ResNet-18 from Table 2.
    "resnet18": Reference(_HE2016 + ", Table 2 (10-crop)", top1_error=27.88, params_millions=11.7, gflops=1.8),
    "resnet34": Reference(_HE2016 + ", Table 3 (10-crop, option B)", top1_error=24.52, top5_error=7.46,
                          params_millions=21.8, gflops=3.6),
    "resnet50": Reference(_HE2016 + ", Table 3 (10-crop)", top1_error=22.85, top5_error=6.71,
                          params_millions=25.6, gflops=3.8),
    "resnet101": Reference(_HE2016 + ", Table 3 (10-crop)", top1_error=21.75, top5_error=6.05,
                           params_millions=44.5, gflops=7.6),
    "resnet152": Reference(_HE2016 + ", Table 3 (10-crop)", top1_error=21.43, top5_error=5.71,
                           params_millions=60.2, gflops=11.3),
    # ResNeXt paper, Table 3 / Table 5 (single 224 crop).
    "resnext50_32x4d": Reference(_XIE2017 + ", Table 3 (224 single crop)", top1_error=22.2,
                                 params_millions=25.0, gflops=4.2),
    "resnext101_32x4d": Reference(_XIE2017 + ", Table 3 (224 single crop)", top1_error=21.2,
                                  params_millions=44.2, gflops=8.0),
    "resnext101_64x4d": Reference(_XIE2017 + ", Table 5 (224 single crop)", top1_error=20.4, top5_error=5.3,
                                  params_millions=83.6, gflops=15.6),
    "resnext101_32x8d": Reference("torchvision model zoo, ResNeXt101_32X8D_Weights.IMAGENET1K_V1 (not in the paper)",
                                  top1_error=20.688, top5_error=5.47, params_millions=88.8, gflops=16.4),
    # ResNet paper, Table 6 (CIFAR-10 test error, standard augmentation).
    "resnet20_cifar": Reference(_HE2016 + ", Table 6", dataset="CIFAR-10", top1_error=8.75, params_millions=0.27),
    "resnet32_cifar": Reference(_HE2016 + ", Table 6", dataset="CIFAR-10", top1_error=7.51, params_millions=0.46),
    "resnet44_cifar": Reference(_HE2016 + ", Table 6", dataset="CIFAR-10", top1_error=7.17, params_millions=0.66),
    "resnet56_cifar": Reference(_HE2016 + ", Table 6", dataset="CIFAR-10", top1_error=6.97, params_millions=0.85),
    "resnet110_cifar": Reference(_HE2016 + ", Table 6", dataset="CIFAR-10", top1_error=6.43, params_millions=1.7,
                                 note="best of 5 runs; mean 6.61 +- 0.16"),
    "resnext29_8x64d": Reference(_XIE2017 + ", Table 7", dataset="CIFAR-10", top1_error=3.65,
                                 params_millions=34.4, note="CIFAR-100 error 17.77%"),
    "resnext29_16x64d": Reference(_XIE2017 + ", Table 7", dataset="CIFAR-10", top1_error=3.58,
                                  params_millions=68.1, note="CIFAR-100 error 17.31%"),
}  # fmt: skip

for _name, _spec in RESNET_SPECS.items():
    _family = "resnext" if _name.startswith("resnext") else "resnet"
    _equiv = _tv_timm(_name) if _name != "resnext101_32x4d" else {"timm": _name}
    register_model(_name, _family, build_resnet, _spec, reference=RESNET_REFERENCES.get(_name), equivalents=_equiv)
for _name, _spec in {**CIFAR_RESNET_SPECS, **CIFAR_RESNEXT_SPECS}.items():
    register_model(
        _name,
        "resnext" if _name.startswith("resnext") else "resnet",
        build_resnet,
        _spec,
        input_size=(3, 32, 32),
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        reference=RESNET_REFERENCES.get(_name),
    )

