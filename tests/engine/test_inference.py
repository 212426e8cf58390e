"""Inference preparation: BatchNorm folded into convolutions, equal outputs, predict's probabilities."""

from __future__ import annotations

import csv

import pytest
import torch

import resnexus
from resnexus.engine import predict
from resnexus.engine.checkpoint import make_checkpoint, save_atomic
from resnexus.engine.inference import optimize_for_inference
from tests.data.images import make_tree
from tests.helpers import randomize_


def _batch_norms(model: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize(
    "name,config,size,folded_all",
    [
        ("resnet20_cifar", {}, 32, True),
        ("resnext29_8x64d", {"layers": (1, 1, 1)}, 32, True),
        ("res2net50_26w_4s", {"layers": (1, 1, 1, 1)}, 64, True),
        ("resnet50v2", {"depths": (1, 1, 1, 1)}, 64, False),  # pre-activation: only the BNs after convs fold
        ("densenet_bc_100_12", {"block_config": (2, 2, 2)}, 32, False),  # not traceable: kept as it is
        ("fractalnet20", {}, 32, False),
    ],
)
def test_folded_model_computes_the_same_logits(name, config, size, folded_all):
    model = randomize_(resnexus.create_model(name, num_classes=3, **config)).eval()  # random BN statistics
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        ready, memory_format = optimize_for_inference(model, torch.device("cpu"))
        got = ready(x.contiguous(memory_format=memory_format))
    assert memory_format == torch.channels_last
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
    before, after = _batch_norms(model), _batch_norms(ready)
    if folded_all:
        assert before > 0 and after == 0
    elif name == "resnet50v2":
        assert 0 < after < before
    else:
        assert after == before
    assert not ready.training


def test_predict_with_a_folded_model_gives_the_unfolded_probabilities(tmp_path):
    make_tree(tmp_path / "images", {"x": ["a.png", "b.png", "c.jpg"]})
    model = randomize_(resnexus.create_model("resnet20_cifar", num_classes=2)).eval()
    ckpt = make_checkpoint(
        model,
        model_name="resnet20_cifar",
        model_config={},
        class_names=["no", "yes"],
        image_size=8,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        crop_fraction=1.0,
    )
    save_atomic(ckpt, tmp_path / "model.pt")
    rows = list(csv.DictReader(predict(tmp_path / "model.pt", tmp_path / "images", tmp_path / "p.csv").open()))
    from resnexus.data import eval_transform, load_image

    tf = eval_transform(8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), crop_fraction=1.0)
    for row in rows:
        with torch.no_grad():
            probs = model(tf(load_image(row["path"]))[None]).softmax(1)[0]
        assert [float(row["prob_no"]), float(row["prob_yes"])] == pytest.approx(probs.tolist(), abs=1e-5)
