"""The three equivalent forms of the ResNeXt block (Xie et al., CVPR 2017, Figure 3).

(a) C parallel paths, each 1x1 (in -> d) -> 3x3 (d -> d) -> 1x1 (d -> out); outputs summed.
(b) C parallel paths, each 1x1 -> 3x3; outputs concatenated, then one 1x1 (C*d -> out).
(c) one 1x1 (in -> C*d) -> grouped 3x3 (C groups) -> 1x1: :class:`~resnexus.models.blocks.Bottleneck`.

The paper states the three are equivalent; here they are exactly so, BatchNorm included:
the per-path BNs after the 1x1 and the 3x3 are the per-channel slices of (c)'s ``bn1`` and
``bn2`` (BN is per channel, so slicing is exact in train mode too), and in (a) the last BN is
applied once to the *sum* of the paths, which is what (c)'s ``bn3`` sees. The forms are only
reparameterizations: they hold the same numbers, so :func:`convert_block` moves weights between
them losslessly and the parameter counts are identical. (c) is by far the fastest; (a) and (b)
exist to demonstrate (and test) the equivalence the paper's argument rests on.

``create_model("resnext50_32x4d", block_form="a")`` builds a whole model in form (a) or (b):
:class:`~resnexus.models.resnet.ResNet` asks :func:`block_for_form` for the block class.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from .blocks import BLOCKS, Bottleneck
from .layers import conv1x1, conv3x3

__all__ = [
    "FORMS",
    "ResNeXtBlockA",
    "ResNeXtBlockB",
    "block_for_form",
    "bottleneck_width_for_cardinality",
    "convert_block",
    "convert_model_form",
    "form_of",
]

FORMS = ("a", "b", "c")


def _width_per_group(planes: int, base_width: int) -> int:
    """d, exactly as :class:`Bottleneck` computes it, so the forms agree on widths."""
    return int(planes * (base_width / 64.0))


class _Path(nn.Module):
    """One path of forms (a)/(b): 1x1 -> BN -> ReLU -> 3x3 -> BN -> ReLU [-> 1x1 for form (a)]."""

    def __init__(self, in_channels: int, width: int, stride: int, out_channels: int | None) -> None:
        super().__init__()
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        # form (a) ends each path with its own 1x1; its BN is shared (applied to the sum)
        self.conv3 = conv1x1(width, out_channels) if out_channels is not None else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return out if self.conv3 is None else self.conv3(out)


class _MultiPathBlock(nn.Module):
    """Shared constructor of forms (a) and (b): same signature and widths as :class:`Bottleneck`."""

    expansion = 4
    form: str
    bn3: nn.BatchNorm2d  # the norm after the paths, shared by both forms

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
        self.in_channels = in_channels
        self.out_channels = planes * self.expansion
        self.cardinality = groups
        self.width_per_group = _width_per_group(planes, base_width)
        self.stride = stride
        if self.width_per_group < 1:
            raise ValueError(f"bottleneck width {planes} * {base_width} / 64 rounds to zero channels")
        self.paths = nn.ModuleList(
            _Path(in_channels, self.width_per_group, stride, self.out_channels if self.form == "a" else None)
            for _ in range(groups)
        )
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        """Zero the last BN's scale (as :meth:`Bottleneck.zero_init_last`): the block starts as the identity."""
        nn.init.zeros_(self.bn3.weight)

    def extra_repr(self) -> str:
        return f"form={self.form!r}, cardinality={self.cardinality}, width_per_group={self.width_per_group}"


class ResNeXtBlockA(_MultiPathBlock):
    """Form (a): C full bottleneck paths whose outputs are summed, then one BN on the sum."""

    form = "a"

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__(in_channels, planes, stride, downsample, groups, base_width)
        self.bn3 = nn.BatchNorm2d(self.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.paths[0](x)
        for path in self.paths[1:]:
            out = out + path(x)
        return self.relu(self.bn3(out) + shortcut)


class ResNeXtBlockB(_MultiPathBlock):
    """Form (b): C paths of 1x1 -> 3x3, concatenated, then one 1x1 (C*d -> out) and BN."""

    form = "b"

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__(in_channels, planes, stride, downsample, groups, base_width)
        self.conv3 = conv1x1(groups * self.width_per_group, self.out_channels)
        self.bn3 = nn.BatchNorm2d(self.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = torch.cat([path(x) for path in self.paths], dim=1)
        return self.relu(self.bn3(self.conv3(out)) + shortcut)


FORM_CLASSES: dict[str, type[nn.Module]] = {"a": ResNeXtBlockA, "b": ResNeXtBlockB, "c": Bottleneck}


def _check_form(form: str) -> str:
    if form not in FORM_CLASSES:
        raise ValueError(f"unknown ResNeXt block form {form!r}: expected one of 'a', 'b', 'c' (Xie et al., Fig. 3)")
    return form


def form_of(block: nn.Module) -> str:
    """'a', 'b' or 'c' for a ResNeXt bottleneck; ValueError for anything else."""
    for form, cls in FORM_CLASSES.items():
        if type(block) is cls:  # exact type: a Bottleneck subclass (e.g. Res2Net) is not form (c)
            return form
    raise ValueError(f"{type(block).__name__} is not a ResNeXt bottleneck (form a, b or c)")


# -- conversion ------------------------------------------------------------------------------
def _copy_bn_(
    dst: nn.BatchNorm2d, src: nn.BatchNorm2d, dst_ch: slice = slice(None), src_ch: slice = slice(None)
) -> None:
    """Copy channels ``src_ch`` of ``src`` (affine params, running statistics) into ``dst_ch`` of ``dst``."""
    dst.eps, dst.momentum = src.eps, src.momentum
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            s, d = getattr(src, name), getattr(dst, name)
            if s is not None and d is not None:
                d[dst_ch].copy_(s[src_ch])
        if src.num_batches_tracked is not None and dst.num_batches_tracked is not None:
            dst.num_batches_tracked.copy_(src.num_batches_tracked)


def _copy_(dst: Tensor, src: Tensor) -> None:
    with torch.no_grad():
        dst.copy_(src)


def _dims(block: nn.Module) -> tuple[int, int, int, int, int]:
    """(in_channels, cardinality C, width per group d, out_channels, stride) of any form."""
    if isinstance(block, _MultiPathBlock):
        return block.in_channels, block.cardinality, block.width_per_group, block.out_channels, block.stride
    assert isinstance(block, Bottleneck)
    groups = block.conv2.groups
    return (
        block.conv1.in_channels,
        groups,
        block.conv1.out_channels // groups,
        block.conv3.out_channels,
        block.conv2.stride[0],
    )


def _empty_block(form: str, in_channels: int, groups: int, width: int, out_channels: int, stride: int) -> nn.Module:
    """A fresh block of ``form`` with exactly these widths (d need not come from an integer base_width)."""
    planes = out_channels // Bottleneck.expansion
    base_width = round(width * 64 / planes)
    block = FORM_CLASSES[form](in_channels, planes, stride, None, groups, base_width)
    if _dims(block)[2] != width:  # d * 64 / planes is not an integer base_width: rebuild the inner layers
        if form == "c":
            block.conv1, block.bn1 = conv1x1(in_channels, groups * width), nn.BatchNorm2d(groups * width)
            block.conv2 = conv3x3(groups * width, groups * width, stride, groups)
            block.bn2, block.conv3 = nn.BatchNorm2d(groups * width), conv1x1(groups * width, out_channels)
        else:
            block.width_per_group = width
            block.paths = nn.ModuleList(
                _Path(in_channels, width, stride, out_channels if form == "a" else None) for _ in range(groups)
            )
            if form == "b":
                block.conv3 = conv1x1(groups * width, out_channels)
    return block


def convert_block(block: nn.Module, form: str) -> nn.Module:
    """A new block of ``form`` ('a', 'b' or 'c') computing exactly what ``block`` computes.

    Works between any two forms; the shortcut (``downsample``) is deep-copied, and the result is
    on the same device/dtype and in the same train/eval mode as ``block``.
    """
    _check_form(form)
    source = form_of(block)
    in_channels, groups, width, out_channels, stride = _dims(block)
    new = _empty_block(form, in_channels, groups, width, out_channels, stride)
    ref = next(block.parameters())
    new = new.to(device=ref.device, dtype=ref.dtype)
    new.downsample = copy.deepcopy(block.downsample)

    def group(i: int) -> slice:
        return slice(i * width, (i + 1) * width)

    # Gather (c)-layout tensors from the source: conv1/conv2 rows and bn1/bn2 channels are per
    # group; conv3's input columns are per group; bn3 is shared by all forms.
    if source == "c":
        assert isinstance(block, Bottleneck)
        conv1, conv2, conv3 = block.conv1.weight, block.conv2.weight, block.conv3.weight
        bn1, bn2 = [block.bn1], [block.bn2]
    else:
        assert isinstance(block, _MultiPathBlock)
        paths = list(block.paths)
        conv1 = torch.cat([p.conv1.weight for p in paths])
        conv2 = torch.cat([p.conv2.weight for p in paths])  # grouped conv weight: (C*d, d, 3, 3)
        conv3 = torch.cat([p.conv3.weight for p in paths], 1) if source == "a" else block.conv3.weight
        bn1, bn2 = [p.bn1 for p in paths], [p.bn2 for p in paths]

    def copy_bns_(dst: list[nn.BatchNorm2d], src: list[nn.BatchNorm2d]) -> None:
        """Copy BN channels between the "one wide BN" (c) and "one BN per path" (a, b) layouts."""
        if len(src) == len(dst):
            for d, s in zip(dst, src):
                _copy_bn_(d, s)
        elif len(src) == 1:  # wide -> per path
            for i, d in enumerate(dst):
                _copy_bn_(d, src[0], src_ch=group(i))
        else:  # per path -> wide
            for i, s in enumerate(src):
                _copy_bn_(dst[0], s, dst_ch=group(i))

    if form == "c":
        assert isinstance(new, Bottleneck)
        _copy_(new.conv1.weight, conv1)
        _copy_(new.conv2.weight, conv2)
        _copy_(new.conv3.weight, conv3)
        copy_bns_([new.bn1], bn1)
        copy_bns_([new.bn2], bn2)
    else:
        assert isinstance(new, _MultiPathBlock)
        for i, p in enumerate(new.paths):
            _copy_(p.conv1.weight, conv1[group(i)])
            _copy_(p.conv2.weight, conv2[group(i)])
            if form == "a":
                _copy_(p.conv3.weight, conv3[:, group(i)])
        if form == "b":
            _copy_(new.conv3.weight, conv3)
        copy_bns_([p.bn1 for p in new.paths], bn1)
        copy_bns_([p.bn2 for p in new.paths], bn2)
    _copy_bn_(new.bn3, block.bn3)
    return new.train(block.training)


def convert_model_form(model: nn.Module, form: str, inplace: bool = False) -> nn.Module:
    """Convert every ResNeXt bottleneck of ``model`` to ``form``; logits are unchanged.

    Returns a converted copy (or ``model`` itself with ``inplace=True``). Typical use: load a
    torchvision/timm checkpoint into the fast form (c), then look at it as form (a) or (b).
    """
    _check_form(form)
    target = model if inplace else copy.deepcopy(model)
    for parent in list(target.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in FORM_CLASSES.values() and form_of(child) != form:
                setattr(parent, name, convert_block(child, form))
    return target


# -- building whole models in form (a) or (b) -------------------------------------------------
def block_for_form(block: str | type[nn.Module], form: str) -> type[nn.Module]:
    """The block class of ``form`` standing in for the spec row's ``block`` (must be the bottleneck)."""
    _check_form(form)
    cls = BLOCKS[block] if isinstance(block, str) else block
    if cls not in FORM_CLASSES.values():
        raise ValueError(f"block_form={form!r} needs a bottleneck block, not {getattr(cls, '__name__', cls)}")
    return FORM_CLASSES[form]


# -- complexity-preserving width (Table 2) ---------------------------------------------------
def bottleneck_width_for_cardinality(cardinality: int, channels: int = 256, reference_width: int = 64) -> int:
    """Bottleneck width d that keeps a C-path block as costly as the ResNet bottleneck (Table 2).

    A ResNeXt block with C paths of width d on ``channels`` input/output channels has
    ``C * (channels*d + 9*d*d + d*channels)`` weights (BN not counted); the ResNet bottleneck it
    replaces has ``channels*w + 9*w*w + w*channels`` with ``w = reference_width``. Solving
    ``9*C*d**2 + 2*C*channels*d = budget`` gives a real root; the integer next to it with the
    closest cost is returned (C=2 gives 39.95 -> 40), reproducing Table 2: C = 1, 2, 4, 8, 32
    -> d = 64, 40, 24, 14, 4.
    """
    if cardinality < 1 or channels < 1 or reference_width < 1:
        raise ValueError("cardinality, channels and reference_width must be positive")

    def cost(d: int) -> int:
        return cardinality * (channels * d + 9 * d * d + d * channels)

    budget = channels * reference_width + 9 * reference_width**2 + reference_width * channels
    a, b = 9 * cardinality, 2 * cardinality * channels
    root = (-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a)
    candidates = {max(1, math.floor(root)), max(1, math.ceil(root))}
    return min(sorted(candidates), key=lambda d: abs(cost(d) - budget))
