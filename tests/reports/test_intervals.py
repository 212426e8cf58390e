"""The 95 % intervals (reports/intervals.py): published values, coverage in simulation, degenerate cases, seeds.

Coverage tolerances. With D simulated data sets, the empirical coverage of an interval whose true coverage
is 0.95 has a Monte-Carlo standard error of sqrt(0.95 * 0.05 / D): 0.0034 for D = 4000, 0.0126 for
D = 300, 0.0049 for D = 2000. A binomial proportion's intervals also cannot cover at exactly 95 %: with n images the estimate
takes n + 1 values, so the exact coverage of the Wilson interval oscillates around 0.95 as p moves (at the
12 grid points below it lies between 0.925 and 0.976, computed from the binomial probabilities). So each
point is held to 0.95 ± 0.035 (the oscillation) + 3 Monte-Carlo SEs, and their mean, where the oscillations
average out, to 0.95 ± 0.01. A wrong interval fails these by far: the Wald interval covers 0.64 at
p = 0.05, n = 20.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from resnexus.reports import classification_metrics
from resnexus.reports.intervals import (
    bootstrap_interval,
    bootstrap_intervals,
    corrected_standard_error,
    corrected_t_interval,
    format_interval,
    wilson_interval,
)


# -- Wilson ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "successes, n, low, high",
    [
        # Newcombe (1998), Statistics in Medicine 17:857-872, Table II, method 3 (score interval, no continuity
        # correction), to the 4 decimals printed there
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0000, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_published_values(successes, n, low, high):
    ci = wilson_interval(successes, n)
    assert ci == (pytest.approx(low, abs=5e-5), pytest.approx(high, abs=5e-5))


def test_wilson_by_hand_and_at_the_edges():
    # 7 of 10: centre (7 + z²/2) / (10 + z²), half-width z sqrt(10 * 0.21 + z²/4) / (10 + z²)
    z = norm.ppf(0.975)
    centre, half = (7 + z**2 / 2) / (10 + z**2), z * math.sqrt(10 * 0.21 + z**2 / 4) / (10 + z**2)
    assert wilson_interval(7, 10) == (pytest.approx(centre - half, abs=1e-12), pytest.approx(centre + half, abs=1e-12))
    # all correct: not the zero-width [1, 1], the lower end is n / (n + z²)
    assert wilson_interval(3, 3) == (pytest.approx(3 / (3 + z**2)), 1.0)
    assert wilson_interval(0, 3) == (0.0, pytest.approx(z**2 / (3 + z**2)))
    assert wilson_interval(0, 0) is None  # no image: no proportion
    low90, high90 = wilson_interval(7, 10, level=0.9)
    assert low90 > 0.397 and high90 < 0.892  # a lower level: a narrower interval


@pytest.mark.parametrize("successes, n", [(3, 2), (-1, 4), (1.5, 4)])
def test_wilson_refuses_what_is_no_proportion(successes, n):
    with pytest.raises(ValueError, match=rf"^a proportion needs whole numbers 0 <= successes <= n, got {successes} "):
        wilson_interval(successes, n)


def test_a_level_outside_0_1_is_refused():
    with pytest.raises(ValueError, match=r"^confidence level must be between 0 and 1, got 95$"):
        wilson_interval(3, 4, level=95)


def test_wilson_covers_at_its_nominal_rate():
    rng = np.random.default_rng(20260)
    draws = 4000
    tolerance = 0.035 + 3 * math.sqrt(0.95 * 0.05 / draws)
    coverages = []
    for p in (0.05, 0.3, 0.5, 0.9):
        for n in (20, 50, 200):
            counts = rng.binomial(n, p, size=draws)
            # one interval per distinct count, then each draw looks its interval up
            covers = {int(k): lo <= p <= hi for k in np.unique(counts) for lo, hi in [wilson_interval(int(k), n)]}
            coverage = float(np.mean([covers[int(k)] for k in counts]))
            coverages.append(coverage)
            assert abs(coverage - 0.95) <= tolerance, (p, n, coverage)
    assert abs(np.mean(coverages) - 0.95) <= 0.01, coverages


# -- bootstrap --------------------------------------------------------------------------------------
def _mean_statistic(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    return weights @ x / weights.sum(axis=1)


def test_bootstrap_of_a_mean_is_seeded_and_close_to_the_normal_interval():
    x = np.random.default_rng(1).normal(10.0, 2.0, size=400)
    ci = bootstrap_interval(_mean_statistic, (x,), seed=3)
    assert ci == bootstrap_interval(_mean_statistic, (x,), seed=3)  # same seed, same interval
    assert ci != bootstrap_interval(_mean_statistic, (x,), seed=4)
    se = x.std(ddof=1) / math.sqrt(x.size)
    normal = (x.mean() - 1.96 * se, x.mean() + 1.96 * se)
    # 1000 resamples: the 2.5 % / 97.5 % percentiles sit within about 0.1 SE of the normal interval's ends
    assert ci == (pytest.approx(normal[0], abs=0.2 * se), pytest.approx(normal[1], abs=0.2 * se))


def test_bootstrap_draws_the_same_rows_of_every_array_and_batches_alike(monkeypatch):
    x = np.arange(50.0)

    def difference(weights, a, b):  # a - b is 0 row by row: only when the rows are paired
        return weights @ (a - b)

    assert bootstrap_interval(difference, (x, x.copy())) == (0.0, 0.0)
    # resamples made in batches (a large test set) are the resamples made at once
    whole = bootstrap_interval(_mean_statistic, (x,))
    monkeypatch.setattr("resnexus.reports.intervals._BATCH_CELLS", 50 * 7)
    assert bootstrap_interval(_mean_statistic, (x,)) == whole


def test_bootstrap_skips_undefined_resamples_and_gives_up_below_half():
    x = np.arange(20.0)

    def mean_unless_19(weights, values):  # undefined where the resample holds row 19: about 64 % of resamples
        return np.where(weights[:, 19] > 0, np.nan, _mean_statistic(weights, values))

    def mean_unless_0(weights, values):  # undefined where the resample lacks row 0: about 36 %
        return np.where(weights[:, 0] == 0, np.nan, _mean_statistic(weights, values))

    assert bootstrap_interval(mean_unless_19, (x,)) is None
    low, high = bootstrap_interval(mean_unless_0, (x,))
    assert 0 < low < 9.5 < high < 19


def test_bootstrap_columns_and_degenerate_inputs():
    x = np.arange(30.0)

    def two(weights, values):
        return np.column_stack([_mean_statistic(weights, values), np.full(weights.shape[0], np.nan)])

    first, second = bootstrap_intervals(two, (x,))
    assert first[0] < 14.5 < first[1] and second is None
    assert bootstrap_intervals(two, (x[:1],)) == [None, None]  # one row: nothing to resample
    with pytest.raises(ValueError, match="same length"):
        bootstrap_interval(_mean_statistic, (x, x[:3]))


def _binormal(rng: np.random.Generator, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    y = np.repeat([0, 1], n // 2)
    scores = rng.normal(size=n) + shift * y
    probs = 1 / (1 + np.exp(-scores))  # monotone: the AUC of the scores
    return y, np.stack([1 - probs, probs], axis=1)


@pytest.mark.slow  # 300 evaluations: about 10 s on 2 cores
def test_bootstrap_auc_covers_the_true_auc():
    # binormal scores, unit variances, means 0 and 1: true AUC = Phi(1 / sqrt(2)) = 0.760
    shift, sets = 1.0, 300
    true_auc = norm.cdf(shift / math.sqrt(2))
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(sets):
        y, p = _binormal(rng, 80, shift)
        low, high = classification_metrics(y, p, ["neg", "pos"])["roc_auc_ci"]
        hits += low <= true_auc <= high
    # percentile bootstrap: slightly below nominal at 80 images; 3 Monte-Carlo SEs (0.038) around 0.95
    assert abs(hits / sets - 0.95) <= 3 * math.sqrt(0.95 * 0.05 / sets), hits / sets


def test_metric_intervals_hold_their_metric_and_are_seeded():
    y, p = _binormal(np.random.default_rng(3), 60, 1.5)
    y[:3] = 1  # unbalanced a little
    m = classification_metrics(y, p, ["neg", "pos"])
    keys = ["accuracy", "balanced_accuracy", "macro_f1", "macro_precision", "macro_recall", "roc_auc"]
    for key in [*keys, "sensitivity", "specificity"]:
        low, high = m[f"{key}_ci"]
        assert 0.0 <= low <= m[key] <= high <= 1.0, key
    for name in ("neg", "pos"):
        for key in ("precision", "recall", "f1"):
            low, high = m["per_class"][name][f"{key}_ci"]
            assert low <= m["per_class"][name][key] <= high, (name, key)
    assert m["macro_recall_ci"] == m["balanced_accuracy_ci"]  # the same numbers: the mean recall
    correct = int(np.trace(np.asarray(m["confusion_matrix"])))
    assert m["accuracy_ci"] == list(wilson_interval(correct, 60))
    assert classification_metrics(y, p, ["neg", "pos"]) == m  # seeded: the same predictions, the same intervals
    assert "_ci" not in "".join(classification_metrics(y, p, ["neg", "pos"], intervals=False))
    key_order = list(m)
    assert key_order[key_order.index("accuracy") + 1] == "accuracy_ci"  # beside its metric in metrics.json


def test_multiclass_auc_interval_skips_resamples_without_a_class():
    rng = np.random.default_rng(5)
    y = np.array([0] * 30 + [1] * 30 + [2] * 2)  # class 2 is missing from about 13 % of resamples
    logits = rng.normal(size=(62, 3)) + 1.5 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = classification_metrics(y, p, ["a", "b", "c"])
    low, high = m["roc_auc_ci"]
    assert low < m["roc_auc"] < high
    assert m["per_class"]["c"]["recall_ci"] == list(wilson_interval(int(m["confusion_matrix"][2][2]), 2))


# -- corrected resampled t --------------------------------------------------------------------------
def test_corrected_t_by_hand():
    values = [0.8, 0.7, 0.9, 0.6, 0.75]  # mean 0.75, s² = 0.0125
    # se = sqrt((1/5 + 30/120) * 0.0125) = sqrt(0.005625) = 0.075; t_4 (97.5 %) = 2.776445
    assert corrected_standard_error(values, 30, 120) == pytest.approx(0.075)
    low, high = corrected_t_interval(values, 30, 120)
    assert (low, high) == (pytest.approx(0.75 - 2.776445 * 0.075, abs=1e-6), pytest.approx(0.75 + 2.776445 * 0.075))
    assert corrected_t_interval(values, 30, 120, bounds=(0.0, 0.9)) == (pytest.approx(low), 0.9)
    assert corrected_t_interval([0.8], 30, 120) is None and corrected_standard_error([0.8], 30, 120) is None


def test_corrected_t_covers_correlated_fold_scores_where_the_plain_t_does_not():
    # k fold scores, equicorrelated with rho = n_test / (n_test + n_train): the correlation under which
    # Nadeau and Bengio's correction is exact, so the corrected interval covers at 95 % and the plain t does not
    k, n_test, n_train, sets = 5, 40, 160, 2000
    rho = n_test / (n_test + n_train)
    rng = np.random.default_rng(11)
    shared = rng.normal(size=(sets, 1)) * math.sqrt(rho)
    scores = 0.7 + 0.05 * (shared + rng.normal(size=(sets, k)) * math.sqrt(1 - rho))
    corrected = plain = 0
    for row in scores:
        low, high = corrected_t_interval(row, n_test, n_train)
        corrected += low <= 0.7 <= high
        low, high = corrected_t_interval(row, 0, 1)  # n_test 0: the plain t interval
        plain += low <= 0.7 <= high
    assert abs(corrected / sets - 0.95) <= 3 * math.sqrt(0.95 * 0.05 / sets), corrected / sets
    # its standard error is too small by sqrt(0.2 / 0.45): it covers P(|t_4| < 2.776 * 0.667), about 0.86
    assert plain / sets < 0.89


def test_format_interval():
    assert format_interval((0.48899, 0.8077)) == "[0.489, 0.808]"
    assert format_interval([-0.1612, 0.0362], 2) == "[-0.16, 0.04]"
    assert format_interval(None) == "n/a" and format_interval([float("nan"), 1.0]) == "n/a"
