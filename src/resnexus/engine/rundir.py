"""The layout of a run directory, in one place: every other module asks a :class:`RunDir` for a path.

A training run (``train``, each fold of ``train --folds K``, each model of ``compare``)::

    RUN_DIR/
      checkpoints/best.pt    the selected model (best.keras for a Keras run)
      checkpoints/last.pt    the model and optimizer state to resume from (last.keras)
      history.csv            one row per epoch
      metrics.json           the test split's metrics
      report.md              what was trained on what, and how well it did
      test_predictions.csv   the test split's class probabilities, one row per image (when there is a test split)
      tensorboard/           TensorBoard events (``--tensorboard``)

A cross-validation run holds one training run per fold and the refit model::

    RUN_DIR/
      cv_run.json            the folds and whether to refit: what ``--resume`` continues
      cv_splits.json         every fold's train / val / test files
      cv_metrics.json        per-fold metrics, their mean and standard error (once every fold is done)
      cv_report.md
      oof_predictions.csv    every image's out-of-fold class probabilities (the fold model that never saw it)
      calibration.json       temperature, conformal scores and operating threshold fitted on them
      reliability.png        the reliability diagram of the out-of-fold probabilities, before and after calibration
      cv_roc.png             the out-of-fold ROC curve (two classes), with the chosen operating point
      fold1/ ... foldK/      training runs
      refit/                 the deployable model: the same recipe trained on every image

Why one owner: the layout is read by resume, inference, ``compare``, the server and the reports;
spelled out in each of them, a rename in one would silently break the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Framework", "RunDir"]

Framework = Literal["torch", "keras"]
_SUFFIX = {"torch": ".pt", "keras": ".keras"}


@dataclass(frozen=True)
class RunDir:
    """A run directory (it need not exist yet): the paths of what a run writes there."""

    path: Path

    CHECKPOINTS = "checkpoints"
    HISTORY = "history.csv"
    METRICS = "metrics.json"
    REPORT = "report.md"
    TENSORBOARD = "tensorboard"
    CV_RUN = "cv_run.json"
    CV_SPLITS = "cv_splits.json"
    CV_METRICS = "cv_metrics.json"
    CV_REPORT = "cv_report.md"
    REFIT = "refit"
    OOF_PREDICTIONS = "oof_predictions.csv"
    CALIBRATION = "calibration.json"
    # what makes an existing folder "a resnexus run" (so --overwrite may replace it) rather than other files
    TRAIN_FILES = (CHECKPOINTS, HISTORY, METRICS)
    CV_FILES = (CV_METRICS, CV_SPLITS, CV_REPORT, "fold[0-9]*", REFIT)

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    def __fspath__(self) -> str:
        return str(self.path)

    # -- a training run -------------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    def best(self, framework: Framework = "torch") -> Path:
        """The selected model's file (``checkpoints/best.pt`` or ``best.keras``)."""
        return self.checkpoints / f"best{_SUFFIX[framework]}"

    def last(self, framework: Framework = "torch") -> Path:
        """The resumable state's file (``checkpoints/last.pt`` or ``last.keras``)."""
        return self.checkpoints / f"last{_SUFFIX[framework]}"

    @property
    def history(self) -> Path:
        return self.path / self.HISTORY

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def report(self) -> Path:
        return self.path / self.REPORT

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    def saved_best(self) -> Path | None:
        """The best checkpoint this run saved (a PyTorch run's, else a Keras run's), or None."""
        return next((p for p in (self.best("torch"), self.best("keras")) if p.is_file()), None)

    def saved_last(self) -> Path | None:
        """The resumable checkpoint this run saved (last.pt, else last.keras), or None."""
        return next((p for p in (self.last("torch"), self.last("keras")) if p.is_file()), None)

    def saved_checkpoints(self) -> list[Path]:
        """Every checkpoint file in ``checkpoints/`` (an empty folder, left by a failed start, holds none)."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(p for suffix in _SUFFIX.values() for p in self.checkpoints.glob(f"*{suffix}"))

    # -- a cross-validation run -----------------------------------------------------------------
    def fold(self, k: int) -> RunDir:
        """Fold ``k`` (1-based) of a cross-validation run: an ordinary training run."""
        return RunDir(self.path / f"fold{k}")

    @property
    def refit(self) -> RunDir:
        return RunDir(self.path / self.REFIT)

    @property
    def cv_run(self) -> Path:
        return self.path / self.CV_RUN

    @property
    def cv_splits(self) -> Path:
        return self.path / self.CV_SPLITS

    @property
    def cv_metrics(self) -> Path:
        return self.path / self.CV_METRICS

    @property
    def cv_report(self) -> Path:
        return self.path / self.CV_REPORT

    @property
    def oof_predictions(self) -> Path:
        return self.path / self.OOF_PREDICTIONS

    @property
    def calibration(self) -> Path:
        return self.path / self.CALIBRATION

    def is_cross_validation(self) -> bool:
        """A cross-validation run, started (cv_run.json) or finished (cv_metrics.json)."""
        return self.cv_run.is_file() or self.cv_metrics.is_file()

    # -- from a path a user gave ----------------------------------------------------------------
    @classmethod
    def holding(cls, checkpoint: str | Path) -> RunDir | None:
        """The run directory a checkpoint file was saved in (``RUN/checkpoints/best.pt``), else None."""
        parent = Path(checkpoint).parent
        return cls(parent.parent) if parent.name == cls.CHECKPOINTS else None

    # -- what a finished run of a study records for resuming the study (engine/finished.py) ----
    CV_FINISHED = "cv_run_finished.json"  # in each fold / refit run directory of a cross-validation
    COMPARE_FINISHED = "compare_run.json"  # in each run directory of a comparison

    # -- what a training run keeps of its test split, and a cross-validation run's calibration figures
    TEST_PREDICTIONS = "test_predictions.csv"  # path (relative to the data root), label, prob_<class>...
    RELIABILITY_PLOT = "reliability.png"
    CV_ROC_PLOT = "cv_roc.png"

    @property
    def test_predictions(self) -> Path:
        return self.path / self.TEST_PREDICTIONS

    @property
    def reliability_plot(self) -> Path:
        return self.path / self.RELIABILITY_PLOT

    @property
    def cv_roc_plot(self) -> Path:
        return self.path / self.CV_ROC_PLOT
