"""models/layers.py: freezing the first stages for fine-tuning."""

from __future__ import annotations

import pytest
import torch

import resnexus
from resnexus.models.layers import freeze_stages

SMALL = dict(layers=(1, 1, 1, 1))


def _tiny_resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return resnexus.create_model("resnet18", num_classes=3, **SMALL)


def test_freezes_exactly_the_stem_and_the_first_stages():
    model = _tiny_resnet18()
    frozen = freeze_stages(model, 2)
    expected = [n for n, _ in model.named_parameters() if n.split(".")[0] in {"conv1", "bn1", "layer1", "layer2"}]
    assert frozen == expected
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == expected


def test_frozen_part_stays_put_while_the_rest_trains():
    model = _tiny_resnet18()
    freeze_stages(model, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    stem_and_layer1 = {k for k in before if k.split(".")[0] in {"conv1", "bn1", "layer1"}}
    assert not changed & stem_and_layer1  # weights *and* BatchNorm statistics (eval mode) unchanged
    assert {"layer2.0.conv1.weight", "layer2.0.bn1.running_mean", "fc.weight"} <= changed
    assert model.bn1.training is False and model.layer2[0].bn1.training is True


def test_state_dict_is_that_of_an_ordinary_model():
    model = _tiny_resnet18()
    freeze_stages(model, 3)
    fresh = resnexus.create_model("resnet18", num_classes=3, **SMALL)
    fresh.load_state_dict(model.state_dict())  # strict: same keys, same shapes


def test_zero_stages_freezes_nothing_and_too_many_is_refused():
    model = _tiny_resnet18()
    assert freeze_stages(model, 0) == []
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="cannot freeze 5 stages: ResNet has 4"):
        freeze_stages(model, 5)


@pytest.mark.parametrize(
    ("name", "first_frozen", "last_frozen"),
    [
        ("densenet121", "features.conv0.weight", "features.transition1.norm.bias"),
        ("resnet50v2", "stem.conv.weight", "stages.0.blocks.2.conv3.bias"),
    ],
)
def test_other_families_freeze_along_their_feature_info(name, first_frozen, last_frozen):
    with torch.device("meta"):
        model = resnexus.create_model(name, num_classes=2)
    frozen = freeze_stages(model, 1)
    assert (frozen[0], frozen[-1]) == (first_frozen, last_frozen)
