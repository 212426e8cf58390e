"""Keras ResNet / ResNeXt (ImageNet and CIFAR rows): the same spec rows as PyTorch, equal logits, weights both ways.

Every row is built at its real depth once (parameter count equal to PyTorch's); the logit checks
use random weights and random BatchNorm statistics, fp32, eval mode, so a swapped or missing
tensor shows. The two ResNeXt block forms of the write-up (grouped convolution; split + C
convolutions + concatenate) are proven equal with the same weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import resnexus
from resnexus import keras as rk
from resnexus.models import get_entry
from tests.helpers import keras_logits, keras_trainable_params, max_abs_diff, randomize_

keras = pytest.importorskip("keras")

ROWS = [n for n in resnexus.list_models() if get_entry(n).builder.__name__ == "ResNet"]
SHALLOW = {"layers": (1, 1, 1, 1)}


def _size(name: str) -> int:
    return get_entry(name).input_size[1] if get_entry(name).input_size[1] <= 32 else 64


def test_every_resnet_row_has_a_keras_builder() -> None:
    assert set(ROWS) <= set(rk.list_keras_models())
    assert "resnext50_32x4d" in ROWS and "resnext29_8x64d" in ROWS and "resnet20_cifar" in ROWS


@pytest.mark.parametrize("name", ROWS)
def test_keras_parameter_count_equals_pytorch(name: str) -> None:
    torch_params = resnexus.model_info(name, num_classes=7).params
    model = rk.create_model(name, num_classes=7)
    assert keras_trainable_params(model) == torch_params
    assert model.name == name and model.output_shape == (None, 7)


def test_resnext50_parameter_count_is_the_published_one() -> None:
    """25,028,904 parameters with 1000 classes (torchvision's ResNeXt-50 32x4d)."""
    assert keras_trainable_params(rk.create_model("resnext50_32x4d")) == 25_028_904


def _shallow(name: str) -> dict:
    depth = len(get_entry(name).config["layers"])
    return {"layers": (1,) * depth} if depth == 4 or name.startswith("resnext29") else {}


@pytest.mark.parametrize("name", ROWS)
def test_from_torch_gives_pytorch_logits(name: str) -> None:
    overrides = _shallow(name)  # every block kind, stem and shortcut, one block per stage
    size = _size(name)
    source = randomize_(resnexus.create_model(name, num_classes=5, **overrides), seed=3).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = source(x)
    model = rk.from_torch(source, input_shape=(size, size, 3))
    assert max_abs_diff(keras_logits(model, x), expected) < 1e-4
    back = rk.to_torch(model)  # the overrides travel with the Keras model
    for key, value in source.state_dict().items():
        if value.dtype.is_floating_point:
            assert torch.equal(back.state_dict()[key], value), key


def test_resnext50_full_depth_and_odd_input_size() -> None:
    """The real ResNeXt-50 at an input whose maps have odd sizes (the strided paddings must match PyTorch's)."""
    source = randomize_(resnexus.create_model("resnext50_32x4d", num_classes=3), seed=1).eval()
    x = torch.randn(1, 3, 75, 75, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = source(x)
    assert max_abs_diff(keras_logits(rk.from_torch(source, input_shape=(75, 75, 3)), x), expected) < 1e-4


def test_resnet_d_variant_average_pool_shortcut() -> None:
    """A deep stem + avg-pool shortcut (ResNet-D) at a size where the pools see odd maps."""
    overrides = {"layers": (1, 1, 1, 1), "stem": "deep", "avg_down": True}
    source = randomize_(resnexus.create_model("resnet50", num_classes=4, **overrides), seed=5).eval()
    x = torch.randn(2, 3, 72, 72, generator=torch.Generator().manual_seed(1))  # 18 -> 9 -> 5 -> 3
    with torch.no_grad():
        expected = source(x)
    assert max_abs_diff(keras_logits(rk.from_torch(source, input_shape=(72, 72, 3)), x), expected) < 1e-4


def test_the_two_resnext_block_forms_agree() -> None:
    """Grouped Conv2D (form c) and split + 32 convolutions + concatenate hold the same numbers."""
    source = randomize_(resnexus.create_model("resnext50_32x4d", num_classes=3, **SHALLOW), seed=4).eval()
    grouped = rk.from_torch(source, input_shape=(48, 48, 3))
    split = rk.from_torch(source, input_shape=(48, 48, 3), block_form="split")
    assert "layer1_0_conv2_g31" in [layer.name for layer in split.layers]
    assert "layer1_0_conv2" not in [layer.name for layer in split.layers]
    assert keras_trainable_params(split) == keras_trainable_params(grouped)
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    assert max_abs_diff(keras_logits(split, x), keras_logits(grouped, x)) < 1e-5
    # and the converter between them, both ways
    again = rk.convert_block_form(split, "c")
    assert max_abs_diff(keras_logits(again, x), keras_logits(grouped, x)) < 1e-5
    kernel = grouped.get_layer("layer2_0_conv2").get_weights()[0]  # (3, 3, d, C*d)
    d = kernel.shape[2]
    assert np.array_equal(split.get_layer("layer2_0_conv2_g5").get_weights()[0], kernel[..., 5 * d : 6 * d])


def test_pytorch_forms_a_and_b_reach_keras() -> None:
    """A PyTorch model in form (a) is converted to (c) on the way, with equal logits."""
    source = randomize_(resnexus.create_model("resnext50_32x4d", num_classes=3, block_form="a", **SHALLOW), seed=2)
    source.eval()
    x = torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = source(x)
    assert max_abs_diff(keras_logits(rk.from_torch(source, input_shape=(40, 40, 3)), x), expected) < 1e-4


def test_keras_file_round_trip_keeps_outputs_and_metadata(tmp_path) -> None:
    """The split form (custom layers) and a CIFAR zero-pad shortcut reload from a .keras file."""
    for name, form in (("resnext29_8x64d", "split"), ("resnet20_cifar", "c")):
        model = rk.create_model(name, num_classes=3, block_form=form, layers=(1, 1, 1))
        path = rk.save_keras(model, tmp_path / f"{name}.keras", {"classes": ["a", "b", "c"]})
        loaded, meta = rk.load_keras(path)
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        assert max_abs_diff(keras_logits(loaded, x), keras_logits(model, x)) == 0.0
        assert meta == {"classes": ["a", "b", "c"]} and loaded.name == name
        assert loaded.resnexus_config == {"block_form": form, "layers": [1, 1, 1]}  # what to_torch rebuilds with
        assert max_abs_diff(keras_logits(loaded, x), rk.to_torch(loaded)(x).detach()) < 1e-4
        assert not list(tmp_path.glob(".*"))  # the temporary file was renamed, not left behind


def test_keras_training_mode_batch_norm_matches_pytorch() -> None:
    """In training mode both frameworks normalise by the batch statistics: equal outputs."""
    source = randomize_(resnexus.create_model("resnet18", num_classes=3, **SHALLOW), seed=6).train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = rk.from_torch(source, input_shape=(32, 32, 3))
    with torch.no_grad():
        expected = source(x)
    assert max_abs_diff(keras_logits(model, x, training=True), expected) < 1e-4


def test_create_model_with_weights_goes_through_the_pytorch_loader(tmp_path) -> None:
    source = randomize_(resnexus.create_model("resnet18", num_classes=4), seed=7).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = rk.create_model("resnet18", num_classes=4, input_shape=(32, 32, 3), weights=str(path))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = source(x)
    assert max_abs_diff(keras_logits(model, x), expected) < 1e-4


def test_mismatched_models_are_refused_by_name() -> None:
    keras_model = rk.create_model("resnet18", num_classes=3, input_shape=(32, 32, 3))
    with pytest.raises(rk.ConversionError, match=r"conv1: Keras shape \(64, 3, 7, 7\) vs PyTorch \(32, 3, 7, 7\)"):
        rk.to_torch(keras_model, stem_width=32)
    with pytest.raises(rk.ConversionError, match=r"'layer1\.1\.conv1' has no Keras layer"):
        rk.to_torch(
            rk.create_model("resnet18", num_classes=3, input_shape=(32, 32, 3), layers=(1, 1, 1, 1)),
            layers=(2, 2, 2, 2),
        )
    with pytest.raises(rk.ConversionError, match="model_name"):
        rk.from_torch(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="block_form 'b'"):
        rk.create_model("resnext50_32x4d", block_form="b")
