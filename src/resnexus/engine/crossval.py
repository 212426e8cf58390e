"""K-fold cross-validation: every image is tested exactly once, no group on two sides of a fold.

``cross_validate(TrainConfig(...), folds=K)`` scans ``config.data`` (grouped with
``config.group_by``), makes K stratified, grouped folds (data/split.py: ``kfold_splits``), and
for fold k trains on the other K-1 folds and tests on fold k. A validation set (for picking the
best epoch) is carved from the training part with ``split_samples(test_fraction=0,
val_fraction=config.val_fraction, seed=config.seed)``, so it is grouped too, but only when it is
large enough to choose on (see :func:`fold_splits`): on a few hundred images those images train.
``config.test_fraction`` is not used (the held-out fold is the test set).

Then, like scikit-learn's ``refit``, the deployable model is trained with the same recipe on
every image (no validation, no test: best.pt holds the final weights, ``select="last"``, no early
stopping). Its own metrics are measured on its training images and are no estimate; the estimate
of its accuracy is the cross-validated one. ``refit=False`` (``--no-refit``) skips it; the fold
models can then be used as an ensemble (``--ensemble``). Outputs under ``config.out``:

    fold1/ ... foldK/   one ordinary training run each (see fit.py)
    refit/              the deployable model, an ordinary run on every image: refit/checkpoints/best.pt
                        is what evaluate / predict / explain / export use given this directory
    cv_splits.json      the files of train / val / test of every fold (relative to the data root)
    cv_metrics.json     the protocol, per-fold test metrics, mean, std (sample std, ddof=1) and the 95 %
                        interval of each mean (corrected resampled t, reports/crossval.py), the refit
    cv_report.md        the estimate (mean +- std [interval]), which model to deploy, a per-fold table, the protocol
    oof_predictions.csv every image's probabilities from the fold model that never saw it, and what
    calibration.json    is fitted on them (engine/out_of_fold.py), once every fold has finished
    cv_run.json         the folds and whether to refit, for resuming; each finished run records itself in
                        its directory (cv_run_finished.json)

``config.resume`` (``train --resume RUN_DIR``, see :func:`resume_settings`) continues an interrupted
cross-validation: the finished runs are kept, the interrupted ones continue from their last.pt and
the rest train, so the result is the uninterrupted run's. A stop signal (SIGINT / SIGTERM) saves
every run being trained, one or ``jobs`` side by side, and names that command.

cv_report.md is written by reports/crossval.py from the record cv_metrics.json holds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import DataError, Samples, kfold_splits, scan_dataset, split_samples
from ..files import write_text_atomic
from ..reports import resolve_positive_class
from ..reports.calibration_report import calibration_markdown
from ..reports.crossval import CV_CI_METHOD, CV_METRICS, RunLinks, cv_intervals, cv_report_markdown, format_mean_std
from . import distributed
from .config import (
    MIN_VAL_FOR_SELECTION,
    TrainConfig,
    check_before_training,
    check_run_output,
    checkpoint_selection,
    complete_config,
    config_warnings,
    is_whole_number,
    split_subfolders,
    warn_about_config,
)
from .finished import finished_outcome, record_finished
from .frameworks import train
from .interrupt import TrainingInterrupted
from .out_of_fold import calibrate_study, calibration_options
from .resume import resume_config
from .rundir import RunDir
from .workers import RunsStopped, run_side_by_side

logger = logging.getLogger(__name__)

CV_RUN_FILE = RunDir.CV_RUN  # the folds and whether to refit, written at the start: what resuming continues
_FINISHED = RunDir.CV_FINISHED  # in each fold / refit run directory once that run has finished
# where cv_report.md links into the run directory
REPORT_LINKS = RunLinks(
    refit=RunDir.REFIT,
    refit_checkpoint=RunDir(RunDir.REFIT).best().as_posix(),
    refit_report=RunDir(RunDir.REFIT).report.as_posix(),
    fold_report=lambda k: RunDir("").fold(k).report.as_posix(),
)


@dataclass
class CrossValResult:
    """Per-fold test metrics (each a fit.py ``metrics.json`` plus fold facts), their mean and std.

    ``mean`` / ``std`` hold the metrics of :data:`CV_METRICS` that at least one fold has (a
    fold's None, e.g. an undefined ROC-AUC, is skipped; std is None with fewer than 2 values).
    ``test_paths[k]`` are the images fold k+1 was tested on. ``refit_dir`` is the run directory of
    the model trained on every image (None with ``refit=False``).
    """

    folds: list[dict[str, Any]]
    mean: dict[str, float]
    std: dict[str, float | None]
    run_dir: Path
    test_paths: list[list[Path]] = field(default_factory=list)
    seconds: float = 0.0
    refit_dir: Path | None = None

    @property
    def report(self) -> Path:
        return RunDir(self.run_dir).cv_report


def cross_validate(config: TrainConfig, folds: int, refit: bool = True, jobs: int = 1) -> CrossValResult:
    """Train and test ``folds`` models, one per held-out fold, then (``refit``) the deployable model
    on every image; see the module docstring. ``jobs`` > 1 trains that many of these runs side by
    side, each in a process of its own with an equal share of the threads (like scikit-learn's
    ``n_jobs``): the same runs and files, sooner on a CPU with a few cores."""
    if not is_whole_number(folds) or folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds!r}")
    if not is_whole_number(jobs) or jobs < 1:
        raise ValueError(f"--jobs must be a whole number >= 1, got {jobs!r}")
    started = time.perf_counter()
    config = complete_config(config)  # data (built-in digits when None), model, out, ...
    ctx = distributed.setup()  # under torchrun every fold trains data-parallel; rank 0 writes
    main = ctx.is_main
    log = logger.info if config.verbose and main else logger.debug  # rank 0 speaks for the run
    if jobs > 1 and (ctx.enabled or config.framework == "keras"):
        raise ValueError(
            "--jobs runs fold runs side by side in PyTorch processes of their own; it cannot be combined with "
            + ("torchrun (--nproc)" if ctx.enabled else "--framework keras")
        )
    run_dir = Path(config.out)
    _check_run_dir(run_dir, folds, config, refit)
    ctx.barrier()

    samples, plans = _cut_folds(config, folds, log)
    validated = any("val" in plan for plan in plans)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(RunDir(run_dir).cv_splits, splits_record(samples.root, plans))
        _write_json(RunDir(run_dir).cv_run, {"folds": folds, "refit": refit})  # what `train --resume` continues
    n_groups = len(set(samples.groups))
    log(
        f"cross-validation: {folds} folds of {len(samples)} images / {n_groups} groups "
        f"(grouped by {config.group_by or 'file'}), seed {config.seed}, into {run_dir}"
    )

    # the K fold runs, then the refit: one after another, or `jobs` side by side (the refit needs no fold)
    refit_dir = RunDir(run_dir).refit.path if refit else None
    tasks = _tasks(config, run_dir, samples, plans, refit_dir)
    outcomes = _finished_runs(tasks) if config.resume else {}
    if outcomes:
        log(f"resuming: {len(outcomes)} of {len(tasks)} training runs finished before, kept")
    if jobs > 1:
        log(f"{len(tasks) - len(outcomes)} training runs, {jobs} side by side in processes of their own")
    record: dict[str, Any] | None = None
    for i, outcome in _train_runs(tasks, outcomes, jobs, run_dir, main):
        outcomes[i] = outcome
        if record is None and all(k in outcomes for k in range(folds)):
            fold_metrics = [_fold_row(k + 1, plans[k], outcomes[k]) for k in range(folds)]
            record = _estimate_record(config, samples, fold_metrics, validated, refit, started)
            positive = record["protocol"].get("positive_class")
            if main:  # the estimate is on disk before the refit ends (an interrupted refit loses nothing)
                record["calibration"] = calibrate_study(run_dir, samples, config, positive, log)
                write_record(run_dir, record)
            estimate = format_mean_std(record["mean"], record["std"], positive=positive, ci=record["ci"])
            log(f"cross-validation ({folds} folds): {estimate}")
    assert record is not None  # every fold run finished (a failure raised above)
    if refit_dir is not None:
        _record_refit(record, config, refit_dir, len(samples), outcomes[folds]["seconds"], started)
        if main:
            write_record(run_dir, record)
        log(
            f"deployable model: {RunDir(refit_dir).best(config.framework)} (all {len(samples)} images); "
            "its expected accuracy is the cross-validated estimate above"
        )
    else:
        log("no refit (--no-refit): use the fold models with --ensemble (predict / evaluate / explain)")
    log(f"report: {RunDir(run_dir).cv_report}")
    return CrossValResult(
        folds=record["folds"],
        mean=record["mean"],
        std=record["std"],
        run_dir=run_dir,
        test_paths=[list(p["test"].paths) for p in plans],
        seconds=record["seconds"],
        refit_dir=refit_dir,
    )


def _cut_folds(config: TrainConfig, folds: int, log: Callable[[str], None]) -> tuple[Samples, list[dict[str, Samples]]]:
    """The checked images and each fold's train / (val) / test parts, checked to partition them."""
    samples = scan_checked(config)
    resolve_positive_class(samples.class_names, config.positive_class)  # a wrong name: one line, before any fold
    calibration_options(config, samples.class_names)  # a target for 3 classes: one line, before any fold
    warn_about_config(config, config.verbose and distributed.setup().is_main)  # once here, not once per fold run
    fold_indices = kfold_splits(samples, folds, seed=config.seed)
    plans = [fold_splits(samples, train_idx, test_idx, config) for train_idx, test_idx in fold_indices]
    _check_partition(samples, plans)
    if config.val_fraction > 0 and not any("val" in plan for plan in plans):
        log(
            f"no validation part: {100 * config.val_fraction:g}% of a fold's training images would be too few to "
            f"choose an epoch on (< {MIN_VAL_FOR_SELECTION}, --select auto), so they train; the final weights are tested"
        )
    return samples, plans


def _tasks(
    config: TrainConfig, run_dir: Path, samples: Samples, plans: list[dict[str, Samples]], refit_dir: Path | None
) -> list[tuple[TrainConfig, dict[str, Samples], str]]:
    """``(config, splits, heading)`` of each fold run, then of the refit (with ``refit_dir``)."""
    tasks = [
        (
            dataclasses.replace(config, out=str(RunDir(run_dir).fold(k).path)),
            splits,
            f"-- fold {k}/{len(plans)}: {' / '.join(f'{len(s)} {name}' for name, s in splits.items())}",
        )
        for k, splits in enumerate(plans, start=1)
    ]
    if refit_dir is not None:
        heading = f"-- refit: the same recipe on all {len(samples)} images (no validation / test; final weights)"
        tasks.append((_refit_config(config, refit_dir), {"train": samples}, heading))
    return tasks


def _record_refit(
    record: dict[str, Any], config: TrainConfig, refit_dir: Path, images: int, seconds: float, started: float
) -> None:
    """The finished refit into ``record``: where its model is, and the total time."""
    record["refit"] = {
        "status": "done",
        "images": images,
        "run_dir": refit_dir.name,
        "checkpoint": RunDir(refit_dir.name).best(config.framework).as_posix(),
        "seconds": seconds,
    }
    record["seconds"] = time.perf_counter() - started


def _finished_runs(tasks: list[tuple[TrainConfig, dict[str, Samples], str]]) -> dict[int, dict[str, Any]]:
    """The outcomes of the fold runs (and refit) an interrupted cross-validation finished: kept, not retrained."""
    found = {i: finished_outcome(cfg, splits, _FINISHED, "train --resume") for i, (cfg, splits, _) in enumerate(tasks)}
    return {i: outcome for i, outcome in found.items() if outcome is not None}


def _train_runs(
    tasks: list[tuple[TrainConfig, dict[str, Samples], str]],
    finished: dict[int, dict[str, Any]],
    jobs: int,
    run_dir: Path,
    main: bool,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(task index, outcome)`` of every finished task, the kept ones first; each new one is recorded
    in its run directory as it ends. A stop signal ends with :class:`TrainingInterrupted` naming the
    command that resumes the whole cross-validation (the fold runs continue from their last.pt)."""
    yield from sorted(finished.items())
    todo = [i for i in range(len(tasks)) if i not in finished]
    names = [Path(tasks[i][0].out).name for i in todo]
    command = f"resnexus train --resume {shlex.quote(str(run_dir))}" + (f" --jobs {jobs}" if jobs > 1 else "")
    try:
        for j, outcome in run_side_by_side(_train_task, [tasks[i] for i in todo], jobs):
            if main:
                record_finished(tasks[todo[j]][0], tasks[todo[j]][1], outcome, _FINISHED)
            yield todo[j], outcome
    except TrainingInterrupted as stopped:  # one run at a time: the run being trained saved its progress
        where = f"{stopped.run_dir.name}: {stopped.where}"
        raise TrainingInterrupted(run_dir, stopped.signum, where, command, stopped.saved) from None
    except RunsStopped as stopped:  # side by side: every worker saved what it could
        raise TrainingInterrupted(run_dir, stopped.signum, stopped.where(names), command, str(run_dir)) from None


def resume_settings(run_dir: str | Path) -> tuple[TrainConfig, int, bool] | None:
    """``(config, folds, refit)`` to continue the cross-validation run in ``run_dir`` (``train --resume
    RUN_DIR``), or None when ``run_dir`` is no cross-validation run. The recipe is the one its fold
    runs saved in their last.pt; the folds and whether to refit, what the run recorded when it started."""
    run_dir = Path(run_dir)
    if not RunDir(run_dir).cv_run.is_file():
        return None
    settings = json.loads(RunDir(run_dir).cv_run.read_text(encoding="utf-8"))
    folds, refit = int(settings["folds"]), bool(settings["refit"])
    for k in range(1, folds + 1):
        if RunDir(run_dir).fold(k).last("torch").is_file():
            config = resume_config(RunDir(run_dir).fold(k).path)
            return dataclasses.replace(config, out=str(run_dir.expanduser().resolve())), folds, refit
    raise FileNotFoundError(
        f"nothing to resume: no fold run of the cross-validation {run_dir} saved a resumable checkpoint; "
        f"start it again with --out {run_dir} --overwrite"
    )


def study_of(run_dir: str | Path) -> Path | None:
    """The cross-validation run that ``run_dir`` (a foldK/ or refit/ directory) belongs to, if any."""
    run_dir = Path(run_dir)
    parent = run_dir.parent
    if RunDir(parent).cv_run.is_file() and (run_dir.name == RunDir.REFIT or run_dir.name.startswith("fold")):
        return parent
    return None


def _train_task(config: TrainConfig, splits: dict[str, Samples], heading: str) -> dict[str, Any]:
    """One fold run or the refit; module-level, so that a worker process can run it."""
    (logger.info if config.verbose and distributed.setup().is_main else logger.debug)(heading)
    result = train(config, splits=splits)
    return {"metrics": result.metrics, "seconds": result.seconds, "run_dir": str(result.run_dir)}


def _fold_row(k: int, splits: dict[str, Samples], outcome: dict[str, Any]) -> dict[str, Any]:
    """Fold k's test metrics and the facts of its split, as cv_metrics.json lists them."""
    return dict(outcome["metrics"]) | dict(
        fold=k,
        n_train=len(splits["train"]),
        n_val=len(splits["val"]) if "val" in splits else 0,
        n_test=len(splits["test"]),
        test_groups=len(set(splits["test"].groups)),
        seconds=outcome["seconds"],
        run_dir=outcome["run_dir"],
    )


def _estimate_record(
    config: TrainConfig,
    samples: Samples,
    fold_metrics: list[dict[str, Any]],
    validated: bool,
    refit: bool,
    started: float,
) -> dict[str, Any]:
    """What cv_metrics.json holds once every fold has run: the protocol, the folds, mean and std."""
    mean, std, counts = aggregate(fold_metrics)
    positive = {}
    if len(samples.class_names) == 2:
        index, why = resolve_positive_class(samples.class_names, config.positive_class)
        positive = {"positive_class": samples.class_names[index], "positive_class_reason": why}
    protocol = {
        "folds": len(fold_metrics),
        "data": str(config.data),
        "group_by": config.group_by,
        "seed": config.seed,
        "images": len(samples),
        "groups": len(set(samples.groups)),
        "class_names": list(samples.class_names),
        "class_counts": samples.class_counts(),
        "val_fraction": config.val_fraction if validated else 0.0,
        "validated_folds": sum(m["n_val"] > 0 for m in fold_metrics),
        "early_stopping": config.early_stopping,
        "warmup_epochs": config.warmup_epochs,
        "model": config.model,
        "framework": config.framework,
        "weights": config.weights,
        "epochs": config.epochs,
        "image_size": config.image_size,
        "batch_size": config.batch_size,
        "std": "sample standard deviation over folds (ddof=1)",
        "ci": CV_CI_METHOD,
        **positive,
        "warnings": config_warnings(config),
    }
    return {
        "protocol": protocol,
        "folds": fold_metrics,
        "mean": mean,
        "std": std,
        "ci": cv_intervals(fold_metrics),
        "n_folds_with_value": counts,
        "pooled_confusion_matrix": np.sum([np.asarray(m["confusion_matrix"]) for m in fold_metrics], axis=0).tolist(),
        "refit": {"status": "training" if refit else "skipped", "images": len(samples)},
        "seconds": time.perf_counter() - started,
    }


def aggregate(
    fold_metrics: list[dict[str, Any]], keys: tuple[str, ...] = CV_METRICS
) -> tuple[dict[str, float], dict[str, float | None], dict[str, int]]:
    """Mean and sample std (ddof=1) of each metric over the folds that have a value for it."""
    mean: dict[str, float] = {}
    std: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    for key in keys:
        values = [float(m[key]) for m in fold_metrics if m.get(key) is not None and math.isfinite(float(m[key]))]
        if not values:
            continue
        counts[key] = len(values)
        mean[key] = float(np.mean(values))
        std[key] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return mean, std, counts


# -- pieces ---------------------------------------------------------------------------------------
def _refit_config(config: TrainConfig, out: Path) -> TrainConfig:
    """The folds' recipe for every image: nothing to validate on, so the final weights and no
    early stopping (it would watch training accuracy); the fractions recorded as what was done."""
    if config.early_stopping:
        logger.warning("refit: no validation images, so no early stopping; it trains all %d epochs", config.epochs)
    return dataclasses.replace(
        config, out=str(out), val_fraction=0.0, test_fraction=0.0, select="last", early_stopping=None
    )


def report_markdown(record: dict[str, Any]) -> str:
    """cv_report.md for ``record`` (what cv_metrics.json holds), linking into this layout."""
    return cv_report_markdown(record, REPORT_LINKS) + calibration_markdown(record)


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    """cv_metrics.json and cv_report.md of a cross-validation run from its record."""
    _write_json(RunDir(run_dir).cv_metrics, record)
    write_text_atomic(RunDir(run_dir).cv_report, report_markdown(record))


def scan_checked(config: TrainConfig) -> Samples:
    """The one labelled set the folds are cut from, checked first (unreadable files refused or skipped)."""
    root = Path(config.data).expanduser()
    is_csv = root.suffix.lower() == ".csv" and root.is_file()
    if not is_csv and not root.is_dir():
        raise DataError(f"data folder does not exist: {root}")
    if not is_csv:
        split_dirs = split_subfolders(root)
        if split_dirs:
            raise DataError(
                f"{root} is already split into {split_dirs}; cross-validation needs one class-folder tree "
                "(class sub-folders directly under the data folder)"
            )
    check = check_before_training(config, verbose=config.verbose and distributed.setup().is_main)
    return scan_dataset(root, config.group_by).excluding(check.unreadable).linking(check.duplicates)


def fold_splits(samples: Samples, train_idx: list[int], test_idx: list[int], config: TrainConfig) -> dict[str, Samples]:
    """The held-out fold is the test set; validation is carved (grouped) from the rest.

    Only when it would be used: a validation part too small to choose an epoch on (``--select
    auto``, fewer than MIN_VAL_FOR_SELECTION images, no early stopping) would only take images away
    from training, so they train instead (on 150 photos: 12 more per fold).
    """
    rest = samples.subset(train_idx)
    parts = {"train": rest}
    if config.val_fraction > 0:
        carved = split_samples(rest, val_fraction=config.val_fraction, test_fraction=0.0, seed=config.seed)
        if checkpoint_selection(config, len(carved.get("val", []))) == "val":
            parts = carved
    return {**parts, "test": samples.subset(test_idx)}


def _check_partition(samples: Samples, plans: list[dict[str, Samples]]) -> None:
    """Every image tested exactly once; no group on two sides of any fold (cheap, always on, even with -O)."""
    tested = [p for plan in plans for p in plan["test"].paths]
    if len(tested) != len(samples) or set(tested) != set(samples.paths):
        raise AssertionError("cross-validation folds do not partition the data")
    for k, plan in enumerate(plans, start=1):
        sides = {name: set(s.groups) for name, s in plan.items()}
        names = list(sides)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                shared = sides[a] & sides[b]
                if shared:
                    raise AssertionError(f"fold {k}: groups on both {a} and {b}: {sorted(shared)[:5]}")
        if sum(len(s) for s in plan.values()) != len(samples):
            raise AssertionError(f"fold {k}: train / val / test do not cover the data")


CV_FILES = RunDir.CV_FILES  # a CV run's own


def _check_run_dir(run_dir: Path, folds: int, config: TrainConfig, refit: bool) -> None:
    """Refuse up front, not after hours of training, when an earlier run would be overwritten (or the
    folder is the data's or holds other files: :func:`check_run_output`)."""
    check_run_output(config, run_dir, ours=CV_FILES, kind="a cross-validation run")
    stale_refit = RunDir(run_dir).refit.checkpoints
    if not refit and not config.resume and stale_refit.exists():
        raise FileExistsError(
            f"{stale_refit.parent} holds the refit model of an earlier run, which --no-refit would leave "
            "looking like this run's deployable model; remove it or choose another --out"
        )
    if config.resume and RunDir(run_dir).cv_run.is_file():
        started = json.loads(RunDir(run_dir).cv_run.read_text(encoding="utf-8"))["folds"]
        if started != folds:
            raise ValueError(
                f"{run_dir} is a {started}-fold cross-validation; resuming it cannot make it {folds} folds"
            )
    if config.overwrite or config.resume:
        return
    folds_taken = [RunDir(run_dir).fold(k).checkpoints for k in range(1, folds + 1)]
    taken = [RunDir(run_dir).cv_metrics, *folds_taken, stale_refit]
    found = [p for p in taken if p.exists()]
    if found:
        raise FileExistsError(
            f"{run_dir} already holds a cross-validation run ({found[0]}); choose another --out, "
            "or pass --overwrite (or --resume to continue its folds)"
        )


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def splits_record(root: Path, plans: list[dict[str, Samples]]) -> dict[str, Any]:
    """The files of every fold's parts, relative to the data root: what cv_splits.json holds."""
    return {
        "root": str(root),
        "folds": [{name: [_relative(p, root) for p in s.paths] for name, s in plan.items()} for plan in plans],
    }


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False))
