"""Keras ResNetV2 (pre-activation, keras.applications layout): same spec rows as PyTorch, equal logits, both ways.

The builder names layers after the PyTorch modules (``stages.0.blocks.0.conv1``), not after
keras.applications (``conv2_block1_1_conv``), so the strongest check goes around the loop:
a randomised ``keras.applications.ResNet50V2`` -> its weights file -> our PyTorch loader ->
:func:`resnexus.keras.from_torch` -> the same logits as keras.applications' own model. Inputs are
56 px: 56 -> 14 after the stem -> 7 (odd) at the first strided block -> 4 -> 2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import resnexus
from resnexus import keras as rk
from resnexus.models.resnet_v2 import BN_EPS
from tests.helpers import keras_logits, keras_trainable_params, max_abs_diff, randomize_

keras = pytest.importorskip("keras")

ROWS = resnexus.list_models(family="resnet_v2")
SHALLOW = {"depths": (2, 1, 1, 2)}  # a conv-shortcut block, a max-pool-shortcut block, an identity block
SIZE = 56


def _input(size: int = SIZE, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _check_both_ways(source: torch.nn.Module, **overrides) -> keras.Model:
    """from_torch gives the PyTorch logits; to_torch gives back the same state dict."""
    source.eval()
    x = _input()
    with torch.no_grad():
        expected = source(x)
    assert expected.abs().max() > 1e-2  # not a degenerate comparison
    model = rk.from_torch(source, input_shape=(SIZE, SIZE, 3))
    assert max_abs_diff(keras_logits(model, x), expected) < 1e-4
    back = rk.to_torch(model, **overrides)
    ours, theirs = source.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        assert torch.equal(theirs[key], value), key
    return model


def test_every_resnet_v2_row_has_a_keras_builder() -> None:
    assert ROWS == ["resnet101v2", "resnet152v2", "resnet50v2"]
    assert set(ROWS) <= set(rk.list_keras_models())


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ROWS if n != "resnet50v2"])  # resnet50v2: the test at the end
def test_keras_parameter_count_equals_pytorch(name: str) -> None:
    model = rk.create_model(name, num_classes=7, input_shape=(32, 32, 3))
    assert keras_trainable_params(model) == resnexus.model_info(name, num_classes=7).params
    assert model.name == name and model.output_shape == (None, 7)


@pytest.mark.parametrize("name", ROWS)
def test_from_torch_gives_pytorch_logits(name: str) -> None:
    source = randomize_(resnexus.create_model(name, num_classes=5, **SHALLOW), seed=3)
    model = _check_both_ways(source, **SHALLOW)
    assert model.name == name


def test_one_block_stages_and_no_classifier() -> None:
    """A single block per stage is both the projecting and the strided one; num_classes=0 gives features."""
    overrides = {"depths": (1, 1, 1, 1)}
    source = randomize_(resnexus.create_model("resnet50v2", num_classes=0, **overrides), seed=4)
    model = _check_both_ways(source, **overrides)
    assert model.output_shape == (None, 2048)


def test_layout_follows_the_pytorch_model() -> None:
    """Biased stem conv, zero-padded stem pool, stride on a stage's last block, biased 1x1s, Keras' epsilon."""
    model = rk.create_model("resnet50v2", num_classes=3, input_shape=(SIZE, SIZE, 3))
    layer = model.get_layer
    assert layer("stem_conv").use_bias and layer("stem_conv").strides == (2, 2)
    assert isinstance(layer("stem_pad"), keras.layers.ZeroPadding2D)
    assert isinstance(layer("stem_pool"), keras.layers.MaxPooling2D)
    names = {x.name for x in model.layers}
    norms = [x for x in model.layers if isinstance(x, keras.layers.BatchNormalization)]
    assert norms and not any(x.name.startswith("stem") for x in norms)  # no norm in the stem
    assert all(x.epsilon == BN_EPS for x in norms)
    for stage, depth in enumerate((3, 4, 6, 3)):
        first, last = f"stages_{stage}_blocks_0", f"stages_{stage}_blocks_{depth - 1}"
        assert layer(f"{first}_shortcut").use_bias and layer(f"{first}_conv3").use_bias
        assert not layer(f"{first}_conv1").use_bias and not layer(f"{first}_conv2").use_bias
        if stage < 3:
            assert isinstance(layer(f"{last}_shortcut"), keras.layers.MaxPooling2D)
            assert layer(f"{last}_conv2").strides == (2, 2) and layer(f"{first}_conv2").strides == (1, 1)
        else:
            assert f"{last}_shortcut" not in names and layer(f"{last}_conv2").strides == (1, 1)
    # strides 8, 16, 32, 32 at the stage outputs, as keras.applications
    sizes = [model.get_layer(f"stages_{s}_blocks_{d - 1}_add").output.shape[1] for s, d in enumerate((3, 4, 6, 3))]
    assert sizes == [7, 4, 2, 2]


def test_only_form_c() -> None:
    with pytest.raises(ValueError, match="block_form 'split'"):
        rk.create_model("resnet50v2", input_shape=(32, 32, 3), block_form="split", depths=(1, 1, 1, 1))


def _randomize_keras_(model: keras.Model, seed: int) -> None:
    """Seeded random values for every weight of a Keras model, BN moving statistics included."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        shape = tuple(w.shape)
        if w.path.endswith("moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif w.path.endswith("gamma"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif len(shape) > 1:  # kernels, scaled by fan-in so activations stay of order one
            value = rng.standard_normal(shape) * 0.5 / np.prod(shape[:-1]) ** 0.5
        else:
            value = 0.1 * rng.standard_normal(shape)
        w.assign(value.astype("float32"))


@pytest.mark.slow
def test_real_depth_equals_keras_applications(tmp_path) -> None:
    """keras.applications.ResNet50V2 -> weights file -> PyTorch -> from_torch: keras.applications' logits."""
    reference = keras.applications.ResNet50V2(weights=None, input_shape=(SIZE, SIZE, 3), classifier_activation=None)
    _randomize_keras_(reference, seed=0)
    path = tmp_path / "resnet50v2.weights.h5"
    reference.save_weights(path)
    source = resnexus.create_model("resnet50v2", weights=path).eval()
    x = _input()
    expected = keras_logits(reference, x)
    assert expected.abs().max() > 1e-2
    model = _check_both_ways(source)  # our Keras model = PyTorch, and back
    assert max_abs_diff(keras_logits(model, x), expected) < 1e-4
    assert keras_trainable_params(model) == keras_trainable_params(reference) == 25_568_360
    assert keras_trainable_params(model) == resnexus.model_info("resnet50v2", num_classes=1000).params
    assert model.count_params() == reference.count_params()  # the BN moving statistics too
