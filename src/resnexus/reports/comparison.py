"""The tables and the Markdown page of a model comparison (engine/comparison.py runs it).

``comparison.csv`` and the table of ``comparison.md`` hold the same columns in the same order, except that a
metric's 95 % confidence interval (a row's ``<metric>_ci``) sits in the metric's cell of the table and in two
columns of its own after it in the CSV (``<metric>_ci_low``, ``<metric>_ci_high``). The page adds the best
model, the recipe every model shared and how each column was measured. Everything here is read from the rows
and from :class:`ComparisonFacts`: nothing is trained or measured.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .intervals import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, format_interval
from .tables import fixed_decimals, markdown_cell, markdown_table, write_csv

__all__ = [
    "BINARY_COLUMNS",
    "COLUMNS",
    "FOLD_COLUMNS",
    "FOLD_RUN_COLUMNS",
    "KERAS_PREFIX",
    "METRICS",
    "ComparisonFacts",
    "best_row",
    "comparison_markdown",
    "csv_columns",
    "with_binary_columns",
    "write_comparison_csv",
]

KERAS_PREFIX = "keras:"  # a model trained with Keras (engine/keras_fit.py), as the table names it

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
# the metrics of a row (sensitivity and specificity for two classes only)
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "sensitivity", "specificity")
# estimates with a 95 % interval beside them (``<key>_ci`` in a row)
_WITH_INTERVAL = (*METRICS, "accuracy_diff")
# two classes: after the ROC-AUC, the rates of the positive class, which the CSV names in a column of its own
BINARY_COLUMNS = (("positive_class", "Positive class"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"))


def with_binary_columns(
    columns: tuple[tuple[str, str], ...], positive: tuple[str, str] | None
) -> tuple[tuple[str, str], ...]:
    """``columns`` with, for two classes, the positive class and its sensitivity / specificity after the ROC-AUC."""
    if positive is None:
        return columns
    at = [key for key, _ in columns].index("roc_auc") + 1
    return (*columns[:at], *BINARY_COLUMNS, *columns[at:])


def csv_columns(columns: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """The CSV's column names: the table's, each metric (and the paired difference) followed by its
    interval's ``_ci_low`` and ``_ci_high``."""
    names: list[str] = []
    for key, _ in columns:
        names.append(key)
        if key in _WITH_INTERVAL:
            names += [f"{key}_ci_low", f"{key}_ci_high"]
    return tuple(names)


def write_comparison_csv(rows: Sequence[dict[str, Any]], path: Path, columns: Sequence[tuple[str, str]]) -> Path:
    """comparison.csv: the rows in :func:`csv_columns`, each ``<metric>_ci`` split into its two ends."""
    flat = []
    for row in rows:
        ends = {}
        for key in _WITH_INTERVAL:
            ci = row.get(f"{key}_ci")
            ends[f"{key}_ci_low"], ends[f"{key}_ci_high"] = (None, None) if ci is None else ci
        flat.append({**row, **ends})
    return write_csv(flat, path, csv_columns(columns))


def best_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The finished row with the highest accuracy (fewer MACs wins a tie); None if every model failed."""
    done = [r for r in rows if r.get("status") == "ok" and r.get("accuracy") is not None]
    if not done:
        return None
    return min(done, key=lambda r: (-r["accuracy"], r["macs"]))  # min keeps the first of full ties


@dataclass(frozen=True)
class ComparisonFacts:
    """What comparison.md says beside the rows: the recipe every model shared and how the runs ran."""

    recipe: Any  # the TrainConfig every model was trained with (its fields are read)
    recipe_warnings: Sequence[str]  # the recipe's warnings (engine.config.config_warnings)
    protocol: str  # which images: the split, or the fold runs
    class_names: Sequence[str]
    overrides: dict[str, dict[str, Any]]  # model -> its spec overrides
    plot_name: str
    precision: str  # as each run's report names it: "fp32", "auto (bf16 here)"
    device: str  # "CPU" or the GPU's name
    cuda: bool  # memory was CUDA's max_memory_allocated (else each process's peak RSS, with isolate)
    isolate: bool = True
    jobs: int = 1
    positive: tuple[str, str] | None = None  # two classes: the positive class and how it was chosen


def _cell(key: str, row: dict[str, Any]) -> str:
    """Markdown cell: metrics to 4 decimals with their 95 % interval (where the row has one), counts exact and
    times, speeds, memory to 0.1, with thousands separators; a missing value gets the reports' one mark."""
    value = row.get(key)
    ci = row.get(f"{key}_ci")
    interval = f" {format_interval(ci)}" if key in _WITH_INTERVAL and ci is not None and value is not None else ""
    if key in METRICS or key in ("accuracy_se", "accuracy_diff_se"):
        return fixed_decimals(value) + interval
    if key == "accuracy_diff":
        return markdown_cell(None) if value is None else f"{value:+.4f}{interval}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:,.1f}"
    return markdown_cell(value)


def _is_keras(model: Any) -> bool:
    return str(model).startswith(KERAS_PREFIX)


def comparison_markdown(
    rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], facts: ComparisonFacts
) -> str:
    """comparison.md: every sentence from the runs' recipe, splits and rows."""
    lines = ["# Model comparison", "", _table(rows, columns, facts.positive)]
    if any(r.get(f"{key}_ci") is not None for r in rows for key in _WITH_INTERVAL):
        lines += ["", _interval_line(columns)]
    warnings = [f"{r['model']}: {w}" for r in rows for w in r.get("warnings") or []] + list(facts.recipe_warnings)
    lines += [f"\n**Warning:** {markdown_cell(w)}." for w in warnings]
    lines += ["", *_verdict_lines(rows)]
    lines += ["", f"![accuracy vs MACs]({facts.plot_name})", "", *_recipe_lines(rows, facts), ""]
    lines += [_notes(rows, facts), ""]
    lines += [
        "Model overrides: " + ("; ".join(f"{n} {c}" for n, c in facts.overrides.items() if c) or "none") + ".",
        "",
    ]
    if any(_is_keras(r["model"]) for r in rows):
        lines[-1:-1] = [
            f"`{KERAS_PREFIX}` models were trained with Keras' model.fit (fp32; Keras' augmentation layers, see "
            "engine/keras_fit.py) on the same split, epoch order and recipe; their metrics come from the same "
            "evaluation code (best.keras converted to PyTorch), their inference img/s from the Keras model.",
            "",
        ]
    return "\n".join(lines)


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], positive: tuple[str, str] | None) -> str:
    """The rows; the error column only when a model failed, the sensitivity's header naming its class."""
    keys = [(k, h) for k, h in columns if k != "positive_class" and (k != "error" or any(r.get("error") for r in rows))]
    if positive is not None:  # the table names the class the sensitivity is about in its header
        keys = [(k, f"{h} ({positive[0]})" if k == "sensitivity" else h) for k, h in keys]
    return markdown_table(
        [h for _, h in keys],
        [[_cell(k, r) for k, _ in keys] for r in rows],
        "".join("l" if k in ("model", "status", "error") else "r" for k, _ in keys),
    )


def _interval_line(columns: Sequence[tuple[str, str]]) -> str:
    """How the intervals in brackets were computed: over the fold runs, or on each model's test images."""
    if any(key == "fold_runs" for key, _ in columns):
        return (
            "95 % confidence intervals in brackets: Nadeau and Bengio's corrected resampled t over the fold runs, "
            "mean ± t(n-1) · sqrt((1/n + n_test/n_train) · s²), for the means and the paired difference."
        )
    return (
        "95 % confidence intervals in brackets, from each model's evaluated images: Wilson score intervals for "
        f"the accuracy, sensitivity and specificity; a percentile bootstrap ({BOOTSTRAP_RESAMPLES} resamples, seed "
        f"{BOOTSTRAP_SEED}) for the balanced accuracy, macro F1 and ROC-AUC."
    )


def _verdict_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The best model by accuracy (and how to read a paired difference), or that none finished."""
    best = best_row(rows)
    if best is None:
        return ["No model finished training."]
    tied = sum(r.get("status") == "ok" and r.get("accuracy") == best["accuracy"] for r in rows) > 1
    lines = [
        f"Best by accuracy: **{best['model']}** (accuracy {best['accuracy']:.4f}, {best['macs']:,} MACs"
        f"{', the fewest among the models tied on accuracy' if tied else ''})."
    ]
    if any(r.get("accuracy_diff_se") is not None for r in rows):
        lines.append(
            "A paired difference whose 95 % interval contains 0 (roughly: smaller than twice its SE) is within what "
            "the splits' luck alone produces: read such models as tied."
        )
    return lines


def _recipe_lines(rows: Sequence[dict[str, Any]], facts: ComparisonFacts) -> list[str]:
    """The recipe every model was trained with, one line per topic."""
    recipe, positive, class_names = facts.recipe, facts.positive, facts.class_names
    sizes = sorted({r["image_size"] for r in rows})
    augment = ", ".join(f"{k}={v}" for k, v in asdict(recipe.augment).items())
    return [
        "## Recipe (identical for every model)",
        "",
        f"- data: `{recipe.data}`",
        f"- {facts.protocol}",
        f"- classes ({len(class_names)}): {', '.join(class_names)}"
        + (f"; sensitivity, specificity: positive class {positive[0]} ({positive[1]})" if positive else ""),
        f"- epochs: {recipe.epochs}, batch size: {recipe.batch_size}, optimizer: {recipe.optimizer}, "
        f"lr: {recipe.lr}, weight decay: {recipe.weight_decay}, warm-up epochs: {recipe.warmup_epochs:g}"
        + (" (longer than the run: the peak lr is never reached)" if facts.recipe_warnings else "")
        + f", label smoothing: {recipe.label_smoothing}",
        f"- image size: {sizes[0]}" if len(sizes) == 1 else "- image size: each model's default (see the table)",
        f"- augmentation: {augment}; mixup {recipe.mixup}, cutmix {recipe.cutmix}",
        f"- EMA: {recipe.ema_decay}, gradient clipping: {recipe.clip_grad_norm}, early stopping: "
        f"{recipe.early_stopping}, balance: {recipe.balance}",
        f"- precision: {facts.precision}"
        + ("; Keras models: fp32" if any(_is_keras(r["model"]) for r in rows) else "")
        + f", seed: {recipe.seed}, device: {facts.device}",
    ]


def _notes(rows: Sequence[dict[str, Any]], facts: ComparisonFacts) -> str:
    """How the columns were measured: MACs, times, speeds, and what the peak memory is on this machine."""
    memory = (
        "CUDA max_memory_allocated (tensors, training and inference)"
        if facts.cuda
        else "peak resident set size of each model's own training process (includes the Python/PyTorch runtime)"
        if facts.isolate
        else "not measured (all models trained in one process)"
    )
    baselines = [r["baseline_memory_mib"] for r in rows if not facts.cuda and r.get("baseline_memory_mib")]
    if baselines:
        memory += f"; before training, the runtime alone held about {statistics.median(baselines):,.0f} MiB"
    jobs = facts.jobs
    return (
        "Notes: parameters and MACs (multiply-accumulates of one image, convolutions and linears) are for the "
        "model as trained: its overrides, image size and class count. Train time is the whole run (epochs, "
        "final evaluation, report; with folds, the median fold run); train img/s is the median over epochs; inference img/s times one fixed "
        f"batch of {facts.recipe.batch_size} in eval mode at the training precision, without data loading. "
        f"Peak memory: {memory}."
        + (
            f" Runs were trained {jobs} side by side, each with 1/{jobs} of the threads: times and speeds are "
            "each run's under that sharing, not alone."
            if jobs > 1
            else ""
        )
    )
