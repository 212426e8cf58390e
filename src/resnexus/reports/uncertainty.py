"""How sure a prediction is: temperature scaling, conformal prediction sets and operating points.

All three are fitted on **out-of-fold probabilities**: ``train --folds K`` tests every image once
with a model that never saw it, which is the held-out evidence a small data set has. What they
learn is one small :class:`Calibration` record (``calibration.json`` in the cross-validation run)
that predict, evaluate and the server apply to the deployable model's probabilities:

* **Temperature scaling** (Guo et al., 2017): one number T divides the log-probabilities, so a
  model that says 0.95 where it is right 70 % of the time is softened (T > 1) without changing
  which class ranks first. One parameter cannot overfit a few hundred images.
* **Split-conformal prediction sets** (Vovk; Angelopoulos & Bates' tutorial): the score of an image
  is ``1 - p(true class)``; with the finite-sample quantile q of the out-of-fold scores, the set
  ``{k : 1 - p_k <= q}`` holds the true class for at least ``coverage`` of new images exchangeable
  with the training ones. ``per_class=True`` (Mondrian) takes one quantile per true class, so the
  guarantee holds within each class: a missed positive is not averaged away by easy negatives.
* **Operating points**: for two classes, the decision threshold on the positive class's
  probability that reaches a target sensitivity (or specificity) on the out-of-fold images.

Why our own few dozen lines instead of MAPIE or TorchCP: both wrap a fitted estimator or a torch
model and a held-out loader; here the scores already exist (out-of-fold probabilities, also across
processes and frameworks), and what must be stored is a handful of numbers in a JSON file.

The guarantee is for split conformal with the fold models' scores; the deployable model is the
refit on every image, which is usually a little better than the fold models, so its sets are, if
anything, a little conservative. ``evaluate --coverage`` measures the coverage on labelled images.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from ..files import write_text_atomic

__all__ = [
    "Calibration",
    "Judged",
    "apply_temperature",
    "brier_score",
    "calibration_summary",
    "conformal_quantile",
    "expected_calibration_error",
    "fit_calibration",
    "fit_temperature",
    "judge",
    "negative_log_likelihood",
    "prediction_sets",
    "reliability_curve",
    "threshold_for",
]

_EPS = 1e-12  # probabilities are clipped here before a log: a 0 from float rounding is not "impossible"
TEMPERATURE_RANGE = (0.05, 20.0)  # beyond these the fitted model is degenerate (constant or one-hot)
SET_SEPARATOR = "|"  # how a prediction set is written in a CSV cell: "Monkey Pox|Others"


def _ceil(x: float) -> int:
    """``ceil`` that forgives float noise: 0.9 * 10 is 9.000000000000002, and the rank is 9, not 10."""
    return math.ceil(x - 1e-9)


def _checked(probs: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must be an (images, classes >= 2) array, got shape {probs.shape}")
    if labels is None:
        return probs, None
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(probs),):
        raise ValueError(f"{len(probs)} rows of probabilities but labels of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must be class indices 0..{probs.shape[1] - 1}")
    return probs, labels


# -- calibration --------------------------------------------------------------------------------
def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)``: the log-probabilities are the logits up to a per-row constant, so
    this is temperature scaling of the logits without needing them."""
    probs, _ = _checked(probs)
    if temperature == 1.0:
        return probs
    logits = np.log(np.clip(probs, _EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean ``-log p(true class)``: the loss temperature scaling minimises."""
    probs, labels = _checked(probs, labels)
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], _EPS, 1.0)).mean())


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared distance between the probabilities and the one-hot truth (summed over classes)."""
    probs, labels = _checked(probs, labels)
    onehot = np.eye(probs.shape[1])[labels]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def reliability_curve(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """Per confidence bin (equal width over [0, 1] of the top probability): its mean confidence,
    its accuracy and its image count; empty bins are left out. What a reliability diagram draws."""
    probs, labels = _checked(probs, labels)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    curve: dict[str, list[float]] = {"confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        members = index == b
        if members.any():
            curve["confidence"].append(float(confidence[members].mean()))
            curve["accuracy"].append(float(correct[members].mean()))
            curve["count"].append(int(members.sum()))
    return curve


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """The image-weighted mean gap between confidence and accuracy over the bins of
    :func:`reliability_curve` (0 = calibrated)."""
    curve = reliability_curve(probs, labels, bins)
    total = sum(curve["count"])
    gaps = (abs(c - a) * n for c, a, n in zip(curve["confidence"], curve["accuracy"], curve["count"]))
    return float(sum(gaps) / total) if total else 0.0


def calibration_summary(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict[str, float]:
    """ECE, Brier score and NLL of these probabilities: the three figures reports show."""
    return {
        "ece": expected_calibration_error(probs, labels, bins),
        "brier": brier_score(probs, labels),
        "nll": negative_log_likelihood(probs, labels),
    }


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the NLL of ``labels`` (a bounded 1-D search over log T)."""
    probs, labels = _checked(probs, labels)
    if len(labels) == 0:
        raise ValueError("fitting a temperature needs at least one labelled image")
    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    found = minimize_scalar(
        lambda log_t: negative_log_likelihood(apply_temperature(probs, math.exp(log_t)), labels),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(found.x))


# -- conformal prediction sets ------------------------------------------------------------------
def conformal_quantile(scores: Sequence[float] | np.ndarray, coverage: float) -> float:
    """The finite-sample conformal threshold: the ``ceil((n + 1) * coverage)``-th smallest score.

    With too few scores for that rank (n < coverage / (1 - coverage)) no finite threshold gives the
    guarantee, and the answer is ``inf``: every class is in every set, which is the honest answer."""
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be between 0 and 1 (e.g. 0.9), got {coverage}")
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    rank = _ceil((len(scores) + 1) * coverage)
    return float(scores[rank - 1]) if rank <= len(scores) else math.inf


def prediction_sets(probs: np.ndarray, thresholds: float | Sequence[float]) -> np.ndarray:
    """A boolean (images, classes) mask: class k is in an image's set when ``1 - p_k`` is within
    the threshold (one for all classes, or one per class for Mondrian sets). The top class is always
    in: an empty set would only say "unlike anything trained on", which coverage does not need."""
    probs, _ = _checked(probs)
    limit = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (probs.shape[1],))
    members = (1.0 - probs) <= limit[None, :] + 1e-12
    members[np.arange(len(probs)), probs.argmax(axis=1)] = True
    return members


# -- operating points ---------------------------------------------------------------------------
def threshold_for(
    positive_probs: np.ndarray,
    is_positive: np.ndarray,
    sensitivity: float | None = None,
    specificity: float | None = None,
) -> float:
    """The decision threshold t (predict positive when ``p >= t``) that reaches the target
    sensitivity (the highest such t) or specificity (the lowest such t) on these images."""
    if (sensitivity is None) == (specificity is None):
        raise ValueError("give exactly one target: a sensitivity or a specificity")
    target = sensitivity if sensitivity is not None else specificity
    assert target is not None
    if not 0.0 < target <= 1.0:
        raise ValueError(f"a target sensitivity or specificity is in (0, 1], got {target}")
    scores = np.asarray(positive_probs, dtype=np.float64)
    positive = np.asarray(is_positive, dtype=bool)
    if sensitivity is not None:
        ranked = np.sort(scores[positive])[::-1]
        if len(ranked) == 0:
            raise ValueError("a target sensitivity needs images of the positive class")
        return float(ranked[_ceil(target * len(ranked)) - 1])
    ranked = np.sort(scores[~positive])
    if len(ranked) == 0:
        raise ValueError("a target specificity needs images of the negative class")
    # the k-th lowest negative score stays below t: t just above it (next distinct score or a hair more)
    kth = ranked[_ceil(target * len(ranked)) - 1]
    above = scores[scores > kth]
    return float(above.min()) if len(above) else float(np.nextafter(kth, np.inf))


# -- the stored record --------------------------------------------------------------------------
@dataclass
class Calibration:
    """What cross-validation learned about trusting the model, applied to its probabilities.

    ``scores`` / ``labels``: every out-of-fold image's conformal score (``1 - p(true class)``
    after temperature scaling) and true class, kept whole so any coverage can be asked for later.
    ``threshold``: the positive class's decision threshold (None: the top class wins).
    """

    class_names: list[str]
    temperature: float
    scores: list[float]
    labels: list[int]
    positive_class: str | None = None
    threshold: float | None = None
    target: dict[str, float] = field(default_factory=dict)  # {"sensitivity": 0.95} when one was asked
    before: dict[str, float] = field(default_factory=dict)  # calibration_summary of the raw probabilities
    after: dict[str, float] = field(default_factory=dict)  # ... and after temperature scaling
    source: str = ""

    FILE_FORMAT = "resnexus-calibration-1"

    # -- using it ------------------------------------------------------------------------------
    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        """The probabilities after temperature scaling."""
        return apply_temperature(self.matching(probs), self.temperature)

    def set_thresholds(self, coverage: float, per_class: bool = False) -> np.ndarray:
        """The conformal threshold for ``coverage``, one per class (the same for all unless ``per_class``)."""
        scores, labels = np.asarray(self.scores), np.asarray(self.labels)
        n_classes = len(self.class_names)
        if not per_class:
            return np.full(n_classes, conformal_quantile(scores, coverage))
        return np.array([conformal_quantile(scores[labels == k], coverage) for k in range(n_classes)])

    def sets(self, calibrated: np.ndarray, coverage: float, per_class: bool = False) -> np.ndarray:
        """The prediction-set mask (:func:`prediction_sets`) of already calibrated probabilities."""
        return prediction_sets(self.matching(calibrated), self.set_thresholds(coverage, per_class))

    def decide(self, calibrated: np.ndarray) -> np.ndarray:
        """The predicted class per image: the positive class from the threshold on, else the top class."""
        calibrated = self.matching(calibrated)
        top = calibrated.argmax(axis=1)
        if self.threshold is None or self.positive_class is None:
            return top
        positive = self.class_names.index(self.positive_class)
        negative = 1 - positive
        return np.where(calibrated[:, positive] >= self.threshold, positive, negative)

    def matching(self, probs: np.ndarray) -> np.ndarray:
        probs, _ = _checked(probs)
        if probs.shape[1] != len(self.class_names):
            raise ValueError(
                f"the calibration is for {len(self.class_names)} classes ({', '.join(self.class_names)}), "
                f"the model gives {probs.shape[1]}"
            )
        return probs

    # -- storing it ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": self.FILE_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "calibration") -> Calibration:
        if data.get("format") != cls.FILE_FORMAT:
            raise ValueError(f"{where}: not a resnexus calibration (format {data.get('format')!r})")
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, path: str | Path) -> None:
        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: cannot read the calibration ({error})") from error
        return cls.from_dict(data, where=str(path))


def fit_calibration(
    probs: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    positive_class: str | None = None,
    target_sensitivity: float | None = None,
    target_specificity: float | None = None,
    temperature_scaling: bool = True,
    source: str = "",
) -> Calibration:
    """A :class:`Calibration` from out-of-fold probabilities and true labels: the temperature, the
    conformal scores and, with a target (two classes only), the operating threshold."""
    probs, labels = _checked(probs, labels)
    assert labels is not None
    if probs.shape[1] != len(class_names):
        raise ValueError(f"{probs.shape[1]} columns of probabilities for {len(class_names)} class names")
    temperature = fit_temperature(probs, labels) if temperature_scaling else 1.0
    calibrated = apply_temperature(probs, temperature)
    scores = 1.0 - calibrated[np.arange(len(labels)), labels]
    record = Calibration(
        class_names=list(class_names),
        temperature=temperature,
        scores=[float(s) for s in scores],
        labels=[int(y) for y in labels],
        positive_class=positive_class,
        before=calibration_summary(probs, labels),
        after=calibration_summary(calibrated, labels),
        source=source,
    )
    if target_sensitivity is not None or target_specificity is not None:
        if len(class_names) != 2 or positive_class is None:
            raise ValueError("--target-sensitivity / --target-specificity need two classes and a positive class")
        positive = list(class_names).index(positive_class)
        record.threshold = threshold_for(
            calibrated[:, positive], labels == positive, sensitivity=target_sensitivity, specificity=target_specificity
        )
        record.target = (
            {"sensitivity": target_sensitivity}
            if target_sensitivity is not None
            else {"specificity": target_specificity}
        )
    return record


# -- one way from a model's probabilities to what a user sees -----------------------------------
@dataclass(frozen=True)
class Judged:
    """Predictions as predict, evaluate, explain and the server show them.

    ``probs``: calibrated (raw without a calibration); ``labels``: the predicted class indices (the
    operating threshold applied); ``sets``: the prediction-set mask, or None when no coverage was
    asked for.
    """

    probs: np.ndarray
    labels: np.ndarray
    sets: np.ndarray | None = None
    coverage: float | None = None
    calibration: Calibration | None = None

    def set_names(self, class_names: Sequence[str]) -> list[str]:
        """Each image's set as one CSV cell: the classes in it, joined by ``|`` in class order."""
        if self.sets is None:
            return []
        return [SET_SEPARATOR.join(n for n, inside in zip(class_names, row) if inside) for row in self.sets]


def judge(
    probs: np.ndarray,
    calibration: Calibration | None,
    coverage: float | None = None,
    per_class: bool = False,
    source: str = "the model",
) -> Judged:
    """Apply a calibration to raw probabilities: the temperature, the operating threshold, and with
    ``coverage`` the prediction sets. None (no calibration, or ``--no-calibration``) leaves the
    probabilities as they are and the top class wins; asking for a coverage then is one line naming
    ``source`` and the remedy."""
    probs, _ = _checked(probs)
    if calibration is None:
        if coverage is not None:
            raise ValueError(
                f"--coverage needs a calibrated model: {source} has no calibration (train it with "
                "`resnexus train --folds K`, whose out-of-fold predictions calibrate the sets, and use that run)"
            )
        return Judged(probs, probs.argmax(axis=1))
    shown = calibration.calibrate(probs)
    labels = calibration.decide(shown)
    sets = calibration.sets(shown, coverage, per_class) if coverage is not None else None
    if sets is not None:  # the operating threshold may predict a class other than the top one: never outside its set
        sets[np.arange(len(labels)), labels] = True
    return Judged(shown, labels, sets, coverage, calibration)
