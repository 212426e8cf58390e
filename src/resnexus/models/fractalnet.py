"""FractalNet (Larsson, Maire, Shakhnarovich, "FractalNet: Ultra-Deep Neural Networks without
Residuals", ICLR 2017, arXiv:1605.07648), the CIFAR layout of its Section 4.

Structure
---------
A fractal block of ``C`` columns is the truncated fractal ``f_C``::

    f_1(z)     = conv(z)
    f_{C+1}(z) = join(f_C(f_C(z)), conv(z))

where ``conv`` is 3x3 conv -> dropout -> BN -> ReLU and ``join`` is the element-wise *mean* of its
inputs. Joins that fall at the same depth are one join over all of their inputs (the paper's
Figure 1 draws them merged), so the last join of a 3-column block averages three tensors, not a
mean of a mean.

We build the block in its flattened column view: column ``c`` (1-based, 1 = shallowest) is a list
of ``2**(c-1)`` convs, each spanning ``2**(C-c)`` units of the deepest column's depth. Walking the
depth ``d = 1 .. 2**(C-1)``, every column whose conv ends at ``d`` applies it; where two or more
end together they are joined and all of them continue from the joined tensor. Each conv therefore
runs once per forward (no sub-fractal is evaluated twice). Column 1 has 1 conv per block, column
``C`` has ``2**(C-1)``; the longest path of ``B`` blocks is ``B * 2**(C-1)`` convs: 20 for
``fractalnet20`` (C=3), 40 for ``fractalnet40`` (C=4). A 2x2 max-pool follows every block (so the
5th block leaves a 1x1 map at 32x32 input), then a linear classifier. The paper's implementation
notes say its code moved the last join after the pool for convenience; max-pool and mean do not
commute, and we keep the order of the paper's description: join, then pool.

Dropout sits in every conv unit of a block with the block's rate (0, .1, .2, .3, .4), between the
convolution and BN, where the authors' Caffe networks place it (the paper only gives the rates).

Drop-path (training only)
-------------------------
* local: every input of every join is dropped with probability ``local_drop_prob`` (0.15); a join
  whose inputs were all dropped keeps one of them, chosen uniformly. The conv feeding a dropped
  input is skipped (its output would only feed that join); the deepest column's conv before it
  still runs, as its use is only known at the join.
* global: one column ``k`` is chosen uniformly for the whole network; every block runs only the
  convs of column ``k`` (a plain chain, the joins see a single input).

Each forward pass in training mode draws global with probability ``global_drop_ratio`` (0.5), else
local. The draw is made once per mini-batch (one decision for every sample of the batch), not per
sample: the paper alternates the two modes over training iterations (its Figure 2 shows successive
iterations, each with one local or one global draw for the whole network), and the authors' Caffe
join layer (github.com/gustavla/fractalnet, ``FractalJoin``) draws its drop mask once per forward
pass. Per-batch sampling is also what lets global drop-path compute one column only, instead of
the full network under a per-sample mask. The decision is stored on ``model.last_drop_path`` (a
:class:`DropPathPlan`; ``None`` after a forward that used none: eval, or an explicit column).

Anytime inference
-----------------
``model(x, column=k)`` runs only column ``k`` in every block (no joins). In eval mode the attribute
``model.eval_column = k`` does the same for every call without the argument; ``None`` (default)
runs the full network with every join seeing all of its inputs. Training forwards ignore
``eval_column`` so that setting it for validation does not switch drop-path off.

Parameter count
---------------
Per block of width ``w`` fed with ``c_in`` channels, ``C`` convs read the block input (the first
conv of each column) and the other ``2**C - 1 - C`` read width ``w``; convs have no bias (BN
follows), each BN has ``2w`` parameters::

    params(block) = 9 w (C c_in + (2**C - 1 - C) w) + 2 w (2**C - 1)

With 3 input channels, widths 64-128-256-512-512 and a 10-class classifier (512*10 + 10):

* ``fractalnet20`` (C=3): 33,698,880 conv + 20,608 BN + 5,130 fc = **33,724,618** (33.7M).
* ``fractalnet40`` (C=4): 76,057,344 conv + 44,160 BN + 5,130 fc = **76,106,634** (76.1M).

The paper's Table 1 gives 38.6M for the 20-layer network. The gap is in the convs that read the
block input: here they see the previous block's width (3, 64, 128, 256, 512), i.e. half the block
width for blocks 2-4. Counting all 7 convs of every block at ``w x w`` gives
``9 * 7 * (64**2 + 128**2 + 256**2 + 2 * 512**2) = 38,449,152`` conv weights (38.47M with BN and
fc), within 0.13M of the paper's figure; so the paper's count presumably assumes the channel
increase happens before the block's input convs (e.g. in a layer the paper does not describe; a
1x1 widening conv in front of each block would give 38.9M). We build the layout the text
specifies; khanrc/pt.fractalnet, an independent re-implementation, also measures 33.7M for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .base import FeatureInfo, ImageClassifier
from .layers import conv3x3, init_conv_bn_linear
from .registry import CIFAR_INPUT, Reference, register_family

__all__ = ["ConvUnit", "DropPathPlan", "FractalBlock", "FractalNet", "fractal_join"]


def fractal_join(inputs: Sequence[Tensor]) -> Tensor:
    """The join layer: element-wise mean of its inputs (not a sum, not a concatenation)."""
    if len(inputs) == 0:
        raise ValueError("a join needs at least one input")
    out = inputs[0]
    for t in inputs[1:]:
        out = out + t
    return out / len(inputs) if len(inputs) > 1 else out


class ConvUnit(nn.Module):
    """One fractal conv: 3x3 conv -> dropout -> BN -> ReLU (dropout placed as in the authors' code)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = conv3x3(in_channels, out_channels)
        self.drop: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.drop(self.conv(x))))


@dataclass(frozen=True)
class DropPathPlan:
    """One drop-path draw for a whole network (one mini-batch).

    ``mode`` is "global" (only ``column`` runs, 1-based) or "local" (``keep[b][j]`` lists the
    1-based columns whose input join ``j`` of block ``b`` keeps, in ``FractalBlock.joins`` order).
    """

    mode: str
    column: int | None = None
    keep: tuple[tuple[tuple[int, ...], ...], ...] | None = None


class FractalBlock(nn.Module):
    """A fractal block ``f_C`` in the flattened column view, followed by a 2x2 max-pool.

    ``columns[c - 1]`` holds column ``c``'s ``2**(c-1)`` conv units; ``joins`` lists, in depth
    order, the (1-based) columns that meet at each join.
    """

    def __init__(self, in_channels: int, out_channels: int, num_columns: int, dropout: float = 0.0) -> None:
        super().__init__()
        if num_columns < 1:
            raise ValueError(f"a fractal block needs at least one column, got {num_columns}")
        self.num_columns = num_columns
        self.columns = nn.ModuleList(
            nn.ModuleList(ConvUnit(in_channels if i == 0 else out_channels, out_channels, dropout) for i in range(2**c))
            for c in range(num_columns)
        )
        self.pool = nn.MaxPool2d(2)
        # Column c (0-based) ends a conv at every multiple of its span 2**(C-1-c).
        schedule: list[tuple[tuple[int, int], ...]] = []  # per depth: (column, conv index) pairs
        for d in range(1, 2 ** (num_columns - 1) + 1):
            ends = []
            for c in range(num_columns):
                span = 2 ** (num_columns - 1 - c)
                if d % span == 0:
                    ends.append((c, d // span - 1))
            schedule.append(tuple(ends))
        self._schedule = tuple(schedule)
        self.joins: tuple[tuple[int, ...], ...] = tuple(
            tuple(c + 1 for c, _ in ends) for ends in schedule if len(ends) > 1
        )

    def forward(self, x: Tensor, keep: Sequence[Sequence[int]] | None = None, column: int | None = None) -> Tensor:
        """Full block (``keep=None``), a local drop-path draw (``keep[j]``: columns kept at join
        ``j``), or a single column (``column=k``, 1-based)."""
        if column is not None:
            if not 1 <= column <= self.num_columns:
                raise ValueError(f"column must be in 1..{self.num_columns}, got {column}")
            for unit in self.columns[column - 1]:
                x = unit(x)
            return self.pool(x)
        if keep is not None and len(keep) != len(self.joins):
            raise ValueError(f"keep has {len(keep)} entries, the block has {len(self.joins)} joins")
        current = [x] * self.num_columns  # each column's input to its next conv
        j = 0
        for ends in self._schedule:
            if len(ends) == 1:
                c, i = ends[0]
                current[c] = self.columns[c][i](current[c])
                continue
            kept = set(keep[j]) if keep is not None else None
            if kept is not None and (not kept or not kept <= set(self.joins[j])):
                raise ValueError(f"join {j} has inputs {self.joins[j]}, cannot keep {sorted(kept)}")
            joined = fractal_join([self.columns[c][i](current[c]) for c, i in ends if kept is None or c + 1 in kept])
            for c, _ in ends:
                current[c] = joined
            j += 1
        return self.pool(current[-1])  # after the last join every column holds the block output


class FractalNet(ImageClassifier):
    """FractalNet: ``len(channels)`` fractal blocks of ``columns`` columns, max-pool after each.

    See the module docstring for drop-path (``local_drop_prob``, ``global_drop_ratio``) and
    single-column inference (``forward(x, column=k)`` / ``eval_column``). The registry's builder:
    a spec row plus ``num_classes`` / ``in_chans`` are its arguments.
    """

    def __init__(
        self,
        columns: int = 3,
        channels: Sequence[int] = (64, 128, 256, 512, 512),
        dropout: Sequence[float] | float = 0.0,
        num_classes: int = 10,
        in_chans: int = 3,
        local_drop_prob: float = 0.15,
        global_drop_ratio: float = 0.5,
    ) -> None:
        super().__init__()
        channels = tuple(channels)
        dropouts = (float(dropout),) * len(channels) if isinstance(dropout, (int, float)) else tuple(dropout)
        if len(dropouts) != len(channels):
            raise ValueError(f"{len(dropouts)} dropout rates for {len(channels)} blocks")
        if not (0.0 <= local_drop_prob <= 1.0 and 0.0 <= global_drop_ratio <= 1.0):
            raise ValueError("local_drop_prob and global_drop_ratio must be probabilities")
        self.num_columns = columns
        self.local_drop_prob = local_drop_prob
        self.global_drop_ratio = global_drop_ratio
        self.eval_column: int | None = None
        self.last_drop_path: DropPathPlan | None = None
        blocks = []
        prev = in_chans
        for width, p in zip(channels, dropouts):
            blocks.append(FractalBlock(prev, width, columns, p))
            prev = width
        self.blocks = nn.ModuleList(blocks)
        self.num_features = prev
        self.num_classes = num_classes
        self.fc = nn.Linear(prev, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [FeatureInfo(f"blocks.{i}", width, 2 ** (i + 1)) for i, width in enumerate(channels)]
        init_conv_bn_linear(self)

    # -- drop-path -------------------------------------------------------------------------
    def sample_drop_path(self) -> DropPathPlan:
        """Draw one mini-batch's drop-path decision from torch's global RNG (so it is seedable)."""
        if float(torch.rand(())) < self.global_drop_ratio:
            return DropPathPlan("global", column=int(torch.randint(1, self.num_columns + 1, ())))
        p = self.local_drop_prob
        keep = []
        for block in self.blocks:
            block_keep = []
            for inputs in block.joins:
                dropped = (torch.rand(len(inputs)) < p).tolist()
                kept = tuple(c for c, d in zip(inputs, dropped) if not d)
                if not kept:  # every join keeps at least one input
                    kept = (inputs[int(torch.randint(len(inputs), ()))],)
                block_keep.append(kept)
            keep.append(tuple(block_keep))
        return DropPathPlan("local", keep=tuple(keep))

    # -- forwards --------------------------------------------------------------------------
    def _resolve_column(self, column: int | None) -> int | None:
        if column is None and not self.training:
            column = self.eval_column
        if column is not None and not 1 <= column <= self.num_columns:
            raise ValueError(f"column must be in 1..{self.num_columns}, got {column}")
        return column

    def forward_stages(self, x: Tensor, column: int | None = None) -> list[Tensor]:
        """Every block's pooled output (strides 2, 4, 8, 16, 32), drop-path applied in training."""
        column = self._resolve_column(column)
        plan = self.sample_drop_path() if self.training and column is None else None
        self.last_drop_path = plan
        if plan is not None and plan.mode == "global":
            column = plan.column
        outs = []
        for b, block in enumerate(self.blocks):
            keep = plan.keep[b] if plan is not None and plan.keep is not None else None
            x = block(x, keep=keep, column=column)
            outs.append(x)
        return outs

    def forward_features(self, x: Tensor, column: int | None = None) -> Tensor:
        return self.forward_stages(x, column=column)[-1]

    def forward(self, x: Tensor, column: int | None = None) -> Tensor:
        """Logits. ``column=k`` runs column k alone (also in training, then without drop-path)."""
        return self.forward_head(self.forward_features(x, column=column))


# CIFAR layout of the paper's Section 4: five blocks, 2x2 max-pool after each.
# name                    columns C  channels per block                 dropout per block
SPECS: dict[str, dict[str, Any]] = {
    "fractalnet20":  dict(columns=3, channels=(64, 128, 256, 512, 512), dropout=(0.0, 0.1, 0.2, 0.3, 0.4)),
    "fractalnet40":  dict(columns=4, channels=(64, 128, 256, 512, 512), dropout=(0.0, 0.1, 0.2, 0.3, 0.4)),
}  # fmt: skip

REFERENCES: dict[str, Reference] = {
    "fractalnet20": Reference(
        source="Larsson et al., ICLR 2017, Table 1 (FractalNet, 20 layers, + drop-path + dropout)",
        dataset="CIFAR-10",
        top1_error=4.60,
        params_millions=38.6,
        note=(
            "C10+ (standard augmentation). Same row: C10 7.33, C10++ 4.59; deepest column alone "
            "7.27 / 4.68 / 4.63; CIFAR-100 28.20 / 23.73 / 23.36. Without drop-path and dropout: "
            "C10 10.18, C10+ 5.22, C10++ 5.11. The paper's 38.6M params is for its own count; this "
            "layout has 33.72M (see resnexus.models.fractalnet)."
        ),
    ),
    "fractalnet40": Reference(
        source="Larsson et al., ICLR 2017, Sec. 4 (C=4 columns, 40 layers)",
        dataset="CIFAR-10",
        note="4-column variant of the same layout (76.11M params); no paper error rate recorded here.",
    ),
}

EQUIVALENTS: dict[str, dict[str, str]] = {}  # torchvision, timm and Keras have no FractalNet

register_family("fractalnet", FractalNet, SPECS, REFERENCES, EQUIVALENTS, inputs=CIFAR_INPUT)
