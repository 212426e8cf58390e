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

from .intervals import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    bootstrap_intervals,
    format_interval,
    wilson_interval,
)
from .tables import fixed_decimals

__all__ = [
    "CI_METHOD",
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
# How the ``<metric>_ci`` intervals are computed, said once in every report that shows them.
CI_METHOD = (
    "95 % confidence intervals: Wilson score intervals for proportions (accuracy, sensitivity, "
    "specificity, a class's precision and recall); a percentile bootstrap of the evaluated images "
    f"({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}) for balanced accuracy, the macro averages, "
    "ROC-AUC and a class's F1"
)


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
    *,
    intervals: bool = True,
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

    With ``intervals`` (the default), every metric has its 95 % confidence interval beside it,
    ``<metric>_ci: [low, high]`` (None where the metric is None or the interval undefined): see
    :data:`CI_METHOD` and reports/intervals.py.
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
    return _with_intervals(out, y, p, pred, positive) if intervals else out


def _as_list(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [ci[0], ci[1]]


def _with_intervals(out: dict, y: np.ndarray, p: np.ndarray, pred: np.ndarray, positive: int) -> dict:
    """``out`` with ``<metric>_ci`` after each metric, in it and in each class's entry (see :data:`CI_METHOD`)."""
    k = len(out["class_names"])
    cm = np.asarray(out["confusion_matrix"])
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    # one set of resamples for all of them: the confusion-matrix metrics, then (where defined) the ROC-AUC
    plans = None if out["roc_auc"] is None else _auc_plans(y, p, positive)

    def statistic(weights: np.ndarray, y_: np.ndarray, pred_: np.ndarray) -> np.ndarray:
        columns = _confusion_statistics(weights, y_, pred_, k)
        if plans is None:
            return columns
        aucs = np.mean([_weighted_auc(weights, *plan) for plan in plans], axis=0)  # NaN where a class is missing
        return np.column_stack([columns, aucs])

    boot = bootstrap_intervals(statistic, (y, pred))
    ci = {
        "accuracy": wilson_interval(int(tp.sum()), out["n"]),
        "balanced_accuracy": boot[0],
        "macro_f1": boot[1],
        "macro_precision": boot[2],
        "macro_recall": boot[0],  # the mean recall over the classes present: the balanced accuracy
        "roc_auc": None if plans is None else boot[-1],
    }
    if k == 2:  # a rate over the images of one class: None (like the rate) when the class is absent
        ci["sensitivity"] = wilson_interval(int(tp[positive]), int(support[positive]))
        ci["specificity"] = wilson_interval(int(tp[1 - positive]), int(support[1 - positive]))
    per_class = {}
    for i, (name, pc) in enumerate(out["per_class"].items()):
        defined = {key: pc[key] is not None for key in ("precision", "recall", "f1")}
        per_class[name] = {
            "precision": pc["precision"],
            "precision_ci": _as_list(wilson_interval(int(tp[i]), int(predicted[i]))) if defined["precision"] else None,
            "recall": pc["recall"],
            "recall_ci": _as_list(wilson_interval(int(tp[i]), int(support[i]))) if defined["recall"] else None,
            "f1": pc["f1"],
            "f1_ci": _as_list(boot[3 + i]) if defined["f1"] else None,
            "support": pc["support"],
        }
    result: dict = {}
    for key, value in out.items():
        result[key] = per_class if key == "per_class" else value
        if key in ci:
            result[f"{key}_ci"] = _as_list(ci[key])
    result["ci_method"] = CI_METHOD
    return result


def _confusion_statistics(weights: np.ndarray, y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Per resample (``weights`` row): balanced accuracy, macro F1, macro precision, then each class's F1, by
    the conventions of :func:`classification_metrics` (averages over the classes present, NaN for an absent one)."""
    codes = y * k + pred
    # each resample's confusion matrix: the weights of the images in each cell, summed
    cm = np.stack([weights[:, codes == c].sum(axis=1) for c in range(k * k)], axis=1).reshape(-1, k, k)
    cm = cm.astype(np.float64)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    present = support > 0  # every resample has a class present: its rows are images
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(present, tp / support, np.nan)
        f1 = np.where(present, 2 * tp / (support + predicted), np.nan)
        precision = np.where(present, np.where(predicted > 0, tp / predicted, 0.0), np.nan)
    return np.column_stack([np.nanmean(recall, axis=1), np.nanmean(f1, axis=1), np.nanmean(precision, axis=1), f1])


def _auc_plans(y: np.ndarray, p: np.ndarray, positive: int) -> list[tuple[np.ndarray, ...]]:
    """:func:`_auc_plan` of each AUC that :func:`_roc_auc` averages: the positive class's, or every class's."""
    columns = [positive] if p.shape[1] == 2 else list(range(p.shape[1]))
    return [_auc_plan(y == c, p[:, c]) for c in columns]


def _auc_plan(is_positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What every resample's AUC of one class needs, computed once: the positives, the negatives in score
    order, and for each positive how many negatives score below it (``below``) and at most as high (``upto``)."""
    positives = np.flatnonzero(is_positive)
    negatives = np.flatnonzero(~is_positive)
    negatives = negatives[np.argsort(scores[negatives], kind="stable")]
    sorted_scores = scores[negatives]
    below = np.searchsorted(sorted_scores, scores[positives], side="left")
    upto = np.searchsorted(sorted_scores, scores[positives], side="right")
    return positives, negatives, below, upto


def _weighted_auc(
    weights: np.ndarray, positives: np.ndarray, negatives: np.ndarray, below: np.ndarray, upto: np.ndarray
) -> np.ndarray:
    """Each resample's Mann-Whitney AUC, P(a positive scores above a negative) + half the ties, in whole numbers:
    a positive drawn w times wins w x (the drawn negatives below it + those at most as high) / 2."""
    on_positives = weights[:, positives]
    drawn_negatives = np.zeros((weights.shape[0], negatives.size + 1), dtype=np.int64)
    np.cumsum(weights[:, negatives], axis=1, out=drawn_negatives[:, 1:])  # drawn negatives among the j lowest
    twice_wins = (on_positives * (drawn_negatives[:, below] + drawn_negatives[:, upto])).sum(axis=1)
    pairs = on_positives.sum(axis=1) * drawn_negatives[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pairs > 0, twice_wins / (2.0 * pairs), np.nan)


def format_metrics(metrics: dict) -> str:
    """One line for logs and the CLI: the headline numbers, three decimals each, with their 95 % intervals
    (two decimals) where the metrics have them."""

    def part(label: str, key: str, after: str = "") -> str:
        ci = metrics.get(f"{key}_ci")
        return f"{label} {fixed_decimals(metrics.get(key), 3)}{after}" + (f" {format_interval(ci, 2)}" if ci else "")

    parts = [
        part("accuracy", "accuracy"),
        part("balanced", "balanced_accuracy"),
        part("macro-F1", "macro_f1"),
        part("ROC-AUC", "roc_auc"),
    ]
    pos = metrics.get("positive_class")
    if "sensitivity" in metrics:
        parts.append(part("sensitivity", "sensitivity", f" ({pos})" if pos else ""))
    if "specificity" in metrics:
        parts.append(part("specificity", "specificity"))
    if metrics.get("absent_classes"):  # macro averages are over the other classes: say why
        parts.append("absent: " + ", ".join(metrics["absent_classes"]))
    return " | ".join(parts)
