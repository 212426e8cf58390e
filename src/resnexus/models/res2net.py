"""Res2Net and Res2NeXt (Gao et al., "Res2Net: A New Multi-scale Backbone Architecture", TPAMI 2021).

Res2Net keeps the ResNet skeleton and replaces the bottleneck's single 3x3 convolution by a small
hierarchy: the 1x1 reduction produces ``scale`` groups of ``width`` channels; group 1 goes through
a 3x3 conv, group 2 is added to that result before its own 3x3 conv, and so on, while the last
group passes through untouched. Each output group therefore sees a larger receptive field than
the one before, which is the "multi-scale at a granular level" of the paper. In the first block
of a stage (stride 2, or a projection shortcut) the groups are convolved independently and the
last one is 3x3 average-pooled so that it has the stride of the others.

Module names are those of the official checkpoints (github.com/Res2Net/Res2Net-PretrainedModels),
which timm uses too: ``conv1``, ``bn1``, ``convs.<i>``, ``bns.<i>``, ``conv3``, ``bn3`` and
``downsample.0/1`` (``downsample.1/2`` behind an average pool for v1b), so their files load as
they are. ``res2net50_v1b_26w_4s`` is the "v1b" of the official repository (a deep 3x3 stem and
average-pool shortcuts, the ResNet-D tricks), the model timm calls ``res2net50d``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .layers import conv1x1, conv3x3
from .pretrained import TIMM_EVAL, PretrainedWeights, hash_prefix_from_url
from .registry import Reference, register_family, register_pretrained
from .resnet import ResNet


class Bottle2neck(nn.Module):
    """The Res2Net bottleneck: 1x1 to ``width * scale``, hierarchical 3x3s, 1x1 expand (x4).

    ``width = floor(planes * base_width / 64) * groups``; with ``groups > 1`` every 3x3 is a
    grouped convolution (Res2NeXt). ``scale=1`` has no groups to chain and is exactly the
    ResNet/ResNeXt bottleneck (one 3x3 carrying the stride, stored as ``convs.0``).
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 26,
        scale: int = 4,
    ) -> None:
        super().__init__()
        if not isinstance(scale, int) or scale < 1:
            raise ValueError(f"Res2Net scale must be a positive integer, got {scale!r}")
        width = int(planes * base_width / 64) * groups
        if width < 1:
            raise ValueError(f"base_width={base_width} leaves no channels per group for planes={planes}")
        self.width = width
        self.scale = scale
        # The first block of a stage changes resolution or width: its groups cannot be chained
        # (the running sum would mix strided and unstrided maps), so they are convolved apart.
        self.is_first = stride > 1 or downsample is not None
        branches = max(1, scale - 1)
        self.conv1 = conv1x1(in_channels, width * scale)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(conv3x3(width, width, stride, groups) for _ in range(branches))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(branches))
        # count_include_pad=True (the default) as in the official code, which the weights expect.
        self.pool = nn.AvgPool2d(3, stride, padding=1) if self.is_first and scale > 1 else None
        self.conv3 = conv1x1(width * scale, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        """Zero the last BN's scale: the residual branch then starts at zero."""
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu_(self.bn1(self.conv1(x)))
        # scale 1 has no groups to chain: one 3x3, exactly the ResNet bottleneck
        out = torch.relu_(self.bns[0](self.convs[0](out))) if self.scale == 1 else self._multi_scale(out)
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu_(out.add_(shortcut))  # bn3's output is not saved for backward

    def _multi_scale(self, out: Tensor) -> Tensor:
        """The split / hierarchical 3x3 / concat part, written to copy as little as possible.

        ``split`` returns views. A channel slice of a batch is not contiguous, and convolutions
        copy such an input in the forward *and again* in the backward; copying it once here
        (``clone`` in the layout the slice already suggests, channels-last or not, with no
        data-dependent branch so FX tracing still works) lets the convolution save and reuse
        that copy. A running sum ``sp + split`` is already a fresh dense tensor: no copy.
        """
        splits = out.split(self.width, 1)
        pieces: list[Tensor] = []
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            if i == 0 or self.is_first:  # noqa: SIM108 (a ternary would read `sp` before its first assignment)
                sp = splits[i].clone(memory_format=torch.preserve_format)
            else:
                sp = sp + splits[i]  # cannot be in place: both operands are saved by ReLU backward
            sp = torch.relu_(bn(conv(sp)))
            pieces.append(sp)
        pieces.append(splits[-1] if self.pool is None else self.pool(splits[-1]))
        return torch.cat(pieces, 1)


class Res2Net(ResNet):
    """The ResNet skeleton with :class:`Bottle2neck` blocks; ``scale`` is the number of groups.

    The registry's builder: a spec row plus ``num_classes`` / ``in_chans`` are its arguments.
    """

    def __init__(
        self,
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
    ) -> None:
        super().__init__(
            Bottle2neck,
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
        self.scale = scale


_GAO2021 = "Gao et al., Res2Net: A New Multi-scale Backbone Architecture, TPAMI 2021"
_OFFICIAL = "github.com/Res2Net/Res2Net-PretrainedModels README, 'Pretrained models' table"

# name -> stage depths, base width w, scale s, cardinality C (default 1), stem and shortcut (default: 7x7, 1x1 conv)
SPECS: dict[str, dict[str, Any]] = {
    "res2net50_26w_4s":      dict(layers=(3, 4, 6, 3),  base_width=26, scale=4),
    "res2net50_48w_2s":      dict(layers=(3, 4, 6, 3),  base_width=48, scale=2),
    "res2net50_14w_8s":      dict(layers=(3, 4, 6, 3),  base_width=14, scale=8),
    "res2net50_26w_6s":      dict(layers=(3, 4, 6, 3),  base_width=26, scale=6),
    "res2net50_26w_8s":      dict(layers=(3, 4, 6, 3),  base_width=26, scale=8),
    "res2net101_26w_4s":     dict(layers=(3, 4, 23, 3), base_width=26, scale=4),
    "res2net50_v1b_26w_4s":  dict(layers=(3, 4, 6, 3),  base_width=26, scale=4, stem="deep", avg_down=True),
    "res2net101_v1b_26w_4s": dict(layers=(3, 4, 23, 3), base_width=26, scale=4, stem="deep", avg_down=True),
    "res2next50":            dict(layers=(3, 4, 6, 3),  base_width=4,  scale=4, cardinality=8),
}  # fmt: skip


def _ref(top1: float, top5: float, params: float, gflops: float, note: str = "") -> Reference:
    return Reference(
        f"{_GAO2021}; {_OFFICIAL}", top1_error=top1, top5_error=top5, params_millions=params, gflops=gflops, note=note
    )


# The official repository's "Pretrained models" table: #Params (M), MACCs (G), top-1 / top-5 error.
REFERENCES: dict[str, Reference] = {
    "res2net50_48w_2s":     _ref(22.68, 6.47, 25.29, 4.2),
    "res2net50_26w_4s":     _ref(22.01, 6.15, 25.70, 4.2),
    "res2net50_14w_8s":     _ref(21.86, 6.14, 25.06, 4.2),
    "res2net50_26w_6s":     _ref(21.42, 5.87, 37.05, 6.3),
    "res2net50_26w_8s":     _ref(20.80, 5.63, 48.40, 8.3),
    "res2net101_26w_4s":    _ref(20.81, 5.57, 45.21, 8.1),
    "res2next50":           _ref(21.76, 6.09, 24.67, 4.2),
    "res2net50_v1b_26w_4s": _ref(19.73, 4.96, 25.72, 4.5,
                                 note="v1b: deep stem + avg-pool shortcuts; official repository only"),
    "res2net101_v1b_26w_4s": Reference(f"{_GAO2021}; {_OFFICIAL}", top1_error=18.77, params_millions=45.23,
                                       note="v1b: deep stem + avg-pool shortcuts; official repository only"),
}  # fmt: skip

# timm has every variant; it calls the v1b models by their ResNet-D names.
EQUIVALENTS: dict[str, dict[str, str]] = {
    "res2net50_26w_4s":      {"timm": "res2net50_26w_4s"},
    "res2net50_48w_2s":      {"timm": "res2net50_48w_2s"},
    "res2net50_14w_8s":      {"timm": "res2net50_14w_8s"},
    "res2net50_26w_6s":      {"timm": "res2net50_26w_6s"},
    "res2net50_26w_8s":      {"timm": "res2net50_26w_8s"},
    "res2net101_26w_4s":     {"timm": "res2net101_26w_4s"},
    "res2net50_v1b_26w_4s":  {"timm": "res2net50d"},
    "res2net101_v1b_26w_4s": {"timm": "res2net101d"},
    "res2next50":            {"timm": "res2next50"},
}  # fmt: skip

_TIMM = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-res2net/"
_TIMM_SOURCE = (
    "https://github.com/rwightman/pytorch-image-models/blob/d8e69206be253892b2956341fea09fdebfaae4e3/"
    "timm/models/res2net.py (default_cfgs url, crop_pct 0.875); top-1: timm docs/models/res2net.md model-index"
)
_OFFICIAL_FILES = "https://shanghuagao.oss-cn-beijing.aliyuncs.com/res2net/"
_OFFICIAL_CODE = "https://github.com/Res2Net/Res2Net-PretrainedModels/blob/master/{} (model_urls); top-1: README table"


def _weights(tag: str, url: str, top1: float, source: str, license: str, **kw: Any) -> PretrainedWeights:
    """The file names carry a SHA-256 prefix (torch.hub's convention) in both the timm and the official copies."""
    return PretrainedWeights(
        tag=tag,
        url=url,
        hash=hash_prefix_from_url(url),
        hash_kind="sha256-prefix",
        layout=tag.split(":", 1)[0],
        preprocessing=TIMM_EVAL,
        top1=top1,
        license=license,
        source=source,
        **kw,
    )


def _timm(file: str, top1: float) -> PretrainedWeights:
    # timm's own default_cfg says license 'unknown' for these files
    return _weights(
        "timm:v0.1-res2net", _TIMM + file, top1, _TIMM_SOURCE, "unknown (timm lists 'unknown')", recommended=True
    )


def _official(file: str, top1: float, code: str, **kw: Any) -> PretrainedWeights:
    return _weights(
        "official",
        _OFFICIAL_FILES + file,
        top1,
        _OFFICIAL_CODE.format(code),
        "not stated (the official repository has no license file)",
        note="evaluation transform not stated by the source; timm's 256 -> 224 crop assumed",
        **kw,
    )


# Published ImageNet weights. timm re-hosts the authors' files under the same names (same SHA-256
# prefix) over https; the official repository links the plain-Res2Net files over http only, so only its
# https files (v1b, Res2NeXt) are listed here. Top-1 of the official files: the README table (100 - error).
PRETRAINED: dict[str, tuple[PretrainedWeights, ...]] = {
    "res2net50_26w_4s":      (_timm("res2net50_26w_4s-06e79181.pth", 77.99),),
    "res2net50_48w_2s":      (_timm("res2net50_48w_2s-afed724a.pth", 77.53),),
    "res2net50_14w_8s":      (_timm("res2net50_14w_8s-6527dddc.pth", 78.14),),
    "res2net50_26w_6s":      (_timm("res2net50_26w_6s-19041792.pth", 78.57),),
    "res2net50_26w_8s":      (_timm("res2net50_26w_8s-2c7c9f12.pth", 79.19),),
    "res2net101_26w_4s":     (_timm("res2net101_26w_4s-02a759a1.pth", 79.19),),
    "res2next50":            (_timm("res2next50_4s-6ef7e7bf.pth", 78.24),
                              _official("res2next50_4s-6ef7e7bf.pth", 78.24, "res2next.py")),
    "res2net50_v1b_26w_4s":  (_official("res2net50_v1b_26w_4s-3cf99910.pth", 80.27, "res2net_v1b.py",
                                        recommended=True),),
    "res2net101_v1b_26w_4s": (_official("res2net101_v1b_26w_4s-0812c246.pth", 81.23, "res2net_v1b.py",
                                        recommended=True),),
}  # fmt: skip

register_family("res2net", Res2Net, SPECS, REFERENCES, EQUIVALENTS)
register_pretrained(PRETRAINED)
