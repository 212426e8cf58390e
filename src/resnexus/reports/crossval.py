"""The report of a cross-validation run (``cv_report.md``; engine/crossval.py runs the folds).

Read from the record that ``cv_metrics.json`` holds: the protocol, each fold's test metrics, their mean,
standard deviation and the 95 % interval of the mean (:func:`cv_intervals`), the pooled confusion matrix
and the refit model. Where the report links into
the run directory, :class:`RunLinks` says where (the engine's ``RunDir`` owns that layout).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .intervals import corrected_t_interval, format_interval
from .tables import fixed_decimals, markdown_cell, markdown_table

__all__ = [
    "CV_CI_METHOD",
    "CV_METRICS",
    "RunLinks",
    "cv_intervals",
    "cv_report_markdown",
    "format_mean_std",
    "metric_label",
]

# Headline metrics averaged over folds; sensitivity / specificity exist for two classes only.
CV_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "sensitivity", "specificity")
_LABELS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro F1",
    "roc_auc": "ROC-AUC",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
}
CV_CI_METHOD = (
    "95 % confidence interval of each mean: Nadeau and Bengio's corrected resampled t, "
    "mean ± t(k-1) · sqrt((1/k + n_test/n_train) · s²) over the k folds with a value, n_test and n_train the folds' "
    "mean test and training (train + validation) sizes; corrected because the folds share training images, "
    "which makes their scores correlated and the plain t interval too narrow"
)


@dataclass(frozen=True)
class RunLinks:
    """Where the report points into the cross-validation run directory, relative to it."""

    refit: str  # the refit run's directory
    refit_checkpoint: str  # its model, named while the record does not name it yet (still training)
    refit_report: str
    fold_report: Callable[[int], str]  # fold k's report


def metric_label(key: str, positive: str | None) -> str:
    """A metric's name; the sensitivity's with its positive class: ``sensitivity (Monkeypox)``."""
    return f"{_LABELS[key]} ({positive})" if key == "sensitivity" and positive else _LABELS[key]


def cv_intervals(fold_metrics: Sequence[dict[str, Any]], keys: Sequence[str] = CV_METRICS) -> dict[str, Any]:
    """The 95 % interval of each metric's mean over the folds (:data:`CV_CI_METHOD`), as ``[low, high]``
    within [0, 1], or None with fewer than 2 folds with a value; for the metrics some fold has."""
    n_test = float(np.mean([m["n_test"] for m in fold_metrics]))
    n_train = float(np.mean([m["n_train"] + m.get("n_val", 0) for m in fold_metrics]))
    out: dict[str, Any] = {}
    for key in keys:
        values = [float(m[key]) for m in fold_metrics if m.get(key) is not None and math.isfinite(float(m[key]))]
        if values:
            ci = corrected_t_interval(values, n_test, n_train, bounds=(0.0, 1.0))
            out[key] = None if ci is None else [ci[0], ci[1]]
    return out


def format_mean_std(
    mean: dict[str, float],
    std: dict[str, float | None],
    digits: int = 4,
    positive: str | None = None,
    ci: dict[str, Any] | None = None,
) -> str:
    """``accuracy 0.8296 ± 0.0457 [0.773, 0.886] | macro F1 ...``: one line for logs and the report, with each
    mean's 95 % interval where ``ci`` (:func:`cv_intervals`) has one; the sensitivity names its class
    (``positive``), so that nobody reads the other class's rate."""
    parts = []
    for key in CV_METRICS:
        if key in mean:
            spread = fixed_decimals(std.get(key), digits)
            interval = f" {format_interval(ci[key])}" if ci is not None and ci.get(key) is not None else ""
            parts.append(f"{metric_label(key, positive)} {fixed_decimals(mean[key], digits)} ± {spread}{interval}")
    return " | ".join(parts)


def cv_report_markdown(record: dict[str, Any], links: RunLinks) -> str:
    """cv_report.md: the estimate, which model to deploy, the protocol, the folds and the pooled confusion matrix."""
    protocol, mean, std = record["protocol"], record["mean"], record["std"]
    folds = protocol["folds"]
    ci = record.get("ci")  # absent from the records of older versions
    estimate = format_mean_std(mean, std, positive=protocol.get("positive_class"), ci=ci)
    spread = f"mean ± std over {folds} folds" + (", [95 % confidence interval of the mean]" if ci is not None else "")
    md = [
        f"# {folds}-fold cross-validation: {protocol['model']} on {Path(protocol['data']).name}",
        "",
        f"**Cross-validated estimate of this recipe ({spread}):** {estimate}",
        "",
        *_warning_lines(record),
        "## Which model to use",
        "",
        "The figures above are the **cross-validated estimate of this recipe**: each fold model was tested "
        "on images it never saw, and the estimate is what to expect of a model trained this way on new images.",
        "",
        *_deployable_model_lines(record, links),
        "",
        *_protocol_lines(record),
        "",
        "## Per fold (test metrics of each fold's best checkpoint)",
        "",
        _fold_table(record, links),
    ]
    names = [markdown_cell(n) for n in protocol["class_names"]]
    cm_rows = [[f"**{name}**", *(str(v) for v in row)] for name, row in zip(names, record["pooled_confusion_matrix"])]
    md += [
        "",
        "## Pooled confusion matrix (all folds' test predictions)",
        "",
        "Rows are the true class, columns the predicted class.",
        "",
        markdown_table(["true \\ predicted", *names], cm_rows, "l" + "r" * len(names)),
    ]
    md += ["", f"Total time: {record['seconds']:.0f} s.", ""]
    return "\n".join(md)


def _protocol_lines(record: dict[str, Any]) -> list[str]:
    """How the folds were cut, validated and trained, and the classes."""
    protocol, mean = record["protocol"], record["mean"]
    positive = protocol.get("positive_class")
    grouping = f"by `{protocol['group_by']}`" if protocol["group_by"] else "none (every file its own group)"
    md = [
        "## Protocol",
        "",
        f"- {protocol['folds']} stratified, grouped folds (scikit-learn `StratifiedGroupKFold`, shuffled, "
        f"seed {protocol['seed']}); each fold is the test set once, so every image is tested exactly once.",
        f"- Grouping: {grouping}; {protocol['images']} images in {protocol['groups']} groups, "
        "no group on two sides (train / val / test) of any fold.",
        _validation_line(protocol, record["folds"]),
        f"- Model {protocol['model']}"
        + (f" from `{protocol['weights']}`" if protocol["weights"] else " trained from scratch")
        + f", {_epochs_text(protocol)}, image size {protocol['image_size']}, batch size {protocol['batch_size']}.",
        "- Std is the sample standard deviation over folds (ddof=1).",
        *([f"- {CV_CI_METHOD}."] if record.get("ci") is not None else []),
        f"- Classes: {', '.join(f'{markdown_cell(n)} ({c})' for n, c in protocol['class_counts'].items())}.",
    ]
    if "sensitivity" in mean and positive:
        why = protocol.get("positive_class_reason")
        md.append(
            f"- Sensitivity / specificity / ROC: positive class {markdown_cell(positive)}"
            + (f" ({markdown_cell(why)})." if why else ".")
        )
    return md


def _fold_table(record: dict[str, Any], links: RunLinks) -> str:
    """One row per fold (its sizes, test metrics, best epoch and report), then the mean ± std."""
    mean, std = record["mean"], record["std"]
    positive = record["protocol"].get("positive_class")
    keys = [k for k in CV_METRICS if k in mean]
    header = ["fold", "train / val / test images", "test groups", *(metric_label(k, positive) for k in keys)]
    header += ["best epoch", "report"]
    rows = [
        [
            str(m["fold"]),
            f"{m['n_train']} / {m['n_val']} / {m['n_test']}",
            str(m["test_groups"]),
            *(fixed_decimals(m.get(k)) for k in keys),
            markdown_cell(m.get("best_epoch")),
            f"[report]({links.fold_report(m['fold'])})",
        ]
        for m in record["folds"]
    ]
    mean_std = [f"{fixed_decimals(mean[k])} ± {fixed_decimals(std[k])}" for k in keys]
    rows.append(["**mean ± std**", "", "", *mean_std, "", ""])
    if record.get("ci") is not None:
        rows.append(["**95 % CI of the mean**", "", "", *(format_interval(record["ci"].get(k)) for k in keys), "", ""])
    return markdown_table(header, rows, "lll" + "r" * (len(keys) + 1) + "l")


def _deployable_model_lines(record: dict[str, Any], links: RunLinks) -> list[str]:
    """What to deploy: the refit model (done / still training) or, without one, the fold ensemble."""
    refit, folds = record["refit"], record["protocol"]["folds"]
    ensemble = (
        f"`--ensemble` (predict / evaluate / explain, given this directory) uses the {folds} fold models "
        "instead: the mean of their probabilities."
    )
    if refit["status"] == "skipped":
        return [
            "**No refit model** was trained (`--no-refit`): pass this directory with `--ensemble` to predict / "
            f"evaluate / explain to use the {folds} fold models (the mean of their probabilities), or run "
            "again without `--no-refit` to train one model on every image."
        ]
    lines = [
        f"**The deployable model is the refit model, `{refit.get('checkpoint', links.refit_checkpoint)}`**: "
        "the same recipe "
        f"trained on all {refit['images']} images, none held back, its final weights. `evaluate`, `predict`, "
        "`explain` and `export` use it when given this directory. Its own report "
        f"([{links.refit_report}]({links.refit_report})) is measured on its training images: "
        "not an estimate; the estimate is the cross-validated one above.",
        "",
        ensemble,
    ]
    if refit["status"] == "training":
        lines += [
            "",
            f"The refit model is being trained into `{links.refit}/`; if this line remains, it did not finish.",
        ]
    else:
        lines += ["", f"Refit time: {refit['seconds']:.0f} s."]
    return lines


def _validation_line(protocol: dict[str, Any], fold_metrics: list[dict[str, Any]]) -> str:
    """What the fold runs validated on: read from the folds (their ``n_val``), not from the options."""
    validated = sum(m.get("n_val", 0) > 0 for m in fold_metrics)
    share = f"{100 * protocol['val_fraction']:g}%"
    if validated == len(fold_metrics) and validated:
        return f"- Validation (best-epoch choice): {share} of each fold's training part, grouped and stratified, same seed."
    if validated:
        return (
            f"- Validation (best-epoch choice) in {validated} of {len(fold_metrics)} folds: {share} of their training "
            "part; the other folds had too few images to choose an epoch on, trained on them and tested the final weights."
        )
    return (
        "- No validation set (too few images to choose an epoch on, or none asked for): the final weights are tested."
    )


def _epochs_text(protocol: dict[str, Any]) -> str:
    """``20 epochs (warm-up 5)``, with early stopping and a warm-up the run never finishes said."""
    text = f"{protocol['epochs']} epochs"
    if protocol.get("warmup_epochs") is not None:
        text += f" (warm-up {protocol['warmup_epochs']:g})"
    if protocol.get("early_stopping"):
        text += (
            f", at most: early stopping after {protocol['early_stopping']} epochs without a better validation accuracy"
        )
    return text


def _warning_lines(record: dict[str, Any]) -> list[str]:
    """The recipe's warnings and each fold's (e.g. a fold model that predicted one class for every image)."""
    found = list(record["protocol"].get("warnings") or [])
    found += [f"fold {m['fold']}: {w}" for m in record["folds"] for w in m.get("warnings") or []]
    return [line for w in found for line in (f"**Warning:** {markdown_cell(w)}.", "")]
