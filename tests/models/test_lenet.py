"""LeNet-5 baseline: exact parameter count at 256x256, shapes, and the input-size dependence."""

from __future__ import annotations

import pytest
import torch

import resnexus
from resnexus.models.lenet import LeNet, lenet_feature_size


def lenet_params(img_size: int, num_classes: int, in_chans: int = 3) -> int:
    """Hand count: two unpadded 5x5 convs (+bias), each halved by a 2x2 pool, then 120-84-n fcs."""
    side = ((img_size - 4) // 2 - 4) // 2
    conv1 = 6 * in_chans * 25 + 6
    conv2 = 16 * 6 * 25 + 16
    fc1 = 16 * side * side * 120 + 120
    fc2 = 120 * 84 + 84
    head = 84 * num_classes + num_classes
    return conv1 + conv2 + fc1 + fc2 + head


def test_param_count_exact() -> None:
    assert lenet_params(256, 1000) == 7_242_476
    assert lenet_params(256, 10) == 7_158_326
    assert lenet_params(32, 10) == 62_006  # LeNet-5 sized at 32x32 (3-channel input, 10 classes)
    for n in (10, 1000):
        model = resnexus.models.create_model("lenet", num_classes=n)
        assert sum(p.numel() for p in model.parameters()) == lenet_params(256, n)
    info = resnexus.models.model_info("lenet")
    assert info.params == 7_242_476 and info.input_size == (3, 256, 256) and info.num_classes == 1000


def test_feature_size() -> None:
    assert lenet_feature_size(256) == 61
    assert lenet_feature_size(32) == 5  # the paper's 16 x 5 x 5 into C5
    with pytest.raises(ValueError):
        lenet_feature_size(12)


def test_output_shapes() -> None:
    torch.manual_seed(0)
    model = resnexus.models.create_model("lenet", num_classes=10).eval()
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 16, 61, 61)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 84)
        assert model(x).shape == (2, 10)
    assert model.feature_info == []
    with pytest.raises(NotImplementedError):
        model.forward_stages(x)


def test_img_size_override_and_reset_classifier() -> None:
    model = resnexus.models.create_model("lenet", num_classes=10, img_size=32)
    assert isinstance(model, LeNet)
    assert sum(p.numel() for p in model.parameters()) == lenet_params(32, 10)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    model.reset_classifier(5)
    assert model.fc.out_features == 5 and model.fc.in_features == 84
