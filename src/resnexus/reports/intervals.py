"""95 % confidence intervals for the estimates resnexus reports: one home for how each is computed.

- Proportions (accuracy, sensitivity, specificity, a class's precision or recall): the Wilson score
  interval. On a few dozen test images and near 0 or 1 its coverage stays close to the nominal 95 %,
  where the textbook p ± 1.96·SE interval undercovers badly and can leave [0, 1].
- Metrics with no closed-form standard error (ROC-AUC, macro F1, balanced accuracy): a percentile
  bootstrap over the evaluated images, seeded, so that the same predictions always give the same interval.
- The mean of cross-validation folds: Nadeau and Bengio's corrected resampled t. The folds share most
  of their training images, so their scores are correlated and the plain t interval is too narrow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import binomtest
from scipy.stats import t as student_t

from .tables import MISSING

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "LEVEL",
    "bootstrap_interval",
    "bootstrap_intervals",
    "corrected_standard_error",
    "corrected_t_interval",
    "format_interval",
    "wilson_interval",
]

LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 1000  # the percentiles at 2.5 % and 97.5 % from 1000 resamples move by ~0.01 between seeds
BOOTSTRAP_SEED = 0
MIN_DEFINED = 0.5  # a bootstrap interval needs the statistic defined on at least this share of the resamples
_BATCH_CELLS = 4_000_000  # resamples x rows handled at once: ~32 MB of weights

Interval = tuple[float, float]


def _check_level(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be between 0 and 1, got {level!r}")
    return 1 - level


def wilson_interval(successes: int, n: int, level: float = LEVEL) -> Interval | None:
    """The Wilson score interval of the proportion ``successes / n`` (scipy's ``binomtest``); None when n is 0.

    Chosen for its coverage at small n and near 0 or 1 (Brown, Cai and DasGupta, 2001): 3 of 3 correct
    gives [0.439, 1], not the zero-width [1, 1] of the Wald interval.
    """
    _check_level(level)
    if n != int(n) or successes != int(successes) or not 0 <= successes <= n:
        raise ValueError(f"a proportion needs whole numbers 0 <= successes <= n, got {successes!r} of {n!r}")
    if n == 0:
        return None
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def bootstrap_intervals(
    statistic: Callable[..., np.ndarray],
    arrays: Sequence[np.ndarray],
    level: float = LEVEL,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> list[Interval | None]:
    """Paired percentile bootstrap intervals of the m statistics ``statistic`` computes, one per column.

    ``arrays`` share their first axis, the rows (images); every resample draws n rows with replacement
    from all of them alike (numpy's generator seeded with ``seed``). A resample is handed over as weights,
    how many times each row was drawn: ``statistic(weights, *arrays)`` with ``weights`` of shape
    (resamples, n) returns a (resamples, m) array (or (resamples,) for m = 1), computing every resample
    at once with weighted sums instead of copies of the data; NaN where a resample leaves the statistic
    undefined (e.g. an ROC-AUC without both classes). Those resamples are skipped, and an interval is
    None when defined on fewer than half of them, or with fewer than 2 rows. Written here rather than
    with ``scipy.stats.bootstrap``, which cannot skip undefined resamples, so that every metric of a
    run comes from one set of resamples quickly enough to run after every training run.
    """
    alpha = _check_level(level)
    arrays = [np.asarray(a) for a in arrays]
    n = arrays[0].shape[0] if arrays else 0
    if any(a.shape[0] != n for a in arrays):
        raise ValueError(f"bootstrap arrays need the same length, got {[a.shape[0] for a in arrays]}")
    if n == 0:
        raise ValueError("a bootstrap needs at least one row")
    rng = np.random.default_rng(seed)
    batch = max(1, min(n_resamples, _BATCH_CELLS // n))  # bounded memory on a large test set
    values = []
    for start in range(0, n_resamples, batch):
        size = min(batch, n_resamples - start)
        rows = rng.integers(0, n, size=(size, n), dtype=np.int32) + n * np.arange(size)[:, None]
        weights = np.bincount(rows.ravel(), minlength=size * n).reshape(size, n)
        values.append(np.asarray(statistic(weights, *arrays), dtype=np.float64).reshape(size, -1))
    table = np.concatenate(values)
    if n < 2:  # every resample is the one row: no spread to read
        return [None] * table.shape[1]
    out: list[Interval | None] = []
    for column in table.T:
        defined = column[np.isfinite(column)]
        if defined.size < MIN_DEFINED * n_resamples:
            out.append(None)
            continue
        low, high = np.quantile(defined, [alpha / 2, 1 - alpha / 2])
        out.append((float(low), float(high)))
    return out


def bootstrap_interval(
    statistic: Callable[..., np.ndarray],
    arrays: Sequence[np.ndarray],
    level: float = LEVEL,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Interval | None:
    """The percentile bootstrap interval of one statistic (returning a (resamples,) array); see
    :func:`bootstrap_intervals`, whose rules (paired resamples as weights, undefined ones skipped) it follows."""
    return bootstrap_intervals(statistic, arrays, level, n_resamples, seed)[0]


def corrected_standard_error(values: Sequence[float], n_test: float, n_train: float) -> float | None:
    """Standard error of a mean over (repeated) K-fold runs, corrected as Nadeau & Bengio (2003) propose.

    The fold runs share most of their training images, so their scores are correlated and the plain
    s / sqrt(n) understates the uncertainty; the correction is sqrt((1/n + n_test/n_train) * s^2).
    None with fewer than 2 values.
    """
    if len(values) < 2:
        return None
    return math.sqrt((1 / len(values) + n_test / n_train) * float(np.var(values, ddof=1)))


def corrected_t_interval(
    values: Sequence[float],
    n_test: float,
    n_train: float,
    level: float = LEVEL,
    bounds: Interval | None = None,
) -> Interval | None:
    """Nadeau and Bengio's corrected resampled t interval of the mean of k fold scores:
    mean ± t_{k-1} · :func:`corrected_standard_error`. None with fewer than 2 values.

    ``bounds`` (e.g. (0, 1) for an accuracy) clips the interval to the values the metric can take,
    which changes no coverage: the true value lies within them.
    """
    alpha = _check_level(level)
    se = corrected_standard_error(values, n_test, n_train)
    if se is None:
        return None
    mean = float(np.mean(values))
    half = float(student_t.ppf(1 - alpha / 2, len(values) - 1)) * se
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return low, high


def format_interval(ci: Sequence[float] | None, digits: int = 3) -> str:
    """``[0.489, 0.808]``, or the reports' missing mark; brackets, since an endpoint may be negative."""
    if ci is None or any(v is None or not math.isfinite(v) for v in ci):
        return MISSING
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
