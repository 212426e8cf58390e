"""ResNet v1.5 and ResNeXt (He et al., CVPR 2016; Xie et al., CVPR 2017).

One skeleton, :class:`ResNet`, builds every variant from a spec row: the residual block, the
number of blocks per stage, the stem, and for ResNeXt the cardinality C and bottleneck width d
("32x4d" = 32 groups of 4 channels in the first stage). v1.5 puts the stride on the 3x3
convolution, as torchvision and timm do, so their state dicts load without renaming. The blocks,
stems and shortcuts are in :mod:`resnexus.models.blocks`.

The CIFAR ResNeXt-29 of the paper (Table 7) is the same skeleton with a 3x3 stem and three
stages of three blocks: ``resnext29_8x64d`` is one row of the tables below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from .base import FeatureInfo, ImageClassifier
from .blocks import BLOCKS, ZeroPadShortcut, make_downsample, make_stem
from .forms import block_for_form
from .layers import init_conv_bn_linear, zero_init_last_norms
from .pretrained import PretrainedWeights, torchvision_weights
from .registry import CIFAR_INPUT, Reference, register_family, register_pretrained


class ResNet(ImageClassifier):
    """Stem, four (or, for CIFAR, three) stages of residual blocks, global pool, classifier.

    Module names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv2``, ``downsample.0``,
    ``fc``) so torchvision, timm and official Res2Net checkpoints load as they are. The class is
    the registry's builder: a spec row plus ``num_classes`` / ``in_chans`` are its arguments.
    ``block_form`` ('a', 'b' or the default 'c') swaps the bottleneck for one of the ResNeXt
    paper's equivalent forms (Figure 3, :mod:`resnexus.models.forms`).
    """

    def __init__(
        self,
        block: type[nn.Module] | str,
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
    ) -> None:
        super().__init__()
        block = BLOCKS[block] if isinstance(block, str) else block
        if block_form != "c":
            block = block_for_form(block, block_form)
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
        if zero_init_last:
            zero_init_last_norms(self)

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


_HE2016 = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016"
_XIE2017 = "Xie et al., Aggregated Residual Transformations for Deep Neural Networks, CVPR 2017"

# ImageNet ResNets (ResNet paper, Table 1).
# name                        block               stage depths
RESNET_SPECS: dict[str, dict[str, Any]] = {
    "resnet18":          dict(block="basic",      layers=(2, 2, 2, 2)),
    "resnet26":          dict(block="bottleneck", layers=(2, 2, 2, 2)),  # timm's; between 18 and 50
    "resnet34":          dict(block="basic",      layers=(3, 4, 6, 3)),
    "resnet50":          dict(block="bottleneck", layers=(3, 4, 6, 3)),
    "resnet101":         dict(block="bottleneck", layers=(3, 4, 23, 3)),
    "resnet152":         dict(block="bottleneck", layers=(3, 8, 36, 3)),
}  # fmt: skip

# ImageNet ResNeXts (ResNeXt paper, Tables 1, 3 and 5): cardinality C, bottleneck width d.
# name                        block               stage depths          C               d
RESNEXT_SPECS: dict[str, dict[str, Any]] = {
    "resnext50_32x4d":   dict(block="bottleneck", layers=(3, 4, 6, 3),  cardinality=32, base_width=4),
    "resnext101_32x4d":  dict(block="bottleneck", layers=(3, 4, 23, 3), cardinality=32, base_width=4),
    "resnext101_32x8d":  dict(block="bottleneck", layers=(3, 4, 23, 3), cardinality=32, base_width=8),
    "resnext101_64x4d":  dict(block="bottleneck", layers=(3, 4, 23, 3), cardinality=64, base_width=4),
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

# CIFAR ResNeXt-29 (ResNeXt paper, Table 7): 3x3 stem, 3 stages x 3 bottlenecks, output widths 256-512-1024.
CIFAR_RESNEXT_SPECS: dict[str, dict[str, Any]] = {
    "resnext29_8x64d":   dict(block="bottleneck", layers=(3, 3, 3), cardinality=8,  base_width=64,
                              stem="cifar", stage_planes=(64, 128, 256)),
    "resnext29_16x64d":  dict(block="bottleneck", layers=(3, 3, 3), cardinality=16, base_width=64,
                              stem="cifar", stage_planes=(64, 128, 256)),
}  # fmt: skip

REFERENCES: dict[str, Reference] = {
    # ResNet paper, Table 3 (10-crop testing, ImageNet val); ResNet-18 from Table 2.
    "resnet18": Reference(_HE2016 + ", Table 2 (10-crop)", top1_error=27.88, params_millions=11.7, gflops=1.8),
    "resnet26": Reference("timm model zoo, resnet26 (not in the paper: ResNet-50's bottlenecks, 2 per stage)",
                          params_millions=16.0),
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

# The same networks elsewhere (timm alone has ResNeXt-101 32x4d; nobody has our CIFAR variants).
EQUIVALENTS: dict[str, dict[str, str]] = {
    "resnet18":          {"torchvision": "resnet18",         "timm": "resnet18"},
    "resnet26":          {                                   "timm": "resnet26"},
    "resnet34":          {"torchvision": "resnet34",         "timm": "resnet34"},
    "resnet50":          {"torchvision": "resnet50",         "timm": "resnet50"},
    "resnet101":         {"torchvision": "resnet101",        "timm": "resnet101"},
    "resnet152":         {"torchvision": "resnet152",        "timm": "resnet152"},
    "resnext50_32x4d":   {"torchvision": "resnext50_32x4d",  "timm": "resnext50_32x4d"},
    "resnext101_32x4d":  {                                   "timm": "resnext101_32x4d"},
    "resnext101_32x8d":  {"torchvision": "resnext101_32x8d", "timm": "resnext101_32x8d"},
    "resnext101_64x4d":  {"torchvision": "resnext101_64x4d", "timm": "resnext101_64x4d"},
}  # fmt: skip

_TV = "https://download.pytorch.org/models/"


def _tv(version: str, file: str, top1: float, weights_class: str, **kw: Any) -> PretrainedWeights:
    resize_size = kw.pop("resize_size", 256 if version == "IMAGENET1K_V1" else 232)
    return torchvision_weights(version, _TV + file, top1, weights_class, "resnet", resize_size=resize_size, **kw)


# Published ImageNet weights (torchvision's <Model>_Weights enums: url, acc@1, eval resize; the
# file names carry the SHA-256 prefix torchvision checks). V2 = torchvision's new training recipe.
PRETRAINED: dict[str, tuple[PretrainedWeights, ...]] = {
    "resnet18": (_tv("IMAGENET1K_V1", "resnet18-f37072fd.pth", 69.758, "ResNet18_Weights", recommended=True),),
    "resnet34": (_tv("IMAGENET1K_V1", "resnet34-b627a593.pth", 73.314, "ResNet34_Weights", recommended=True),),
    "resnet50": (
        _tv("IMAGENET1K_V1", "resnet50-0676ba61.pth", 76.130, "ResNet50_Weights"),
        _tv("IMAGENET1K_V2", "resnet50-11ad3fa6.pth", 80.858, "ResNet50_Weights", recommended=True),
    ),
    "resnet101": (
        _tv("IMAGENET1K_V1", "resnet101-63fe2227.pth", 77.374, "ResNet101_Weights"),
        _tv("IMAGENET1K_V2", "resnet101-cd907fc2.pth", 81.886, "ResNet101_Weights", recommended=True),
    ),
    "resnet152": (
        _tv("IMAGENET1K_V1", "resnet152-394f9c45.pth", 78.312, "ResNet152_Weights"),
        _tv("IMAGENET1K_V2", "resnet152-f82ba261.pth", 82.284, "ResNet152_Weights", recommended=True),
    ),
    "resnext50_32x4d": (
        _tv("IMAGENET1K_V1", "resnext50_32x4d-7cdf4587.pth", 77.618, "ResNeXt50_32X4D_Weights"),
        _tv("IMAGENET1K_V2", "resnext50_32x4d-1a0047aa.pth", 81.198, "ResNeXt50_32X4D_Weights", recommended=True),
    ),
    "resnext101_32x8d": (
        _tv("IMAGENET1K_V1", "resnext101_32x8d-8ba56ff5.pth", 79.312, "ResNeXt101_32X8D_Weights"),
        _tv("IMAGENET1K_V2", "resnext101_32x8d-110c445d.pth", 82.834, "ResNeXt101_32X8D_Weights", recommended=True),
    ),
    # trained with the new recipe from the start: V1, evaluated at resize 232
    "resnext101_64x4d": (
        _tv("IMAGENET1K_V1", "resnext101_64x4d-173b62eb.pth", 83.246, "ResNeXt101_64X4D_Weights",
            resize_size=232, recommended=True),
    ),
}  # fmt: skip

register_family("resnet", ResNet, RESNET_SPECS, REFERENCES, EQUIVALENTS)
register_family("resnext", ResNet, RESNEXT_SPECS, REFERENCES, EQUIVALENTS)
register_family("resnet", ResNet, CIFAR_RESNET_SPECS, REFERENCES, EQUIVALENTS, inputs=CIFAR_INPUT)
register_family("resnext", ResNet, CIFAR_RESNEXT_SPECS, REFERENCES, EQUIVALENTS, inputs=CIFAR_INPUT)
register_pretrained(PRETRAINED)
