"""benchmarks/nested_coverage.py end to end on tiny grouped photos: every photo is predicted once by
a run that never saw its patient, and the figures it writes are those of its own sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import load_benchmark


def grouped_photos(root: Path, patients: int = 8, photos: int = 2) -> Path:
    """Bright and dark noise photos named <patient>_<n>.png, two photos per patient."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("bright", "dark")):
        (root / name).mkdir(parents=True)
        for p in range(patients):
            for n in range(1, photos + 1):
                pixels = rng.integers(0, 90, (16, 16, 3)) + (20 if label else 140)
                Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{name[0]}{p}_{n}.png")
    return root


def test_each_photo_is_predicted_by_a_run_that_never_saw_its_patient(tmp_path, capsys):
    data = grouped_photos(tmp_path / "photos")
    out = tmp_path / "nested"
    argv = ["--data", str(data), "--out", str(out), "--outer", "2", "--inner", "2", "--model", "resnet20_cifar"]
    load_benchmark("nested_coverage").main([*argv, "--epochs", "1", "--image-size", "16"])
    assert "32 photos, 2 outer x (2 inner folds + refit)" in capsys.readouterr().out
    seen_by_outer = {}
    for k in (1, 2):
        trained = {p.stem.split("_")[0] for p in (out / f"outer{k}" / "data").rglob("*.png")}
        tested = {p.stem.split("_")[0] for p in (out / f"outer{k}" / "test").rglob("*.png")}
        assert trained and tested and not trained & tested  # no patient on both sides
        assert (out / f"outer{k}" / "run" / "calibration.json").is_file()
        seen_by_outer[k] = tested
    assert seen_by_outer[1] | seen_by_outer[2] == {f"{c}{p}" for c in "bd" for p in range(8)}
    written = json.loads((out / "nested_coverage.json").read_text())
    deployed = written["deployed"]
    assert deployed["photos"] == 32
    assert deployed["accuracy_ci"][0] <= deployed["accuracy"] <= deployed["accuracy_ci"][1]
    figures = written["figures"]
    assert set(figures) == {"0.8", "0.8 per class", "0.9", "0.9 per class", "0.95", "0.95 per class"}
    for row in figures.values():
        assert 0.0 <= row["coverage"] <= 1.0 and 1.0 <= row["mean_set_size"] <= 2.0
        assert set(row["per_class"]) == {"bright", "dark"}
