"""The study reports (comparison.md / .csv, cv_report.md / cv_metrics.json) stay byte for byte what they were.

Built from fixed rows and records (no training; the machine facts given as a CPU's) and compared with the files in
``data/study_reports/``, which were captured from the code before these reports moved to reports/.
Regenerate them only for an intended change (last: the 95 % intervals beside the metrics):
``RESNEXUS_WRITE_EXPECTED=1 pytest tests/reports/test_study_reports.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import resnexus.engine.comparison as comparison
import resnexus.engine.crossval as crossval
from resnexus.data import AugmentConfig
from resnexus.engine.config import TrainConfig, config_warnings
from resnexus.reports.comparison import ComparisonFacts, comparison_markdown, with_binary_columns, write_comparison_csv
from resnexus.reports.crossval import CV_CI_METHOD, cv_intervals

EXPECTED = Path(__file__).parent / "data" / "study_reports"


def _check(name: str, text: str) -> None:
    path = EXPECTED / name
    if os.environ.get("RESNEXUS_WRITE_EXPECTED"):
        path.write_bytes(text.encode("utf-8"))
    assert text == path.read_bytes().decode("utf-8"), f"{name} changed"


def _recipe(**changes) -> TrainConfig:
    augment = AugmentConfig(
        random_resized_crop_scale=(0.35, 1.0), hflip=0.5, vflip=0.0, color_jitter=0.2, random_erasing=0.25, rotation=0.0
    )
    fields = dict(
        data="photos/msld",
        model="lenet",
        epochs=3,
        batch_size=16,
        optimizer="adamw",
        lr=0.001,
        weight_decay=0.05,
        warmup_epochs=1.0,
        label_smoothing=0.1,
        augment=augment,
        mixup=0.0,
        cutmix=0.0,
        ema_decay=None,
        clip_grad_norm=None,
        early_stopping=None,
        balance=None,
        precision="fp32",
        seed=7,
    )
    return TrainConfig(**(fields | changes))


def _row(model: str, **values) -> dict:
    base = dict(
        model=model,
        status="ok",
        accuracy=0.8125,
        balanced_accuracy=0.8,
        macro_f1=0.79999,
        roc_auc=0.9,
        params=61_706,
        macs=429_128,
        image_size=32,
        train_seconds=12.345,
        train_images_per_second=1234.56,
        inference_images_per_second=9876.5,
        peak_memory_mib=512.25,
        best_epoch=3,
        error=None,
        run_dir=f"out/{model}",
        baseline_memory_mib=300.0,
    )
    return base | values


# -- comparison ---------------------------------------------------------------------------------
def _comparison_files(tmp_path: Path, rows, columns, recipe, **facts) -> tuple[str, str]:
    """comparison.md and comparison.csv for these rows (the code under test's entry points)."""
    facts = ComparisonFacts(
        recipe=recipe,
        recipe_warnings=config_warnings(recipe),
        precision=recipe.precision,
        device="CPU",
        cuda=False,
        **facts,
    )
    markdown = comparison_markdown(rows, columns, facts)
    csv_path = write_comparison_csv(rows, tmp_path / "comparison.csv", columns)
    return markdown, csv_path.read_bytes().decode("utf-8")


def _binary_columns(columns):
    return with_binary_columns(columns, ("Monkeypox", "the class named like a finding"))


def test_comparison_of_one_split_with_a_keras_model_and_a_failure(tmp_path):
    columns = _binary_columns(comparison.COLUMNS)
    rows = [
        _row(
            "resnet20_cifar",
            positive_class="Monkeypox",
            sensitivity=0.75,
            specificity=0.875,
            warnings=["w|one"],
            accuracy_ci=[0.5699, 0.9341],
            roc_auc_ci=[0.71, 1.0],
            sensitivity_ci=[0.4093, 0.9285],
            specificity_ci=None,
        ),
        _row(
            "keras:lenet",
            positive_class="Monkeypox",
            accuracy=0.8125,
            macs=100_000,
            sensitivity=None,
            specificity=float("nan"),
            roc_auc=None,
        ),
        _row("lenet", status="failed", accuracy=None, error="RuntimeError: out of memory", params=10, macs=5),
    ]
    markdown, csv_text = _comparison_files(
        tmp_path,
        rows,
        columns,
        _recipe(warmup_epochs=5.0),
        protocol="split (same images for every model): 80 train / 20 val / 20 test; metrics on the test split",
        class_names=["Monkeypox", "Others"],
        overrides={"resnet20_cifar": {}, "keras:lenet": {"img_size": 32}, "lenet": {}},
        isolate=True,
        plot_name="accuracy_vs_macs.png",
        jobs=1,
        positive=("Monkeypox", "the class named like a finding"),
    )
    _check("comparison_split.md", markdown)
    _check("comparison_split.csv", csv_text)


def test_comparison_on_fold_runs_side_by_side(tmp_path):
    fold = dict(accuracy_se=0.0123, fold_runs=4, best_epoch=None)
    rows = [
        _row("resnet20_cifar", **fold, accuracy_diff=None, accuracy_diff_se=None, accuracy_ci=(0.7734, 0.8516)),
        _row(
            "lenet",
            **fold,
            accuracy=0.75,
            accuracy_diff=-0.0625,
            accuracy_diff_se=0.031,
            accuracy_diff_ci=(-0.1612, 0.0362),
            image_size=28,
            macro_f1_ci=(0.6, 0.9),
        ),
        _row("resnet56_cifar", **fold, accuracy=0.75, accuracy_diff=0.0, accuracy_diff_se=0.02, macs=400_000),
    ]
    markdown, csv_text = _comparison_files(
        tmp_path,
        rows,
        comparison.FOLD_COLUMNS,
        _recipe(precision="bf16", early_stopping=5, balance="sampler", ema_decay=0.999, clip_grad_norm=1.0),
        protocol="cross-validation, the same 4 fold runs for every model",
        class_names=["a", "b", "c"],
        overrides={"resnet20_cifar": {"width": 2}, "lenet": {}, "resnet56_cifar": {}},
        isolate=False,
        plot_name="accuracy_vs_macs.png",
        jobs=2,
        positive=None,
    )
    _check("comparison_folds.md", markdown)
    _check("comparison_folds.csv", csv_text)


def test_comparison_where_every_model_failed(tmp_path):
    rows = [_row("lenet", status="failed", accuracy=None, error="ValueError: bad\nthing", baseline_memory_mib=None)]
    markdown, _ = _comparison_files(
        tmp_path,
        rows,
        comparison.COLUMNS,
        _recipe(),
        protocol="split",
        class_names=["a", "b", "c"],
        overrides={"lenet": {}},
        isolate=True,
        plot_name="plot.png",
    )
    _check("comparison_failed.md", markdown)


# -- cross-validation ---------------------------------------------------------------------------
def _fold(k: int, accuracy: float, **values) -> dict:
    return (
        dict(
            fold=k,
            accuracy=accuracy,
            balanced_accuracy=accuracy - 0.01,
            macro_f1=accuracy - 0.02,
            roc_auc=None if k == 2 else 0.9,
            sensitivity=0.8,
            specificity=0.7,
            best_epoch=k,
            n_train=40,
            n_val=0 if k == 3 else 8,
            n_test=16,
            test_groups=5,
            seconds=10.0,
            run_dir=f"out/fold{k}",
            confusion_matrix=[[6, 2], [1, 7]],
        )
        | values
    )


def _cv_record(refit: dict, **protocol) -> dict:
    folds = [_fold(1, 0.8125, warnings=["predicted one class"]), _fold(2, 0.75), _fold(3, 0.875)]
    mean, std, counts = crossval.aggregate(folds)
    return {
        "protocol": {
            "folds": 3,
            "data": "photos/msld",
            "group_by": "patient",
            "seed": 0,
            "images": 48,
            "groups": 15,
            "class_names": ["Monkeypox", "Others|x"],
            "class_counts": {"Monkeypox": 24, "Others|x": 24},
            "val_fraction": 0.15,
            "validated_folds": 2,
            "early_stopping": 4,
            "warmup_epochs": 1.5,
            "model": "resnet20_cifar",
            "framework": "torch",
            "weights": None,
            "epochs": 10,
            "image_size": 32,
            "batch_size": 16,
            "std": "sample standard deviation over folds (ddof=1)",
            "ci": CV_CI_METHOD,
            "positive_class": "Monkeypox",
            "positive_class_reason": "named like a finding",
            "warnings": ["warm-up epochs 12 >= epochs 10"],
        }
        | protocol,
        "folds": folds,
        "mean": mean,
        "std": std,
        "ci": cv_intervals(folds),
        "n_folds_with_value": counts,
        "pooled_confusion_matrix": [[18, 6], [3, 21]],
        "refit": refit,
        "seconds": 123.4,
    }


def _cv_files(tmp_path: Path, record: dict) -> tuple[str, str]:
    """cv_report.md and cv_metrics.json for this record (the code under test's entry point)."""
    crossval.write_record(tmp_path, record)
    return (tmp_path / "cv_report.md").read_bytes().decode(), (tmp_path / "cv_metrics.json").read_bytes().decode()


@pytest.mark.parametrize(
    "name, refit, protocol",
    [
        (
            "done",
            {
                "status": "done",
                "images": 48,
                "run_dir": "refit",
                "checkpoint": "refit/checkpoints/best.keras",
                "seconds": 42.4,
            },
            {"framework": "keras"},
        ),
        ("training", {"status": "training", "images": 48}, {"weights": "imagenet", "early_stopping": None}),
        ("skipped", {"status": "skipped", "images": 48}, {"group_by": None, "positive_class": None, "warnings": []}),
    ],
)
def test_cross_validation_report(tmp_path, name, refit, protocol):
    report, metrics = _cv_files(tmp_path, _cv_record(refit, **protocol))
    _check(f"cv_report_{name}.md", report)
    _check(f"cv_metrics_{name}.json", metrics)
    assert crossval.format_mean_std({"accuracy": 0.8, "sensitivity": 0.5}, {"accuracy": None}, positive="P") == (
        "accuracy 0.8000 ± n/a | sensitivity (P) 0.5000 ± n/a"
    )
    ci = {"accuracy": [0.7, 0.9], "sensitivity": None}
    assert crossval.format_mean_std({"accuracy": 0.8, "sensitivity": 0.5}, {"accuracy": 0.1}, ci=ci) == (
        "accuracy 0.8000 ± 0.1000 [0.700, 0.900] | sensitivity 0.5000 ± n/a"  # one fold: no spread, no interval
    )


def test_a_record_without_intervals_still_reads(tmp_path):
    """cv_metrics.json of a run made before the intervals: the report leaves them out instead of failing."""
    record = _cv_record({"status": "skipped", "images": 48})
    del record["ci"]
    report, _ = _cv_files(tmp_path, record)
    assert "95 %" not in report and "**mean ± std**" in report
