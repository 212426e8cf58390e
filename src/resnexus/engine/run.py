"""One training run, whichever framework trains it: prepare, after each epoch, finish.

A run is the same job for PyTorch (engine/fit.py) and Keras (engine/keras_fit.py); only the
model and its training steps differ. :func:`execute` does the shared part, in this order:

* **prepare** (:meth:`Run.prepare`): complete the config, seed, check the run directory, check
  and split the data (every image read once), build the held-out loaders, build the model through
  the backend, and on ``resume`` restore it from ``last.pt`` / ``last.keras`` after checking that
  the data is the data it was trained on;
* **after each epoch** (:meth:`Run.end_epoch`, called by the backend's training loop): the history
  row, the best epoch, best / last checkpoints (:meth:`Run.save`), early stopping and stop signals;
* **finish** (:meth:`Run.finish`): the best weights evaluated on the test split (else validation,
  else training) as a PyTorch model, metrics.json and report.md.

A framework is a :class:`Backend`: it builds its model and what resuming restores, fits the
epochs (calling ``run.end_epoch`` after each), saves best / last checkpoints in its own format,
loads them back for ``--resume`` and hands the best weights to the final evaluation as a PyTorch
module. Where each file goes is :class:`~resnexus.engine.rundir.RunDir`'s.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import EvalPreprocess, ImageDataset, Samples, eval_transform
from ..data.sampler import EpochBatches
from ..files import default_cache_dir
from ..models.registry import ModelEntry, get_entry
from ..reports import classification_metrics, format_metrics, resolve_positive_class
from . import distributed
from .config import TrainConfig, checkpoint_selection, complete_config, warn_about_config
from .inference import predict_loader
from .interrupt import StopOnSignal, TrainingInterrupted
from .out_of_fold import write_test_predictions
from .run_checks import (
    check_run_dir,
    check_same_data,
    checked_splits,
    data_fingerprint,
    describe_splits,
)
from .run_output import (
    add_scalars,
    close_tensorboard,
    describe_epoch,
    describe_selection,
    history_row,
    small_data_hint,
    tensorboard_writer,
    write_history,
    write_metrics,
    write_run_report,
)
from .rundir import Framework, RunDir
from .runtime import Runtime

logger = logging.getLogger(__name__)

__all__ = [
    "Backend",
    "EpochEnd",
    "HeldOut",
    "Run",
    "RunRecord",
    "TrainResult",
    "cache_options",
    "execute",
    "held_out_split",
    "make_loader",
    "no_trace_of_a_failed_start",
    "seed_everything",
    "validate",
]

EpochEnd = Literal["continue", "stop", "interrupt"]  # what the loop does after an epoch: see Run.end_epoch


@dataclass
class TrainResult:
    """What :func:`resnexus.train` returns: where the run is and how well its selected model did.

    Attributes:
        run_dir: The run directory (:class:`~resnexus.engine.rundir.RunDir` names its files);
            ``Checkpoint.load(run_dir)`` opens the trained model.
        metrics: The selected model's metrics on the test split (else validation, else the
            training images), as written to ``metrics.json``: accuracy, balanced accuracy,
            per-class precision / recall / F1, confusion matrix, ROC-AUC, ``split`` and more.
        history: One dict per epoch, the rows of ``history.csv``.
        best_epoch: The epoch whose weights ``checkpoints/best.pt`` holds.
        seconds: Training time over every session of the run (a resumed run included).
    """

    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    best_epoch: int
    seconds: float

    @property
    def report(self) -> Path:
        """The run's ``report.md``."""
        return RunDir(self.run_dir).report


@dataclass(kw_only=True)
class RunRecord:
    """The framework-independent part of a run's state: the epochs done, their history rows, the
    best epoch so far and the data fingerprint. :class:`resnexus.engine.fit.RunState` (PyTorch) adds
    the model and optimizer; the Keras backend keeps this alongside its own model."""

    history: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch
    best_score: list[float] = field(default_factory=lambda: [-math.inf, -math.inf])  # [accuracy, -loss]
    best_epoch: int = 0
    epoch: int = 0  # epochs finished
    # the images trained on (run_checks.data_fingerprint): saved, and on resume compared, never loaded
    data: dict[str, Any] | None = None
    # seconds the earlier sessions of a resumed run spent, and when this session started: the run's
    # training time is all of them, not the last session's (a resumed finished run: its evaluation)
    earlier_seconds: float = 0.0
    session_started: float = field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        """The run's time so far, over every session."""
        return self.earlier_seconds + time.perf_counter() - self.session_started

    def record_dict(self) -> dict[str, Any]:
        return {
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "epoch": self.epoch,
            "history": self.history,
            "seconds": self.seconds(),
        }

    def load_record(self, state: dict[str, Any]) -> None:
        self.history, self.best_score, self.best_epoch = state["history"], state["best_score"], state["best_epoch"]
        self.epoch = state["epoch"]
        # an older last.pt has no "seconds": its epochs' own times are the best record of them
        self.earlier_seconds = float(state.get("seconds", sum(row.get("seconds") or 0.0 for row in self.history)))

    def end_epoch(self, row: dict[str, Any], monitor: str, select: str) -> bool:
        """Record a finished epoch; True when it is the new best (every epoch is with select="last")."""
        self.history.append(row)
        self.epoch = row["epoch"]
        # accuracy first, then lower loss (a small validation set has many ties)
        loss = row[f"{monitor}_loss"]
        score = [row[f"{monitor}_accuracy"], -(loss if loss is not None else 0.0)]
        improved = select == "last" or score > self.best_score
        if improved:
            self.best_score, self.best_epoch = score, self.epoch
        return improved


class HeldOut(NamedTuple):
    """This rank's share of a split evaluated without augmentation (validation, test)."""

    loader: DataLoader  # uint8 crops of the images in `indices`
    indices: list[int]  # positions in the split: gathering puts every rank's predictions back in order
    preprocess: EvalPreprocess  # `.batch` finishes a batch on the device


class Backend(Protocol):
    """What a framework implements to train a :class:`Run` (see the module docstring for the order)."""

    framework: Framework  # names its checkpoint files: best.pt / last.pt, best.keras / last.keras
    trained_with: str | None  # what report.md says trained the model; None: PyTorch
    runtime: Runtime  # device and precision of the final evaluation (and of training, for PyTorch)

    def start(self, config: TrainConfig) -> tuple[TrainConfig, distributed.Context]:
        """The config as this framework runs it, and this process's place among the run's processes."""
        ...

    def build(self, run: Run) -> RunRecord:
        """The model, optimiser and data pipeline for ``run``; returns the record :meth:`save` saves."""
        ...

    def describe(self, run: Run) -> str:
        """The log line about the model: parameters, initial weights, device, precision, steps."""
        ...

    def load_for_resume(self, path: Path, check_data: Callable[[dict[str, Any] | None], None]) -> dict[str, Any]:
        """Restore the model, optimizer and record from ``path`` (its ``data`` given to ``check_data``
        first); returns the saved record (with ``partial`` where it stopped inside an epoch)."""
        ...

    def fit(self, run: Run) -> None:
        """Train epochs ``run.record.epoch + 1`` .. ``run.config.epochs``, calling ``run.end_epoch``
        after each; raises ``run.interrupted(...)`` when it says "interrupt"."""
        ...

    def save(self, run_dir: RunDir, metadata: dict[str, Any], *, best: bool, last: bool) -> None:
        """Write best and / or last (what resuming needs) with ``metadata`` (see :meth:`Run.metadata`)."""
        ...

    def best_model(self, run: Run) -> nn.Module:
        """The saved best weights as a PyTorch module on ``runtime.device``, for the final evaluation."""
        ...


def execute(backend: Backend, config: TrainConfig, splits: dict[str, Samples] | None = None) -> TrainResult:
    """Train and evaluate one model with ``backend``: prepare, fit the epochs, finish.

    ``splits`` ("train", optional "val" and "test") replaces the split made from ``config.data``:
    cross-validation and ``compare`` use it to give several runs exactly the same images.
    """
    started = time.perf_counter()
    config = complete_config(config)  # validates (for Keras: refuses what it cannot do)
    if splits is None and (config.target_sensitivity is not None or config.target_specificity is not None):
        raise ValueError("an operating point (--target-sensitivity / --target-specificity) goes with --folds")
    seed_everything(config.seed)
    config, ctx = backend.start(config)
    run = Run(config, backend, ctx, started)
    ctx.barrier()  # every rank has checked the run directory before rank 0 writes into it
    with no_trace_of_a_failed_start(run.dir.path, ctx.is_main):  # or something --resume can use
        run.prepare(splits)
        with StopOnSignal() as stop:  # SIGINT / SIGTERM: finish the step or epoch, save, exit with a resume hint
            run.stop = stop
            backend.fit(run)
        return run.finish()


class Run:
    """One run in progress: its config, directory, data, record and the backend training it."""

    def __init__(self, config: TrainConfig, backend: Backend, ctx: distributed.Context, started: float) -> None:
        self.config, self.backend, self.ctx, self.started = config, backend, ctx, started
        # rank 0 alone logs and writes files
        self.info: Callable[[str], None] = logger.info if config.verbose and ctx.is_main else logger.debug
        self.dir = RunDir(check_run_dir(config))
        self.stop = StopOnSignal()  # replaced by the one in force while the backend fits
        self.last_saved = time.monotonic()
        self.board: Any = None

    # -- prepare --------------------------------------------------------------------------------
    def prepare(self, splits: dict[str, Samples] | None) -> None:
        """Data, model and (``resume``) the state saved in the last checkpoint."""
        config, ctx = self.config, self.ctx
        # -- data: every image checked once, split, and served by loaders that decode it once
        split_here = splits is None  # not given by cross-validation / compare: made from config.data
        self.splits, self.skipped = check_and_split(config, splits, verbose=config.verbose and ctx.is_main)
        self.class_names, self.entry = self.splits["train"].class_names, get_entry(config.model)
        self.held_out = {
            name: held_out_split(samples, config, self.entry, ctx)
            for name, samples in self.splits.items()
            if name != "train"
        }
        self.info(f"data: {describe_splits(self.splits)}; classes: {', '.join(self.class_names)}")
        if split_here and (hint := small_data_hint(config, self.splits)):
            self.info(hint)
        warn_about_config(config, split_here and ctx.is_main and config.verbose)

        # -- model and optimiser: the state that resuming restores
        self.record = self.backend.build(self)
        self.record.data, self.record.session_started = data_fingerprint(self.splits, config.data), self.started
        self.info(self.backend.describe(self))
        last = self.dir.last(self.backend.framework)
        if config.resume and last.is_file():
            self._resume(last)

        # -- what the epochs monitor and keep
        self.monitor = "val" if "val" in self.held_out else "train"
        self.select = checkpoint_selection(config, len(self.splits["val"]) if "val" in self.splits else 0)
        best = self.dir.best(self.backend.framework).name
        self.info(describe_selection(self.select, self.monitor, config.select, best=best))
        self.board = tensorboard_writer(self.dir.tensorboard) if config.tensorboard and ctx.is_main else None

    def _resume(self, last: Path) -> None:
        def check_data(saved: dict[str, Any] | None) -> None:
            check_same_data(saved, self.record.data, self.dir.path, verbose=self.config.verbose and self.ctx.is_main)

        saved = self.backend.load_for_resume(last, check_data)
        epoch = self.record.epoch
        if self.config.epochs < epoch:
            raise ValueError(
                f"{self.dir.path} has trained {epoch} epochs: epochs={self.config.epochs} would shorten it"
            )
        partial = saved.get("partial")
        where = f"step {partial['step']} of epoch {epoch + 1}" if partial else f"epoch {epoch}"
        self.info(f"resuming {self.dir.path} after {where}")

    # -- after each epoch -----------------------------------------------------------------------
    def end_epoch(
        self,
        epoch: int,
        lr: float,
        train: tuple[float, float, int],
        val: tuple[np.ndarray, np.ndarray, float] | None,
        seconds: float,
    ) -> EpochEnd:
        """Record epoch ``epoch`` (its training sums, validation predictions, the learning rate the
        next step would use), save what the rules ask for, and say whether the loop goes on:
        "stop" for early stopping, "interrupt" for a stop signal (everything is saved by then)."""
        config = self.config
        row = history_row(epoch, lr, train, val, seconds=seconds)
        improved = self.record.end_epoch(row, self.monitor, self.select)
        add_scalars(self.board, row)
        stopping_early = bool(config.early_stopping) and epoch - self.record.best_epoch >= config.early_stopping
        final = epoch == config.epochs or stopping_early
        stop_now = self.ctx.any(self.stop.signal is not None) and not final
        self.save(best=improved and (self.select == "val" or final), end_of_run=final or stop_now)
        self.info(describe_epoch(row, config.epochs, new_best=improved and self.select == "val"))
        if stop_now:
            return "interrupt"
        if stopping_early:
            self.info(f"early stopping: no better {self.monitor} accuracy for {config.early_stopping} epochs")
            return "stop"
        return "continue"

    def save(self, best: bool, end_of_run: bool) -> None:
        """Best when ``best``; last when the run ends here (last epoch, early stop, stop signal) or
        ``checkpoint_every`` has passed: it includes the optimizer state, hundreds of MB for a
        ResNeXt-50, so not every epoch. Then history.csv. Rank 0 alone writes."""
        best = best and self.ctx.is_main
        resumable = end_of_run or time.monotonic() - self.last_saved >= self.config.checkpoint_every
        if self.ctx.is_main and (best or resumable):
            self.backend.save(self.dir, self.metadata(), best=best, last=resumable)
        if resumable:
            self.last_saved = time.monotonic()
        if self.ctx.is_main:
            write_history(self.record.history, self.dir.history)

    def save_last(self) -> None:
        """Last alone: a run stopped inside an epoch (the backend's record says where)."""
        if self.ctx.is_main:
            self.backend.save(self.dir, self.metadata(), best=False, last=True)
        self.last_saved = time.monotonic()

    def metadata(self) -> dict[str, Any]:
        """What every checkpoint carries besides the model: everything inference needs, and the run."""
        config, split_sizes = self.config, {name: len(s) for name, s in self.splits.items()}
        return dict(
            model_name=config.model,
            model_config=config.model_config,
            class_names=self.class_names,
            image_size=config.image_size,
            mean=self.entry.mean,
            std=self.entry.std,
            crop_fraction=config.crop_fraction,
            extra={
                "epoch": self.record.epoch,
                "config": asdict(config),
                "history": self.record.history,
                "positive_class": config.positive_class,
                # "all": no image was held back (a cross-validation refit), so no metric of this
                # model's own is an estimate; "train split": val / test images were held back
                "trained_on": "all" if set(split_sizes) == {"train"} else "train split",
                "split_sizes": split_sizes,
            },
        )

    def interrupted(self, where: str) -> TrainingInterrupted:
        """The exception that ends a stopped run, once every rank got here (rank 0 has saved by then:
        torchrun would kill it if another rank exited first)."""
        self.ctx.barrier()
        saved = str(self.dir.last(self.backend.framework))
        return TrainingInterrupted(self.dir.path, self.stop.signal or signal.SIGTERM, where, saved=saved)

    # -- finish ---------------------------------------------------------------------------------
    def finish(self) -> TrainResult:
        """The best weights evaluated on the test split, else validation, else (unaugmented) training;
        then metrics.json, TensorBoard's last scalars and report.md (rank 0)."""
        config, ctx, record, runtime = self.config, self.ctx, self.record, self.backend.runtime
        ctx.barrier()  # the best checkpoint is on disk for every rank
        model = self.backend.best_model(self)
        final_split = "test" if "test" in self.held_out else self.monitor
        split = self.held_out.get(final_split) or held_out_split(self.splits["train"], config, self.entry, ctx)
        y_true, probs, loss = validate(model, split, runtime, ctx, config.tta)
        metrics = classification_metrics(y_true, probs, self.class_names, config.positive_class)
        metrics.update(split=final_split, loss=loss, best_epoch=record.best_epoch, model=config.model)
        if self.backend.framework != "torch":
            metrics["framework"] = self.backend.framework
        metrics["skipped_images"] = self.skipped
        result = TrainResult(self.dir.path, metrics, record.history, record.best_epoch, seconds=record.seconds())
        if ctx.is_main:
            write_metrics(metrics, self.dir.metrics)
            if final_split == "test":  # a fold's share of the out-of-fold predictions (engine/out_of_fold.py)
                write_test_predictions(self.dir.test_predictions, self.splits["test"], probs)
            close_tensorboard(self.board, metrics, final_split, record.best_epoch)
            write_run_report(result, config, self.splits, y_true, probs, model, runtime, self.backend.trained_with)
            seen = " (the images it was trained on: not an estimate for new images)" if final_split == "train" else ""
            self.info(f"{final_split}{seen}: {format_metrics(metrics)}")
            log_metric_warnings(metrics, self.dir.path, config.verbose)
            self.info(f"report: {self.dir.report}")
        return result


def log_metric_warnings(metrics: dict[str, Any], where: Path | str, verbose: bool = True) -> None:
    """What makes a run's metrics misleading (``metrics["warnings"]``, e.g. a constant predictor), as warnings."""
    for warning in metrics.get("warnings") or []:
        (logger.warning if verbose else logger.debug)(f"warning: {where}: {warning}")


def validate(
    model: nn.Module, split: HeldOut, runtime: Runtime, ctx: distributed.Context, tta: bool = False
) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels, probabilities and mean loss of ``model`` on a whole held-out split.

    Each rank predicts its share of the split; the results of all ranks are gathered back into
    the split's order, so every rank returns the same arrays. ``tta``: flip averaging.
    """
    y, p, loss = predict_loader(
        model, split.loader, runtime.device, runtime.autocast, runtime.memory_format, tta, split.preprocess.batch
    )
    return ctx.gather(split.indices, y, p, loss * len(y))


# -- data both backends share -------------------------------------------------------------------
def check_and_split(
    config: TrainConfig, splits: dict[str, Samples] | None, verbose: bool
) -> tuple[dict[str, Samples], list[str]]:
    """The given splits, or ``config.data`` checked (every file read once: no crash hours into the
    run) and split; also the unreadable files skipped. Checks the positive class."""
    skipped: list[str] = []
    if splits is None:
        splits, unreadable = checked_splits(config, verbose=verbose)
        skipped = [str(p) for p in unreadable]
    resolve_positive_class(splits["train"].class_names, config.positive_class)  # one of them, or one line naming them
    return splits, skipped


def cache_options(config: TrainConfig) -> dict[str, Any]:
    """Each image is decoded once, kept as uint8 at the size the crops need (in memory, and on disk
    for the next run); the loaders crop and flip it (``.sample``), the device does the rest (``.batch``)."""
    cache_dir = None if config.cache_dir == "off" else config.cache_dir or default_cache_dir("decoded")
    return dict(cache_size=math.ceil(config.image_size / config.crop_fraction), cache_dir=cache_dir)


def held_out_split(samples: Samples, config: TrainConfig, entry: ModelEntry, ctx: distributed.Context) -> HeldOut:
    """This rank's share of a split, resized and centre-cropped as inference will see it."""
    preprocess = eval_transform(config.image_size, entry.mean, entry.std, config.crop_fraction)
    shard = ctx.shard(len(samples))
    loader = make_loader(ImageDataset(samples.subset(shard), preprocess.sample, **cache_options(config)), config)
    return HeldOut(loader, shard, preprocess)


def make_loader(dataset: ImageDataset, config: TrainConfig, batches: EpochBatches | None = None) -> DataLoader:
    """Training batches (from an :class:`EpochBatches`), or evaluation batches in order."""
    batching = {"batch_sampler": batches} if batches is not None else {"batch_size": config.batch_size}
    return DataLoader(
        dataset,
        **batching,
        num_workers=config.workers,
        generator=torch.Generator().manual_seed(config.seed),
        worker_init_fn=_seed_worker,
        persistent_workers=config.workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- a failed start leaves nothing behind ---------------------------------------------------------
@contextmanager
def no_trace_of_a_failed_start(run_dir: Path, main: bool) -> Iterator[None]:
    """A run that fails before it has saved a resumable checkpoint removes what it created.

    Otherwise an empty ``checkpoints/`` (or a best checkpoint that ``--resume`` cannot continue)
    would make the corrected command refuse the folder as "already holding a run". Only what did
    not exist before this run is removed (rank 0, the only writer): a folder given with
    ``--overwrite`` or ``--resume`` keeps everything it held.
    """
    top = run_dir.absolute()
    while not top.parent.exists():  # --out a/b/run with no a/: a/ is this run's too
        top = top.parent
    before = _paths_under(top)
    try:
        yield
    except BaseException:
        if main and RunDir(run_dir).saved_last() is None:
            new = [p for p in _paths_under(top) if p not in before]
            for path in sorted(new, key=lambda p: len(p.parts), reverse=True):  # files before their folders
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        raise


def _paths_under(folder: Path) -> set[Path]:
    """``folder`` and everything below it (links not followed); empty when it does not exist."""
    if not folder.exists():
        return set()
    found = {folder}
    for dirpath, dirnames, filenames in os.walk(folder):
        found.update(Path(dirpath, name) for name in dirnames + filenames)
    return found
