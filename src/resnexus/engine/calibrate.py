"""``resnexus calibrate RUN_DIR``: (re)fit a cross-validation run's calibration from its fold models.

For a run trained before its fold runs kept their test predictions, the fold models' probabilities
are recomputed on the test files cv_splits.json names; for any run, another operating point
(``--target-sensitivity`` / ``--target-specificity``) or no temperature can be asked for without
training again. Writes oof_predictions.csv and calibration.json, and brings cv_metrics.json and
cv_report.md up to date (engine/out_of_fold.py does the work, as at the end of ``train --folds``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..data import scan_dataset
from .checkpoint import Checkpoint
from .crossval import write_record
from .out_of_fold import calibrate_study
from .rundir import RunDir

logger = logging.getLogger(__name__)

__all__ = ["calibrate"]


def calibrate(
    run_dir: str | Path,
    target_sensitivity: float | None = None,
    target_specificity: float | None = None,
    temperature_scaling: bool | None = None,
) -> dict[str, Any]:
    """Fit the calibration of the cross-validation run in ``run_dir`` again from its fold models'
    out-of-fold predictions; returns the summary that cv_metrics.json records. A target given here
    replaces the run's own (``None``: the run's; ``temperature_scaling=None``: the run's choice)."""
    run = RunDir(run_dir)
    _check_targets(target_sensitivity, target_specificity)
    if not run.cv_splits.is_file():
        raise FileNotFoundError(
            f"{run.path} is not a cross-validation run (no {run.CV_SPLITS}): calibration is fitted on the "
            "out-of-fold predictions of `resnexus train --folds K`"
        )
    best = run.fold(1).saved_best()
    if best is None:
        raise FileNotFoundError(f"{run.fold(1).path} holds no best checkpoint: finish the run with `train --resume`")
    settings = dict(Checkpoint.load(best).config or {})
    if target_sensitivity is not None or target_specificity is not None:
        settings.update(target_sensitivity=target_sensitivity, target_specificity=target_specificity)
    if temperature_scaling is not None:
        settings["temperature_scaling"] = temperature_scaling
    record = json.loads(run.cv_metrics.read_text(encoding="utf-8")) if run.cv_metrics.is_file() else None
    positive = (record or {}).get("protocol", {}).get("positive_class") or settings.get("positive_class")
    samples = scan_dataset(settings["data"], settings.get("group_by"))
    summary = calibrate_study(run.path, samples, settings, positive, logger.info)
    if record is not None:
        record["calibration"] = summary
        write_record(run.path, record)
    return summary


def _check_targets(sensitivity: float | None, specificity: float | None) -> None:
    if sensitivity is not None and specificity is not None:
        raise ValueError("give one operating point: --target-sensitivity or --target-specificity, not both")
    for flag, value in (("--target-sensitivity", sensitivity), ("--target-specificity", specificity)):
        if value is not None and not 0 < value <= 1:
            raise ValueError(f"{flag} must be in (0, 1], e.g. 0.95; got {value}")
