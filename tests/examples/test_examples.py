"""The scripts in examples/ run as a user would run them (tiny data and settings)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.data.images import write_image

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


@pytest.mark.slow
def test_train_and_predict_cross_validates_then_labels_new_images(tmp_path):
    for c, cls in enumerate(("cats", "dogs")):
        for patient in range(4):
            for k in range(2):
                write_image(tmp_path / "photos" / cls / f"P{c}{patient}_{k}.png", 16, 16, seed=c * 50 + patient * 3 + k)
    for k in range(3):
        write_image(tmp_path / "new" / f"n{k}.png", 16, 16, seed=200 + k)
    args = ["--model", "resnet20_cifar", "--epochs", "1", "--folds", "2", "--group-by", "patient", "--out", "runs/ex"]
    done = _run(str(EXAMPLES / "train_and_predict.py"), "photos", "new", *args, cwd=tmp_path)
    assert "cross-validated accuracy:" in done.stdout
    rows = (tmp_path / "runs/ex/predictions.csv").read_text().splitlines()
    assert rows[0].startswith("path,label,prob_cats,prob_dogs") and len(rows) == 4
    assert (tmp_path / "runs/ex/cv_report.md").is_file() and (tmp_path / "runs/ex/refit/checkpoints/best.pt").is_file()


@pytest.mark.slow
def test_keras_example_fits_and_converts(tmp_path):
    pytest.importorskip("keras")
    done = _run(str(EXAMPLES / "keras_fit.py"), cwd=tmp_path)
    assert "parameters; PyTorch copy: " in done.stdout


def test_fine_tune_example_documents_its_options(tmp_path):
    """It needs ImageNet weights (a download), so only its command line is checked here."""
    done = _run(str(EXAMPLES / "fine_tune.py"), "--help", cwd=tmp_path)
    assert "--weights" in done.stdout and "--freeze" in done.stdout
