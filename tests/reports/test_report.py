"""Plots are real PNG images; report.md holds the right numbers and links to plots that exist."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnexus.reports import (
    classification_metrics,
    plot_confusion_matrix,
    plot_history,
    plot_roc,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Same hand-computed binary case as test_metrics: TP 3, FN 1, FP 2, TN 4.
BIN_Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
BIN_S = np.array([0.9, 0.8, 0.7, 0.3, 0.6, 0.55, 0.4, 0.2, 0.1, 0.05])
BIN_P = np.stack([1 - BIN_S, BIN_S], axis=1)
BIN_NAMES = ["benign", "malignant"]

HISTORY = [
    {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "train_accuracy": 0.5 + 0.05 * e, "val_accuracy": 0.45 + 0.05 * e}
    for e in range(1, 6)
]
HISTORY_NO_VAL = [
    {"epoch": 1, "train_loss": 0.9, "val_loss": None, "train_accuracy": 0.6, "val_accuracy": None},
    {"epoch": 2, "train_loss": 0.5, "train_accuracy": 0.8},  # val_* missing entirely
    {"epoch": 3, "train_loss": 0.3, "train_accuracy": 0.9},
]


def assert_real_png(path: Path) -> None:
    path = Path(path)
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 5_000  # a drawn figure, not an empty canvas
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        assert im.width > 100 and im.height > 100
        lo, hi = im.convert("L").getextrema()
        assert hi - lo > 100  # dark ink on a light background


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("binary_run")
    metrics = classification_metrics(BIN_Y, BIN_P, BIN_NAMES)
    details = {"model": "resnet18", "data": "toy | 10 images", "epochs": 5, "time (s)": 12.3456}
    path = write_report(
        run_dir, title="Toy binary run", metrics=metrics, history=HISTORY,
        y_true=BIN_Y, probs=BIN_P, class_names=BIN_NAMES, details=details,
    )
    return run_dir, path, path.read_text(encoding="utf-8")


def table_row(text: str, *cells: str) -> bool:
    """True when a Markdown table row with exactly these cells is in ``text``."""
    return ("| " + " | ".join(cells) + " |") in text.splitlines()


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


def test_report_links_to_existing_pngs(binary_run):
    run_dir, path, text = binary_run
    assert path == run_dir / "report.md"
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == ["plots/confusion_matrix.png", "plots/history.png", "plots/roc.png"]
    for link in links:
        assert not Path(link).is_absolute()
        assert_real_png(run_dir / link)


def test_report_numbers_and_tables(binary_run):
    _, _, text = binary_run
    assert text.startswith("# Toy binary run\n")
    # headline metrics (hand-computed: see test_metrics)
    assert table_row(text, "samples", "10")
    assert table_row(text, "accuracy", "0.7000")
    assert table_row(text, "balanced accuracy", "0.7083")  # 17/24
    assert table_row(text, "macro F1", "0.6970")  # 23/33
    assert table_row(text, "ROC-AUC", "0.8750")  # 21/24
    assert table_row(text, "sensitivity (positive class: malignant)", "0.7500")
    assert table_row(text, "specificity", "0.6667")
    # per-class rows: class, precision, recall, F1, support
    assert table_row(text, "benign", "0.8000", "0.6667", "0.7273", "6")
    assert table_row(text, "malignant", "0.6000", "0.7500", "0.6667", "4")
    # confusion matrix as Markdown
    assert table_row(text, "true \\ predicted", "benign", "malignant")
    assert table_row(text, "**benign**", "4", "2")
    assert table_row(text, "**malignant**", "1", "3")
    # details, with the pipe escaped so the table survives
    assert table_row(text, "model", "resnet18")
    assert table_row(text, "data", "toy \\| 10 images")
    assert table_row(text, "epochs", "5")
    assert table_row(text, "time (s)", "12.3456")


def test_report_multiclass_absent_class_no_history(tmp_path):
    """An evaluation set with one class only: no ROC plot, no history plot, report still written."""
    names = ["cat", "dog", "fox"]
    y = np.array([0, 0, 0, 0])
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.6, 0.3, 0.1]])
    metrics = classification_metrics(y, p, names)
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "roc.png").write_bytes(b"stale")  # must not be linked or left behind
    path = write_report(
        tmp_path, title="Single class", metrics=metrics, history=[],
        y_true=y, probs=p, class_names=names,
    )
    text = path.read_text(encoding="utf-8")
    assert re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text) == ["plots/confusion_matrix.png"]
    assert not (tmp_path / "plots" / "roc.png").exists()
    assert not (tmp_path / "plots" / "history.png").exists()
    assert table_row(text, "ROC-AUC", "n/a")
    assert table_row(text, "accuracy", "0.7500")
    assert table_row(text, "cat", "1.0000", "0.7500", "0.8571", "4")
    assert table_row(text, "fox", "0.0000", "0.0000", "0.0000", "0")
    assert table_row(text, "**cat**", "3", "1", "0")
    assert "Run details" not in text
    assert "sensitivity" not in text
