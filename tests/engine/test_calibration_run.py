"""How sure the model is, end to end: `train --folds` keeps out-of-fold predictions and fits
calibration.json from them; predict / evaluate apply it; `resnexus calibrate` rebuilds it.

Every expected number is computed here from the files, independently of reports/uncertainty.py
(softmax of log-probabilities over T, the conformal rank ceil((n + 1) * coverage))."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from resnexus.cli import main
from resnexus.engine import evaluate, predict
from resnexus.engine.calibrate import calibrate
from resnexus.engine.crossval import cross_validate
from resnexus.engine.inference import predict_probabilities
from resnexus.reports.uncertainty import Calibration, judge
from tests.engine.test_crossval import CLASSES, _config, _make_folder

FOLDS = 3
TARGET = 0.9


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _softened(probs: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _oof(out: Path) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
    """oof_predictions.csv's rows, probabilities and true class indices."""
    header, rows = _rows(out / "oof_predictions.csv")
    assert header == ["path", "group", "fold", "true_label", *(f"prob_{c}" for c in CLASSES)]
    probs = np.array([[float(v) for v in r[4:]] for r in rows])
    return rows, probs, np.array([CLASSES.index(r[3]) for r in rows])


@pytest.fixture(scope="module")
def cv(tmp_path_factory):
    data = _make_folder(tmp_path_factory.mktemp("data") / "lesions")
    out = tmp_path_factory.mktemp("runs") / "cv"
    cross_validate(_config(data, out, val_fraction=0.0, target_sensitivity=TARGET), FOLDS)
    return data, out


@pytest.mark.slow
def test_out_of_fold_predictions_are_the_fold_runs_test_predictions(cv):
    data, out = cv
    rows, probs, labels = _oof(out)
    splits = json.loads((out / "cv_splits.json").read_text())
    all_images = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    assert sorted(r[0] for r in rows) == all_images  # one row per image
    for k in range(1, FOLDS + 1):
        header, fold_rows = _rows(out / f"fold{k}" / "test_predictions.csv")
        assert header == ["path", "true_label", *(f"prob_{c}" for c in CLASSES)]
        assert [r[0] for r in fold_rows] == splits["folds"][k - 1]["test"]
        mine = [r for r in rows if r[2] == str(k)]
        assert [r[0] for r in mine] == [r[0] for r in fold_rows]
        assert [r[4:] for r in mine] == [r[2:] for r in fold_rows]  # the very numbers the fold run wrote
        assert [r[3] for r in mine] == [r[1] for r in fold_rows] == [Path(r[0]).parts[0] for r in fold_rows]
    assert all(r[1] == Path(r[0]).stem.rsplit("_", 1)[0] for r in rows)  # the patient group
    # calibration.json: the scores are 1 - p(true class) after its temperature
    saved = json.loads((out / "calibration.json").read_text())
    t = saved["temperature"]
    expected = 1.0 - _softened(probs, t)[np.arange(len(labels)), labels]
    np.testing.assert_allclose(saved["scores"], expected, rtol=0, atol=1e-12)
    assert saved["labels"] == labels.tolist() and saved["class_names"] == list(CLASSES)
    nll_before = -np.mean(np.log(probs[np.arange(len(labels)), labels]))
    assert saved["before"]["nll"] == pytest.approx(nll_before, abs=1e-12)
    assert saved["after"]["nll"] <= saved["before"]["nll"] + 1e-12  # T minimises it; T = 1 is a candidate


@pytest.mark.slow
def test_the_threshold_reaches_the_target_on_the_out_of_fold_images_and_is_reported(cv):
    _, out = cv
    _, probs, labels = _oof(out)
    saved = json.loads((out / "calibration.json").read_text())
    positive = CLASSES.index(saved["positive_class"])
    assert saved["positive_class"] == "Monkey Pox" and saved["target"] == {"sensitivity": TARGET}
    calibrated = _softened(probs, saved["temperature"])[:, positive]
    sensitivity = np.mean(calibrated[labels == positive] >= saved["threshold"])
    assert sensitivity >= TARGET
    record = json.loads((out / "cv_metrics.json").read_text())["calibration"]
    point = record["operating_point"]
    assert point["threshold"] == saved["threshold"] and point["sensitivity"] == pytest.approx(sensitivity)
    assert point["specificity"] == pytest.approx(np.mean(calibrated[labels != positive] < saved["threshold"]))
    assert [c["coverage_target"] for c in record["coverage"]] == [0.8, 0.9, 0.95]
    assert record["temperature"] == saved["temperature"] and record["before"] == saved["before"]
    report = (out / "cv_report.md").read_text(encoding="utf-8")
    assert "## How sure the model is" in report and f"T = {saved['temperature']:.3f}" in report
    assert f"at least **{saved['threshold']:.4f}**" in report and "check the arithmetic, not the guarantee" in report
    assert (out / "reliability.png").stat().st_size > 1000 and (out / "cv_roc.png").stat().st_size > 1000


@pytest.mark.slow
def test_predict_applies_the_calibration_threshold_and_sets(cv, tmp_path):
    data, out = cv
    saved = Calibration.load(out / "calibration.json")
    paths, raw, names = predict_probabilities(out, data)
    assert names == list(CLASSES)
    csv_path = predict(out, data, tmp_path / "sets.csv", coverage=0.9)
    header, rows = _rows(csv_path)
    assert header == ["path", "label", *(f"prob_{c}" for c in CLASSES), "set"]
    assert [r[0] for r in rows] == [str(p) for p in paths]
    calibrated = _softened(raw, saved.temperature)
    np.testing.assert_allclose([[float(v) for v in r[2:4]] for r in rows], calibrated, atol=5e-7)
    # the threshold decides the label, not the top class
    positive = CLASSES.index("Monkey Pox")
    expected = np.where(calibrated[:, positive] >= saved.threshold, positive, 1 - positive)
    assert [r[1] for r in rows] == [CLASSES[i] for i in expected]
    # the set column is judge()'s sets of the same probabilities
    assert [r[4] for r in rows] == judge(raw, saved, 0.9).set_names(CLASSES)
    # --no-calibration: the raw probabilities and the top class, as a model without calibration gives
    alone = tmp_path / "alone.pt"
    shutil.copy(out / "refit" / "checkpoints" / "best.pt", alone)
    plain = _rows(predict(out, data, tmp_path / "raw.csv", calibrated=False))
    uncalibrated = _rows(predict(alone, data, tmp_path / "uncalibrated.csv"))
    assert plain == uncalibrated and plain[0] == ["path", "label", *(f"prob_{c}" for c in CLASSES)]
    np.testing.assert_allclose([[float(v) for v in r[2:]] for r in plain[1]], raw, atol=5e-7)
    assert [r[1] for r in plain[1]] == [CLASSES[i] for i in raw.argmax(axis=1)]
    with pytest.raises(
        ValueError, match=f"--coverage needs a calibrated model: {re.escape(str(alone))} has no calibration"
    ):
        predict(alone, data, tmp_path / "no.csv", coverage=0.9)
    with pytest.raises(ValueError, match=r"coverage must be between 0 and 1 \(e.g. 0.9\), got 1.5"):
        predict(out, data, tmp_path / "no.csv", coverage=1.5)
    with pytest.raises(ValueError, match="--coverage adds a set column; --id-label writes only id,label"):
        predict(out, data, tmp_path / "no.csv", coverage=0.9, id_label=True)
    with pytest.raises(ValueError, match="--per-class-coverage goes with --coverage"):
        predict(out, data, tmp_path / "no.csv", per_class_coverage=True)
    with pytest.raises(ValueError, match="--coverage needs the model's calibration: drop --no-calibration"):
        predict(out, data, tmp_path / "no.csv", coverage=0.9, calibrated=False)
    assert not (tmp_path / "no.csv").exists()


@pytest.mark.slow
def test_evaluate_reports_calibration_and_the_coverage_of_the_sets(cv, tmp_path, capsys):
    data, out = cv
    saved = json.loads((out / "calibration.json").read_text())
    metrics = evaluate(out, data, coverage=0.9, per_class_coverage=True)
    # independently: the per-class conformal threshold from calibration.json's scores, then the sets
    paths, raw, _ = predict_probabilities(out, data)
    labels = np.array([CLASSES.index(p.parent.name) for p in paths])
    calibrated = _softened(raw, saved["temperature"])
    scores, score_labels = np.array(saved["scores"]), np.array(saved["labels"])
    inside = []
    for p, y in zip(calibrated, labels):
        own = np.sort(scores[score_labels == y])
        rank = math.ceil((len(own) + 1) * 0.9 - 1e-9)
        q = own[rank - 1] if rank <= len(own) else np.inf
        inside.append(1 - p[y] <= q + 1e-12 or p.argmax() == y)
    assert metrics["coverage"] == pytest.approx(np.mean(inside))
    assert metrics["coverage_target"] == 0.9 and metrics["per_class_coverage"] is True
    assert 1.0 <= metrics["mean_set_size"] <= 2.0
    nll = -np.mean(np.log(calibrated[np.arange(len(labels)), labels]))
    assert metrics["calibration"]["nll"] == pytest.approx(nll, abs=1e-6)
    assert metrics["calibrated"] is True and metrics["threshold"] == saved["threshold"]
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(data), "--coverage", "0.9"]) == 0
    printed = capsys.readouterr().out.splitlines()
    i = next(i for i, line in enumerate(printed) if line.startswith("calibration (temperature"))
    assert printed[i].startswith(f"calibration (temperature {saved['temperature']:.3f}, threshold")
    assert printed[i + 1].startswith("prediction sets (coverage 0.9): ") and printed[-1].startswith("26 images:")
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(data), "--no-calibration"]) == 0
    assert "calibration (raw probabilities): ECE" in capsys.readouterr().out


@pytest.mark.slow
def test_calibrate_rebuilds_the_files_of_a_run_without_them_and_refits_another_target(cv, tmp_path, capsys):
    _, out = cv
    old = tmp_path / "old"
    shutil.copytree(out, old)
    for name in ("oof_predictions.csv", "calibration.json", *(f"fold{k}/test_predictions.csv" for k in (1, 2, 3))):
        (old / name).unlink()
    assert main(["calibrate", str(old)]) == 0
    assert f"calibration: {old / 'calibration.json'}" in capsys.readouterr().out
    rows, probs, _ = _oof(out)
    rebuilt_rows, rebuilt, _ = _oof(old)
    assert [r[:4] for r in rebuilt_rows] == [r[:4] for r in rows]
    np.testing.assert_allclose(rebuilt, probs, atol=1e-5)  # recomputed from the fold checkpoints
    a, b = (json.loads((d / "calibration.json").read_text()) for d in (out, old))
    assert b["temperature"] == pytest.approx(a["temperature"], rel=1e-3)
    np.testing.assert_allclose(b["scores"], a["scores"], atol=1e-4)
    # another operating point, without training: stored, and in the record and report
    summary = calibrate(old, target_specificity=0.5)
    again = Calibration.load(old / "calibration.json")
    assert again.target == {"specificity": 0.5} and summary["operating_point"]["specificity"] >= 0.5
    assert json.loads((old / "cv_metrics.json").read_text())["calibration"]["operating_point"]["target"] == {
        "specificity": 0.5
    }
    assert "(target specificity 0.5)" in (old / "cv_report.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_jobs_and_resume_give_the_same_out_of_fold_files(tmp_path):
    data = _make_folder(tmp_path / "data")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # each of the 2 workers gets 1
        cross_validate(_config(data, tmp_path / "jobs2", val_fraction=0.0), 2, refit=False, jobs=2)
        torch.set_num_threads(1)
        cross_validate(_config(data, tmp_path / "jobs1", val_fraction=0.0), 2, refit=False, jobs=1)
    finally:
        torch.set_num_threads(threads)
    for name in ("oof_predictions.csv", "calibration.json"):
        assert (tmp_path / "jobs2" / name).read_bytes() == (tmp_path / "jobs1" / name).read_bytes(), name
    # resuming a finished run keeps every fold and assembles the same files from their predictions
    before = {n: (tmp_path / "jobs1" / n).read_bytes() for n in ("oof_predictions.csv", "calibration.json")}
    for name in before:
        (tmp_path / "jobs1" / name).unlink()
    config = dataclasses.replace(_config(data, tmp_path / "jobs1", val_fraction=0.0), resume=True)
    cross_validate(config, 2, refit=False)
    assert {n: (tmp_path / "jobs1" / n).read_bytes() for n in before} == before


# -- refused in one line, before any training ----------------------------------------------------
def test_calibration_options_are_refused_where_they_cannot_work(tmp_path, capsys):
    data = _make_folder(tmp_path / "lesions")
    train = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1"]
    assert main([*train, "--target-sensitivity", "0.9"]) == 2
    assert "--target-sensitivity goes with --folds" in capsys.readouterr().err
    assert main([*train, "--no-temperature-scaling"]) == 2
    assert "--no-temperature-scaling goes with --folds" in capsys.readouterr().err
    assert main([*train, "--folds", "2", "--target-sensitivity", "1.5"]) == 2
    assert "invalid target_sensitivity (--target-sensitivity): 1.5; must be in (0, 1]" in capsys.readouterr().err
    both = ["--folds", "2", "--target-sensitivity", "0.9", "--target-specificity", "0.9"]
    assert main([*train, *both]) == 2
    assert "give one operating point" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    # three classes: refused before any fold trains
    third = data / "Third"
    shutil.copytree(data / CLASSES[0], third)
    for image in third.iterdir():
        image.rename(third / f"t{image.name}")
    with pytest.raises(ValueError, match=r"--target-specificity picks a threshold between two classes; the data has 3"):
        cross_validate(_config(data, tmp_path / "three", target_specificity=0.8), 2)
    assert not (tmp_path / "three" / "fold1").exists()


def test_calibrate_refuses_a_directory_that_is_no_cross_validation(tmp_path, capsys):
    assert main(["calibrate", str(tmp_path)]) == 2
    assert f"{tmp_path} is not a cross-validation run (no cv_splits.json)" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path), "--target-sensitivity", "0"]) == 2
    assert "--target-sensitivity must be in (0, 1]" in capsys.readouterr().err
