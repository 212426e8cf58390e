"""Every sentence of a report is what the runs did: the positive class named, the validation the fold
runs really had, a resumed run's whole training time, a warm-up longer than the run said."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from resnexus.engine import TrainConfig, evaluate, train
from resnexus.engine.comparison import compare
from resnexus.engine.crossval import cross_validate, report_markdown
from tests.engine.test_comparison import _patients_folder
from tests.engine.test_crossval import _make_folder
from tests.helpers import bright_and_dark_folder

LENET = {"lenet": {"img_size": 16}}
_LENET_RUN = dict(model="lenet", model_config={"img_size": 16})


def _config(data: Path, **overrides) -> TrainConfig:
    """A one-epoch lenet run on 16-px images (compare: model and model_config are not used)."""
    values = dict(
        data=str(data),
        epochs=1,
        warmup_epochs=0.0,
        batch_size=8,
        lr=0.05,
        image_size=16,
        precision="fp32",
        workers=0,
        verbose=False,
    )
    return TrainConfig(**values | overrides)


def test_a_warm_up_longer_than_the_run_is_warned_of_not_refused(tmp_path, caplog):
    from resnexus.engine.config import config_warnings

    assert config_warnings(TrainConfig(epochs=3, warmup_epochs=5.0, lr=0.001)) == [
        "warm-up epochs 5 >= epochs 3: the learning rate rises for the whole run and never reaches its peak 0.001; "
        "use fewer --warmup-epochs"
    ]
    assert config_warnings(TrainConfig(epochs=6, warmup_epochs=5.0)) == []
    data = bright_and_dark_folder(tmp_path / "halves", per_class=8, size=16)
    with caplog.at_level(logging.WARNING, logger="resnexus"):
        result = train(_config(data, out=str(tmp_path / "run"), warmup_epochs=2.0, verbose=True, **_LENET_RUN))
    assert "warning: warm-up epochs 2 >= epochs 1: the learning rate rises for the whole run" in caplog.text
    report = result.report.read_text()
    assert "**Warning:** warm-up epochs 2 >= epochs 1: the learning rate rises for the whole run" in report
    assert "| warm-up epochs | 2 |" in report


@pytest.mark.slow
def test_comparison_md_states_the_validation_the_fold_runs_had(tmp_path):
    data = _patients_folder(tmp_path / "patients")  # 24 images: too few to choose an epoch on with --select auto
    base = _config(data, val_fraction=0.25, group_by="patient")
    auto = compare(["lenet"], base, tmp_path / "auto", isolate=False, model_configs=LENET, folds=2)
    text = auto.markdown.read_text()
    assert "no validation: the final weights are tested; --val-fraction 0.25 too small to choose an epoch on" in text
    assert "for validation" not in text
    chosen = compare(
        ["lenet"], replace(base, select="val"), tmp_path / "val", isolate=False, model_configs=LENET, folds=2
    )
    splits = json.loads((tmp_path / "val" / "comparison_splits.json").read_text())
    n_val = sum(len(f["val"]) for f in splits["folds"]) / 2
    assert f"(about {n_val:.0f} of them, 25%, for validation)" in chosen.markdown.read_text()
    # two classes: the sensitivity's class is named in the table and the recipe, and the CSV has a column for it
    assert "| Sensitivity (dark) | Specificity |" in text
    assert "sensitivity, specificity: positive class dark (chosen by default: the second class in sorted order" in text
    row = next(csv.DictReader((tmp_path / "auto" / "comparison.csv").open()))
    assert row["positive_class"] == "dark" and row["sensitivity"] != ""


@pytest.mark.slow
def test_a_resumed_comparison_keeps_the_runs_training_time(tmp_path):
    """A run that finished training but not its comparison row (stopped during its evaluation) is
    resumed: its time is every session's, not the few tenths of a second its evaluation took."""
    data = bright_and_dark_folder(tmp_path / "halves", per_class=8, size=16)
    base = _config(data, val_fraction=0.25, test_fraction=0.25)
    out = tmp_path / "cmp"
    compare(["lenet"], base, out, isolate=False, model_configs=LENET)
    (out / "lenet" / "compare_run.json").unlink()  # as if stopped before the row was recorded
    last = out / "lenet" / "checkpoints" / "last.pt"
    saved = torch.load(last, weights_only=True)
    assert saved["seconds"] > 0
    saved["seconds"] = 1000.0  # the earlier session: a long one
    torch.save(saved, last)
    resumed = compare(["lenet"], base, out, isolate=False, model_configs=LENET, resume=True)
    assert 1000.0 <= resumed.rows[0]["train_seconds"] < 1100.0
    assert "| training time | 10" in (out / "lenet" / "report.md").read_text()


@pytest.mark.slow
def test_cv_report_names_the_positive_class_and_flags_a_constant_fold(tmp_path):
    data = _make_folder(tmp_path / "lesions")  # classes "Monkey Pox" and "Others"
    config = _config(data, out=str(tmp_path / "cv"), group_by="patient", **_LENET_RUN)
    result = cross_validate(config, 2, refit=False)
    record = json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())
    assert record["protocol"]["positive_class"] == "Monkey Pox"
    report = result.report.read_text()
    assert "sensitivity (Monkey Pox) " in report.splitlines()[2]  # the headline estimate
    assert (
        "- Sensitivity / specificity / ROC: positive class Monkey Pox "
        "(chosen by default: 'Others' reads as the negative class; set --positive-class)." in report
    )
    assert "| sensitivity (Monkey Pox) |" in report  # the per-fold table's header
    record["folds"][1]["warnings"] = [
        "the model predicted 'Others' for every image: sensitivity/specificity are degenerate"
    ]
    assert (
        "**Warning:** fold 2: the model predicted 'Others' for every image: sensitivity/specificity are degenerate."
        in report_markdown(record)
    )
    with pytest.raises(
        ValueError, match=r"^--positive-class 'Mpox' is not one of the classes: 'Monkey Pox', 'Others'$"
    ):
        cross_validate(replace(config, out=str(tmp_path / "cv2"), positive_class="Mpox"), 2, refit=False)
    assert not (tmp_path / "cv2" / "fold1").exists()  # refused before any fold trained


def test_evaluate_uses_the_runs_positive_class_unless_told_and_names_it(tmp_path, capsys):
    from resnexus.cli import main

    data = bright_and_dark_folder(tmp_path / "halves", per_class=8, size=16)
    run = tmp_path / "run"
    train(_config(data, out=str(run), positive_class="bright", **_LENET_RUN))
    assert json.loads((run / "metrics.json").read_text())["positive_class"] == "bright"
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "positive class: bright (the run's choice: set with --positive-class when it was trained)" in out
    assert "(bright)" in out.splitlines()[-1]
    # each figure with its 95 % interval, the method said once on the line before
    metrics = evaluate(run, data)
    low, high = metrics["accuracy_ci"]
    assert f"accuracy {metrics['accuracy']:.3f} [{low:.2f}, {high:.2f}] | " in out.splitlines()[-1]
    assert out.splitlines()[-2] == f"{metrics['ci_method']} (in brackets below)"
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(data), "--positive-class", "dark"]) == 0
    assert "positive class: dark (set with --positive-class)" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(data), "--positive-class", "Dark"]) == 2
    assert capsys.readouterr().err.strip() == (
        "resnexus evaluate: error: --positive-class 'Dark' is not one of the classes: 'bright', 'dark'"
    )
    args = ["train", "--data", str(data), "--out", str(tmp_path / "bad"), "--positive-class", "x", "--epochs", "1"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip().endswith("--positive-class 'x' is not one of the classes: 'bright', 'dark'")
