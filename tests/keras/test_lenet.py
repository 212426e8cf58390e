"""Keras LeNet: the same spec row as PyTorch, equal logits, weights both ways.

The point of interest is the flatten before ``fc1``: the Keras builder permutes the map to
channels-first first, so ``fc1``'s kernel is PyTorch's weight transposed with no reordering.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import resnexus
from resnexus import keras as rk
from tests.helpers import keras_logits, keras_trainable_params, max_abs_diff, randomize_

keras = pytest.importorskip("keras")


def test_lenet_row_has_a_keras_builder_with_the_documented_parameter_count() -> None:
    assert "lenet" in rk.list_keras_models()
    model = rk.create_model("lenet", num_classes=10)  # the row's own 256 x 256 input
    assert model.input_shape == (None, 256, 256, 3)
    assert keras_trainable_params(model) == 7_158_326 == resnexus.model_info("lenet", num_classes=10).params


@pytest.mark.parametrize("size", [32, 45, 64])
def test_from_torch_gives_pytorch_logits_and_to_torch_gives_the_weights_back(size: int) -> None:
    """45 px gives odd maps (41 -> 20 -> 16 -> 8): both frameworks floor the pools."""
    source = randomize_(resnexus.create_model("lenet", num_classes=5, img_size=size), seed=size).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = source(x)
    model = rk.from_torch(source, input_shape=(size, size, 3))
    assert max_abs_diff(keras_logits(model, x), expected) < 1e-4
    # the flatten is in PyTorch's (C, H, W) order: fc1 is the plain transpose of the PyTorch weight
    assert np.array_equal(model.get_layer("fc1").get_weights()[0], source.fc1.weight.detach().numpy().T)
    back = rk.to_torch(model, img_size=size)
    assert back.state_dict().keys() == source.state_dict().keys()
    for key, value in source.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_activations_and_pools_are_pytorchs() -> None:
    model = rk.create_model("lenet", num_classes=3, input_shape=(32, 32, 3), img_size=32)
    for name in ("conv1", "conv2"):
        layer = model.get_layer(name)
        assert layer.kernel_size == (5, 5) and layer.padding == "valid" and layer.use_bias
    for name in ("pool1", "pool2"):
        assert model.get_layer(name).pool_size == (2, 2) and model.get_layer(name).strides == (2, 2)
    assert [model.get_layer(n).units for n in ("fc1", "fc2", "fc")] == [120, 84, 3]
    assert model.get_layer("fc1").kernel.shape == (16 * 5 * 5, 120)
    assert all(isinstance(model.get_layer(f"act{i}"), keras.layers.ReLU) for i in range(1, 5))


def test_headless_lenet_gives_the_84_features() -> None:
    source = randomize_(resnexus.create_model("lenet", num_classes=0, img_size=32), seed=1).eval()
    model = rk.from_torch(source, input_shape=(32, 32, 3))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = source(x)
    assert model.output_shape == (None, 84)
    assert max_abs_diff(keras_logits(model, x), expected) < 1e-4
    assert rk.to_torch(model, img_size=32).num_classes == 0


def test_input_size_must_be_the_img_size() -> None:
    with pytest.raises(ValueError, match=r"img_size=32 takes 32x32 inputs, got 64x64"):
        rk.create_model("lenet", input_shape=(64, 64, 3), img_size=32)
    with pytest.raises(ValueError, match="too small"):
        rk.create_model("lenet", input_shape=(12, 12, 3), img_size=12)
