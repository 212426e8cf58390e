"""Out-of-fold predictions and what cross-validation learns from them about trusting the model.

Every fold run of ``train --folds K`` writes its test split's probabilities (``test_predictions.csv``,
:func:`write_test_predictions`, in engine/run.py's finish, whichever framework trained it and in
whichever process). Once every fold has finished, :func:`calibrate_folds` gathers them into the
cross-validation run's ``oof_predictions.csv`` (one row per image: the fold model that never saw
it), fits the :class:`~resnexus.reports.uncertainty.Calibration` on them (temperature, conformal
scores, the operating threshold asked for) into ``calibration.json``, draws the reliability diagram
and the out-of-fold ROC curve, and returns the summary that ``cv_metrics.json`` and ``cv_report.md``
show. A fold directory without the file (trained before it existed) has its probabilities
recomputed from its best checkpoint on the test files ``cv_splits.json`` names.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data import ImageDataset, Samples
from ..files import atomic_write
from ..reports import resolve_positive_class
from ..reports.calibration_report import describe_calibration
from ..reports.plots import plot_reliability, plot_roc
from ..reports.uncertainty import Calibration, fit_calibration, judge
from .checkpoint import Checkpoint, eval_preprocess
from .inference import predict_loader, set_coverage
from .rundir import RunDir

logger = logging.getLogger(__name__)

__all__ = [
    "REPORTED_COVERAGES",
    "CalibrationOptions",
    "calibrate_folds",
    "calibrate_study",
    "calibration_options",
    "read_predictions",
    "write_test_predictions",
]

REPORTED_COVERAGES = (0.8, 0.9, 0.95)  # the coverages cv_report.md measures on the out-of-fold images
TRUE_LABEL = "true_label"


# -- a run's test predictions -------------------------------------------------------------------
def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


def write_test_predictions(path: Path, samples: Samples, probs: np.ndarray) -> None:
    """One row per image of ``samples`` (in their order): its path relative to the data root, its
    true class and the model's probability of every class, at full precision."""
    names = samples.class_names
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", TRUE_LABEL, *(f"prob_{n}" for n in names)])
        for file, label, row in zip(samples.paths, samples.labels, probs):
            writer.writerow([_relative(file, samples.root), names[label], *(repr(float(p)) for p in row)])


def read_predictions(path: Path, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """``{relative path: probabilities}`` of a ``test_predictions.csv``, checked to be for ``class_names``."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    expected = [f"prob_{n}" for n in class_names]
    if not rows or rows[0][2:] != expected:
        raise ValueError(f"{path}: expected the columns path, {TRUE_LABEL}, {', '.join(expected)}")
    return {row[0]: np.array([float(v) for v in row[2:]]) for row in rows[1:]}


def recompute_probabilities(fold_dir: Path, samples: Samples) -> np.ndarray:
    """A fold model's probabilities of ``samples`` from its best checkpoint, read and cropped as the
    run's final evaluation read them (decoded at the run's cache size, flip averaging if it had it),
    in fp32: for a fold run that kept no test_predictions.csv."""
    best = RunDir(fold_dir).saved_best()
    if best is None:
        raise FileNotFoundError(f"{fold_dir} holds no best checkpoint: the fold run did not finish")
    loaded = Checkpoint.load(best)
    config = loaded.config or {}
    preprocess = eval_preprocess(loaded)
    meta = loaded.metadata  # the run's own image size and crop: its cache size (engine/run.py, cache_options)
    cache_size = math.ceil(meta["image_size"] / (meta.get("crop_fraction") or 0.875))
    dataset = ImageDataset(samples, preprocess.sample, cache_size=cache_size)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = loaded.model().to(device)
    _, probs, _ = predict_loader(
        model, DataLoader(dataset, batch_size=64), device, flip_tta=bool(config.get("tta")), preprocess=preprocess.batch
    )
    return probs


def _fold_probabilities(fold_dir: Path, samples: Samples) -> np.ndarray:
    """The fold model's probabilities of its test images ``samples``, in their order."""
    files = [_relative(p, samples.root) for p in samples.paths]
    saved = RunDir(fold_dir).test_predictions
    if saved.is_file():
        found = read_predictions(saved, samples.class_names)
        if set(found) == set(files):
            return np.stack([found[f] for f in files])
        logger.warning(f"{saved} is not about the fold's test files: recomputing them")
    logger.info(f"{fold_dir.name}: computing its test images' probabilities from its best checkpoint")
    return recompute_probabilities(fold_dir, samples)


# -- the options ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CalibrationOptions:
    """What to fit: temperature scaling or not, and an operating point about ``positive_class``."""

    temperature_scaling: bool = True
    target_sensitivity: float | None = None
    target_specificity: float | None = None
    positive_class: str | None = None  # the resolved name (two classes), else None

    @property
    def target(self) -> bool:
        return self.target_sensitivity is not None or self.target_specificity is not None


def calibration_options(
    config: Any, class_names: Sequence[str], positive_class: str | None = None
) -> CalibrationOptions:
    """The options of a TrainConfig (or a saved config dict) for these classes; a target with other
    than two classes is one line (checked before any fold trains)."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    options = CalibrationOptions(
        temperature_scaling=bool(get("temperature_scaling", True)),
        target_sensitivity=get("target_sensitivity"),
        target_specificity=get("target_specificity"),
    )
    flag = "--target-sensitivity" if options.target_sensitivity is not None else "--target-specificity"
    if options.target and len(class_names) != 2:
        raise ValueError(
            f"{flag} picks a threshold between two classes; the data has {len(class_names)} ({', '.join(class_names)})"
        )
    if len(class_names) != 2:
        return options
    positive = class_names[resolve_positive_class(class_names, positive_class or get("positive_class"))[0]]
    return CalibrationOptions(
        options.temperature_scaling, options.target_sensitivity, options.target_specificity, positive
    )


# -- out-of-fold predictions -> calibration.json ----------------------------------------------------
def calibrate_folds(run_dir: Path, samples: Samples, options: CalibrationOptions) -> dict[str, Any]:
    """oof_predictions.csv, calibration.json and the two figures of the cross-validation in ``run_dir``
    (whose cv_splits.json names every fold's test files among ``samples``); returns the summary."""
    run = RunDir(run_dir)
    splits = json.loads(run.cv_splits.read_text(encoding="utf-8"))
    names = samples.class_names
    by_file = {_relative(p, samples.root): i for i, p in enumerate(samples.paths)}
    rows: list[tuple[str, int, np.ndarray]] = []  # (file, fold, probabilities)
    for k, fold in enumerate(splits["folds"], start=1):
        files = list(fold["test"])
        unknown = [f for f in files if f not in by_file]
        if unknown:
            raise ValueError(f"{run.cv_splits}: fold {k} tests {unknown[0]}, which is not in {samples.root}")
        probs = _fold_probabilities(run.fold(k).path, samples.subset([by_file[f] for f in files]))
        rows += [(f, k, p) for f, p in zip(files, probs)]
    index = [by_file[f] for f, _, _ in rows]
    labels = np.array([samples.labels[i] for i in index])
    probs = np.stack([p for _, _, p in rows])
    with atomic_write(run.oof_predictions, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "group", "fold", TRUE_LABEL, *(f"prob_{n}" for n in names)])
        for (file, k, p), i in zip(rows, index):
            writer.writerow([file, samples.groups[i], k, names[samples.labels[i]], *(repr(float(v)) for v in p)])
    calibration = fit_calibration(
        probs,
        labels,
        names,
        positive_class=options.positive_class,
        target_sensitivity=options.target_sensitivity,
        target_specificity=options.target_specificity,
        temperature_scaling=options.temperature_scaling,
        source=f"out-of-fold predictions of {len(labels)} images ({run.oof_predictions.name})",
    )
    calibration.save(run.calibration)
    return _summary(run, probs, labels, calibration, options)


def _summary(
    run: RunDir, probs: np.ndarray, labels: np.ndarray, calibration: Calibration, options: CalibrationOptions
) -> dict[str, Any]:
    """What cv_metrics.json records (and cv_report.md shows) of a calibration fitted on ``probs``."""
    names = calibration.class_names
    calibrated = calibration.calibrate(probs)
    plot_reliability(probs, calibrated, labels, run.reliability_plot)
    summary: dict[str, Any] = {
        "images": len(labels),
        "temperature_scaling": options.temperature_scaling,
        "temperature": calibration.temperature,
        "before": calibration.before,
        "after": calibration.after,
        "coverage": [_coverage(probs, labels, calibration, c) for c in REPORTED_COVERAGES],
        "reliability_plot": run.RELIABILITY_PLOT,
        "files": {"oof_predictions": run.OOF_PREDICTIONS, "calibration": run.CALIBRATION},
    }
    if calibration.threshold is not None and options.positive_class is not None:
        positive = names.index(options.positive_class)
        decided = judge(probs, calibration).labels
        is_positive = labels == positive
        summary["operating_point"] = {
            "positive_class": options.positive_class,
            "target": calibration.target,
            "threshold": calibration.threshold,
            "sensitivity": float((decided[is_positive] == positive).mean()),
            "specificity": float((decided[~is_positive] != positive).mean()),
        }
    if len(names) == 2:
        point = summary.get("operating_point")
        where = (1 - point["specificity"], point["sensitivity"]) if point else None
        drawn = plot_roc(labels, calibrated, names, run.cv_roc_plot, options.positive_class, operating_point=where)
        if drawn is not None:
            summary["roc_plot"] = run.CV_ROC_PLOT
    return summary


def _coverage(probs: np.ndarray, labels: np.ndarray, calibration: Calibration, coverage: float) -> dict[str, Any]:
    """How often the sets of ``coverage`` hold the true class, made from these same images' scores."""
    return set_coverage(judge(probs, calibration, coverage), labels, calibration.class_names)


def calibrate_study(
    run_dir: Path, samples: Samples, config: Any, positive_class: str | None, log: Callable[[str], None]
) -> dict[str, Any]:
    """:func:`calibrate_folds` with the options of ``config`` (a TrainConfig or a saved config dict),
    logged in one line; what cross-validation and ``resnexus calibrate`` call."""
    summary = calibrate_folds(run_dir, samples, calibration_options(config, samples.class_names, positive_class))
    log(describe_calibration(summary))
    return summary
