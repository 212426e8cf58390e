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

Here: the checks, the images and the rows; engine/compare_runs.py trains and measures each run, and
reports/comparison.py writes the tables and comparison.md.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..data import Samples, kfold_splits
from ..files import write_text_atomic
from ..models.registry import count_macs, create_model, get_entry
from ..reports import plot_accuracy_vs_macs, resolve_positive_class
from ..reports.comparison import (
    COLUMNS,
    FOLD_COLUMNS,
    FOLD_RUN_COLUMNS,
    KERAS_PREFIX,
    METRICS,
    ComparisonFacts,
    best_row,
    comparison_markdown,
    with_binary_columns,
    write_comparison_csv,
)
from ..reports.intervals import corrected_standard_error, corrected_t_interval
from ..reports.tables import write_csv
from .compare_runs import failure_row, train_runs
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
from .crossval import fold_splits, scan_checked, splits_record
from .finished import finished_outcome, record_finished
from .interrupt import StopRequested, TrainingInterrupted, raise_on_stop_signal
from .rundir import RunDir

__all__ = ["COLUMNS", "FOLD_COLUMNS", "KERAS_PREFIX", "CompareResult", "compare"]

logger = logging.getLogger(__name__)


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
        return best_row(self.rows)


# what makes a folder a comparison's: its tables, or the model runs (one split, or fold runs) it trains
COMPARE_FILES = (
    "comparison.*",
    "comparison_*",
    f"*/{RunDir.CHECKPOINTS}",
    f"*/{RunDir.COMPARE_FINISHED}",
    f"*/*/{RunDir.CHECKPOINTS}",
)


@dataclass
class _Plan:
    """A comparison checked and laid out, before any training: which models, recipe and images."""

    models: list[str]
    configs: dict[str, TrainConfig]  # model -> its config (the shared recipe, its own spec and run directory)
    overrides: dict[str, dict[str, Any]]  # model -> its spec overrides
    runs: dict[str, dict[str, Samples]]  # fold run tag ("" for one split) -> the images of every model's run
    out: Path
    positive: tuple[str, str] | None  # two classes: the positive class and how it was chosen
    columns: tuple[tuple[str, str], ...]

    @property
    def recipe(self) -> TrainConfig:
        return self.configs[self.models[0]]

    @property
    def first(self) -> dict[str, Samples]:
        return next(iter(self.runs.values()))

    def run_dir(self, model: str, tag: str = "") -> Path:
        return self.out / _run_name(model) / tag


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
    plan = _plan(models, base, Path(out), model_configs, folds, repeats, jobs, isolate, resume)
    rows = _static_rows(plan)
    plan.out.mkdir(parents=True, exist_ok=True)
    log = logger.info if base.verbose else logger.debug
    measured = _train_all(plan, isolate, jobs, resume, log)
    fold_records = _fill_rows(rows, plan, measured, log)
    if folds:
        protocol = _write_fold_files(rows, fold_records, plan, folds, repeats)
    else:
        first = plan.first
        evaluated = "test" if "test" in first else ("val" if "val" in first else "train")
        protocol = f"split (same images for every model): {describe_splits(first)}; metrics on the {evaluated} split"

    out = plan.out
    csv_path = write_comparison_csv(rows, out / "comparison.csv", plan.columns)
    plot_path = plot_accuracy_vs_macs(rows, out / "accuracy_vs_macs.png")
    facts = _facts(plan, protocol, plot_path.name, isolate, jobs)
    md_path = write_text_atomic(out / "comparison.md", comparison_markdown(rows, plan.columns, facts))
    best = best_row(rows)
    log(f"comparison: {md_path}" + (f" (best: {best['model']})" if best else ""))  # the CLI prints no copy
    return CompareResult(rows=rows, markdown=md_path, csv=csv_path, plot=plot_path)


def _plan(
    models: Sequence[str],
    base: TrainConfig,
    out: Path,
    model_configs: dict[str, dict[str, Any]] | None,
    folds: int | None,
    repeats: int,
    jobs: int,
    isolate: bool,
    resume: bool,
) -> _Plan:
    """Every check that can fail before training, and what the runs will be: bad input fails here."""
    models = _check_models(models, model_configs, base.keras_backend)
    _check_folds(folds, repeats)
    _check_jobs(jobs, isolate, models)
    given_configs = {name: dict(cfg) for name, cfg in (model_configs or {}).items()}
    overrides = {m: given_configs.get(m, given_configs.get(_spec(m)[0], {})) for m in models}
    if base.model_config:
        raise ValueError("compare: give per-model overrides in model_configs, not base.model_config")
    if base.weights is not None:
        raise ValueError("compare: base.weights cannot apply to several models; compare trains from scratch")
    if base.resume:
        raise ValueError("compare: base.resume continues one run; continue a comparison with resume=True (--resume)")

    # one config per model, all filled from the same base (the built-in digits when data is None)
    configs = {
        spec: complete_config(
            replace(
                base,
                model=_spec(spec)[0],
                framework=_spec(spec)[1],
                model_config=overrides[spec],
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
    _check_taken(out, models, runs, base.overwrite or resume)
    class_names = next(iter(runs.values()))["train"].class_names
    index, why = resolve_positive_class(class_names, recipe.positive_class)  # a wrong name: one line, now
    positive = (class_names[index], why) if len(class_names) == 2 else None
    columns = with_binary_columns(FOLD_COLUMNS if folds else COLUMNS, positive)
    warn_about_config(recipe, recipe.verbose)  # once for all its runs
    return _Plan(models, configs, overrides, runs, out, positive, columns)


def _check_taken(out: Path, models: Sequence[str], runs: dict[str, dict[str, Samples]], allowed: bool) -> None:
    """Refuse run directories that already hold runs, unless overwriting or resuming."""
    taken = [
        str(out / _run_name(n) / tag)
        for n in models
        for tag in runs
        if RunDir(out / _run_name(n) / tag).checkpoints.exists()
    ]
    if taken and not allowed:
        raise FileExistsError(
            f"run directories already hold runs: {', '.join(taken[:3])}{' ...' if len(taken) > 3 else ''}; "
            "continue the comparison with resume (--resume), choose another out, or set overwrite"
        )


def _static_rows(plan: _Plan) -> list[dict[str, Any]]:
    """One row per model with its parameters and MACs as trained; building each model here also checks
    its overrides and image size, before any training."""
    num_classes = len(plan.first["train"].class_names)
    rows: list[dict[str, Any]] = []
    for name in plan.models:
        cfg = plan.configs[name]
        try:
            params, macs = _params_and_macs(cfg.model, cfg.model_config, num_classes, cfg.image_size)
        except Exception as error:  # reported with the model's name, before training
            raise ValueError(
                f"compare: {name} with overrides {cfg.model_config} cannot run on {cfg.image_size}x{cfg.image_size} "
                f"images with {num_classes} classes: {type(error).__name__}: {error}"
            ) from error
        rows.append(
            {key: None for key, _ in plan.columns}
            | {
                "model": name,
                "positive_class": plan.positive[0] if plan.positive else None,
                "params": params,
                "macs": macs,
                "image_size": cfg.image_size,
                "run_dir": str(plan.run_dir(name)),
            }
        )
    return rows


def _train_all(
    plan: _Plan, isolate: bool, jobs: int, resume: bool, log: Callable[[str], None]
) -> dict[tuple[str, str], dict[str, Any]]:
    """``(model, fold run tag) -> measured row`` of every run: kept from before (``resume``) or trained now.
    A stop signal ends with :class:`TrainingInterrupted` naming how to continue the comparison."""
    runs, out = plan.runs, plan.out
    run_configs = {
        (n, tag): replace(plan.configs[n], out=str(plan.run_dir(n, tag))) for n in plan.models for tag in runs
    }
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
            for (name, tag), row in train_runs(todo, runs, isolate, jobs, log):
                measured[(name, tag)] = row
                if row["status"] == "ok":
                    record_finished(run_configs[(name, tag)], runs[tag], row, _FINISHED)
    except (TrainingInterrupted, StopRequested) as stopped:
        where = f"{sum(r['status'] == 'ok' for r in measured.values())} of {len(run_configs)} runs finished"
        raise TrainingInterrupted(
            out, stopped.signum, where, "the same comparison with resume=True (--resume)", str(out)
        ) from None
    return measured


def _fill_rows(
    rows: list[dict[str, Any]],
    plan: _Plan,
    measured: dict[tuple[str, str], dict[str, Any]],
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Each model's row from its run (one split) or its fold runs; returns the fold runs' records."""
    fold_records: list[dict[str, Any]] = []
    for name, row in zip(plan.models, rows):
        if "" in plan.runs:
            row.update(measured[(name, "")])
        else:
            for tag, splits in plan.runs.items():
                fold_records.append(_fold_record(name, tag, splits, measured[(name, tag)], plan.run_dir(name, tag)))
            row.update(_summarise_fold_runs({tag: measured[(name, tag)] for tag in plan.runs}, plan.runs))
        if row["status"] == "failed":
            log(f"compare: {name} failed: {row['error']}")
    return fold_records


def _write_fold_files(
    rows: list[dict[str, Any]], fold_records: list[dict[str, Any]], plan: _Plan, folds: int, repeats: int
) -> str:
    """The paired differences into the rows, comparison_splits.json and comparison_folds.csv; the protocol."""
    runs, out = plan.runs, plan.out
    _add_paired_differences(rows, fold_records, runs)
    record = {"fold_runs": list(runs)} | splits_record(plan.first["test"].root, list(runs.values()))
    write_text_atomic(out / "comparison_splits.json", json.dumps(record, indent=2, ensure_ascii=False))
    write_csv(fold_records, out / "comparison_folds.csv", FOLD_RUN_COLUMNS)
    return _fold_protocol(runs, folds, repeats, plan.recipe)


def _facts(plan: _Plan, protocol: str, plot_name: str, isolate: bool, jobs: int) -> ComparisonFacts:
    """What comparison.md says beside the rows, this machine's facts (device, precision) included."""
    recipe, cuda = plan.recipe, torch.cuda.is_available()
    return ComparisonFacts(
        recipe=recipe,
        recipe_warnings=config_warnings(recipe),
        protocol=protocol,
        class_names=plan.first["train"].class_names,
        overrides=plan.overrides,
        plot_name=plot_name,
        precision=_precision_used(recipe.precision),
        device=torch.cuda.get_device_name() if cuda else "CPU",
        cuda=cuda,
        isolate=isolate,
        jobs=jobs,
        positive=plan.positive,
    )


def _precision_used(precision: str) -> str:
    """``auto`` with what it chose on this machine, as each run's own report names it."""
    if precision != "auto":
        return precision
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return f"auto ({precision_name(autocast_dtype(precision, device))} here)"


# -- resuming: what a finished run leaves behind (engine/finished.py) -----------------------------
_FINISHED = RunDir.COMPARE_FINISHED


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
    return {key: measured.get(key) for key in METRICS} | {
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
        return failure_row(f"fold run {tag}: {m['error']}") | {"fold_runs": len(measured) - len(failed)}
    rows = list(measured.values())
    row: dict[str, Any] = {"status": "ok", "error": None, "fold_runs": len(rows)}
    n_test, n_train = _mean_sizes(runs)
    for key in METRICS:
        values = [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        row[key] = statistics.fmean(values) if values else None
        row[f"{key}_ci"] = corrected_t_interval(values, n_test, n_train, bounds=(0.0, 1.0)) if values else None
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
        row["accuracy_diff_ci"] = corrected_t_interval(diffs, n_test, n_train, bounds=(-1.0, 1.0))


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


# -- input checks and static measurements ------------------------------------------------------
def _spec(model: str) -> tuple[str, str]:
    """``"keras:NAME"`` -> (NAME, "keras"); a plain name -> (name, "torch")."""
    if model.startswith(KERAS_PREFIX):
        return model.removeprefix(KERAS_PREFIX).strip(), "keras"
    return model, "torch"


def _run_name(model: str) -> str:
    """The run directory's name under ``out``: the model name, ``keras-NAME`` for ``keras:NAME``."""
    name, framework = _spec(model)
    return name if framework == "torch" else f"keras-{name}"


def _check_models(
    models: Sequence[str], model_configs: dict[str, dict] | None, keras_backend: str = "auto"
) -> list[str]:
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
                from ..keras_backend import choose_backend, use_keras_backend

                use_keras_backend(*choose_backend(keras_backend, name))  # before Keras is first imported
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
