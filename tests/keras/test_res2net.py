"""Keras Res2Net / Res2NeXt (v1b included): the same spec rows as PyTorch, equal logits, weights both ways.

Every row is built at its real depth once (trainable parameters equal to PyTorch's). The logit
checks use random weights and random BatchNorm statistics (fp32, eval mode) at 56 px, where
stage 2's 7x7 maps meet the strided 3x3s, the stage-first blocks' 3x3 average pool and v1b's
ceil-mode shortcut pool at an odd size. Each row runs with two blocks in stage 1, so both block
kinds appear (a stage's first block: splits convolved apart, last split pooled; the others:
the hierarchical running sum); the rows that carry a feature of their own (deep stem and
average-pool shortcut, cardinality, scale 8, scale 2) also run at their real depth.
"""

from __future__ import annotations

import pytest
import torch

import resnexus
from resnexus import keras as rk
from resnexus.models import get_entry
from tests.helpers import keras_logits, keras_trainable_params, max_abs_diff, randomize_

keras = pytest.importorskip("keras")

ROWS = resnexus.list_models(family="res2net")
SHALLOW = {"layers": (2, 1, 1, 1)}  # block 2 of stage 1 runs the hierarchy
# a feature of their own each: v1b stem + avg-pool shortcuts, cardinality 8, scale 8 (w 14), scale 2 (w 48)
REAL_DEPTH = ["res2net50_v1b_26w_4s", "res2next50", "res2net50_14w_8s", "res2net50_48w_2s"]
SIZE = 56  # 56 -> 14 after the stem -> 7 (odd) -> 4 -> 2


def _input(size: int = SIZE, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _check_both_ways(name: str, num_classes: int, seed: int, **overrides) -> tuple[keras.Model, torch.nn.Module]:
    """Random PyTorch weights -> from_torch: equal logits; -> to_torch: equal state dict. Both models back."""
    source = randomize_(resnexus.create_model(name, num_classes=num_classes, **overrides), seed=seed).eval()
    x = _input()
    with torch.no_grad():
        expected = source(x)
    assert expected.abs().max() > 1e-2  # not a degenerate comparison
    model = rk.from_torch(source, input_shape=(SIZE, SIZE, 3))
    assert model.name == name
    assert max_abs_diff(keras_logits(model, x), expected) < 1e-4
    back = rk.to_torch(model, **overrides)
    ours, theirs = source.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        assert torch.equal(theirs[key], value), key
    return model, source


def test_every_res2net_row_has_a_keras_builder() -> None:
    assert len(ROWS) == 9 and {"res2next50", "res2net101_v1b_26w_4s", "res2net50_48w_2s"} <= set(ROWS)
    assert set(ROWS) <= set(rk.list_keras_models())
    assert set(REAL_DEPTH) <= set(ROWS)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ROWS if n not in REAL_DEPTH])
def test_keras_parameter_count_equals_pytorch(name: str) -> None:
    """The rows not built at real depth below (those count their parameters there)."""
    model = rk.create_model(name, num_classes=7, input_shape=(32, 32, 3))
    assert keras_trainable_params(model) == resnexus.model_info(name, num_classes=7).params
    assert model.name == name and model.output_shape == (None, 7)


@pytest.mark.parametrize("name", ROWS)
def test_from_torch_gives_pytorch_logits(name: str) -> None:
    model, _ = _check_both_ways(name, 5, seed=3, **SHALLOW)
    names = {layer.name for layer in model.layers}
    scale = get_entry(name).config["scale"]
    assert f"layer1_1_convs_{scale - 2}" in names and f"layer1_1_convs_{scale - 1}" not in names
    assert "layer1_0_pool" in names and "layer1_1_pool" not in names  # only a stage's first block pools
    assert ("layer1_1_sum1" in names) == (scale > 2)  # the running sum of the hierarchy


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_DEPTH)
def test_real_depth_logits_and_parameter_count(name: str) -> None:
    model, source = _check_both_ways(name, 1000, seed=1)
    assert keras_trainable_params(model) == sum(p.numel() for p in source.parameters())
    assert keras_trainable_params(model) == resnexus.model_info(name, num_classes=1000).params
    # the rest are the BN moving statistics: PyTorch's running means and variances
    stats = sum(m.num_features * 2 for m in source.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert model.count_params() - keras_trainable_params(model) == stats


def test_v1b_stem_and_shortcut_layers() -> None:
    """v1b: deep 3x3 stem (32-32-64) and average-pool shortcuts (conv + BN at downsample.1/.2)."""
    model = rk.create_model("res2net50_v1b_26w_4s", num_classes=3, input_shape=(SIZE, SIZE, 3), layers=(1, 1, 1, 1))
    names = {layer.name for layer in model.layers}
    assert {"conv1_0", "conv1_1", "conv1_3", "conv1_4", "conv1_6", "bn1"} <= names
    assert {"layer2_0_downsample_0", "layer2_0_downsample_1", "layer2_0_downsample_2"} <= names
    assert isinstance(model.get_layer("layer2_0_downsample_0"), keras.layers.AveragePooling2D)
    assert model.get_layer("conv1_6").kernel.shape == (3, 3, 32, 64)


def test_scale_one_is_the_plain_bottleneck() -> None:
    """scale=1 (an override, no row): one 3x3 carrying the stride, stored as convs.0, no split and no pool."""
    model, _ = _check_both_ways("res2net50_26w_4s", 3, seed=4, scale=1, layers=(2, 1, 1, 1))
    names = {layer.name for layer in model.layers}
    assert "layer2_0_convs_0" in names and "layer2_0_pool" not in names and "layer1_0_split0" not in names


def test_res2next_split_form_holds_the_same_numbers() -> None:
    """Res2NeXt's grouped 3x3s written as split + 8 convolutions + concatenate: same logits, back and forth."""
    overrides = {"layers": (2, 1, 1, 1)}
    source = randomize_(resnexus.create_model("res2next50", num_classes=3, **overrides), seed=5).eval()
    grouped = rk.from_torch(source, input_shape=(SIZE, SIZE, 3))
    split = rk.from_torch(source, input_shape=(SIZE, SIZE, 3), block_form="split")
    names = {layer.name for layer in split.layers}
    assert "layer1_1_convs_2_g7" in names and "layer1_1_convs_2" not in names
    assert keras_trainable_params(split) == keras_trainable_params(grouped)
    x = _input()
    with torch.no_grad():
        expected = source(x)
    assert max_abs_diff(keras_logits(split, x), expected) < 1e-4
    assert max_abs_diff(keras_logits(rk.convert_block_form(split, "c"), x), keras_logits(grouped, x)) < 1e-5
    back = rk.to_torch(split, **overrides)
    for key, value in source.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_fresh_model_features_and_zero_init() -> None:
    """num_classes=0 gives the pooled features; zero_init_last starts every bn3 scale at zero."""
    model = rk.create_model(
        "res2net50_26w_4s", num_classes=0, input_shape=(32, 32, 3), layers=(1, 1, 1, 1), zero_init_last=True
    )
    assert model.output_shape == (None, 2048)
    assert not model.get_layer("layer3_0_bn3").get_weights()[0].any()
    assert model.get_layer("layer3_0_bns_0").get_weights()[0].all()


def test_keras_file_round_trip(tmp_path) -> None:
    """A v1b Res2Net (ChannelSlice splits, padded average pools) reloads from a .keras file: equal outputs."""
    source = randomize_(resnexus.create_model("res2net50_v1b_26w_4s", num_classes=4, layers=(2, 1, 1, 1)), seed=6)
    model = rk.from_torch(source.eval(), input_shape=(SIZE, SIZE, 3))
    path = tmp_path / "res2net.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode stays on: no Lambda layers
    x = _input()
    assert loaded.name == "res2net50_v1b_26w_4s"
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    assert max_abs_diff(keras_logits(loaded, x), keras_logits(model, x)) == 0.0
