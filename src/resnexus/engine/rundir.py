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
      cv_metrics.json        per-fold metrics, their mean and standard deviation (once every fold is done)
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
    """A run directory (it need not exist yet): the paths of what a run writes there.

    Every file name of the layout is a constant of this class, and :meth:`layout` says what each
    file holds; code asks a ``RunDir`` for a path instead of spelling it.

    Args:
        path: The run directory (``--out``).

    Example:
        ``RunDir("runs/cv").fold(2).best()`` is ``runs/cv/fold2/checkpoints/best.pt``;
        ``RunDir("runs/cv").refit.saved_best()`` the refit model's file if it was saved, else None.
    """

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
        """The folder of the run's checkpoint files."""
        return self.path / self.CHECKPOINTS

    def best(self, framework: Framework = "torch") -> Path:
        """The selected model's file, whether or not it exists yet.

        Args:
            framework: ``"torch"`` (``checkpoints/best.pt``) or ``"keras"`` (``best.keras``).

        Returns:
            The path; :meth:`saved_best` finds the one a finished run saved.
        """
        return self.checkpoints / f"best{_SUFFIX[framework]}"

    def last(self, framework: Framework = "torch") -> Path:
        """The resumable state's file (``checkpoints/last.pt``, or ``last.keras`` for ``"keras"``)."""
        return self.checkpoints / f"last{_SUFFIX[framework]}"

    @property
    def history(self) -> Path:
        """``history.csv``: one row per epoch."""
        return self.path / self.HISTORY

    @property
    def metrics(self) -> Path:
        """``metrics.json``: the selected model's test metrics."""
        return self.path / self.METRICS

    @property
    def report(self) -> Path:
        """``report.md``: the run described for a reader."""
        return self.path / self.REPORT

    @property
    def tensorboard(self) -> Path:
        """The TensorBoard events folder (``--tensorboard``)."""
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
        """A cross-validation run's refit model (trained on every image): an ordinary training run."""
        return RunDir(self.path / self.REFIT)

    @property
    def cv_run(self) -> Path:
        """``cv_run.json``: the folds and whether to refit, written when a cross-validation starts."""
        return self.path / self.CV_RUN

    @property
    def cv_splits(self) -> Path:
        """``cv_splits.json``: every fold's files."""
        return self.path / self.CV_SPLITS

    @property
    def cv_metrics(self) -> Path:
        """``cv_metrics.json``: per-fold metrics, their mean and std (once every fold is done)."""
        return self.path / self.CV_METRICS

    @property
    def cv_report(self) -> Path:
        """``cv_report.md``: the cross-validated estimate described for a reader."""
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
        """The run directory a checkpoint file was saved in.

        Args:
            checkpoint: A checkpoint file's path.

        Returns:
            ``RUN`` for ``RUN/checkpoints/best.pt`` (any file in a ``checkpoints/`` folder), else None.
        """
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

    # -- what each file holds: docs/reference/run-directory.md is generated from this, and a test
    # checks that every name above appears here (a new name gets its row too) ---------------------
    @classmethod
    def layout(cls) -> list[tuple[str, str, str]]:
        """What a run writes, for the reference page: ``(run, path, what it holds)`` rows.

        Returns:
            One row per file or folder (a folder's path ends in ``/``), relative to the run
            directory of ``run``: "training" (``train``; also each fold, the refit and each model of
            a study), "cross-validation" (``train --folds K``) or "comparison" (``compare``).
        """
        run, fold = cls("."), cls(".").fold(1)

        def row(run_kind: str, path: Path, what: str, folder: bool = False) -> tuple[str, str, str]:
            return run_kind, path.as_posix() + ("/" if folder else ""), what

        return [
            row("training", run.best(), _BEST),
            row("training", run.best("keras"), "the same, for a Keras run (`--framework keras`)"),
            row("training", run.last(), _LAST),
            row("training", run.last("keras"), "the same, for a Keras run"),
            row("training", run.history, "one row per epoch: losses, accuracies, learning rate, seconds"),
            row("training", run.metrics, _METRICS),
            row("training", run.report, _REPORT),
            row("training", run.tensorboard, "TensorBoard event files (`--tensorboard`)", folder=True),
            row("cross-validation", run.cv_run, "the number of folds and whether to refit: what `--resume` continues"),
            row("cross-validation", run.cv_splits, "every fold's train / validation / test files"),
            row("cross-validation", run.cv_metrics, _CV_METRICS),
            row("cross-validation", run.cv_report, _CV_REPORT),
            row("training", run.test_predictions, _TEST_PREDICTIONS),
            row("cross-validation", run.oof_predictions, _OOF),
            row("cross-validation", run.calibration, _CALIBRATION),
            row("cross-validation", run.reliability_plot, "the reliability diagram, before and after calibration"),
            row(
                "cross-validation",
                run.cv_roc_plot,
                "the out-of-fold ROC curve, with the operating point if one was asked",
            ),
            row(
                "cross-validation",
                fold.path,
                "fold 1's training run (to foldK/), tested on its held-out fold",
                folder=True,
            ),
            row("cross-validation", run.refit.path, _REFIT, folder=True),
            row("cross-validation", fold.path / cls.CV_FINISHED, _FINISHED.format(where="each fold's and the refit's")),
            row("comparison", run.path / cls.COMPARE_FINISHED, _FINISHED.format(where="each model's")),
        ]


# what RunDir.layout says of its longer entries
_BEST = (
    "the model to use: weights, model name and config, class names, image size and normalisation, and what it "
    "was trained on. With at least 100 validation images the epoch with the best validation accuracy (ties: the "
    "lower loss), else the final weights (`--select` overrides)"
)
_LAST = (
    "the resumable state: model, optimizer, scheduler, grad scaler, EMA, history, random state, position in the "
    "epoch and a fingerprint of each split's files"
)
_METRICS = (
    "the selected model on the test split (else validation, else the training images): accuracy, balanced "
    "accuracy, per-class precision / recall / F1, macro F1, confusion matrix, ROC-AUC, for two classes "
    "sensitivity and specificity, each with its 95 % interval (`<metric>_ci`); `absent_classes`, skipped files"
)
_REPORT = "the same in words, with loss / accuracy curves, the confusion matrix and the ROC curve as images beside it"
_CV_METRICS = (
    "the protocol, per-fold test metrics, their mean, standard deviation and the mean's 95 % interval (`ci`), "
    "written once every fold is done"
)
_CV_REPORT = "the cross-validated estimate (mean ± std and 95 % interval), which model to deploy, a per-fold table"
_TEST_PREDICTIONS = (
    "with a test split: one row per test image, its path relative to the data folder, its true class and every "
    "class's probability"
)
_OOF = "every image's out-of-fold class probabilities: those of the fold model that never saw it"
_CALIBRATION = (
    "what predict, evaluate, explain and serve apply to the deployable model: the temperature, the out-of-fold "
    "conformal scores behind `--coverage` sets and the operating threshold (`--target-sensitivity`)"
)
_REFIT = (
    'the deployable model: the same recipe trained on every image (`trained_on: "all"`); its own report is on '
    "training images"
)
_FINISHED = (
    "written into {where} run directory once it has finished: its outcome, recipe and images, so `--resume` "
    "keeps it instead of training it again"
)
