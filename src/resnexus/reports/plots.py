"""Every figure of a report: training history, confusion matrix, ROC curves, accuracy vs MACs,
reliability diagrams.

Figures are drawn on ``matplotlib.figure.Figure`` objects directly, not through pyplot: that
needs no GUI backend (it renders with Agg when saving a PNG), keeps no global figure state,
and so works headless and inside a long training process without leaking figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from ..files import atomic_write
from .metrics import binary_auc, checked_inputs, resolve_positive_class
from .uncertainty import expected_calibration_error, reliability_curve

__all__ = [
    "plot_accuracy_vs_macs",
    "plot_confusion_matrix",
    "plot_history",
    "plot_reliability",
    "plot_roc",
    "save_figure",
]

_DPI = 110


def save_figure(fig: Figure, path: str | Path, dpi: int = _DPI) -> Path:
    """Write ``fig`` as a PNG, creating its folder; atomically, so a crash never leaves half an image."""
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
    return Path(path)


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
    return save_figure(fig, path)


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
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if cm[i, j] > threshold else "black",
            )
    fig.tight_layout()
    return save_figure(fig, path)


def plot_roc(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    path: Path,
    positive_class: str | None = None,
    operating_point: tuple[float, float] | None = None,
) -> Path | None:
    """ROC curve(s): binary draws the positive class's (``positive_class``, default as
    :func:`~resnexus.reports.metrics.resolve_positive_class` chooses it), named in the title and
    legend; multi-class draws one one-vs-rest curve per class. ``operating_point``: (false positive
    rate, sensitivity) of a chosen decision threshold, marked on the curve.

    Returns None, writing nothing, when no curve is defined (every sample in one class).
    In the multi-class case a class absent from ``y_true`` has no curve and is left out
    while the others are still drawn.
    """
    y, p, names = checked_inputs(y_true, probs, class_names)
    k = len(names)
    if k < 2:
        return None
    positive = resolve_positive_class(names, positive_class)[0]
    targets = [positive] if k == 2 else list(range(k))
    curves = []
    for c in targets:
        yb = (y == c).astype(np.int64)
        auc = binary_auc(yb, p[:, c])
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
        label = f"positive class {name} (AUC {auc:.3f})" if k == 2 else f"{name} vs rest (AUC {auc:.3f})"
        ax.plot(fpr, tpr, linewidth=1.8, label=label, color=cmap(idx % cmap.N))
    if operating_point is not None:
        fp, tp = operating_point
        ax.plot(
            [fp], [tp], "o", color="black", markersize=7, label=f"operating point (sens. {tp:.2f}, spec. {1 - fp:.2f})"
        )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(f"ROC curve (positive class: {names[positive]})" if k == 2 else "ROC curves (one-vs-rest)")
    ax.legend(loc="lower right", fontsize=8 if len(curves) > 5 else 9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_reliability(
    before: np.ndarray, after: np.ndarray, labels: Sequence[int] | np.ndarray, path: str | Path, bins: int = 10
) -> Path:
    """Reliability diagrams of the same images' probabilities before and after calibration, side by
    side: per confidence bin, the accuracy against the mean confidence (on the diagonal: calibrated),
    each point sized by its image count, and the ECE in the title."""
    fig = Figure(figsize=(10, 4.5))
    for j, (title, probs) in enumerate((("before calibration", before), ("after calibration", after))):
        ax = fig.add_subplot(1, 2, j + 1)
        curve = reliability_curve(probs, np.asarray(labels), bins)
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="calibrated")
        sizes = 20 + 200 * np.asarray(curve["count"]) / max(1, max(curve["count"], default=1))
        ax.plot(curve["confidence"], curve["accuracy"], "-", color="tab:blue", linewidth=1.2)
        ax.scatter(curve["confidence"], curve["accuracy"], s=sizes, color="tab:blue", zorder=3, label="bins")
        ece = expected_calibration_error(probs, np.asarray(labels), bins)
        ax.set_title(f"{title} (ECE {ece:.3f})")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("confidence (top-class probability)")
        ax.set_ylabel("accuracy")
        ax.legend(loc="upper left", fontsize=9)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_accuracy_vs_macs(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Accuracy against MACs (log x), each finished model of a comparison a labelled point.

    ``rows`` are ``compare`` rows: a row counts when its ``status`` is "ok" and it has an
    accuracy and a MAC count.
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    done = [r for r in rows if r.get("status") == "ok" and r.get("accuracy") is not None and r.get("macs")]
    for r in done:
        ax.scatter(r["macs"], r["accuracy"], s=40, zorder=3)
        ax.annotate(r["model"], (r["macs"], r["accuracy"]), textcoords="offset points", xytext=(5, 5), fontsize=9)
    ax.set_xscale("log")
    if done:
        lo, hi = min(r["macs"] for r in done), max(r["macs"] for r in done)
        ax.set_xlim(lo / 2, hi * 2)  # room for the labels, and a visible range for a single model
    else:
        ax.text(0.5, 0.5, "no model finished training", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(-0.02, 1.08)  # room for labels above a perfect score
    ax.set_xlabel("MACs per image (log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy vs compute")
    ax.grid(True, which="both", alpha=0.3)
    return save_figure(fig, path)
