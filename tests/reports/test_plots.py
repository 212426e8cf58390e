"""Every report figure is a real PNG, written whole, into a folder created on the way."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from resnexus.reports import (
    classification_metrics,
    plot_accuracy_vs_macs,
    plot_confusion_matrix,
    plot_history,
    plot_roc,
    save_figure,
)

from .samples import BIN_NAMES, BIN_P, BIN_Y, HISTORY, HISTORY_NO_VAL, PNG_SIGNATURE, assert_real_png


def test_plot_history_with_and_without_validation(tmp_path):
    assert_real_png(plot_history(HISTORY, tmp_path / "h.png"))
    out = plot_history(HISTORY_NO_VAL, tmp_path / "sub" / "h2.png")  # parent dir created
    assert out == tmp_path / "sub" / "h2.png"
    assert_real_png(out)


def test_plot_confusion_matrix(tmp_path):
    metrics = classification_metrics(BIN_Y, BIN_P, BIN_NAMES)
    assert_real_png(plot_confusion_matrix(metrics, tmp_path / "cm.png"))


def test_plot_roc_binary_multiclass_and_undefined(tmp_path):
    assert_real_png(plot_roc(BIN_Y, BIN_P, BIN_NAMES, tmp_path / "roc.png"))

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    p = rng.dirichlet(np.ones(3), 60)
    assert_real_png(plot_roc(y, p, ["a", "b", "c"], tmp_path / "roc3.png"))

    assert plot_roc([1, 1, 1], BIN_P[:3], BIN_NAMES, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_plot_accuracy_vs_macs_draws_finished_models_only(tmp_path):
    rows = [
        {"model": "resnet20_cifar", "status": "ok", "accuracy": 0.91, "macs": 40_000_000},
        {"model": "lenet", "status": "ok", "accuracy": 0.62, "macs": 650_000},
        {"model": "broken", "status": "failed", "accuracy": None, "macs": 1_000},
    ]
    out = plot_accuracy_vs_macs(rows, tmp_path / "sub" / "acc.png")  # parent dir created
    assert out == tmp_path / "sub" / "acc.png"
    assert_real_png(out)
    assert_real_png(plot_accuracy_vs_macs(rows[2:], str(tmp_path / "none.png")))  # "no model finished" panel


def test_save_figure_leaves_the_old_file_when_drawing_fails(tmp_path):
    path = tmp_path / "fig.png"
    fig = Figure(figsize=(3, 2))
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    assert save_figure(fig, path) == path and path.read_bytes()[:8] == PNG_SIGNATURE
    before = path.read_bytes()
    broken = Figure(figsize=(3, 2))
    broken.add_subplot(1, 1, 1).text(0.5, 0.5, "$\\notacommand$")  # mathtext fails while rendering
    with pytest.raises(ValueError):
        save_figure(broken, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]  # no temporary file left behind
