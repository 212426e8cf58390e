"""Train several models on exactly the same images with the same recipe and compare them.

``compare(["resnet20_cifar", "lenet"], TrainConfig(data="photos", epochs=10), "runs/cmp")``
resolves the train/val/test split once from the base config, trains every model on it with
:func:`~resnexus.engine.fit.train` into ``out/<model>/`` (a normal run directory each), and writes

    comparison.md          a Markdown table, the recipe, the split sizes and the best model
    comparison.csv         the same columns as plain numbers (empty cell = not available)
    accuracy_vs_macs.png   test accuracy against MACs (log scale), one labelled point per model

Columns: accuracy, balanced accuracy, macro F1 and ROC-AUC of the best checkpoint (the run's
``metrics.json``: the test split, or validation when there is no test split); parameters and
MACs of the model exactly as trained (its config overrides, image size and class count; MACs of
convolutions and linears for one image, counted on the meta device); training time (the whole
``train()`` call: epochs, final evaluation and report); training images/s (median over epochs);
inference images/s (eval mode, one fixed batch of ``batch_size`` images at the trained size, the
training precision, no data loading); peak memory in MiB:

* CUDA: ``torch.cuda.max_memory_allocated`` (memory held by tensors, training and inference).
* CPU, ``isolate=True`` (default): each model trains in its own process (``spawn``), which reports
  its own peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``). That includes the Python
  and PyTorch runtime (hundreds of MiB; the row's ``baseline_memory_mib`` is the same measure taken
  before training) and excludes DataLoader worker processes.
* CPU, ``isolate=False``: ``None``. A process's peak RSS never goes down, so in one process it
  would only say how much the largest model so far needed.

A model spelled ``keras:NAME`` is NAME trained with Keras' ``model.fit`` (``framework="keras"``,
engine/keras_fit.py) into ``out/keras-NAME/``, so ``["resnext50_32x4d", "keras:resnext50_32x4d"]``
puts the same architecture trained by each framework side by side; its inference images/s time the
Keras model (``predict_on_batch``), its parameters and MACs are its PyTorch twin's (the same numbers).

**Cross-validated comparison** (``folds=K``, ``repeats=R``; ``compare --folds K --repeats R``): on a
few hundred images one test split of a few dozen images cannot tell two models apart. Every model
is then trained and tested on the same R x K fold runs: repeat r cuts K stratified folds (grouped
by ``group_by``) with seed ``seed + r - 1``, and fold run ``r{r}f{k}`` trains on the other K-1
folds (validation carved from them as ``train --folds`` does) and tests on fold k, into
``out/<model>/r{r}f{k}/``. A row then holds each metric's mean over its fold runs, the accuracy's
standard error corrected for the shared training images (Nadeau & Bengio, 2003), and the
**paired** difference in accuracy against the first model, fold run by fold run, with its own
corrected standard error: the comparison that removes the splits' luck from the difference.
Training time and speeds are medians per fold run; ``comparison_folds.csv`` has every fold run,
``comparison_splits.json`` the files each fold run trained and was tested on.

**Side by side and resumable** (``jobs=N``, ``resume=True``; ``compare --jobs N --resume``): a
study's comparison is dozens of training runs. ``jobs`` > 1 trains N of them at once, each in its
own process with 1/N of the threads (on a CPU of a few cores, more work per second than one run
with every thread; the times and speeds in the table are then each run's under that sharing, as
the report says). Each finished run writes ``compare_run.json`` into its run directory (its row,
recipe and images); ``resume`` keeps those rows, continues an interrupted run from its ``last.pt``
and trains the runs never started, so a stopped comparison loses at most the unfinished epochs. A
finished run trained with another recipe or on other images is refused, by name, not mixed in.

A model that fails while training gets a row with ``status`` "failed" and the error; the others
still run (and ``resume`` trains it again). Bad input (no models, an unknown or repeated name, overrides a model rejects or an
image size it cannot take, run directories that already hold runs) fails before any training.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..data import Samples, kfold_splits
from ..files import atomic_write, write_text_atomic
from ..models.registry import count_macs, create_model, get_entry
from ..reports import fixed_decimals, markdown_cell, markdown_table, plot_accuracy_vs_macs, resolve_positive_class
from .checkpoint import load_checkpoint, model_from_checkpoint
from .config import (
    TrainConfig,
    autocast_dtype,
    check_run_output,
    checked_splits,
    complete_config,
    config_warnings,
    describe_splits,
    is_whole_number,
    precision_name,
    warn_about_config,
)
from .crossval import corrected_standard_error, fold_splits, scan_checked, splits_record
from .finished import finished_outcome, record_finished
from .frameworks import train
from .interrupt import StopRequested, TrainingInterrupted, raise_on_stop_signal
from .workers import log_like_parent, logging_of_this_process, running_task, threads_per_job, watch_parent

__all__ = ["COLUMNS", "FOLD_COLUMNS", "CompareResult", "compare"]

logger = logging.getLogger(__name__)

# (CSV column, Markdown header); the CSV and the table always hold the same columns in this order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("model", "Model"),
    ("status", "Status"),
    ("accuracy", "Accuracy"),
    ("balanced_accuracy", "Balanced acc."),
    ("macro_f1", "Macro F1"),
    ("roc_auc", "ROC-AUC"),
    ("params", "Params"),
    ("macs", "MACs"),
    ("image_size", "Image size"),
    ("train_seconds", "Train time (s)"),
    ("train_images_per_second", "Train img/s"),
    ("inference_images_per_second", "Inference img/s"),
    ("peak_memory_mib", "Peak memory (MiB)"),
    ("best_epoch", "Best epoch"),
    ("error", "Error"),
)
# With folds: the accuracy's corrected SE and the paired difference against the first model after the
# accuracy, the number of fold runs instead of the best epoch (one per fold run), time per fold run.
FOLD_COLUMNS: tuple[tuple[str, str], ...] = (
    *COLUMNS[:3],
    ("accuracy_se", "Accuracy SE"),
    ("accuracy_diff", "Paired diff. vs first"),
    ("accuracy_diff_se", "Diff. SE"),
    *COLUMNS[3:9],
    ("fold_runs", "Fold runs"),
    ("train_seconds", "Train time per fold run (s)"),
    *COLUMNS[10:13],
    COLUMNS[14],
)
# comparison_folds.csv: one line per (model, fold run)
FOLD_RUN_COLUMNS = (
    "model",
    "repeat",
    "fold",
    "status",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "roc_auc",
    "n_train",
    "n_test",
    "train_seconds",
    "run_dir",
    "error",
)
_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "sensitivity", "specificity")
# two classes: after the ROC-AUC, the rates of the positive class, which the CSV names in a column of its own
_BINARY_COLUMNS = (("positive_class", "Positive class"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"))
_INFERENCE_MIN_SECONDS = 0.5  # keep timing batches until this much time has passed ...
_INFERENCE_MAX_BATCHES = 100  # ... or this many batches


@dataclass
class CompareResult:
    # one per model, in the order given; keys: COLUMNS' CSV names, run_dir, and with isolate=True
    # baseline_memory_mib (the child's peak RSS before training: the Python/PyTorch runtime)
    rows: list[dict[str, Any]]
    markdown: Path
    csv: Path
    plot: Path

    @property
    def best(self) -> dict[str, Any] | None:
        """The row with the highest accuracy (fewer MACs wins a tie); None if every model failed."""
        return _best(self.rows)


# what makes a folder a comparison's: its tables, or the model runs (one split, or fold runs) it trains
COMPARE_FILES = ("comparison.*", "comparison_*", "*/checkpoints", "*/compare_run.json", "*/*/checkpoints")


def compare(
    models: Sequence[str],
    base: TrainConfig,
    out: str | Path,
    isolate: bool = True,
    model_configs: dict[str, dict[str, Any]] | None = None,
    folds: int | None = None,
    repeats: int = 1,
    jobs: int = 1,
    resume: bool = False,
) -> CompareResult:
    """Train each of ``models`` with ``base``'s recipe on the same images; see the module docstring.

    ``base.model``, ``base.out``, ``base.model_config`` and ``base.framework`` are not used
    (``model_configs`` maps a model, as given or without its ``keras:`` prefix, to its spec
    overrides, e.g. ``{"lenet": {"img_size": 32}}``). ``base.image_size`` None trains each model at
    its own default input size; set it to compare at one size. ``folds`` (and ``repeats``) compare on
    repeated grouped K-fold cross-validation instead of one split. ``jobs`` trains that many runs
    side by side (isolated processes); ``resume`` keeps the runs already finished in ``out``.
    """
    models = _check_models(models, model_configs)
    _check_folds(folds, repeats)
    _check_jobs(jobs, isolate, models)
    given_configs = {name: dict(cfg) for name, cfg in (model_configs or {}).items()}
    model_configs = {m: given_configs.get(m, given_configs.get(_spec(m)[0], {})) for m in models}
    if base.model_config:
        raise ValueError("compare: give per-model overrides in model_configs, not base.model_config")
    if base.weights is not None:
        raise ValueError("compare: base.weights cannot apply to several models; compare trains from scratch")
    if base.resume:
        raise ValueError("compare: base.resume continues one run; continue a comparison with resume=True (--resume)")
    out = Path(out)

    # one config per model, all filled from the same base (the built-in digits when data is None)
    configs = {
        spec: complete_config(
            replace(
                base,
                model=_spec(spec)[0],
                framework=_spec(spec)[1],
                model_config=model_configs[spec],
                out=str(out / _run_name(spec)),
            )
        )
        for spec in models
    }
    recipe = configs[models[0]]
    autocast_dtype(recipe.precision, torch.device("cpu"))  # a typo here would fail every run, later
    if recipe.optimizer not in ("sgd", "adamw"):
        raise ValueError(f"unknown optimizer {recipe.optimizer!r}: expected 'sgd' or 'adamw'")

    check_run_output(recipe, out, ours=COMPARE_FILES, kind="a comparison")  # not the data, nor others' files
    # the images every model sees: one split, or the same fold runs (name -> splits)
    runs = _fold_runs(recipe, folds, repeats) if folds else {"": checked_splits(recipe, verbose=recipe.verbose)[0]}
    taken = [
        str(out / _run_name(n) / tag)
        for n in models
        for tag in runs
        if (out / _run_name(n) / tag / "checkpoints").exists()
    ]
    if taken and not (base.overwrite or resume):
        raise FileExistsError(
            f"run directories already hold runs: {', '.join(taken[:3])}{' ...' if len(taken) > 3 else ''}; "
            "continue the comparison with resume (--resume), choose another out, or set overwrite"
        )
    first = next(iter(runs.values()))
    class_names = first["train"].class_names
    num_classes = len(class_names)
    index, why = resolve_positive_class(class_names, recipe.positive_class)  # a wrong name: one line, now
    positive = (class_names[index], why) if num_classes == 2 else None
    columns = _columns(FOLD_COLUMNS if folds else COLUMNS, positive)
    warn_about_config(recipe, recipe.verbose)  # once for all its runs

    # parameters and MACs as trained; building each model here also checks its overrides and image size
    rows: list[dict[str, Any]] = []
    for name in models:
        cfg = configs[name]
        try:
            params, macs = _params_and_macs(cfg.model, cfg.model_config, num_classes, cfg.image_size)
        except Exception as error:  # reported with the model's name, before training
            raise ValueError(
                f"compare: {name} with overrides {cfg.model_config} cannot run on {cfg.image_size}x{cfg.image_size} "
                f"images with {num_classes} classes: {type(error).__name__}: {error}"
            ) from error
        rows.append(
            {key: None for key, _ in columns}
            | {
                "model": name,
                "positive_class": positive[0] if positive else None,
                "params": params,
                "macs": macs,
                "image_size": cfg.image_size,
                "run_dir": str(out / _run_name(name)),
            }
        )

    out.mkdir(parents=True, exist_ok=True)
    log = logger.info if base.verbose else logger.debug
    run_configs = {(n, tag): replace(configs[n], out=str(out / _run_name(n) / tag)) for n in models for tag in runs}
    measured = (
        {key: finished_outcome(cfg, runs[key[1]], _FINISHED, "compare --resume") for key, cfg in run_configs.items()}
        if resume
        else {}
    )
    measured = {key: row for key, row in measured.items() if row is not None}
    if measured:
        log(
            f"compare: {len(measured)} of {len(run_configs)} runs finished before; training the other {len(run_configs) - len(measured)}"
        )
    todo = [(key, replace(cfg, resume=resume)) for key, cfg in run_configs.items() if key not in measured]
    try:
        with raise_on_stop_signal():  # SIGTERM too stops the runs (each saves) instead of orphaning them
            for (name, tag), row in _train_runs(todo, runs, isolate, jobs, log):
                measured[(name, tag)] = row
                if row["status"] == "ok":
                    record_finished(run_configs[(name, tag)], runs[tag], row, _FINISHED)
    except (TrainingInterrupted, StopRequested) as stopped:
        where = f"{sum(r['status'] == 'ok' for r in measured.values())} of {len(run_configs)} runs finished"
        raise TrainingInterrupted(
            out, stopped.signum, where, "the same comparison with resume=True (--resume)", str(out)
        ) from None
    fold_records: list[dict[str, Any]] = []
    for name, row in zip(models, rows):
        if not folds:
            row.update(measured[(name, "")])
        else:
            for tag, splits in runs.items():
                fold_records.append(_fold_record(name, tag, splits, measured[(name, tag)], out / _run_name(name) / tag))
            row.update(_summarise_fold_runs({tag: measured[(name, tag)] for tag in runs}, runs))
        if row["status"] == "failed":
            log(f"compare: {name} failed: {row['error']}")
    if folds:
        _add_paired_differences(rows, fold_records, runs)
        record = {"fold_runs": list(runs)} | splits_record(first["test"].root, list(runs.values()))
        write_text_atomic(out / "comparison_splits.json", json.dumps(record, indent=2, ensure_ascii=False))
        _write_csv(fold_records, out / "comparison_folds.csv", FOLD_RUN_COLUMNS)
        protocol = _fold_protocol(runs, folds, repeats, recipe)
    else:
        evaluated = "test" if "test" in first else ("val" if "val" in first else "train")
        protocol = f"split (same images for every model): {describe_splits(first)}; metrics on the {evaluated} split"

    csv_path = _write_csv(rows, out / "comparison.csv", tuple(k for k, _ in columns))
    plot_path = plot_accuracy_vs_macs(rows, out / "accuracy_vs_macs.png")
    markdown = _markdown(
        rows, columns, recipe, protocol, class_names, model_configs, isolate, plot_path.name, jobs, positive
    )
    md_path = write_text_atomic(out / "comparison.md", markdown)
    best = _best(rows)
    log(f"comparison: {md_path}" + (f" (best: {best['model']})" if best else ""))  # the CLI prints no copy
    return CompareResult(rows=rows, markdown=md_path, csv=csv_path, plot=plot_path)


# -- cross-validated comparison ----------------------------------------------------------------
def _check_folds(folds: int | None, repeats: int) -> None:
    if folds is None:
        if repeats != 1:
            raise ValueError(f"compare: repeats={repeats!r} needs folds (repeated K-fold cross-validation)")
        return
    if not is_whole_number(folds) or folds < 2:
        raise ValueError(f"compare: cross-validation needs at least 2 folds, got {folds!r}")
    if not is_whole_number(repeats) or repeats < 1:
        raise ValueError(f"compare: repeats must be a whole number >= 1, got {repeats!r}")


def _check_jobs(jobs: int, isolate: bool, models: Sequence[str]) -> None:
    if not is_whole_number(jobs) or jobs < 1:
        raise ValueError(f"compare: jobs must be a whole number >= 1, got {jobs!r}")
    if jobs > 1 and not isolate:
        raise ValueError("compare: jobs > 1 trains each run in a process of its own; it cannot run with isolate=False")
    keras = [m for m in models if _spec(m)[1] == "keras"]
    if jobs > 1 and keras:
        raise ValueError(
            f"compare: jobs > 1 shares the cores between PyTorch processes; train {', '.join(keras)} with jobs=1"
        )


def _fold_runs(recipe: TrainConfig, folds: int, repeats: int) -> dict[str, dict[str, Samples]]:
    """``{"r1f1": splits, ...}``: repeat r's K grouped, stratified folds with seed ``recipe.seed + r - 1``."""
    samples = scan_checked(recipe)
    runs = {}
    for r in range(1, repeats + 1):
        for k, (train_idx, test_idx) in enumerate(kfold_splits(samples, folds, seed=recipe.seed + r - 1), 1):
            runs[f"r{r}f{k}"] = fold_splits(samples, train_idx, test_idx, recipe)
    return runs


def _fold_record(name: str, tag: str, splits: dict[str, Samples], measured: dict[str, Any], run_dir: Path) -> dict:
    repeat, fold = (int(x) for x in tag[1:].split("f"))
    return {key: measured.get(key) for key in _METRICS} | {
        "model": name,
        "repeat": repeat,
        "fold": fold,
        "status": measured["status"],
        "n_train": len(splits["train"]) + (len(splits["val"]) if "val" in splits else 0),
        "n_test": len(splits["test"]),
        "train_seconds": measured.get("train_seconds"),
        "run_dir": str(run_dir),
        "error": measured.get("error"),
    }


def _summarise_fold_runs(measured: dict[str, dict[str, Any]], runs: dict[str, dict[str, Samples]]) -> dict:
    """One row from a model's fold runs: metric means, the accuracy's corrected SE, median costs."""
    failed = [(tag, m) for tag, m in measured.items() if m["status"] != "ok"]
    if failed:
        tag, m = failed[0]
        return _failure(f"fold run {tag}: {m['error']}") | {"fold_runs": len(measured) - len(failed)}
    rows = list(measured.values())
    row: dict[str, Any] = {"status": "ok", "error": None, "fold_runs": len(rows)}
    for key in _METRICS:
        values = [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        row[key] = statistics.fmean(values) if values else None
    n_test, n_train = _mean_sizes(runs)
    row["accuracy_se"] = corrected_standard_error([r["accuracy"] for r in rows], n_test, n_train)
    for key in ("train_seconds", "train_images_per_second", "inference_images_per_second"):
        values = [r[key] for r in rows if r.get(key) is not None]
        row[key] = statistics.median(values) if values else None
    memory = [r["peak_memory_mib"] for r in rows if r.get("peak_memory_mib") is not None]
    row["peak_memory_mib"] = max(memory) if memory else None
    row["warnings"] = [f"fold run {tag}: {w}" for tag, m in measured.items() for w in m.get("warnings") or []]
    baselines = [r["baseline_memory_mib"] for r in rows if r.get("baseline_memory_mib") is not None]
    if baselines:
        row["baseline_memory_mib"] = statistics.median(baselines)
    return row


def _mean_sizes(runs: dict[str, dict[str, Samples]]) -> tuple[float, float]:
    """Mean test and training-part (train + val) sizes of the fold runs: the SE correction's ratio."""
    n_test = statistics.fmean(len(s["test"]) for s in runs.values())
    n_train = statistics.fmean(sum(len(part) for name, part in s.items() if name != "test") for s in runs.values())
    return n_test, n_train


def _add_paired_differences(
    rows: list[dict[str, Any]], records: list[dict[str, Any]], runs: dict[str, dict[str, Samples]]
) -> None:
    """Each later model's accuracy minus the first model's, fold run by fold run, and its corrected SE."""
    accuracy = {(r["model"], r["repeat"], r["fold"]): r["accuracy"] for r in records if r["status"] == "ok"}
    reference = rows[0]["model"]
    n_test, n_train = _mean_sizes(runs)
    for row in rows[1:]:
        if row["status"] != "ok" or rows[0]["status"] != "ok":
            continue
        keys = [(m, r, f) for (m, r, f) in accuracy if m == reference]
        diffs = [accuracy[(row["model"], r, f)] - accuracy[(m, r, f)] for (m, r, f) in keys]
        row["accuracy_diff"] = statistics.fmean(diffs)
        row["accuracy_diff_se"] = corrected_standard_error(diffs, n_test, n_train)


def _fold_protocol(runs: dict[str, dict[str, Samples]], folds: int, repeats: int, recipe: TrainConfig) -> str:
    first = next(iter(runs.values()))
    images = sum(len(part) for part in first.values())
    groups = len({g for part in first.values() for g in part.groups})
    n_test, n_train = _mean_sizes(runs)
    seeds = f"{recipe.seed}" if repeats == 1 else f"{recipe.seed}-{recipe.seed + repeats - 1}"
    validation = _validation_text(runs, recipe.val_fraction)
    return (
        f"cross-validation, the same {repeats * folds} fold runs for every model: {repeats} x {folds} stratified "
        f"folds grouped by `{recipe.group_by or 'file'}` (fold seeds {seeds}) of {images} images in {groups} groups; "
        f"each fold run trains on about {n_train:.0f} images ({validation}) and is tested on its held-out fold "
        f"(about {n_test:.0f} images). Metrics are means over the fold runs; the accuracy's SE is Nadeau and "
        "Bengio's corrected standard error, sqrt((1/n + n_test/n_train) s^2); the paired difference is each fold "
        "run's accuracy minus the first model's on the same fold run (per fold run: comparison_folds.csv)"
    )


def _validation_text(runs: dict[str, dict[str, Samples]], val_fraction: float) -> str:
    """What the fold runs validated on, read from their splits (not from ``val_fraction``: a fold run
    whose validation part would be too small to choose an epoch on trains on it instead)."""
    validated = [s for s in runs.values() if "val" in s]
    if not validated:
        unused = (
            f"; --val-fraction {val_fraction:g} too small to choose an epoch on, so trained on" if val_fraction else ""
        )
        return f"no validation: the final weights are tested{unused}"
    n_val = statistics.fmean(len(s["val"]) for s in validated)
    share = f"about {n_val:.0f} of them, {100 * val_fraction:g}%, for validation"
    if len(validated) == len(runs):
        return share
    return f"{share} in {len(validated)} of the {len(runs)} fold runs; the others without"


def _columns(columns: tuple[tuple[str, str], ...], positive: tuple[str, str] | None) -> tuple[tuple[str, str], ...]:
    """``columns`` with, for two classes, the positive class and its sensitivity / specificity after the ROC-AUC."""
    if positive is None:
        return columns
    at = [key for key, _ in columns].index("roc_auc") + 1
    return (*columns[:at], *_BINARY_COLUMNS, *columns[at:])


# -- input checks and static measurements ------------------------------------------------------
KERAS_PREFIX = "keras:"  # a model trained with Keras (engine/keras_fit.py)


def _spec(model: str) -> tuple[str, str]:
    """``"keras:NAME"`` -> (NAME, "keras"); a plain name -> (name, "torch")."""
    if model.startswith(KERAS_PREFIX):
        return model.removeprefix(KERAS_PREFIX).strip(), "keras"
    return model, "torch"


def _run_name(model: str) -> str:
    """The run directory's name under ``out``: the model name, ``keras-NAME`` for ``keras:NAME``."""
    name, framework = _spec(model)
    return name if framework == "torch" else f"keras-{name}"


def _check_models(models: Sequence[str], model_configs: dict[str, dict] | None) -> list[str]:
    if isinstance(models, str):
        raise TypeError("compare: models must be a list of names, not one string")
    names = [str(m).strip() for m in models]
    if not names:
        raise ValueError("compare: no models given")
    seen: set[str] = set()
    repeated = [n for n in names if n in seen or seen.add(n)]  # type: ignore[func-returns-value]
    if repeated:
        raise ValueError(f"compare: model(s) listed more than once: {', '.join(dict.fromkeys(repeated))}")
    for spec in names:
        name, framework = _spec(spec)
        get_entry(name)  # unknown: ValueError with the nearest names
        if framework == "keras":
            try:
                from ..keras.registry import keras_builder
            except ImportError as error:
                raise ValueError(f"compare: {spec} needs Keras: pip install 'resnexus[keras]'") from error
            keras_builder(name)  # a model without a Keras twin: ValueError naming it
    extra = sorted(set(model_configs or {}) - set(names) - {_spec(n)[0] for n in names})
    if extra:
        raise ValueError(f"compare: model_configs names model(s) not being compared: {', '.join(extra)}")
    return names


def _params_and_macs(name: str, overrides: dict[str, Any], num_classes: int, image_size: int) -> tuple[int, int]:
    """Exact counts for the model as trained, built on the meta device (no memory, no time)."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, **overrides)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    return params, count_macs(model, (3, image_size, image_size))


# -- running one model -------------------------------------------------------------------------
def _measure(config: TrainConfig, splits: dict[str, Samples], peak_rss: bool) -> dict[str, Any]:
    """Train one model and time its inference; the fields of its row that depend on the run."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = train(config, splits=splits)
    speeds = [h["images_per_second"] for h in result.history if h.get("images_per_second")]
    row: dict[str, Any] = {key: result.metrics.get(key) for key in _METRICS}
    row.update(
        status="ok",
        error=None,
        best_epoch=result.best_epoch,
        train_seconds=result.seconds,
        train_images_per_second=statistics.median(speeds) if speeds else None,
        inference_images_per_second=_inference_speed(config, result.run_dir)
        if config.framework == "torch"
        else _keras_inference_speed(config, result.run_dir),
        peak_memory_mib=None,
        warnings=list(result.metrics.get("warnings") or []),
    )
    if cuda:
        row["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    elif peak_rss:
        row["peak_memory_mib"] = _peak_rss_mib()
    return row


@torch.inference_mode()
def _inference_speed(config: TrainConfig, run_dir: Path) -> float:
    """Images/s of the best checkpoint on one fixed batch, eval mode, the training precision."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp_dtype = autocast_dtype(config.precision, device)
    channels_last = config.channels_last if config.channels_last is not None else amp_dtype is not None
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model_from_checkpoint(load_checkpoint(run_dir / "checkpoints" / "best.pt"))
    model.to(device, memory_format=memory_format).eval()
    size = config.image_size
    x = torch.randn(config.batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = x.to(device, memory_format=memory_format)

    def forward() -> None:
        if amp_dtype is None:
            model(x)
        else:
            with torch.autocast(device.type, dtype=amp_dtype):
                model(x)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    forward()  # warm-up: allocator, cuDNN algorithm choice, lazy initialisation
    sync()
    batches, start = 0, time.perf_counter()
    while True:
        forward()
        batches += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= _INFERENCE_MIN_SECONDS or batches >= _INFERENCE_MAX_BATCHES:
            return batches * config.batch_size / elapsed


def _keras_inference_speed(config: TrainConfig, run_dir: Path) -> float:
    """Images/s of a Keras-trained run's best.keras, timed like :func:`_inference_speed`."""
    from .keras_fit import keras_inference_speed

    return keras_inference_speed(run_dir, config.batch_size, config.image_size, _INFERENCE_MIN_SECONDS)


def _peak_rss_mib() -> float:
    """This process's peak resident set size (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _failure(error: BaseException | str) -> dict[str, Any]:
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return {"status": "failed", "error": " ".join(str(message).split())}  # one line, for the table


def _run_in_process(config: TrainConfig, splits: dict[str, Samples]) -> dict[str, Any]:
    try:
        return _measure(config, splits, peak_rss=False)
    except Exception as error:  # one model's failure must not stop the comparison
        logger.exception(f"compare: {config.model} failed while training")
        return _failure(error)


def _child(
    config: TrainConfig,
    splits: dict[str, Samples],
    result_path: str,
    threads: int,
    logging_setup: tuple[int, bool],
    parent_pid: int,
) -> None:
    """Entry point of the spawned process: train, then write the measured row as JSON."""
    watch_parent(parent_pid)  # a killed parent takes this run down (it saves first)
    log_like_parent(*logging_setup)
    torch.set_num_threads(threads)
    baseline = _peak_rss_mib()  # the interpreter, PyTorch and resnexus, before any training
    try:
        with running_task():
            row = _measure(config, splits, peak_rss=True)
    except KeyboardInterrupt as stopped:  # stopped by the parent, saved: no row, no traceback
        sys.exit(getattr(stopped, "exit_code", 130))
    except Exception as error:  # reported in the row; the parent reads it
        logger.exception(f"compare: {config.model} failed while training")
        row = _failure(error)
    row["baseline_memory_mib"] = baseline
    write_text_atomic(result_path, json.dumps(row))


class _Children:
    """The training processes running now, so that Ctrl-C in the parent stops every one of them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: set[multiprocessing.process.BaseProcess] = set()
        self.stopping = False

    def start(self, process: multiprocessing.process.BaseProcess) -> bool:
        with self.lock:
            if self.stopping:
                return False
            process.start()
            self.live.add(process)
            return True

    def done(self, process: multiprocessing.process.BaseProcess) -> None:
        with self.lock:
            self.live.discard(process)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            for process in self.live:
                process.terminate()


def _run_isolated(
    config: TrainConfig, splits: dict[str, Samples], threads: int | None = None, children: _Children | None = None
) -> dict[str, Any]:
    """One model in a fresh ``spawn`` process: its own peak memory, and a crash stays contained."""
    ctx = multiprocessing.get_context("spawn")
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)  # a fold run's model folder may not exist yet
    fd, result_path = tempfile.mkstemp(prefix=".compare-", suffix=".json", dir=Path(config.out).parent)
    os.close(fd)
    try:
        threads = threads or torch.get_num_threads()
        args = (config, splits, result_path, threads, logging_of_this_process(), os.getpid())
        process = ctx.Process(target=_child, args=args, name=f"compare-{Path(config.out).name}")
        if children is None:
            process.start()
        elif not children.start(process):
            return _failure("not started: the comparison was stopped")
        try:
            process.join()
        except BaseException:  # Ctrl-C: do not leave the child training on its own
            process.terminate()
            process.join()
            raise
        finally:
            if children is not None:
                children.done(process)
        try:
            return json.loads(Path(result_path).read_text())
        except (OSError, ValueError):  # missing or empty: the child died before writing its row
            return _failure(
                f"training process exited with code {process.exitcode} without a result "
                "(killed, e.g. out of memory? its output above may say why)"
            )
    finally:
        Path(result_path).unlink(missing_ok=True)


def _train_runs(
    todo: Sequence[tuple[tuple[str, str], TrainConfig]],
    runs: dict[str, dict[str, Samples]],
    isolate: bool,
    jobs: int,
    log: Any,
) -> Iterator[tuple[tuple[str, str], dict[str, Any]]]:
    """``((model, fold run tag), measured row)`` for each run of ``todo``, as each finishes: one after
    another, or ``jobs`` isolated processes at once (threads here only wait for them).

    Not workers.run_side_by_side's process pool: a pool's worker trains run after run, so its peak
    memory would not be one run's, and a run killed for memory would break the pool for the rest."""
    if jobs == 1:
        run = _run_isolated if isolate else _run_in_process
        for i, ((name, tag), config) in enumerate(todo, 1):
            log(f"compare [{i}/{len(todo)}]{f' fold run {tag}' if tag else ''}: {name} -> {config.out}")
            yield (name, tag), run(config, runs[tag])
        return
    threads = threads_per_job(jobs)
    log(f"compare: {len(todo)} runs, {jobs} side by side with {threads} thread(s) each")
    children = _Children()
    with ThreadPoolExecutor(jobs, thread_name_prefix="compare") as pool:
        futures = {
            pool.submit(_run_isolated, config, runs[key[1]], threads, children): (key, config) for key, config in todo
        }
        try:
            for i, future in enumerate(as_completed(futures), 1):
                (name, tag), config = futures[future]
                log(f"compare [{i}/{len(todo)}] finished{f' fold run {tag}' if tag else ''}: {name} -> {config.out}")
                yield (name, tag), future.result()
        except BaseException:  # Ctrl-C or a failure here: no run goes on training on its own
            children.stop()
            pool.shutdown(wait=True, cancel_futures=True)
            raise


# -- resuming: what a finished run leaves behind (engine/finished.py) -----------------------------
_FINISHED = "compare_run.json"


# -- outputs -----------------------------------------------------------------------------------
def _best(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    done = [r for r in rows if r.get("status") == "ok" and r.get("accuracy") is not None]
    if not done:
        return None
    return min(done, key=lambda r: (-r["accuracy"], r["macs"]))  # min keeps the first of full ties


def _csv_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _write_csv(rows: Sequence[dict[str, Any]], path: Path, columns: Sequence[str]) -> Path:
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_csv_value(row.get(key)) for key in columns])
    return path


def _cell(key: str, value: Any) -> str:
    """Markdown cell: metrics to 4 decimals, counts exact and times, speeds, memory to 0.1, with thousands
    separators; a missing value gets the reports' one mark."""
    if key in _METRICS or key in ("accuracy_se", "accuracy_diff_se"):
        return fixed_decimals(value)
    if key == "accuracy_diff":
        return markdown_cell(None) if value is None else f"{value:+.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:,.1f}"
    return markdown_cell(value)


def _precision_used(precision: str) -> str:
    """``auto`` with what it chose on this machine, as each run's own report names it."""
    if precision != "auto":
        return precision
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return f"auto ({precision_name(autocast_dtype(precision, device))} here)"


def _markdown(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str]],
    recipe: TrainConfig,
    protocol: str,
    class_names: Sequence[str],
    overrides: dict[str, dict[str, Any]],
    isolate: bool,
    plot_name: str,
    jobs: int = 1,
    positive: tuple[str, str] | None = None,
) -> str:
    """comparison.md: every sentence from the runs' configs, splits and rows (``positive``: the
    positive class and how it was chosen, for two classes)."""
    keys = [(k, h) for k, h in columns if k != "positive_class" and (k != "error" or any(r.get("error") for r in rows))]
    if positive is not None:  # the table names the class the sensitivity is about in its header
        keys = [(k, f"{h} ({positive[0]})" if k == "sensitivity" else h) for k, h in keys]
    table = markdown_table(
        [h for _, h in keys],
        [[_cell(k, r.get(k)) for k, _ in keys] for r in rows],
        "".join("l" if k in ("model", "status", "error") else "r" for k, _ in keys),
    )
    lines = ["# Model comparison", "", table]
    warnings = [f"{r['model']}: {w}" for r in rows for w in r.get("warnings") or []] + config_warnings(recipe)
    lines += [f"\n**Warning:** {markdown_cell(w)}." for w in warnings]
    best = _best(rows)
    lines.append("")
    if best is None:
        lines.append("No model finished training.")
    else:
        tied = sum(r.get("status") == "ok" and r.get("accuracy") == best["accuracy"] for r in rows) > 1
        lines.append(
            f"Best by accuracy: **{best['model']}** (accuracy {best['accuracy']:.4f}, {best['macs']:,} MACs"
            f"{', the fewest among the models tied on accuracy' if tied else ''})."
        )
        if any(r.get("accuracy_diff_se") is not None for r in rows):
            lines.append(
                "A paired difference smaller than about twice its SE is within what the splits' luck alone "
                "produces: read such models as tied."
            )
    sizes = sorted({r["image_size"] for r in rows})
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    memory = (
        "CUDA max_memory_allocated (tensors, training and inference)"
        if torch.cuda.is_available()
        else "peak resident set size of each model's own training process (includes the Python/PyTorch runtime)"
        if isolate
        else "not measured (all models trained in one process)"
    )
    cpu = not torch.cuda.is_available()
    baselines = [r["baseline_memory_mib"] for r in rows if cpu and r.get("baseline_memory_mib")]
    if baselines:
        memory += f"; before training, the runtime alone held about {statistics.median(baselines):,.0f} MiB"
    augment = ", ".join(f"{k}={v}" for k, v in asdict(recipe.augment).items())
    lines += [
        "",
        f"![accuracy vs MACs]({plot_name})",
        "",
        "## Recipe (identical for every model)",
        "",
        f"- data: `{recipe.data}`",
        f"- {protocol}",
        f"- classes ({len(class_names)}): {', '.join(class_names)}"
        + (f"; sensitivity, specificity: positive class {positive[0]} ({positive[1]})" if positive else ""),
        f"- epochs: {recipe.epochs}, batch size: {recipe.batch_size}, optimizer: {recipe.optimizer}, "
        f"lr: {recipe.lr}, weight decay: {recipe.weight_decay}, warm-up epochs: {recipe.warmup_epochs:g}"
        + (" (longer than the run: the peak lr is never reached)" if config_warnings(recipe) else "")
        + f", label smoothing: {recipe.label_smoothing}",
        f"- image size: {sizes[0]}" if len(sizes) == 1 else "- image size: each model's default (see the table)",
        f"- augmentation: {augment}; mixup {recipe.mixup}, cutmix {recipe.cutmix}",
        f"- EMA: {recipe.ema_decay}, gradient clipping: {recipe.clip_grad_norm}, early stopping: "
        f"{recipe.early_stopping}, balance: {recipe.balance}",
        f"- precision: {_precision_used(recipe.precision)}"
        + ("; Keras models: fp32" if any(str(r["model"]).startswith(KERAS_PREFIX) for r in rows) else "")
        + f", seed: {recipe.seed}, device: {device}",
        "",
        "Notes: parameters and MACs (multiply-accumulates of one image, convolutions and linears) are for the "
        "model as trained: its overrides, image size and class count. Train time is the whole run (epochs, "
        "final evaluation, report; with folds, the median fold run); train img/s is the median over epochs; inference img/s times one fixed "
        f"batch of {recipe.batch_size} in eval mode at the training precision, without data loading. "
        f"Peak memory: {memory}."
        + (
            f" Runs were trained {jobs} side by side, each with 1/{jobs} of the threads: times and speeds are "
            "each run's under that sharing, not alone."
            if jobs > 1
            else ""
        ),
        "",
        "Model overrides: " + ("; ".join(f"{n} {c}" for n, c in overrides.items() if c) or "none") + ".",
        "",
    ]
    if any(_spec(r["model"])[1] == "keras" for r in rows):
        lines[-1:-1] = [
            f"`{KERAS_PREFIX}` models were trained with Keras' model.fit (fp32; Keras' augmentation layers, see "
            "engine/keras_fit.py) on the same split, epoch order and recipe; their metrics come from the same "
            "evaluation code (best.keras converted to PyTorch), their inference img/s from the Keras model.",
            "",
        ]
    return "\n".join(lines)
