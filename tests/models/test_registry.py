"""The registry: names, the sizes it reports, and the contract every registered model keeps."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import resnexus
from resnexus.cli import main, models_table
from resnexus.models import (
    FeatureExtractor,
    ImageClassifier,
    densenet,
    fractalnet,
    get_entry,
    lenet,
    list_models,
    model_info,
    model_options,
    res2net,
    resnet,
    resnet_v2,
)

README = Path(__file__).resolve().parents[2] / "README.md"

# Every model the model-zoo issue names.
REQUIRED = """
resnet18 resnet34 resnet50 resnet101 resnet152
resnext50_32x4d resnext101_32x8d resnext101_64x4d resnext29_8x64d resnext29_16x64d
resnet50v2 resnet101v2 resnet152v2
res2net50_26w_4s res2net50_48w_2s res2net50_14w_8s res2net50_26w_6s res2net50_26w_8s
res2net101_26w_4s res2net50_v1b_26w_4s res2next50
densenet121 densenet161 densenet169 densenet201 densenet_bc_100_12
fractalnet20 lenet
""".split()  # noqa: SIM905 (laid out like the issue's list)


def test_every_required_model_is_registered():
    assert set(REQUIRED) <= set(list_models())


FAMILY_MODULES = [densenet, fractalnet, lenet, res2net, resnet, resnet_v2]


@pytest.mark.parametrize("module", FAMILY_MODULES, ids=lambda m: m.__name__.rpartition(".")[2])
def test_every_family_module_registers_its_tables_the_same_way(module):
    """``*SPECS`` tables of keyword rows, plus ``REFERENCES`` and ``EQUIVALENTS`` keyed by the same names."""
    tables = {key: table for key, table in vars(module).items() if key.endswith("SPECS")}
    assert tables, f"{module.__name__} has no spec table"
    names = [name for table in tables.values() for name in table]
    assert len(names) == len(set(names)), "a name in two tables"
    assert set(module.REFERENCES) <= set(names) and set(module.EQUIVALENTS) <= set(names)
    for table in tables.values():
        for name, row in table.items():
            entry = get_entry(name)
            assert entry.config == row
            assert isinstance(entry.builder, type) and issubclass(entry.builder, ImageClassifier)
            assert entry.builder.__module__ == module.__name__
            assert entry.reference is module.REFERENCES[name]  # every variant cites its source
            assert entry.equivalents == module.EQUIVALENTS.get(name, {})


def test_every_registered_model_comes_from_a_family_table():
    tabled = {name for m in FAMILY_MODULES for key, t in vars(m).items() if key.endswith("SPECS") for name in t}
    assert tabled == set(list_models())


def test_list_models_filters_by_pattern_and_family():
    assert list_models("resnext29*") == ["resnext29_16x64d", "resnext29_8x64d"]
    assert set(list_models(family="densenet")) >= {"densenet121", "densenet_bc_100_12"}
    assert list_models("no-such-model*") == []


def test_unknown_name_suggests_the_nearest():
    with pytest.raises(ValueError, match=r"unknown model 'resnext50_32x4'.*resnext50_32x4d"):
        resnexus.create_model("resnext50_32x4")


@pytest.mark.parametrize("name", REQUIRED)
def test_registered_model_keeps_the_contract(name):
    """Built on the meta device (no memory, no time): logits shape, stages match feature_info."""
    entry = get_entry(name)
    assert entry.reference is not None and entry.reference.source, f"{name} has no paper reference"
    with torch.device("meta"):
        model = entry.builder(num_classes=5, in_chans=3, **entry.config).eval()
    assert isinstance(model, ImageClassifier)
    x = torch.empty(2, *entry.input_size, device="meta")
    assert model(x).shape == (2, 5)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.num_features)
    if name == "lenet":
        return
    stages = model.forward_stages(x)
    assert len(stages) == len(model.feature_info) >= 3
    size = entry.input_size[1]
    for out, info in zip(stages, model.feature_info):
        assert out.shape == (2, info.channels, size // info.stride, size // info.stride), (name, info)


def test_model_info_counts_match_a_real_instance():
    info = model_info("resnet18")
    model = resnexus.create_model("resnet18")
    assert info.params == sum(p.numel() for p in model.parameters()) == 11_689_512
    assert info.macs == 1_814_073_344  # torchvision documents 1.81 GFLOPS (multiply-adds)
    assert info.reference.top1_error == pytest.approx(27.88)


def test_cifar_models_report_ten_classes_and_their_input_size():
    info = model_info("resnext29_8x64d")
    assert (info.num_classes, info.input_size, info.params) == (10, (3, 32, 32), 34_426_698)


def test_overrides_reach_the_builder():
    model = resnexus.create_model("resnext50_32x4d", num_classes=3, in_chans=1, cardinality=8, base_width=14)
    assert model.layer1[0].conv2.groups == 8 and model.layer1[0].conv2.out_channels == 8 * 14
    assert model.conv1.in_channels == 1 and model.fc.out_features == 3
    assert model.pretrained_cfg["input_size"] == (1, 224, 224)


@pytest.mark.parametrize("bad", [-3, -1, 2.0, True, "10"])
def test_a_bad_class_count_is_refused_naming_it(bad):
    """A negative count used to build a feature extractor without a word (Linear if n > 0 else Identity)."""
    message = f"invalid num_classes {bad!r}: expected a whole number >= 1 (0: no classifier"
    with pytest.raises(ValueError, match=re.escape(message)):
        resnexus.create_model("resnet20_cifar", num_classes=bad)
    with pytest.raises(ValueError, match=re.escape(message)):
        model_info("resnet20_cifar", num_classes=bad)
    model = resnexus.create_model("resnet20_cifar", num_classes=4)
    with pytest.raises(ValueError, match=re.escape(message)):
        model.reset_classifier(bad)
    assert model.fc.out_features == 4  # the model is left as it was


def test_zero_classes_is_the_model_without_a_classifier():
    model = resnexus.create_model("resnet20_cifar", num_classes=0)
    assert isinstance(model.fc, torch.nn.Identity)
    assert tuple(model(torch.randn(2, 3, 32, 32)).shape) == (2, 64)


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("resnet20_cifar", {"depth": 3}, "resnet20_cifar (resnet) has no option depth; its options: avg_down, "),
        ("res2net50_26w_4s", {"scales": 8}, "has no option scales; its options: avg_down, base_width, block,"),
        ("densenet121", {"growth": 12, "drop": 0.1}, "has no option drop, growth; its options: block_config,"),
        (
            "resnet50v2",
            {"layers": (1, 1, 1, 1)},
            "resnet50v2 (resnet_v2) has no option layers; its options: depths, widths",
        ),
        ("lenet", {"image_size": 32}, "lenet (lenet) has no option image_size; its options: img_size"),
    ],
)
def test_an_unknown_override_is_refused_with_the_options_the_family_takes(name, overrides, message):
    """Not a TypeError from the constructor: a ValueError naming the model, the bad keys and the good ones
    (a family whose constructor passes **kwargs on, Res2Net, also takes its base class's options)."""
    with torch.device("meta"), pytest.raises(ValueError) as error:
        resnexus.create_model(name, **overrides)
    assert message in str(error.value)
    assert "scale" in model_options("res2net50_26w_4s") and "stem_width" in model_options("res2net50_26w_4s")


def test_an_unknown_family_is_named_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown family 'resnets'; known families: densenet, fractalnet, lenet, "):
        list_models(family="resnets")


def test_features_only_returns_a_feature_extractor():
    extractor = resnexus.create_model("resnet18", features_only=True, out_indices=(1, 3))
    assert isinstance(extractor, FeatureExtractor)
    assert extractor.channels == [128, 512] and extractor.strides == [8, 32]
    maps = extractor(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 128, 8, 8), (1, 512, 2, 2)]
    assert not any(k.startswith("model.fc.") for k in extractor.state_dict())


def test_cli_lists_models_with_params_and_macs(capsys):
    assert main(["models", "resnext50*"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"resnext50_32x4d\s+resnext\s+25,028,904\s+4\.23", out)
    assert main(["models", "nothing-here*"]) == 2


def test_python_dash_m_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "resnexus", "models", "lenet"], capture_output=True, text=True, check=True
    )
    assert "lenet" in result.stdout


def test_model_zoo_page_is_generated_from_the_registry():
    """docs/reference/models.md gets `resnexus models --markdown`'s table when the site is built."""
    from docs.gen_pages import render

    page = (README.parent / "docs" / "reference" / "models.md").read_text(encoding="utf-8")
    assert "<!-- generated: models -->" in page
    assert models_table(list_models(), markdown=True) in render(page)
