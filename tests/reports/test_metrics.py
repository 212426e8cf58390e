"""classification_metrics / format_metrics against numbers worked out by hand."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from resnexus.engine.crossval import aggregate, format_mean_std
from resnexus.reports import classification_metrics, format_metrics, write_report
from resnexus.reports.tables import MISSING

# the metric keys classification_metrics had before the intervals were added beside them
PLAIN_CLASS_KEYS = ("precision", "recall", "f1", "support")


def plain(per_class: dict) -> dict:
    """A class's entry without its ``*_ci`` intervals (tested in test_metric_intervals)."""
    return {key: per_class[key] for key in PLAIN_CLASS_KEYS}


def one_hot_probs(pred: list[int], k: int, hi: float = 0.8) -> np.ndarray:
    """Probabilities whose argmax is ``pred``: ``hi`` on the predicted class, the rest shared."""
    p = np.full((len(pred), k), (1.0 - hi) / (k - 1))
    p[np.arange(len(pred)), pred] = hi
    return p


def pairwise_auc(y_binary: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC by its definition, independent of scikit-learn: P(score_pos > score_neg), ties 1/2."""
    pos, neg = scores[y_binary == 1], scores[y_binary == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


# ------------------------------------------------------------------------------------ binary
# 4 positives (class 1), 6 negatives (class 0).
# positive scores 0.9 0.8 0.7 | 0.3      -> TP = 3, FN = 1
# negative scores 0.6 0.55 | 0.4 0.2 0.1 0.05 -> FP = 2, TN = 4
BIN_Y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
BIN_S = np.array([0.9, 0.8, 0.7, 0.3, 0.6, 0.55, 0.4, 0.2, 0.1, 0.05])
BIN_P = np.stack([1 - BIN_S, BIN_S], axis=1)
BIN_NAMES = ["benign", "malignant"]


def test_binary_hand_computed():
    m = classification_metrics(BIN_Y, BIN_P, BIN_NAMES)
    tp, fn, fp, tn = 3, 1, 2, 4
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx((tp + tn) / 10)  # 0.7
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))  # 0.75
    assert m["specificity"] == pytest.approx(tn / (tn + fp))  # 0.6667
    assert m["positive_class"] == "malignant"
    assert m["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert m["class_names"] == BIN_NAMES

    prec1, rec1 = tp / (tp + fp), tp / (tp + fn)  # 0.6, 0.75
    prec0, rec0 = tn / (tn + fn), tn / (tn + fp)  # 0.8, 0.6667
    f1_1 = 2 * prec1 * rec1 / (prec1 + rec1)  # 2/3
    f1_0 = 2 * prec0 * rec0 / (prec0 + rec0)  # 8/11
    assert f1_1 == pytest.approx(2 / 3) and f1_0 == pytest.approx(8 / 11)  # the hand numbers
    pc = m["per_class"]
    assert plain(pc["malignant"]) == pytest.approx({"precision": prec1, "recall": rec1, "f1": f1_1, "support": 4})
    assert plain(pc["benign"]) == pytest.approx({"precision": prec0, "recall": rec0, "f1": f1_0, "support": 6})
    assert m["macro_f1"] == pytest.approx(23 / 33)
    assert m["macro_precision"] == pytest.approx((prec0 + prec1) / 2)
    assert m["macro_recall"] == pytest.approx((rec0 + rec1) / 2)
    assert m["balanced_accuracy"] == pytest.approx(17 / 24)
    # pairs (pos, neg) with pos > neg: 6 + 6 + 6 + 3 = 21 of 24
    assert m["roc_auc"] == pytest.approx(21 / 24)


def test_binary_perfect_and_reversed_auc():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    perfect = classification_metrics(y, np.stack([1 - s, s], 1), ["a", "b"])
    assert perfect["roc_auc"] == 1.0
    assert perfect["accuracy"] == 1.0 and perfect["sensitivity"] == 1.0 and perfect["specificity"] == 1.0
    reversed_ = classification_metrics(y, np.stack([s, 1 - s], 1), ["a", "b"])
    assert reversed_["roc_auc"] == 0.0
    assert reversed_["accuracy"] == 0.0 and reversed_["macro_f1"] == 0.0


def test_binary_single_class_gives_none_auc_without_warnings():
    y = [0, 0, 0, 0]
    p = one_hot_probs([0, 1, 0, 0], 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y, p, ["neg", "pos"])
    assert m["roc_auc"] is None
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(0.75)
    assert m["sensitivity"] is None  # no positives: the recall of "pos" is 0/0, undefined
    assert m["per_class"]["pos"] == {
        "precision": 0.0,
        "precision_ci": [0.0, pytest.approx(0.7935, abs=1e-4)],  # Wilson, 0 of the 1 image predicted "pos"
        "recall": None,
        "recall_ci": None,
        "f1": None,
        "f1_ci": None,
        "support": 0,
    }
    assert m["absent_classes"] == ["pos"]
    assert m["sensitivity_ci"] is None and m["roc_auc_ci"] is None  # None where the metric is None


# ------------------------------------------------------------------------------- three classes
# true  0 0 0 1 1 2 2 2 2
# pred  0 0 1 1 1 2 2 2 0
# confusion (rows true): [[2,1,0],[0,2,0],[1,0,3]]
TRI_Y = [0, 0, 0, 1, 1, 2, 2, 2, 2]
TRI_PRED = [0, 0, 1, 1, 1, 2, 2, 2, 0]
TRI_NAMES = ["cat", "dog", "fox"]


def test_three_class_hand_computed():
    m = classification_metrics(np.array(TRI_Y), one_hot_probs(TRI_PRED, 3), TRI_NAMES)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 3]]
    assert m["n"] == 9
    assert m["accuracy"] == pytest.approx(7 / 9)
    precision = {"cat": 2 / 3, "dog": 2 / 3, "fox": 3 / 3}  # column sums 3, 3, 3
    recall = {"cat": 2 / 3, "dog": 2 / 2, "fox": 3 / 4}  # row sums 3, 2, 4
    f1 = {"cat": 2 / 3, "dog": 4 / 5, "fox": 6 / 7}
    support = {"cat": 3, "dog": 2, "fox": 4}
    for c in TRI_NAMES:
        assert plain(m["per_class"][c]) == pytest.approx(
            {"precision": precision[c], "recall": recall[c], "f1": f1[c], "support": support[c]}
        )
    assert m["macro_precision"] == pytest.approx(7 / 9)
    assert m["macro_recall"] == pytest.approx(29 / 36)
    assert m["balanced_accuracy"] == pytest.approx(29 / 36)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 4 / 5 + 6 / 7) / 3)
    for key in ("sensitivity", "specificity", "positive_class"):
        assert key not in m  # binary-only keys
    # class 0 by hand: positives score 0.8 0.8 0.1; negatives 0.1 x5 and 0.8 x1
    # -> (5.5 + 5.5 + 2.5) / 18 = 0.75
    assert pairwise_auc((np.array(TRI_Y) == 0).astype(int), one_hot_probs(TRI_PRED, 3)[:, 0]) == 0.75


def test_multiclass_auc_is_macro_one_vs_rest():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 120)
    logits = rng.normal(size=(120, 4)) + 1.5 * np.eye(4)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = classification_metrics(y, p, list("abcd"))
    expected = np.mean([pairwise_auc((y == c).astype(int), p[:, c]) for c in range(4)])
    assert m["roc_auc"] == pytest.approx(expected, abs=1e-12)
    assert 0.5 < m["roc_auc"] < 1.0

    # perfectly separated -> 1.0
    y = np.array([0, 1, 2, 0, 1, 2])
    assert classification_metrics(y, one_hot_probs(list(y), 3), TRI_NAMES)["roc_auc"] == 1.0


def test_absent_class_no_crash_and_none_auc():
    y = [0, 0, 1, 1, 1]  # "fox" never occurs, but is predicted once
    pred = [0, 2, 1, 1, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y, one_hot_probs(pred, 3), TRI_NAMES)
    assert m["roc_auc"] is None
    # predicted once, never true: precision 0/1 = 0 is defined, recall and F1 (0/0) are not
    assert plain(m["per_class"]["fox"]) == {"precision": 0.0, "recall": None, "f1": None, "support": 0}
    assert m["absent_classes"] == ["fox"]
    assert m["confusion_matrix"] == [[1, 0, 1], [1, 2, 0], [0, 0, 0]]
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # over the classes present
    assert m["macro_recall"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # over the classes present too
    assert "n/a" in format_metrics(m)


# true  0 0 0 1 1 1 (class 2, "fox", absent and never predicted)
# pred  0 0 1 1 1 0
# cat: precision 2/3, recall 2/3, F1 2/3; dog: precision 2/3, recall 2/3, F1 2/3
ABSENT_Y = [0, 0, 0, 1, 1, 1]
ABSENT_PRED = [0, 0, 1, 1, 1, 0]


def test_absent_class_is_undefined_and_left_out_of_the_macro_averages():
    m = classification_metrics(ABSENT_Y, one_hot_probs(ABSENT_PRED, 3), TRI_NAMES)
    assert m["absent_classes"] == ["fox"]
    assert m["per_class"]["fox"] == {
        **dict.fromkeys(("precision", "precision_ci", "recall", "recall_ci", "f1", "f1_ci")),
        "support": 0,
    }
    assert plain(m["per_class"]["cat"]) == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    # over cat and dog only: averaging in a 0 for fox would give 4/9
    assert m["macro_f1"] == pytest.approx(2 / 3)
    assert m["macro_precision"] == pytest.approx(2 / 3)
    assert m["macro_recall"] == pytest.approx(2 / 3) and m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert m["roc_auc"] is None
    text = format_metrics(m)
    assert "macro-F1 0.667" in text and text.endswith("absent: fox")
    assert json.loads(json.dumps(m)) == m


def test_binary_with_one_class_absent_reports_its_rate_as_undefined():
    # every image is "pos" (class 1): specificity, the recall of "neg", is 0/0
    y = [1, 1, 1, 1]
    m = classification_metrics(y, one_hot_probs([1, 1, 1, 0], 2), ["neg", "pos"])
    assert m["specificity"] is None and m["sensitivity"] == pytest.approx(0.75)
    assert m["absent_classes"] == ["neg"]
    assert plain(m["per_class"]["neg"]) == {"precision": 0.0, "recall": None, "f1": None, "support": 0}
    assert m["macro_f1"] == pytest.approx(6 / 7)  # F1 of "pos" alone: 2 * 1 * 0.75 / 1.75
    text = format_metrics(m)
    assert "specificity n/a" in text and "sensitivity 0.750 (pos)" in text and "absent: neg" in text
    # the other way round: the positive class absent
    m = classification_metrics([0, 0, 0], one_hot_probs([0, 0, 0], 2), ["neg", "pos"])
    assert m["sensitivity"] is None and m["specificity"] == 1.0 and m["absent_classes"] == ["pos"]
    assert plain(m["per_class"]["pos"]) == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert "sensitivity n/a (pos)" in format_metrics(m)


def test_no_absent_class_means_an_empty_list_and_nothing_in_the_summary():
    m = classification_metrics(BIN_Y, BIN_P, BIN_NAMES)
    assert m["absent_classes"] == [] and "absent" not in format_metrics(m)


def test_report_names_the_absent_class_and_shows_its_metrics_as_missing(tmp_path):
    y, p = ABSENT_Y, one_hot_probs(ABSENT_PRED, 3)
    m = classification_metrics(y, p, TRI_NAMES)
    text = write_report(tmp_path, title="t", metrics=m, history=[], y_true=y, probs=p, class_names=TRI_NAMES)
    text = text.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert "| fox | n/a | n/a | n/a | 0 |" in lines
    assert any(line.startswith("| macro F1 | 0.6667 | [") for line in lines)
    note = next(line for line in lines if line.startswith("Absent from the evaluated data"))
    assert "fox" in note and "2 class(es) present" in note and MISSING in note

    binary = classification_metrics([1, 1, 1, 1], one_hot_probs([1, 1, 1, 0], 2), ["neg", "pos"])
    text = write_report(
        tmp_path / "bin",
        title="t",
        metrics=binary,
        history=[],
        y_true=[1] * 4,
        probs=one_hot_probs([1, 1, 1, 0], 2),
        class_names=["neg", "pos"],
    ).read_text(encoding="utf-8")
    assert "| specificity | n/a | n/a |" in text.splitlines()


def test_cross_validation_mean_skips_a_fold_where_a_rate_is_undefined():
    both = classification_metrics(BIN_Y, BIN_P, BIN_NAMES)  # specificity 4/6
    only_positives = classification_metrics([1, 1, 1, 1], one_hot_probs([1, 1, 1, 0], 2), BIN_NAMES)
    mean, std, counts = aggregate([both, only_positives])
    assert mean["specificity"] == pytest.approx(4 / 6) and std["specificity"] is None
    assert counts["specificity"] == 1
    assert mean["sensitivity"] == pytest.approx((0.75 + 0.75) / 2) and counts["sensitivity"] == 2
    assert "specificity 0.6667 ± n/a" in format_mean_std(mean, std)


def _plain(obj) -> bool:
    """Only builtin JSON types all the way down (numpy scalars would sneak through json.dumps)."""
    if isinstance(obj, dict):
        return all(type(k) is str and _plain(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_plain(v) for v in obj)
    return obj is None or type(obj) in (int, float, str, bool)


@pytest.mark.parametrize("case", ["binary", "three", "absent"])
def test_json_round_trip(case):
    if case == "binary":
        m = classification_metrics(BIN_Y, BIN_P, BIN_NAMES)
    elif case == "three":
        m = classification_metrics(TRI_Y, one_hot_probs(TRI_PRED, 3), TRI_NAMES)
    else:
        m = classification_metrics([0, 0, 1], one_hot_probs([0, 2, 1], 3), TRI_NAMES)
    assert _plain(m)
    assert json.loads(json.dumps(m)) == m
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_precision", "macro_recall"):
        assert 0.0 <= m[key] <= 1.0


def test_accepts_float32_probs_and_tensor_like_labels():
    p = BIN_P.astype(np.float32)
    m = classification_metrics(np.array(BIN_Y, dtype=np.int32), p, tuple(BIN_NAMES))
    assert m["accuracy"] == pytest.approx(0.7) and m["roc_auc"] == pytest.approx(21 / 24)
    assert _plain(m)


@pytest.mark.parametrize(
    "y, p, names, msg",
    [
        ([0, 1], np.ones((3, 2)) / 2, ["a", "b"], "labels"),
        ([0, 1], np.ones((2, 3)) / 3, ["a", "b"], "columns"),
        ([0, 2], np.ones((2, 2)) / 2, ["a", "b"], "outside"),
        ([0, 1], np.ones(2), ["a", "b"], r"\(N, K\)"),
        ([], np.ones((0, 2)), ["a", "b"], "no samples"),
    ],
)
def test_bad_inputs_raise_clearly(y, p, names, msg):
    with pytest.raises(ValueError, match=msg):
        classification_metrics(y, p, names)


def test_format_metrics_binary_and_multiclass():
    text = format_metrics(classification_metrics(BIN_Y, BIN_P, BIN_NAMES))
    for part in (
        "accuracy 0.700",
        "balanced 0.708",
        "macro-F1 0.697",
        "ROC-AUC 0.875",
        "sensitivity 0.750",
        "specificity 0.667",
        "malignant",
    ):
        assert part in text, (part, text)
    text3 = format_metrics(classification_metrics(TRI_Y, one_hot_probs(TRI_PRED, 3), TRI_NAMES))
    assert "accuracy 0.778" in text3 and "macro-F1 0.775" in text3 and "balanced 0.806" in text3
    assert "sensitivity" not in text3 and "specificity" not in text3
    assert "\n" not in text and len(text) < 200


def test_positive_class_chooses_what_sensitivity_means():
    import numpy as np

    from resnexus.reports import classification_metrics

    # class 0 = disease; 4 diseased (3 found), 6 healthy (5 cleared)
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    pred = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 0])
    probs = np.eye(2)[pred] * 0.8 + 0.1
    default = classification_metrics(y, probs, ["Monkey Pox", "Others"])
    others = classification_metrics(y, probs, ["Monkey Pox", "Others"], positive_class="Others")
    # "Others" reads as the negative class, so the disease is the default positive, not the alphabet's second
    assert (default["positive_class"], default["sensitivity"], default["specificity"]) == ("Monkey Pox", 3 / 4, 5 / 6)
    assert default["positive_class_reason"] == (
        "chosen by default: 'Others' reads as the negative class; set --positive-class"
    )
    assert (others["positive_class"], others["sensitivity"], others["specificity"]) == ("Others", 5 / 6, 3 / 4)
    assert others["positive_class_reason"] == "set with --positive-class"
    assert others["roc_auc"] == pytest.approx(default["roc_auc"])  # symmetric for two classes
    with pytest.raises(
        ValueError, match=r"^--positive-class 'Mpox' is not one of the classes: 'Monkey Pox', 'Others'$"
    ):
        classification_metrics(y, probs, ["Monkey Pox", "Others"], positive_class="Mpox")
