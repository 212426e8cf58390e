"""Res2Net / Res2NeXt: sizes, key layout and exact agreement with timm (which uses the official keys).

timm is the reference: its Res2Net is the official code adapted, and its state-dict keys are those
of the official checkpoints. Every model is compared on randomised weights (BN statistics
included) saved to a ``.pth`` file and read back through ``create_model(weights=...)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import resnexus
from resnexus.models.blocks import Bottleneck
from resnexus.models.res2net import Bottle2neck, Res2Net
from resnexus.models.resnet import ResNet
from tests.helpers import max_abs_diff, randomize_

timm = pytest.importorskip("timm")

# ours -> timm's name for the same architecture
TIMM_NAMES = {
    "res2net50_26w_4s": "res2net50_26w_4s",
    "res2net50_48w_2s": "res2net50_48w_2s",
    "res2net50_14w_8s": "res2net50_14w_8s",
    "res2net50_26w_6s": "res2net50_26w_6s",
    "res2net50_26w_8s": "res2net50_26w_8s",
    "res2net101_26w_4s": "res2net101_26w_4s",
    "res2net50_v1b_26w_4s": "res2net50d",
    "res2net101_v1b_26w_4s": "res2net101d",
    "res2next50": "res2next50",
}
# Exact counts with a 1000-class head (the brief's two, timm agrees on all eight).
PARAMS = {"res2net50_26w_4s": 25_699_120, "res2next50": 24_671_464, "res2net101_v1b_26w_4s": 45_225_920}
SIZE = 64  # 64 -> 16 -> 8 -> 4 -> 2


def _meta(build: Any, *args: Any, **kwargs: Any) -> nn.Module:
    """Build on the meta device: shapes and counts without allocating or initialising weights."""
    with torch.device("meta"):
        return build(*args, **kwargs)


def _ours_meta(name: str, **overrides: Any) -> Res2Net:
    entry = resnexus.models.get_entry(name)
    return _meta(entry.builder, **{**entry.config, **overrides})


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_all_eight() -> None:
    assert set(resnexus.list_models("res2*")) == set(TIMM_NAMES)
    for name, timm_name in TIMM_NAMES.items():
        entry = resnexus.models.get_entry(name)
        assert entry.equivalents == {"timm": timm_name}
        assert entry.family == "res2net"


@pytest.mark.parametrize("name", list(TIMM_NAMES))
def test_param_count_and_keys_match_timm(name: str) -> None:
    ours = _ours_meta(name)
    theirs = _meta(timm.create_model, TIMM_NAMES[name])
    assert _count(ours) == _count(theirs)
    if name in PARAMS:
        assert _count(ours) == PARAMS[name]
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd)  # same keys in the same order: files load unmapped
    assert {k: v.shape for k, v in ours_sd.items()} == {k: v.shape for k, v in theirs_sd.items()}


@pytest.mark.parametrize("name", list(TIMM_NAMES))
def test_reference_numbers_match_measured(name: str) -> None:
    """The official table's #Params (M) and MACCs (G) are what our models measure."""
    info = resnexus.model_info(name)
    ref = info.reference
    assert ref is not None and ref.top1_error is not None and "Res2Net" in ref.source
    assert round(info.params / 1e6, 2) == ref.params_millions
    if ref.gflops is not None:  # the README gives no MACCs for the 101-layer v1b
        assert info.macs / 1e9 == pytest.approx(ref.gflops, rel=0.02)


@pytest.mark.parametrize("name", list(TIMM_NAMES))
def test_timm_weights_load_and_logits_match(name: str, tmp_path: Path) -> None:
    theirs = randomize_(timm.create_model(TIMM_NAMES[name])).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(theirs.state_dict(), path)
    ours = resnexus.create_model(name, weights=path).eval()
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert max_abs_diff(ours(x), theirs(x)) < 1e-4


@pytest.mark.parametrize("name", ["res2net50_26w_4s", "res2net50_v1b_26w_4s"])
def test_odd_feature_maps_match_timm(name: str) -> None:
    """72 px gives 9 -> 5 -> 3 maps, where the 3x3 avg-pool of the first blocks and v1b's
    ceil-mode shortcut pool meet odd sizes (an off-by-one in padding would show here)."""
    theirs = randomize_(timm.create_model(TIMM_NAMES[name])).eval()
    ours = resnexus.create_model(name).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 3, 72, 72, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert max_abs_diff(ours(x), theirs(x)) < 1e-4


@pytest.mark.parametrize("channels_last", [False, True])
def test_training_step_matches_timm(channels_last: bool) -> None:
    """The copy-saving forward must give timm's outputs, gradients and BN running statistics."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    theirs = randomize_(timm.create_model("res2net50_26w_4s", num_classes=10)).to(memory_format=fmt).train()
    ours = resnexus.create_model("res2net50_26w_4s", num_classes=10).to(memory_format=fmt).train()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)).to(memory_format=fmt)
    y_ours, y_theirs = ours(x), theirs(x)
    assert max_abs_diff(y_ours, y_theirs) < 1e-4
    y_ours.square().sum().backward()
    y_theirs.square().sum().backward()
    theirs_params = dict(theirs.named_parameters())
    for key, p in ours.named_parameters():
        assert max_abs_diff(p.grad, theirs_params[key].grad) < 1e-3 * (1 + theirs_params[key].grad.abs().max()), key
    theirs_sd = theirs.state_dict()
    for key, buf in ours.named_buffers():
        assert max_abs_diff(buf, theirs_sd[key]) < 1e-4, key


@pytest.mark.parametrize("name", ["res2net50_26w_4s", "res2net50_v1b_26w_4s"])
def test_features_only(name: str) -> None:
    model = resnexus.create_model(name, features_only=True).eval()
    assert model.strides == [4, 8, 16, 32]
    assert model.channels == [256, 512, 1024, 2048]
    with torch.no_grad():
        features = model(torch.randn(1, 3, SIZE, SIZE))
    assert [f.shape[1] for f in features] == [256, 512, 1024, 2048]
    assert [f.shape[-1] for f in features] == [SIZE // s for s in (4, 8, 16, 32)]


def test_fx_traceable() -> None:
    """No data-dependent branch in the block: torchvision's FX feature extractor works."""
    from torchvision.models.feature_extraction import create_feature_extractor

    model = resnexus.create_model("res2net50_26w_4s", num_classes=10).eval()
    extractor = create_feature_extractor(model, {"layer3": "c4", "fc": "logits"})
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        out = extractor(x)
        assert out["c4"].shape == (1, 1024, SIZE // 16, SIZE // 16)
        assert max_abs_diff(out["logits"], model(x)) == 0


def test_scale_one_is_the_resnet_bottleneck() -> None:
    """With one group there is nothing to chain: the block is the (v1.5) ResNet bottleneck,
    its 3x3 stored as ``convs.0`` / ``bns.0`` instead of ``conv2`` / ``bn2``."""
    ours = resnexus.create_model("res2net50_26w_4s", num_classes=10, scale=1).eval()
    assert all(len(m.convs) == 1 and m.pool is None for m in ours.modules() if isinstance(m, Bottle2neck))
    resnet = randomize_(ResNet(Bottleneck, (3, 4, 6, 3), num_classes=10, base_width=26)).eval()
    renamed = {k.replace(".conv2.", ".convs.0.").replace(".bn2.", ".bns.0."): v for k, v in resnet.state_dict().items()}
    ours.load_state_dict(renamed)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert max_abs_diff(ours(x), resnet(x)) < 1e-4


@pytest.mark.parametrize("scale", [0, -2, 2.5])
def test_bad_scale_raises(scale: Any) -> None:
    with pytest.raises(ValueError, match="scale must be a positive integer"):
        _ours_meta("res2net50_26w_4s", scale=scale)


def test_too_narrow_base_width_raises() -> None:
    with pytest.raises(ValueError, match="no channels"):
        _ours_meta("res2net50_26w_4s", base_width=0)


def test_overrides_and_zero_init_last() -> None:
    model = _ours_meta("res2net50_26w_4s", scale=8, base_width=14)
    assert _count(model) == _count(_ours_meta("res2net50_14w_8s"))
    model = resnexus.create_model("res2next50", num_classes=3, zero_init_last=True)
    blocks = [m for m in model.modules() if isinstance(m, Bottle2neck)]
    assert len(blocks) == 16 and all(b.bn3.weight.abs().sum() == 0 for b in blocks)
    assert blocks[0].convs[0].groups == 8 and blocks[0].width == 32
