"""Classification metrics for an evaluated model, as a plain, JSON-ready dict.

The maths is scikit-learn's; this module fixes the conventions (class order, which class is
"positive", what happens when a class is absent) so every run reports the same way.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from .tables import fixed_decimals

__all__ = ["classification_metrics", "format_metrics"]


def _check_inputs(
    y_true: Sequence[int] | np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validate shapes and label range up front, so a mistake fails with a clear message
    instead of a silently wrong confusion matrix."""
    names = [str(c) for c in class_names]
    k = len(names)
    if k == 0:
        raise ValueError("class_names is empty")
    y = np.asarray(y_true).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be (N, K), got shape {p.shape}")
    if p.shape[1] != k:
        raise ValueError(f"probs has {p.shape[1]} columns but there are {k} class names")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"{y.shape[0]} labels but {p.shape[0]} rows of probabilities")
    if y.shape[0] == 0:
        raise ValueError("no samples to evaluate")
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.equal(np.mod(y, 1), 0)):
        raise ValueError("y_true must hold integer class indices")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"y_true holds class indices outside 0..{k - 1}")
    return y, p, names


def _auc_or_none(y_binary: np.ndarray, scores: np.ndarray) -> float | None:
    """One binary ROC-AUC, or None where it is undefined (one class only, non-finite scores)."""
    if y_binary.min() == y_binary.max() or not np.all(np.isfinite(scores)):
        return None
    try:
        auc = float(roc_auc_score(y_binary, scores))
    except ValueError:
        return None
    return auc if math.isfinite(auc) else None


def _roc_auc(y: np.ndarray, p: np.ndarray, positive: int = 1) -> float | None:
    """Binary: AUC of the positive class's probability. Multi-class: macro mean of one-vs-rest AUCs.

    The one-vs-rest AUCs are computed one class at a time (the same numbers as scikit-learn's
    ``multi_class="ovr"``) so that rows of probabilities need not sum to exactly 1 and a class
    absent from ``y_true`` gives None rather than an exception or a NaN.
    """
    k = p.shape[1]
    if k < 2:
        return None
    if k == 2:
        return _auc_or_none((y == positive).astype(np.int64), p[:, positive])
    aucs = [_auc_or_none((y == c).astype(np.int64), p[:, c]) for c in range(k)]
    if any(a is None for a in aucs):
        return None
    return float(np.mean(aucs))


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    positive_class: str | None = None,
) -> dict:
    """Headline, per-class and confusion-matrix metrics of argmax predictions.

    ``probs`` is (N, K) class probabilities, column k belonging to ``class_names[k]``. Every
    value in the result is a plain int/float/str/list/dict/None so it can go straight to JSON.

    A class with no sample in ``y_true`` is listed in ``absent_classes``: its recall and F1 (and,
    for two classes, the sensitivity or specificity it defines) are None, not 0, because they
    are undefined; its precision is 0 if it was predicted, else None. The macro averages (and
    balanced accuracy, the mean recall) run over the classes present, so an absent class neither
    drags them towards 0 nor counts as a success. A present class that is never predicted keeps
    precision 0 (``zero_division=0``): the model failed to find it. For two classes,
    ``positive_class`` (default: class index 1) is the one whose recall is the sensitivity, e.g.
    the disease in a disease-vs-others task.
    """
    y, p, names = _check_inputs(y_true, probs, class_names)
    positive = 1
    if positive_class is not None:
        if positive_class not in names:
            raise ValueError(f"positive class {positive_class!r} is not one of the classes {names}")
        positive = names.index(positive_class)
    k = len(names)
    labels = list(range(k))
    pred = p.argmax(axis=1)

    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=labels, average=None, zero_division=0)
    cm = confusion_matrix(y, pred, labels=labels)
    present = support > 0  # at least one class: _check_inputs refuses an empty y_true
    predicted = cm.sum(axis=0) > 0
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true": expected when a class is absent; the
        # score is then the mean recall of the classes that are present, which is what we want.
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(y, pred))

    def defined(values: np.ndarray, i: int, is_defined: bool) -> float | None:
        return float(values[i]) if is_defined else None

    out: dict = {
        "n": int(y.shape[0]),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": balanced,
        "macro_f1": float(np.mean(f1[present])),
        "macro_precision": float(np.mean(prec[present])),
        "macro_recall": float(np.mean(rec[present])),
        "per_class": {
            name: {
                "precision": defined(prec, i, bool(present[i] or predicted[i])),
                "recall": defined(rec, i, bool(present[i])),
                "f1": defined(f1, i, bool(present[i])),
                "support": int(support[i]),
            }
            for i, name in enumerate(names)
        },
        "absent_classes": [name for i, name in enumerate(names) if not present[i]],
        "confusion_matrix": [[int(v) for v in row] for row in cm],
        "class_names": names,
        "roc_auc": _roc_auc(y, p, positive),
    }
    if k == 2:
        out["sensitivity"] = defined(rec, positive, bool(present[positive]))
        out["specificity"] = defined(rec, 1 - positive, bool(present[1 - positive]))
        out["positive_class"] = names[positive]
    return out


def format_metrics(metrics: dict) -> str:
    """One line for logs and the CLI: the headline numbers, three decimals each."""
    parts = [
        f"accuracy {fixed_decimals(metrics.get('accuracy'), 3)}",
        f"balanced {fixed_decimals(metrics.get('balanced_accuracy'), 3)}",
        f"macro-F1 {fixed_decimals(metrics.get('macro_f1'), 3)}",
        f"ROC-AUC {fixed_decimals(metrics.get('roc_auc'), 3)}",
    ]
    if "sensitivity" in metrics:
        pos = metrics.get("positive_class")
        parts.append(f"sensitivity {fixed_decimals(metrics['sensitivity'], 3)}" + (f" ({pos})" if pos else ""))
    if "specificity" in metrics:
        parts.append(f"specificity {fixed_decimals(metrics['specificity'], 3)}")
    if metrics.get("absent_classes"):  # macro averages are over the other classes: say why
        parts.append("absent: " + ", ".join(metrics["absent_classes"]))
    return " | ".join(parts)
