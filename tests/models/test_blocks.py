"""Every residual block zeroes its own last norm for ``zero_init_last=True``, and nothing else changes."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import nn

import resnexus

SHALLOW = {"layers": (1, 2, 1, 1)}  # five blocks are enough to see every block of a kind
NARROW_RESNEXT = {**SHALLOW, "stage_planes": (16, 32, 64, 128), "cardinality": 4, "base_width": 16}

# block kind -> (model, overrides, the norm scales zero_init_last must zero: one per block)
CASES: dict[str, tuple[str, dict[str, Any], str]] = {
    "basic": ("resnet18", {}, r"layer\d\.\d+\.bn2\.weight"),
    "basic_cifar": ("resnet20_cifar", {}, r"layer\d\.\d+\.bn2\.weight"),
    "bottleneck": ("resnet50", SHALLOW, r"layer\d\.\d+\.bn3\.weight"),
    "form_c": ("resnext50_32x4d", {**NARROW_RESNEXT, "block_form": "c"}, r"layer\d\.\d+\.bn3\.weight"),
    "form_a": ("resnext50_32x4d", {**NARROW_RESNEXT, "block_form": "a"}, r"layer\d\.\d+\.bn3\.weight"),
    "form_b": ("resnext50_32x4d", {**NARROW_RESNEXT, "block_form": "b"}, r"layer\d\.\d+\.bn3\.weight"),
    "res2net": ("res2net50_26w_4s", SHALLOW, r"layer\d\.\d+\.bn3\.weight"),
    "res2net_v1b": ("res2net50_v1b_26w_4s", SHALLOW, r"layer\d\.\d+\.bn3\.weight"),
}


def _build(name: str, overrides: dict[str, Any], **extra: Any) -> nn.Module:
    torch.manual_seed(0)
    return resnexus.create_model(name, num_classes=10, **overrides, **extra)


def _zero_norm_scales(model: nn.Module) -> set[str]:
    return {
        f"{name}.weight"
        for name, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d) and m.weight is not None and not m.weight.any()
    }


@pytest.mark.parametrize("kind", CASES)
def test_zero_init_last_zeroes_exactly_the_last_norm_of_each_block(kind: str) -> None:
    name, overrides, pattern = CASES[kind]
    plain, zeroed = _build(name, overrides), _build(name, overrides, zero_init_last=True)
    expected = {key for key in zeroed.state_dict() if re.fullmatch(pattern, key)}
    blocks = sum(len(getattr(zeroed, stage)) for stage in zeroed.stage_names)
    assert len(expected) == blocks
    assert _zero_norm_scales(zeroed) == expected
    assert _zero_norm_scales(plain) == set()
    # the same seed gives the same weights everywhere else
    plain_state = plain.state_dict()
    for key, value in zeroed.state_dict().items():
        if key not in expected:
            assert torch.equal(value, plain_state[key]), key
