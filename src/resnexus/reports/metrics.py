"""Classification metrics for an evaluated model, as a plain, JSON-ready dict.

The maths is scikit-learn's; this module fixes the conventions (class order, which class is
"positive", what happens when a class is absent) so every run reports the same way.
"""

from __future__ import annotations

import math
import re
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

__all__ = [
    "NEGATIVE_CLASS_WORDS",
    "binary_auc",
    "checked_inputs",
    "classification_metrics",
    "describe_positive_class",
    "format_metrics",
    "resolve_positive_class",
]

# Class names that read as "not the condition": with two classes, such a class is never the default
# positive class when the other class does not read so too (a disease-vs-others task is about the disease).
NEGATIVE_CLASS_WORDS = frozenset(
    {"other", "others", "rest", "normal", "negative", "neg", "healthy", "benign", "control", "controls"}
    | {"none", "no", "absent", "background", "clean", "ok", "good"}
)
_WORD = re.compile(r"[a-z0-9]+")


def _reads_negative(name: str) -> bool:
    """``Others``, ``normal_skin``, ``no-finding``, ``non_melanoma``: a name whose first word says
    "not the condition" (one of :data:`NEGATIVE_CLASS_WORDS`, or a ``non``/``not`` prefix)."""
    words = _WORD.findall(name.casefold())
    if not words:
        return False
    return words[0] in NEGATIVE_CLASS_WORDS or words[0] in ("non", "not")


def resolve_positive_class(class_names: Sequence[str], positive_class: str | None = None) -> tuple[int, str]:
    """(index, why) of the class that sensitivity, specificity and the binary ROC curve are about.

    Given: it must be one of the two classes (else one line listing them). Not given, predictably:
    when exactly one of the two names reads as a negative class (``Others``, ``normal``,
    ``healthy``, ``benign``, ``control``, ``non-...``: :data:`NEGATIVE_CLASS_WORDS`), the other one;
    else the second class in sorted order (index 1). ``why`` says which rule chose it.
    """
    names = [str(c) for c in class_names]
    if positive_class is not None:
        if positive_class not in names:
            raise ValueError(
                f"--positive-class {positive_class!r} is not one of the classes: {', '.join(map(repr, names))}"
            )
        return names.index(positive_class), "set with --positive-class"
    if len(names) != 2:
        return 1, "chosen by default: the second class"
    negative = [_reads_negative(n) for n in names]
    if negative.count(True) == 1:
        index = negative.index(False)
        return index, (f"chosen by default: {names[1 - index]!r} reads as the negative class; set --positive-class")
    return 1, "chosen by default: the second class in sorted order; set --positive-class"


def describe_positive_class(metrics: dict) -> str | None:
    """``positive class: Others (chosen by default: ...)``: for two classes, else None. Said wherever
    sensitivity / specificity are, so that nobody reads a rate of the wrong class."""
    if "positive_class" not in metrics:
        return None
    why = metrics.get("positive_class_reason")
    return f"positive class: {metrics['positive_class']}" + (f" ({why})" if why else "")


def _degenerate_warnings(names: list[str], pred: np.ndarray) -> list[str]:
    """A model that answers one class for every image: its rates say nothing about telling classes apart."""
    predicted = np.unique(pred)
    if len(names) < 2 or len(predicted) != 1 or pred.shape[0] < 2:
        return []
    rates = "sensitivity/specificity are" if len(names) == 2 else "the per-class recalls are"
    return [f"the model predicted {names[int(predicted[0])]!r} for every image: {rates} degenerate"]


def checked_inputs(
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


def binary_auc(y_binary: np.ndarray, scores: np.ndarray) -> float | None:
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
        return binary_auc((y == positive).astype(np.int64), p[:, positive])
    aucs = [binary_auc((y == c).astype(np.int64), p[:, c]) for c in range(k)]
    if any(a is None for a in aucs):
        return None
    return float(np.mean(aucs))


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    positive_class: str | None = None,
    decisions: Sequence[int] | np.ndarray | None = None,
) -> dict:
    """Headline, per-class and confusion-matrix metrics of argmax predictions (or of ``decisions``,
    the predicted classes of an operating threshold; ROC-AUC still ranks ``probs``).

    ``probs`` is (N, K) class probabilities, column k belonging to ``class_names[k]``. Every
    value in the result is a plain int/float/str/list/dict/None so it can go straight to JSON.

    A class with no sample in ``y_true`` is listed in ``absent_classes``: its recall and F1 (and,
    for two classes, the sensitivity or specificity it defines) are None, not 0, because they
    are undefined; its precision is 0 if it was predicted, else None. The macro averages (and
    balanced accuracy, the mean recall) run over the classes present, so an absent class neither
    drags them towards 0 nor counts as a success. A present class that is never predicted keeps
    precision 0 (``zero_division=0``): the model failed to find it. For two classes,
    ``positive_class`` is the one whose recall is the sensitivity, e.g. the disease in a
    disease-vs-others task (default: :func:`resolve_positive_class`; ``positive_class_reason`` says
    how it was chosen). ``warnings`` lists what makes the numbers misleading, e.g. a model that
    predicted one class for every image.
    """
    y, p, names = checked_inputs(y_true, probs, class_names)
    positive, reason = resolve_positive_class(names, positive_class)
    k = len(names)
    labels = list(range(k))
    pred = p.argmax(axis=1) if decisions is None else np.asarray(decisions, dtype=np.int64)

    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=labels, average=None, zero_division=0)
    cm = confusion_matrix(y, pred, labels=labels)
    present = support > 0  # at least one class: checked_inputs refuses an empty y_true
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
        out["positive_class_reason"] = reason
    out["warnings"] = _degenerate_warnings(names, pred)
    return out


def format_metrics(metrics: dict) -> str:
    """One line for logs and the CLI: the headline numbers, three decimals each."""
    parts = [
        f"accuracy {fixed_decimals(metrics.get('accuracy'), 3)}",
        f"balanced {fixed_decimals(metrics.get('balanced_accuracy'), 3)}",
        f"macro-F1 {fixed_decimals(metrics.get('macro_f1'), 3)}",
        f"ROC-AUC {fixed_decimals(metrics.get('roc_auc'), 3)}",
    ]
    pos = metrics.get("positive_class")
    if "sensitivity" in metrics:
        parts.append(f"sensitivity {fixed_decimals(metrics['sensitivity'], 3)}" + (f" ({pos})" if pos else ""))
    if "specificity" in metrics:
        parts.append(f"specificity {fixed_decimals(metrics['specificity'], 3)}")
    if metrics.get("absent_classes"):  # macro averages are over the other classes: say why
        parts.append("absent: " + ", ".join(metrics["absent_classes"]))
    return " | ".join(parts)
