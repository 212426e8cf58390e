"""Which class sensitivity / specificity / ROC are about: chosen predictably, named everywhere, and a
model that answers one class for every image flagged (its rates are degenerate)."""

from __future__ import annotations

import numpy as np
import pytest

from resnexus import reports
from resnexus.reports import classification_metrics, format_metrics, write_report
from resnexus.reports.plots import plot_roc

from .samples import BIN_P, BIN_Y, HISTORY


@pytest.mark.parametrize(
    ("names", "positive", "why"),
    [
        (["cat", "dog"], "dog", "chosen by default: the second class in sorted order; set --positive-class"),
        (["Monkeypox", "Others"], "Monkeypox", "chosen by default: 'Others' reads as the negative class"),
        (["abnormal", "normal"], "abnormal", "chosen by default: 'normal' reads as the negative class"),
        (["Healthy", "Tumour"], "Tumour", "chosen by default: 'Healthy' reads as the negative class"),
        (["melanoma", "non_melanoma"], "melanoma", "chosen by default: 'non_melanoma' reads as the negative class"),
        (["control", "treated"], "treated", "chosen by default: 'control' reads as the negative class"),
        (
            ["normal", "others"],
            "others",
            "chosen by default: the second class in sorted order",
        ),  # both read negative: no guess
    ],
)
def test_default_positive_class_is_predictable(names, positive, why):
    index, reason = reports.resolve_positive_class(names)
    assert names[index] == positive
    assert reason.startswith(why)


def test_the_given_positive_class_decides_what_sensitivity_is_about():
    # rows: true class; TP/FN of "Others" = 5/1, of "Monkeypox" = 3/1
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    pred = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 0])
    probs = np.eye(2)[pred]
    names = ["Monkeypox", "Others"]
    others = classification_metrics(y, probs, names, positive_class="Others")
    mpox = classification_metrics(y, probs, names, positive_class="Monkeypox")
    assert (others["sensitivity"], others["specificity"]) == (5 / 6, 3 / 4)
    assert (mpox["sensitivity"], mpox["specificity"]) == (3 / 4, 5 / 6)
    assert reports.describe_positive_class(others) == "positive class: Others (set with --positive-class)"
    assert "sensitivity 0.833 (Others)" in format_metrics(others)


def test_a_constant_predictor_is_flagged():
    y = np.array([0, 0, 1, 1, 1])
    always_others = np.tile([0.2, 0.8], (5, 1))
    m = classification_metrics(y, always_others, ["Monkeypox", "Others"], positive_class="Others")
    assert m["sensitivity"] == 1.0 and m["specificity"] == 0.0  # perfect-looking, and meaningless
    assert m["warnings"] == ["the model predicted 'Others' for every image: sensitivity/specificity are degenerate"]
    three = classification_metrics([0, 1, 2], np.tile([0.1, 0.1, 0.8], (3, 1)), ["a", "b", "c"])
    assert three["warnings"] == ["the model predicted 'c' for every image: the per-class recalls are degenerate"]
    assert classification_metrics(BIN_Y, BIN_P, ["benign", "malignant"])["warnings"] == []


def test_report_names_the_positive_class_and_warns_of_a_constant_predictor(tmp_path):
    names = ["Monkeypox", "Others"]
    y = np.array([0, 0, 1, 1, 1])
    probs = np.tile([0.2, 0.8], (5, 1))
    metrics = classification_metrics(y, probs, names)
    write_report(tmp_path, title="t", metrics=metrics, history=HISTORY, y_true=y, probs=probs, class_names=names)
    text = (tmp_path / "report.md").read_text()
    assert "| sensitivity (positive class: Monkeypox) | 0.0000 |" in text
    assert (
        "Sensitivity, specificity and the ROC curve: positive class: Monkeypox "
        "(chosen by default: 'Others' reads as the negative class; set --positive-class)." in text
    )
    assert "**Warning:** the model predicted 'Others' for every image: sensitivity/specificity are degenerate." in text


def test_roc_plot_is_drawn_for_the_positive_class(tmp_path, monkeypatch):
    import matplotlib.axes

    titles, labels = [], []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, t, *a, **k: titles.append(t))
    real_plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(
        matplotlib.axes.Axes, "plot", lambda self, *a, **k: labels.append(k.get("label")) or real_plot(self, *a, **k)
    )
    assert plot_roc(BIN_Y, BIN_P, ["benign", "malignant"], tmp_path / "a.png", positive_class="benign")
    assert titles == ["ROC curve (positive class: benign)"]
    assert labels[1].startswith("positive class benign (AUC ")
    auc_benign = float(labels[1].split("AUC ")[1].rstrip(")"))
    assert auc_benign == pytest.approx(
        classification_metrics(BIN_Y, BIN_P, ["benign", "malignant"])["roc_auc"], abs=1e-3
    )
