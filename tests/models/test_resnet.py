"""ResNet v1.5 / ResNeXt: exact sizes, torchvision/timm layout, weight loading, features, MACs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck as TVBottleneck
from torchvision.models.resnet import ResNet as TVResNet

import resnexus
from resnexus.models.registry import count_macs
from tests.helpers import max_abs_diff, randomize_

# Exact parameter counts at 1000 classes (10 for the CIFAR ResNeXt-29s), measured and matching
# torchvision/timm where they have the model and the papers' rounded figures otherwise.
PARAMS = {
    "resnet18": 11_689_512,
    "resnet26": 15_995_176,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x4d": 44_177_704,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
    "resnext29_8x64d": 34_426_698,
    "resnext29_16x64d": 68_155_210,
}
TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
               "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"]  # fmt: skip
TIMM = [*TORCHVISION, "resnet26", "resnext101_32x4d"]
BIG = {"resnet101", "resnet152", "resnext101_32x4d", "resnext101_32x8d", "resnext101_64x4d"}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a model without allocating or initialising weights: counting shapes is free."""
    with torch.device("meta"):
        return build()


def formula_params(
    block: str,
    layers: tuple[int, ...],
    cardinality: int = 1,
    base_width: int = 64,
    stem: str = "imagenet",
    stage_planes: tuple[int, ...] = (64, 128, 256, 512),
    num_classes: int = 1000,
) -> int:
    """Parameter count of a ResNet/ResNeXt written out by hand (conv weights, BN scale+shift, fc)."""
    total = (49 if stem == "imagenet" else 9) * 3 * 64 + 2 * 64
    c_in = 64
    for index, (depth, planes) in enumerate(zip(layers, stage_planes)):
        stride = 1 if index == 0 else 2
        for b in range(depth):
            if block == "basic":
                c_out = planes
                total += 9 * c_in * planes + 9 * planes * planes + 2 * (planes + planes)
            else:
                width = (planes * base_width // 64) * cardinality
                c_out = 4 * planes
                total += c_in * width + 9 * width * (width // cardinality) + width * c_out
                total += 2 * (width + width + c_out)
            if b == 0 and (stride != 1 or c_in != c_out):
                total += c_in * c_out + 2 * c_out
            c_in = c_out
    return total + c_in * num_classes + num_classes


# -- sizes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_count(name: str) -> None:
    info = resnexus.model_info(name)
    assert info.params == PARAMS[name]
    cfg = dict(info.config)
    block, layers = cfg.pop("block"), tuple(cfg.pop("layers"))
    assert formula_params(block, layers, num_classes=info.num_classes, **cfg) == PARAMS[name]
    ref = info.reference
    assert ref is not None and ref.params_millions is not None
    assert abs(PARAMS[name] / 1e6 - ref.params_millions) < 0.25  # the papers round to 0.1M


@pytest.mark.parametrize("name", TORCHVISION)
def test_parameter_count_matches_torchvision(name: str) -> None:
    assert n_params(on_meta(getattr(torchvision.models, name))) == PARAMS[name]


@pytest.mark.parametrize("name", TIMM)
def test_parameter_count_matches_timm(name: str) -> None:
    assert n_params(on_meta(lambda: timm.create_model(name, pretrained=False))) == PARAMS[name]


@pytest.mark.parametrize("name", TORCHVISION)
def test_state_dict_layout_matches_torchvision(name: str) -> None:
    ours = on_meta(lambda: resnexus.create_model(name)).state_dict()
    theirs = on_meta(getattr(torchvision.models, name)).state_dict()
    assert list(ours) == list(theirs)  # same keys, same order
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_state_dict_layout_matches_timm_resnext101_32x4d() -> None:
    ours = on_meta(lambda: resnexus.create_model("resnext101_32x4d")).state_dict()
    theirs = on_meta(lambda: timm.create_model("resnext101_32x4d")).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


# -- loading torchvision / timm weights ----------------------------------------------------------
def _compare_logits(reference: nn.Module, name: str, tmp_path: Path, **overrides: Any) -> float:
    """Randomize ``reference``, save it to a .pth, load it with create_model(weights=...)."""
    reference = randomize_(reference, seed=7).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    ours = resnexus.create_model(name, weights=path, **overrides).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert got.shape == expected.shape == (1, 1000)
    assert expected.abs().max() > 1e-2  # the comparison is not between two near-zero vectors
    return max_abs_diff(got, expected)


def _slow_if_big(names: list[str]) -> list[Any]:
    return [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in names]


@pytest.mark.parametrize("name", _slow_if_big(TORCHVISION))
def test_torchvision_weights_give_same_logits(name: str, tmp_path: Path) -> None:
    assert _compare_logits(getattr(torchvision.models, name)(), name, tmp_path) < 1e-4


@pytest.mark.parametrize("name", _slow_if_big(["resnet18", "resnet50", "resnext50_32x4d", "resnext101_32x4d"]))
def test_timm_weights_give_same_logits(name: str, tmp_path: Path) -> None:
    assert _compare_logits(timm.create_model(name, pretrained=False), name, tmp_path) < 1e-4


# -- overrides -------------------------------------------------------------------------------------
def test_cardinality_and_width_overrides(tmp_path: Path) -> None:
    """C=8, d=14 (Table 2's complexity-preserving pair), checked three ways."""
    expected = formula_params("bottleneck", (3, 4, 6, 3), cardinality=8, base_width=14)
    tv = on_meta(lambda: TVResNet(TVBottleneck, [3, 4, 6, 3], groups=8, width_per_group=14))
    assert n_params(tv) == expected == 25_603_016
    ours = on_meta(lambda: resnexus.create_model("resnext50_32x4d", cardinality=8, base_width=14))
    assert n_params(ours) == expected
    assert ours.layer1[0].conv2.groups == 8 and ours.layer1[0].conv2.in_channels == 8 * 14
    # and the weights of that torchvision model produce the same logits in ours
    tv = TVResNet(TVBottleneck, [3, 4, 6, 3], groups=8, width_per_group=14)
    diff = _compare_logits(tv, "resnext50_32x4d", tmp_path, cardinality=8, base_width=14)
    assert diff < 1e-4


def test_num_classes_and_in_chans() -> None:
    model = on_meta(lambda: resnexus.create_model("resnet50", num_classes=10, in_chans=1))
    assert n_params(model) == PARAMS["resnet50"] - 2048 * 990 - 990 - 7 * 7 * 2 * 64
    assert model.fc.out_features == 10 and model.conv1.in_channels == 1


def test_unknown_name_suggests_near_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnxt50_32x4d'.*did you mean.*resnext50_32x4d"):
        resnexus.create_model("resnxt50_32x4d")
    with pytest.raises(ValueError, match=r"did you mean.*resnet50"):
        resnexus.model_info("resnet05")


# -- features ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,channels", [("resnet18", (64, 128, 256, 512)), ("resnet50", (256, 512, 1024, 2048))])
def test_features_only(name: str, channels: tuple[int, ...]) -> None:
    extractor = resnexus.create_model(name, features_only=True).eval()
    assert tuple(extractor.channels) == channels and tuple(extractor.strides) == (4, 8, 16, 32)
    assert n_params(extractor) == PARAMS[name] - (channels[-1] * 1000 + 1000)  # no classifier
    with torch.no_grad():
        maps = extractor(torch.randn(1, 3, 64, 64))
    assert len(maps) == 4
    for fmap, c, stride in zip(maps, channels, (4, 8, 16, 32)):
        assert fmap.shape == (1, c, 64 // stride, 64 // stride)


def test_features_only_cifar_and_out_indices() -> None:
    extractor = resnexus.create_model(
        "resnext29_8x64d", num_classes=10, features_only=True, out_indices=(-1,), cardinality=2, base_width=4
    ).eval()
    assert extractor.channels == [1024] and extractor.strides == [4]
    with torch.no_grad():
        (fmap,) = extractor(torch.randn(1, 3, 32, 32))
    assert fmap.shape == (1, 1024, 8, 8)


# -- MACs ------------------------------------------------------------------------------------------
def test_macs_resnet50() -> None:
    macs = resnexus.model_info("resnet50").macs
    assert macs == 4_089_184_256  # torchvision documents 4.09 GFLOPS (multiply-adds)
    assert count_macs(on_meta(torchvision.models.resnet50).eval(), (3, 224, 224)) == macs


def test_macs_resnext50() -> None:
    macs = resnexus.model_info("resnext50_32x4d").macs
    assert macs == 4_230_479_872 and round(macs / 1e9, 2) == 4.23  # paper Table 3: 4.2 GFLOPs
    assert count_macs(on_meta(torchvision.models.resnext50_32x4d).eval(), (3, 224, 224)) == macs


@pytest.mark.parametrize(
    "name", ["resnet18", "resnet34", "resnet101", "resnet152", "resnext101_32x4d", "resnext101_64x4d"]
)
def test_macs_close_to_paper(name: str) -> None:
    """The papers count one multiply-add as one FLOP and round: within 10% (ResNet's "3.6" / "3.8"
    are known to be counted slightly differently from torchvision's 3.67 / 4.09)."""
    info = resnexus.model_info(name)
    assert info.reference is not None and info.reference.gflops is not None
    assert abs(info.macs / 1e9 - info.reference.gflops) / info.reference.gflops < 0.10


# -- CIFAR ResNets (ResNet paper, Section 4.2: 6n+2 layers, 16-32-64, option-A shortcuts) --------
CIFAR_RESNETS = {  # name: (n, parameters with 10 classes)
    "resnet20_cifar": (3, 269_722),
    "resnet32_cifar": (5, 464_154),
    "resnet44_cifar": (7, 658_586),
    "resnet56_cifar": (9, 853_018),
    "resnet110_cifar": (18, 1_727_962),
}


def _cifar_resnet_params(n: int, classes: int = 10) -> int:
    """Independent count: 3x3 convs without bias + BN (2 per channel), zero-padding shortcuts."""
    total = 3 * 16 * 9 + 2 * 16  # stem conv + BN
    in_ch = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += in_ch * width * 9 + 2 * width + width * width * 9 + 2 * width
            in_ch = width
    return total + 64 * classes + classes


@pytest.mark.parametrize("name", list(CIFAR_RESNETS))
def test_cifar_resnet_parameter_counts(name):
    n, expected = CIFAR_RESNETS[name]
    assert _cifar_resnet_params(n) == expected
    assert resnexus.model_info(name).params == expected


def test_cifar_resnet_zero_pad_shortcut_is_parameter_free_and_exact():
    from resnexus.models.blocks import ZeroPadShortcut

    x = torch.randn(2, 16, 8, 8)
    y = ZeroPadShortcut(32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2]) and not y[:, 16:].any()
    model = resnexus.create_model("resnet20_cifar", num_classes=10)
    assert isinstance(model.layer2[0].downsample, ZeroPadShortcut)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
