"""benchmarks/heldout_coverage.py: on out-of-fold probabilities with a known answer, the coverage it
measures on held-out groups is the asked rate, and it reads a run's oof_predictions.csv as written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import load_benchmark


def write_oof(run_dir: Path, seed: int = 0, patients: int = 120) -> None:
    """A fake cross-validation run's oof_predictions.csv: 1-3 photos per patient, one class per
    patient, probabilities from an over-confident logistic model that is right about 69 % of the
    time (so every asked coverage needs more than the top class)."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    with (run_dir / "oof_predictions.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "true_label", "prob_Monkey Pox", "prob_Others"])
        for p in range(patients):
            label = int(rng.random() < 0.45)
            for photo in range(rng.integers(1, 4)):
                logit = 3.0 * (rng.normal() + (0.5 if label == 0 else -0.5))
                p0 = float(1 / (1 + np.exp(-logit)))
                name = "Monkey Pox" if label == 0 else "Others"
                writer.writerow([f"{name}/p{p}_{photo}.jpg", name, repr(p0), repr(1 - p0)])


def test_held_out_coverage_is_near_the_asked_rate_and_the_figures_are_written(tmp_path, capsys):
    run = tmp_path / "run"
    write_oof(run)
    out = tmp_path / "coverage.json"
    load_benchmark("heldout_coverage").main([str(run), "--repeats", "8", "--json", str(out)])
    assert "120 patients" in capsys.readouterr().out
    figures = json.loads(out.read_text())["figures"]
    assert set(figures) == {"0.8", "0.8 per class", "0.9", "0.9 per class", "0.95", "0.95 per class"}
    for key, row in figures.items():
        asked = float(key.split()[0])
        assert abs(row["coverage"][0] - asked) < 0.05, (key, row["coverage"])  # ~250 images x 8 repeats
        assert 1.0 <= row["size"][0] <= 2.0
    assert figures["0.95"]["size"][0] > figures["0.8"]["size"][0]  # a surer promise takes larger sets


def test_a_run_without_out_of_fold_predictions_names_the_file_and_the_remedy(tmp_path):
    with pytest.raises(SystemExit, match=r"oof_predictions\.csv not found: .*resnexus calibrate") as stopped:
        load_benchmark("heldout_coverage").main([str(tmp_path)])
    assert str(tmp_path / "oof_predictions.csv") in str(stopped.value)
