"""The Markdown report of a finished training/evaluation run, with its plots (reports/plots.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..files import write_text_atomic
from .intervals import format_interval
from .metrics import classification_metrics, describe_positive_class
from .plots import plot_confusion_matrix, plot_history, plot_roc
from .tables import MISSING, fixed_decimals, markdown_cell, markdown_table

__all__ = ["write_report"]


def write_report(
    run_dir: Path,
    *,
    title: str,
    metrics: dict,
    history: Sequence[dict],
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    details: dict[str, object] | None = None,
    skipped: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> Path:
    """Write ``run_dir/report.md`` with its plots in ``run_dir/plots/`` and return its path.

    The report is self-contained Markdown with relative image links, so the run directory
    can be moved or zipped and still render. ``metrics`` is a ``classification_metrics``
    result for ``y_true``/``probs`` (computed here if it is empty). ``skipped`` lists image files
    left out as unreadable (``--skip-bad-images``); ``notes`` are warnings about the run itself
    (e.g. a warm-up longer than the run), shown at the top.
    """
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    names = [str(c) for c in class_names]
    if not metrics:
        metrics = classification_metrics(y_true, probs, names)

    history_png = plots / "history.png"
    cm_png = plots / "confusion_matrix.png"
    roc_png = plots / "roc.png"
    has_history = len(history) > 0
    if has_history:
        plot_history(history, history_png)
    plot_confusion_matrix(metrics, cm_png)
    roc_path = plot_roc(y_true, probs, names, roc_png, metrics.get("positive_class"))
    if roc_path is None and roc_png.exists():  # a stale curve from an earlier run would mislead
        roc_png.unlink()

    md: list[str] = [f"# {title}", ""]
    md += [f"**Warning:** {markdown_cell(w)}." for w in notes]
    if notes:
        md.append("")
    if details:
        md += ["## Run details", ""]
        md += [markdown_table(["key", "value"], [[markdown_cell(k), markdown_cell(v)] for k, v in details.items()]), ""]
    md += _summary_lines(metrics, names)
    md += _per_class_lines(metrics, names)
    md += _confusion_matrix_lines(metrics, names, cm_png.name)
    md += ["## ROC", ""]
    if roc_path is not None:
        md += [f"![ROC curve](plots/{roc_png.name})", ""]
    else:
        md += ["ROC curve undefined: the evaluation set needs samples of more than one class.", ""]
    if skipped:
        md += ["## Skipped images", "", f"{len(skipped)} unreadable image(s) were left out (`--skip-bad-images`):", ""]
        md += [f"- `{path}`" for path in skipped] + [""]
    md += ["## Training history", ""]
    if has_history:
        md += [f"![Training history](plots/{history_png.name})", ""]
    else:
        md += ["No training history recorded.", ""]
    return write_text_atomic(run_dir / "report.md", "\n".join(md))


def _summary_lines(metrics: dict, names: list[str]) -> list[str]:
    """The headline metrics, the positive class, the metrics' warnings and the classes absent from the data."""
    md = ["## Summary", ""]
    if metrics.get("split") == "train":  # e.g. a cross-validation refit: nothing was held back
        md += [
            "Measured on the images the model was trained on (no validation or test images were held back): "
            "how well it fits them, **not an estimate** of its accuracy on new images.",
            "",
        ]
    pos = markdown_cell(metrics.get("positive_class", names[1] if len(names) > 1 else ""))
    labels = {
        "accuracy": "accuracy",
        "balanced_accuracy": "balanced accuracy",
        "macro_f1": "macro F1",
        "macro_precision": "macro precision",
        "macro_recall": "macro recall",
        "roc_auc": "ROC-AUC",
        "sensitivity": f"sensitivity (positive class: {pos})",
        "specificity": "specificity",
    }
    intervals = "ci_method" in metrics  # metrics computed without intervals (or by an older version) have none
    summary = [["samples", str(int(metrics.get("n", 0)))] + ([""] if intervals else [])]
    for key, label in labels.items():
        if key in metrics or key not in ("sensitivity", "specificity"):
            ci = [format_interval(metrics.get(f"{key}_ci"))] if intervals else []
            summary.append([label, fixed_decimals(metrics.get(key)), *ci])
    header = ["metric", "value", "95 % CI"] if intervals else ["metric", "value"]
    md += [markdown_table(header, summary, "lrr" if intervals else "lr"), ""]
    if intervals:
        md += [f"{markdown_cell(metrics['ci_method'])}.", ""]
    positive = describe_positive_class(metrics)
    if positive:
        md += [f"Sensitivity, specificity and the ROC curve: {markdown_cell(positive)}.", ""]
    md += [f"**Warning:** {markdown_cell(w)}." for w in metrics.get("warnings") or []]
    if metrics.get("warnings"):
        md.append("")
    absent = metrics.get("absent_classes") or []
    if absent:
        n_present = len(metrics.get("class_names", names)) - len(absent)
        md += [
            f"Absent from the evaluated data (no images): {', '.join(markdown_cell(c) for c in absent)}. "
            f"Their recall and F1 are undefined ({MISSING}), and the macro averages run over the "
            f"{n_present} class(es) present.",
            "",
        ]
    return md


def _per_class_lines(metrics: dict, names: list[str]) -> list[str]:
    per_class = metrics.get("per_class", {})

    def cell(pc: dict, key: str) -> str:  # the value, and its interval where it has one
        ci = pc.get(f"{key}_ci")
        return fixed_decimals(pc.get(key)) + (f" {format_interval(ci)}" if ci is not None else "")

    rows = []
    for name in metrics.get("class_names", names):
        pc = per_class.get(name, {})
        rows.append([markdown_cell(name), *(cell(pc, k) for k in ("precision", "recall", "f1"))])
        rows[-1].append(markdown_cell(pc.get("support")))
    return [
        "## Per-class metrics",
        "",
        markdown_table(["class", "precision", "recall", "F1", "support"], rows, "lrrrr"),
        "",
    ]


def _confusion_matrix_lines(metrics: dict, names: list[str], png_name: str) -> list[str]:
    md = ["## Confusion matrix", "", "Rows are the true class, columns the predicted class.", ""]
    cm_names = [markdown_cell(c) for c in metrics.get("class_names", names)]
    cm_rows = [[f"**{cm_names[i]}**", *(str(v) for v in row)] for i, row in enumerate(metrics["confusion_matrix"])]
    md += [markdown_table(["true \\ predicted", *cm_names], cm_rows, "l" + "r" * len(cm_names))]
    return [*md, "", f"![Confusion matrix](plots/{png_name})", ""]
