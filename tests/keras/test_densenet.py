"""Keras DenseNet-BC (ImageNet and CIFAR rows): the same spec rows as PyTorch, equal logits, weights both ways.

Every row is built at its real depth (trainable parameters equal to PyTorch's). The logit checks
use random weights and random BatchNorm statistics, fp32, eval mode: densenet121 and the CIFAR
DenseNet-BC-100 at full depth, the deeper ImageNet rows with fewer layers per block (their own
growth rate and stem width).
"""

from __future__ import annotations

import pytest
import torch

import resnexus
from resnexus import keras as rk
from resnexus.models import get_entry
from tests.helpers import keras_logits, keras_trainable_params, max_abs_diff, randomize_

keras = pytest.importorskip("keras")

ROWS = [n for n in resnexus.list_models() if get_entry(n).builder.__name__ == "DenseNet"]
REDUCED = {"block_config": (2, 3, 4, 2)}  # for the logit check of the deep ImageNet rows


def _size(name: str) -> int:
    return 32 if get_entry(name).config.get("stem") == "cifar" else 64


def _overrides(name: str) -> dict:
    return {} if name in ("densenet121", "densenet_bc_100_12") else REDUCED


def _check_logits_and_back(name: str, seed: int = 3, **overrides) -> keras.Model:
    size = _size(name)
    source = randomize_(resnexus.create_model(name, num_classes=5, **overrides), seed=seed).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = source(x)
    model = rk.from_torch(source, input_shape=(size, size, 3))
    assert max_abs_diff(keras_logits(model, x), expected) < 1e-4
    back = rk.to_torch(model, **overrides)
    assert back.state_dict().keys() == source.state_dict().keys()
    for key, value in source.state_dict().items():
        if value.dtype.is_floating_point:
            assert torch.equal(back.state_dict()[key], value), key
    return model


def test_every_densenet_row_has_a_keras_builder() -> None:
    assert set(ROWS) == {"densenet121", "densenet161", "densenet169", "densenet201", "densenet_bc_100_12"}
    assert set(ROWS) <= set(rk.list_keras_models())


@pytest.mark.parametrize("name", ROWS)
def test_keras_parameter_count_equals_pytorch_at_full_depth(name: str) -> None:
    torch_params = resnexus.model_info(name, num_classes=7).params
    size = _size(name)
    model = rk.create_model(name, num_classes=7, input_shape=(size, size, 3))
    assert keras_trainable_params(model) == torch_params
    assert model.name == name and model.output_shape == (None, 7)


def test_densenet121_parameter_count_is_torchvisions() -> None:
    """7,978,856 parameters with 1000 classes (torchvision's DenseNet-121)."""
    assert keras_trainable_params(rk.create_model("densenet121", input_shape=(64, 64, 3))) == 7_978_856


@pytest.mark.parametrize("name", ROWS)
def test_from_torch_gives_pytorch_logits_and_to_torch_gives_the_weights_back(name: str) -> None:
    _check_logits_and_back(name, **_overrides(name))


def test_torchvision_module_names() -> None:
    names = {layer.name for layer in rk.create_model("densenet121", num_classes=3, input_shape=(64, 64, 3)).layers}
    for expected in (
        "features_conv0",
        "features_norm0",
        "features_denseblock1_denselayer1_norm1",
        "features_denseblock1_denselayer1_conv1",
        "features_denseblock1_denselayer6_norm2",
        "features_denseblock4_denselayer16_conv2",
        "features_transition1_norm",
        "features_transition3_conv",
        "features_norm5",
        "classifier",
    ):
        assert expected in names, expected


def test_cifar_stem_is_one_convolution() -> None:
    model = rk.create_model("densenet_bc_100_12", num_classes=10)
    names = [layer.name for layer in model.layers]
    assert "features_norm0" not in names and "features_pool0" not in names
    conv0 = model.get_layer("features_conv0")
    assert conv0.kernel_size == (3, 3) and conv0.strides == (1, 1) and conv0.filters == 24
    # DenseNet-BC-100-12: 24 + 16*12 = 216 -> 108, 108 + 192 = 300 -> 150, 150 + 192 = 342 channels
    assert model.get_layer("features_transition1_conv").filters == 108
    assert model.get_layer("features_transition2_conv").filters == 150
    assert model.get_layer("features_norm5").gamma.shape == (342,)


def test_keras_layout_epsilon_compression_and_bottleneck_overrides() -> None:
    """bn_eps (the Keras-applications epsilon), another compression and bottleneck width reach Keras."""
    overrides = dict(block_config=(2, 3), bn_eps=1.001e-5, compression=0.6, bn_size=2, growth_rate=8)
    model = _check_logits_and_back("densenet_bc_100_12", seed=4, **overrides)
    assert model.get_layer("features_denseblock1_denselayer2_norm1").epsilon == pytest.approx(1.001e-5)
    assert model.get_layer("features_denseblock1_denselayer1_conv1").filters == 16  # bn_size * growth_rate
    assert model.get_layer("features_transition1_conv").filters == int((24 + 2 * 8) * 0.6)


def test_dropout_and_memory_efficient_rows_convert() -> None:
    """drop_rate adds dropout after each dense layer (off in eval: equal logits); memory_efficient
    is a PyTorch training-memory mode with the same numbers."""
    overrides = dict(block_config=(2, 2), drop_rate=0.2, memory_efficient=True)
    model = _check_logits_and_back("densenet_bc_100_12", seed=5, **overrides)
    drop = model.get_layer("features_denseblock2_denselayer2_drop")
    assert isinstance(drop, keras.layers.Dropout) and drop.rate == pytest.approx(0.2)


def test_training_mode_batch_norm_matches_pytorch() -> None:
    source = randomize_(resnexus.create_model("densenet121", num_classes=3, **REDUCED), seed=6).train()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    model = rk.from_torch(source, input_shape=(64, 64, 3))
    with torch.no_grad():
        expected = source(x)
    assert max_abs_diff(keras_logits(model, x, training=True), expected) < 1e-4


def test_headless_model_gives_the_pooled_features() -> None:
    source = randomize_(resnexus.create_model("densenet_bc_100_12", num_classes=0, block_config=(2, 2)), seed=7)
    source.eval()
    model = rk.from_torch(source, input_shape=(32, 32, 3))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = source(x)
    assert model.output_shape == (None, source.num_features)
    assert max_abs_diff(keras_logits(model, x), expected) < 1e-4


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="stem"):
        rk.create_model("densenet121", stem="deep")
    with pytest.raises(ValueError, match="compression"):
        rk.create_model("densenet121", compression=0.0)
    with pytest.raises(ValueError, match="block form"):
        rk.create_model("densenet121", block_form="split")
