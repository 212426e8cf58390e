"""reports/uncertainty.py on synthetic data whose answer is known: coverage, temperature, thresholds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from resnexus.reports.uncertainty import (
    Calibration,
    apply_temperature,
    brier_score,
    conformal_quantile,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    judge,
    negative_log_likelihood,
    prediction_sets,
    reliability_curve,
    threshold_for,
)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def gaussian_task(rng: np.random.Generator, n: int, means: np.ndarray, weights: np.ndarray | None = None):
    """Images are points from one Gaussian per class (unit variance); returns (true posterior's
    log-probabilities, labels). The Bayes posterior is known exactly, so a 'model' is a scaling of it."""
    k = len(means)
    labels = rng.choice(k, size=n, p=weights)
    x = means[labels] + rng.normal(size=(n, means.shape[1]))
    logits = x @ means.T - 0.5 * (means**2).sum(axis=1)[None, :]
    if weights is not None:
        logits = logits + np.log(weights)[None, :]
    return logits, labels


MEANS = np.array([[1.2, 0.0], [0.0, 1.2], [-1.0, -1.0]])


# -- conformal sets -----------------------------------------------------------------------------
def test_the_conformal_quantile_is_the_finite_sample_rank():
    scores = np.arange(1, 10) / 10  # 0.1 ... 0.9, n = 9
    assert conformal_quantile(scores, 0.9) == pytest.approx(0.9)  # rank ceil(10 * 0.9) = 9
    assert conformal_quantile(scores, 0.8) == pytest.approx(0.8)  # rank 8
    assert conformal_quantile(scores, 0.5) == pytest.approx(0.5)  # rank 5
    assert conformal_quantile(scores[:8], 0.9) == math.inf  # rank 9 of 8: no finite threshold guarantees it
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="coverage must be between 0 and 1"):
            conformal_quantile(scores, bad)


def test_prediction_sets_hold_the_classes_within_the_threshold_and_never_none():
    probs = np.array([[0.7, 0.2, 0.1], [0.45, 0.45, 0.10], [0.34, 0.33, 0.33]])
    mask = prediction_sets(probs, 0.6)  # class k is in when p_k >= 0.4
    assert mask.tolist() == [[True, False, False], [True, True, False], [True, False, False]]
    mondrian = prediction_sets(probs, [0.2, 0.8, 0.7])  # per class: p_0 >= 0.8, p_1 >= 0.2, p_2 >= 0.3
    assert mondrian.tolist() == [[True, True, False], [True, True, False], [True, True, True]]
    assert prediction_sets(probs, -1.0).sum(axis=1).tolist() == [1, 1, 1]  # the top class is always in


@pytest.mark.parametrize("temperature_scaling", [False, True])
def test_sets_cover_new_images_at_the_asked_rate_over_many_seeds(temperature_scaling):
    """Split conformal: E[coverage] >= 1 - alpha and <= 1 - alpha + 1/(n + 1) for continuous scores.
    The mean over 200 seeds of coverage on 400 new images has a standard error near 0.0015, so the
    bounds get a 0.006 tolerance (4 SE). Temperature fitted on the same images is one parameter, which
    leaves the rate within the same tolerance."""
    n_cal, n_test, coverage = 150, 400, 0.9
    rates, sizes = [], []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        logits, labels = gaussian_task(rng, n_cal + n_test, MEANS)
        probs = softmax(2.5 * logits)  # an over-confident model
        record = fit_calibration(
            probs[:n_cal], labels[:n_cal], ["a", "b", "c"], temperature_scaling=temperature_scaling
        )
        judged = judge(probs[n_cal:], record, coverage=coverage)
        assert judged.sets is not None
        rates.append(judged.sets[np.arange(n_test), labels[n_cal:]].mean())
        sizes.append(judged.sets.sum(axis=1).mean())
    mean = float(np.mean(rates))
    assert coverage - 0.006 <= mean <= coverage + 1 / (n_cal + 1) + 0.006, mean
    assert 1.0 < float(np.mean(sizes)) < 3.0  # informative: neither always one class nor always all


def test_per_class_sets_cover_each_class_where_marginal_sets_miss_the_rare_hard_one():
    """A rare class that overlaps another: one marginal threshold is set by the many easy images
    and under-covers it; Mondrian thresholds give each class its own coverage."""
    means = np.array([[2.5, 0.0], [0.0, 0.0], [0.4, 0.0]])  # class 2 sits between 0 and 1
    weights = np.array([0.45, 0.45, 0.10])
    marginal, mondrian = [], []
    for seed in range(60):
        rng = np.random.default_rng(1000 + seed)
        logits, labels = gaussian_task(rng, 3000, means, weights)
        probs = softmax(logits)
        record = fit_calibration(probs[:1500], labels[:1500], ["a", "b", "c"], temperature_scaling=False)
        test_p, test_y = probs[1500:], labels[1500:]
        rare = test_y == 2
        for per_class, rates in ((False, marginal), (True, mondrian)):
            sets = judge(test_p, record, coverage=0.9, per_class=per_class).sets
            assert sets is not None
            rates.append(sets[np.flatnonzero(rare), 2].mean())
    assert np.mean(mondrian) >= 0.9 - 0.01, np.mean(mondrian)
    assert np.mean(marginal) < np.mean(mondrian) - 0.03, (np.mean(marginal), np.mean(mondrian))


# -- temperature scaling ------------------------------------------------------------------------
def test_temperature_scaling_undoes_over_confidence_and_keeps_the_ranking():
    rng = np.random.default_rng(7)
    logits, labels = gaussian_task(rng, 4000, MEANS)
    overconfident = softmax(3.0 * logits)  # the Bayes posterior's logits times 3: T = 3 undoes it
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    fixed = apply_temperature(overconfident, temperature)
    assert negative_log_likelihood(fixed, labels) < negative_log_likelihood(overconfident, labels) - 0.05
    assert expected_calibration_error(fixed, labels) < expected_calibration_error(overconfident, labels) / 2
    assert brier_score(fixed, labels) < brier_score(overconfident, labels)
    assert (fixed.argmax(axis=1) == overconfident.argmax(axis=1)).all()
    np.testing.assert_allclose(fixed, softmax(logits), atol=0.03)  # close to the true posterior


def test_calibration_figures_on_a_hand_made_example():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    curve = reliability_curve(
        probs, labels, bins=10
    )  # bins [0.6, 0.7): 0.6; [0.7, 0.8): 0.7; [0.8, 0.9): 0.8; [0.9, 1]: 0.9
    assert curve == {"confidence": [0.6, 0.7, 0.8, 0.9], "accuracy": [1.0, 1.0, 0.0, 1.0], "count": [1, 1, 1, 1]}
    assert expected_calibration_error(probs, labels) == pytest.approx((0.4 + 0.3 + 0.8 + 0.1) / 4)
    assert brier_score(probs, labels) == pytest.approx((0.02 + 1.28 + 0.18 + 0.32) / 4)
    assert negative_log_likelihood(probs, labels) == pytest.approx(-np.log([0.9, 0.2, 0.7, 0.6]).mean())
    np.testing.assert_allclose(apply_temperature(probs, 1.0), probs)


# -- operating points ---------------------------------------------------------------------------
@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_the_threshold_reaches_the_target_sensitivity_and_is_the_highest_that_does(target):
    rng = np.random.default_rng(3)
    positive = rng.random(137) < 0.4
    scores = np.where(positive, rng.beta(4, 2, 137), rng.beta(2, 4, 137))
    t = threshold_for(scores, positive, sensitivity=target)
    assert (scores[positive] >= t).mean() >= target
    higher = scores[positive][scores[positive] > t]
    if len(higher):
        assert (scores[positive] >= higher.min()).mean() < target  # any higher threshold misses the target


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_the_threshold_reaches_the_target_specificity_and_is_the_lowest_that_does(target):
    rng = np.random.default_rng(4)
    positive = rng.random(120) < 0.5
    scores = np.round(np.where(positive, rng.beta(4, 2, 120), rng.beta(2, 4, 120)), 2)  # ties
    t = threshold_for(scores, positive, specificity=target)
    negatives = scores[~positive]
    assert (negatives < t).mean() >= target
    lower = scores[scores < t]
    if len(lower):
        assert (negatives < lower.max()).mean() < target  # the next lower score would miss it


def test_an_operating_point_is_stored_and_decides_the_label():
    rng = np.random.default_rng(5)
    logits, labels = gaussian_task(rng, 400, MEANS[:2])
    probs = softmax(logits)
    record = fit_calibration(probs, labels, ["healthy", "lesion"], positive_class="lesion", target_sensitivity=0.95)
    calibrated = record.calibrate(probs)
    assert record.threshold is not None and record.target == {"sensitivity": 0.95}
    assert (calibrated[labels == 1, 1] >= record.threshold).mean() >= 0.95
    judged = judge(probs, record)
    np.testing.assert_array_equal(judged.labels, (calibrated[:, 1] >= record.threshold).astype(int))
    assert (judged.labels == 1).sum() > (calibrated.argmax(axis=1) == 1).sum()  # more positives than the top class
    with pytest.raises(ValueError, match="two classes and a positive class"):
        fit_calibration(softmax(logits), labels, ["healthy", "lesion"], target_sensitivity=0.9)


# -- the stored record and judge() --------------------------------------------------------------
def test_a_calibration_round_trips_through_its_file(tmp_path):
    rng = np.random.default_rng(6)
    logits, labels = gaussian_task(rng, 60, MEANS[:2])
    record = fit_calibration(
        softmax(2 * logits), labels, ["a", "b"], positive_class="b", target_specificity=0.9, source="5-fold CV"
    )
    path = tmp_path / "calibration.json"
    record.save(path)
    assert json.loads(path.read_text())["format"] == Calibration.FILE_FORMAT
    assert Calibration.load(path) == record
    path.write_text(json.dumps({"temperature": 1.0}))
    with pytest.raises(ValueError, match=f"{path}: not a resnexus calibration"):
        Calibration.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"{path}: cannot read the calibration"):
        Calibration.load(path)


def test_judge_without_a_calibration_gives_the_raw_top_class_and_refuses_a_coverage():
    probs = np.array([[0.2, 0.8], [0.6, 0.4]])
    judged = judge(probs, None)
    np.testing.assert_array_equal(judged.probs, probs)
    assert judged.labels.tolist() == [1, 0] and judged.sets is None and judged.set_names(["a", "b"]) == []
    with pytest.raises(ValueError, match=r"runs/x has no calibration .*resnexus train --folds K"):
        judge(probs, None, coverage=0.9, source="runs/x")


def test_judged_sets_are_written_as_class_names_joined_in_class_order():
    record = Calibration(class_names=["Monkey Pox", "Others"], temperature=1.0, scores=[0.6] * 20, labels=[0] * 20)
    judged = judge(np.array([[0.55, 0.45], [0.9, 0.1], [0.2, 0.8]]), record, coverage=0.9)
    assert judged.set_names(record.class_names) == ["Monkey Pox|Others", "Monkey Pox", "Others"]
    with pytest.raises(ValueError, match=r"for 2 classes \(Monkey Pox, Others\), the model gives 3"):
        judge(np.full((1, 3), 1 / 3), record)
