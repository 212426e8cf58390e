"""Plots and a Markdown report for a finished training/evaluation run.

Figures are drawn on ``matplotlib.figure.Figure`` objects directly, not through pyplot: that
needs no GUI backend (it renders with Agg when saving a PNG), keeps no global figure state,
and so works headless and inside a long training process without leaking figures.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from .metrics import _auc_or_none, _check_inputs, classification_metrics

__all__ = ["plot_history", "plot_confusion_matrix", "plot_roc", "write_report"]

_DPI = 110


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI, bbox_inches="tight")
    return path


def _series(history: Sequence[Mapping], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) for one key, skipping rows where it is missing, None or NaN."""
    xs: list[float] = []
    ys: list[float] = []
    for i, row in enumerate(history):
        v = row.get(key)
        if v is None:
            continue
        v = float(v)
        if not math.isfinite(v):
            continue
        epoch = row.get("epoch")
        xs.append(float(i + 1 if epoch is None else epoch))
        ys.append(v)
    return xs, ys


def plot_history(history: Sequence[dict], path: Path) -> Path:
    """Loss and accuracy per epoch, train and (when present) validation, side by side.

    Validation values that are None or missing (no validation set) are simply not drawn.
    """
    fig = Figure(figsize=(10, 4))
    panels = (("loss", "Loss"), ("accuracy", "Accuracy"))
    for j, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, 2, j + 1)
        drawn = False
        for split, style in (("train", "-o"), ("val", "-s")):
            xs, ys = _series(history, f"{split}_{key}")
            if xs:
                ax.plot(xs, ys, style, markersize=3, label=f"{split}")
                drawn = True
        if drawn:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label.lower())
        ax.set_title(label)
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion_matrix(metrics: dict, path: Path) -> Path:
    """The confusion matrix of a ``classification_metrics`` result: rows true, columns
    predicted, each cell annotated with its count."""
    cm = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    names = [str(c) for c in metrics["class_names"]]
    k = len(names)
    side = max(4.0, 0.6 * k + 2.5)
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(cm, interpolation="nearest", cmap="Blues", vmin=0, vmax=max(1, int(cm.max())))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), labels=names, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    threshold = cm.max() / 2.0 if cm.size else 0.0
    fontsize = 10 if k <= 10 else max(5, 10 - (k - 10) // 3)
    for i in range(k):
        for j in range(k):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", fontsize=fontsize,
                color="white" if cm[i, j] > threshold else "black",
            )
    fig.tight_layout()
    return _save(fig, path)


def plot_roc(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    path: Path,
) -> Path | None:
    """ROC curve(s): binary draws class 1 (the positive class); multi-class draws one
    one-vs-rest curve per class.

    Returns None, writing nothing, when no curve is defined (every sample in one class).
    In the multi-class case a class absent from ``y_true`` has no curve and is left out
    while the others are still drawn.
    """
    y, p, names = _check_inputs(y_true, probs, class_names)
    k = len(names)
    if k < 2:
        return None
    targets = [1] if k == 2 else list(range(k))
    curves = []
    for c in targets:
        yb = (y == c).astype(np.int64)
        auc = _auc_or_none(yb, p[:, c])
        if auc is None:
            continue
        fpr, tpr, _ = roc_curve(yb, p[:, c])
        curves.append((names[c], fpr, tpr, auc))
    if not curves:
        return None

    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    cmap = matplotlib.colormaps["tab20" if len(curves) > 10 else "tab10"]
    for idx, (name, fpr, tpr, auc) in enumerate(curves):
        label = f"{name} (AUC {auc:.3f})" if k == 2 else f"{name} vs rest (AUC {auc:.3f})"
        ax.plot(fpr, tpr, linewidth=1.8, label=label, color=cmap(idx % cmap.N))
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC curve" if k == 2 else "ROC curves (one-vs-rest)")
    ax.legend(loc="lower right", fontsize=8 if len(curves) > 5 else 9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------- Markdown


def _cell(value: object) -> str:
    """A value as one Markdown table cell: pipes escaped, newlines flattened."""
    if value is None:
        text = "n/a"
    elif isinstance(value, bool):
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _num(value: object) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"  # type: ignore[arg-type]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> list[str]:
    align = align or ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


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
) -> Path:
    """Write ``run_dir/report.md`` with its plots in ``run_dir/plots/`` and return its path.

    The report is self-contained Markdown with relative image links, so the run directory
    can be moved or zipped and still render. ``metrics`` is a ``classification_metrics``
    result for ``y_true``/``probs`` (computed here if it is empty). ``skipped`` lists image files
    left out as unreadable (``--skip-bad-images``).
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
    roc_path = plot_roc(y_true, probs, names, roc_png)
    if roc_path is None and roc_png.exists():  # a stale curve from an earlier run would mislead
        roc_png.unlink()

    md: list[str] = [f"# {title}", ""]

    if details:
        md += ["## Run details", ""]
        md += _table(["key", "value"], [[_cell(k), _cell(v)] for k, v in details.items()])
        md.append("")

    md += ["## Summary", ""]
    summary = [
        ["samples", str(int(metrics.get("n", 0)))],
        ["accuracy", _num(metrics.get("accuracy"))],
        ["balanced accuracy", _num(metrics.get("balanced_accuracy"))],
        ["macro F1", _num(metrics.get("macro_f1"))],
        ["macro precision", _num(metrics.get("macro_precision"))],
        ["macro recall", _num(metrics.get("macro_recall"))],
        ["ROC-AUC", _num(metrics.get("roc_auc"))],
    ]
    if "sensitivity" in metrics:
        pos = _cell(metrics.get("positive_class", names[1] if len(names) > 1 else ""))
        summary.append([f"sensitivity (positive class: {pos})", _num(metrics["sensitivity"])])
    if "specificity" in metrics:
        summary.append(["specificity", _num(metrics["specificity"])])
    md += _table(["metric", "value"], summary, ["---", "---:"])
    md.append("")

    md += ["## Per-class metrics", ""]
    per_class = metrics.get("per_class", {})
    rows = []
    for name in metrics.get("class_names", names):
        pc = per_class.get(name, {})
        rows.append(
            [_cell(name), _num(pc.get("precision")), _num(pc.get("recall")), _num(pc.get("f1")),
             str(pc.get("support", "n/a"))]
        )
    md += _table(["class", "precision", "recall", "F1", "support"], rows, ["---", "---:", "---:", "---:", "---:"])
    md.append("")

    md += ["## Confusion matrix", "", "Rows are the true class, columns the predicted class.", ""]
    cm_names = [_cell(c) for c in metrics.get("class_names", names)]
    cm_rows = [[f"**{cm_names[i]}**", *(str(v) for v in row)] for i, row in enumerate(metrics["confusion_matrix"])]
    md += _table(["true \\ predicted", *cm_names], cm_rows, ["---", *("---:" for _ in cm_names)])
    md += ["", f"![Confusion matrix](plots/{cm_png.name})", ""]

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

    report = run_dir / "report.md"
    report.write_text("\n".join(md), encoding="utf-8")
    return report
