"""Grad-CAM: the maps are the textbook computation, point at the evidence, and the files say so."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from resnexus.cli import main
from resnexus.engine import predict
from resnexus.engine.checkpoint import make_checkpoint, save_atomic
from resnexus.engine.explain import default_cam_layer, explain, grad_cam
from resnexus.engine.rundir import RunDir
from resnexus.models import create_model
from resnexus.reports.uncertainty import Calibration, fit_calibration, judge
from tests.helpers import randomize_

TINY = dict(layers=(1, 1, 1))


def _manual_grad_cam(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, layer: str) -> torch.Tensor:
    """Selvaraju et al. written out: channel weights = spatial mean of d score / d A; ReLU(sum w A)."""
    saved = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: saved.update(a=o))
    logits = model(images)
    handle.remove()
    (grads,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), saved["a"])
    cam = torch.relu((grads.mean((2, 3), keepdim=True) * saved["a"]).sum(1, keepdim=True))
    cam = nn.functional.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]


def test_grad_cam_equals_the_textbook_computation():
    model = randomize_(create_model("resnet20_cifar", num_classes=3, **TINY)).eval()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 1])
    ours = grad_cam(model, images, targets, "layer3")
    assert ours.shape == (4, 32, 32) and ours.min() >= 0 and ours.max() <= 1
    torch.testing.assert_close(ours, _manual_grad_cam(model, images, targets, "layer3"), atol=1e-5, rtol=1e-4)


class _PatchDetector(nn.Module):
    """Class 1's score is the mean red level, class 0's the mean green: evidence sits where red is."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 2, 1, bias=False)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])[:, :, None, None])
            self.fc.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def test_map_points_at_the_evidence_without_flipping_or_transposing():
    image = torch.zeros(1, 3, 32, 32)
    image[0, 0, 2:10, 20:30] = 1.0  # a red patch, top right
    cam = grad_cam(_PatchDetector(), image, torch.tensor([1]), "features")[0]
    row, col = divmod(int(cam.argmax()), 32)
    assert 2 <= row < 10 and 20 <= col < 30
    assert cam[2:10, 20:30].mean() > 0.9 and cam[20:, :10].max() == 0  # nothing where there is no red


@pytest.mark.parametrize(
    "name, size, layer",
    [
        ("resnet18", 64, "layer4"),
        ("resnet50v2", 64, "post_act"),
        ("densenet121", 64, "features.relu5"),
        ("res2net50_26w_4s", 64, "layer4"),
        ("fractalnet20", 32, "blocks.4"),
        ("lenet", 256, "conv2"),
    ],
)
def test_every_family_has_a_default_layer_and_a_map(name, size, layer):
    model = create_model(name, num_classes=2).eval()
    assert default_cam_layer(model) == layer
    cam = grad_cam(model, torch.randn(1, 3, size, size), torch.tensor([1]), layer)
    assert cam.shape == (1, size, size) and torch.isfinite(cam).all()


def _checkpoint(tmp_path: Path) -> Path:
    model = randomize_(create_model("resnet20_cifar", num_classes=2, **TINY))
    ckpt = make_checkpoint(
        model,
        model_name="resnet20_cifar",
        model_config=TINY,
        class_names=["cat", "dog"],
        image_size=32,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        crop_fraction=1.0,
    )
    return save_atomic(ckpt, tmp_path / "best.pt")


def _images(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for folder, stem in (("a", "x1"), ("b", "x1"), ("b", "x2")):  # the same stem twice
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / folder / f"{stem}.png")
    return root


def test_explain_writes_one_overlay_per_image_and_an_index(tmp_path):
    ckpt, images = _checkpoint(tmp_path), _images(tmp_path / "imgs")
    csv_path = explain(ckpt, images, tmp_path / "cam")
    rows = list(csv.DictReader(csv_path.open()))
    assert [Path(r["path"]).relative_to(images).as_posix() for r in rows] == ["a/x1.png", "b/x1.png", "b/x2.png"]
    assert [r["gradcam"] for r in rows] == ["x1_gradcam.png", "x1_2_gradcam.png", "x2_gradcam.png"]
    # the explained class is the predicted one, and it agrees with `predict` on the same checkpoint
    predicted = list(csv.DictReader(predict(ckpt, images, tmp_path / "p.csv").open()))
    assert [r["predicted"] for r in rows] == [r["target"] for r in rows] == [p["label"] for p in predicted]
    for r, p in zip(rows, predicted):
        assert float(r["probability"]) == pytest.approx(float(p[f"prob_{r['predicted']}"]), abs=1e-5)
        picture = np.asarray(Image.open(tmp_path / "cam" / r["gradcam"]))
        assert picture.ndim == 3 and picture.shape[1] > picture.shape[0] > 100  # two panels side by side
        assert r["layer"] == "layer3"


def test_explain_a_chosen_class_and_cli(tmp_path, capsys):
    ckpt, images = _checkpoint(tmp_path), _images(tmp_path / "imgs")
    assert (
        main(
            [
                "explain",
                "--checkpoint",
                str(ckpt),
                "--input",
                str(images / "b" / "x2.png"),
                "--out",
                str(tmp_path / "cam"),
                "--target",
                "dog",
            ]
        )
        == 0
    )
    assert f"index: {tmp_path / 'cam' / 'explain.csv'}" in capsys.readouterr().out
    (row,) = csv.DictReader((tmp_path / "cam" / "explain.csv").open())
    assert row["target"] == "dog" and (tmp_path / "cam" / "x2_gradcam.png").stat().st_size > 1000


def test_explain_bad_class_or_layer_is_one_clear_error(tmp_path, capsys):
    ckpt, images = _checkpoint(tmp_path), _images(tmp_path / "imgs")
    assert (
        main(
            [
                "explain",
                "--checkpoint",
                str(ckpt),
                "--input",
                str(images),
                "--out",
                str(tmp_path / "c"),
                "--target",
                "horse",
            ]
        )
        == 2
    )
    assert "'horse' is not one of the checkpoint's classes ['cat', 'dog']" in capsys.readouterr().err
    assert (
        main(
            [
                "explain",
                "--checkpoint",
                str(ckpt),
                "--input",
                str(images),
                "--out",
                str(tmp_path / "c"),
                "--layer",
                "layer9",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "no module 'layer9' in ResNet" in err and "e.g. 'layer3'" in err


def _calibrated_cv(tmp_path: Path) -> tuple[Path, Path, Calibration]:
    """(a plain checkpoint, a cross-validation directory whose refit model is the same file and
    whose calibration.json was fitted on made-up over-confident out-of-fold probabilities)."""
    plain = _checkpoint(tmp_path)
    cv = tmp_path / "cv"
    (cv / "refit" / "checkpoints").mkdir(parents=True)
    shutil.copy(plain, cv / "refit" / "checkpoints" / "best.pt")
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 40)
    sure = np.where(rng.random(40) < 0.7, labels, 1 - labels)  # 70 % right, always 95 % sure
    oof = np.where(np.eye(2)[sure] == 1, 0.95, 0.05)
    calibration = fit_calibration(oof, labels, ["cat", "dog"], positive_class="dog", target_sensitivity=0.9)
    calibration.save(RunDir(cv).calibration)
    return plain, cv, calibration


def _raw_probabilities(checkpoint: Path, images: Path, out: Path) -> np.ndarray:
    """``predict``'s probabilities for a checkpoint outside any cross-validation run: uncalibrated."""
    rows = csv.DictReader(predict(checkpoint, images, out).open())
    return np.array([[float(p["prob_cat"]), float(p["prob_dog"])] for p in rows])


def test_explain_csv_has_calibrated_probabilities_and_the_set(tmp_path):
    plain, cv, calibration = _calibrated_cv(tmp_path)
    images = _images(tmp_path / "imgs")
    raw = _raw_probabilities(plain, images, tmp_path / "p.csv")
    expected = judge(raw, calibration, 0.9)
    assert calibration.temperature > 1.5 and not np.allclose(expected.probs, raw, atol=1e-3)  # softened
    rows = list(csv.DictReader(explain(cv, images, tmp_path / "cam", coverage=0.9).open()))
    assert list(rows[0]) == [
        "path",
        "predicted",
        "probability",
        "prob_cat",
        "prob_dog",
        "set",
        "target",
        "gradcam",
        "layer",
    ]
    shown = np.array([[float(r["prob_cat"]), float(r["prob_dog"])] for r in rows])
    np.testing.assert_allclose(shown, expected.probs, rtol=0, atol=1e-5)
    assert [r["predicted"] for r in rows] == [r["target"] for r in rows] == [["cat", "dog"][i] for i in expected.labels]
    assert [r["set"] for r in rows] == expected.set_names(["cat", "dog"])
    for r in rows:
        assert r["probability"] == r[f"prob_{r['predicted']}"]
    raw_rows = list(csv.DictReader(explain(cv, images, tmp_path / "raw", calibrated=False).open()))
    assert "set" not in raw_rows[0]
    np.testing.assert_allclose([[float(r["prob_cat"]), float(r["prob_dog"])] for r in raw_rows], raw, atol=1e-5)
    assert [r["predicted"] for r in raw_rows] == [["cat", "dog"][i] for i in raw.argmax(1)]


def test_explain_cli_coverage_and_its_refusals(tmp_path, capsys):
    plain, cv, calibration = _calibrated_cv(tmp_path)
    images = _images(tmp_path / "imgs")
    explain_cli = ["explain", "--input", str(images), "--out"]
    assert main([*explain_cli, str(tmp_path / "cam"), "--checkpoint", str(cv), "--coverage", "0.6"]) == 0
    rows = list(csv.DictReader((tmp_path / "cam" / "explain.csv").open()))
    expected = judge(_raw_probabilities(plain, images, tmp_path / "p.csv"), calibration, 0.6)
    assert [r["set"] for r in rows] == expected.set_names(["cat", "dog"])
    refusals = {
        (str(cv), "--coverage", "1.5"): "--coverage must be a number above 0 and below 1 (e.g. 0.9), got 1.5",
        (str(cv), "--coverage", "0.9", "--no-calibration"): "--coverage and --no-calibration ask for opposite things",
        (str(plain), "--coverage", "0.9"): f"--coverage needs a calibrated model: {plain} has no calibration",
    }
    for (checkpoint, *flags), message in refusals.items():
        capsys.readouterr()
        assert main([*explain_cli, str(tmp_path / "refused"), "--checkpoint", checkpoint, *flags]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "refused" / "explain.csv").exists()
