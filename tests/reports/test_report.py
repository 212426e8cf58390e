"""report.md holds the right numbers and links to plots that exist (the figures themselves: test_plots.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from resnexus.reports import classification_metrics, write_report

from .samples import BIN_NAMES, BIN_P, BIN_Y, HISTORY, assert_real_png


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("binary_run")
    metrics = classification_metrics(BIN_Y, BIN_P, BIN_NAMES)
    details = {"model": "resnet18", "data": "toy | 10 images", "epochs": 5, "time (s)": 12.3456}
    path = write_report(
        run_dir,
        title="Toy binary run",
        metrics=metrics,
        history=HISTORY,
        y_true=BIN_Y,
        probs=BIN_P,
        class_names=BIN_NAMES,
        details=details,
    )
    return run_dir, path, path.read_text(encoding="utf-8")


def table_row(text: str, *cells: str) -> bool:
    """True when a Markdown table row with exactly these cells is in ``text``."""
    return ("| " + " | ".join(cells) + " |") in text.splitlines()


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
    # headline metrics with their 95 % intervals: Wilson by hand (7 of 10: 0.6445 ± 0.2477), the bootstrap's as
    # the seeded resamples give them
    assert table_row(text, "samples", "10", "")
    assert table_row(text, "accuracy", "0.7000", "[0.397, 0.892]")
    assert table_row(text, "balanced accuracy", "0.7083", "[0.375, 1.000]")  # 17/24
    assert table_row(text, "macro F1", "0.6970", "[0.375, 1.000]")  # 23/33
    assert table_row(text, "ROC-AUC", "0.8750", "[0.500, 1.000]")  # 21/24
    assert table_row(text, "sensitivity (positive class: malignant)", "0.7500", "[0.301, 0.954]")  # 3 of 4
    assert table_row(text, "specificity", "0.6667", "[0.300, 0.903]")  # 4 of 6
    assert "95 % confidence intervals: Wilson score intervals for proportions" in text
    assert "percentile bootstrap of the evaluated images (1000 resamples, seed 0)" in text
    # per-class rows: class, precision, recall, F1 (each with its interval), support
    assert table_row(text, "benign", "0.8000 [0.376, 0.964]", "0.6667 [0.300, 0.903]", "0.7273 [0.286, 1.000]", "6")
    assert table_row(text, "malignant", "0.6000 [0.231, 0.882]", "0.7500 [0.301, 0.954]", "0.6667 [0.222, 1.000]", "4")
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
        tmp_path,
        title="Single class",
        metrics=metrics,
        history=[],
        y_true=y,
        probs=p,
        class_names=names,
    )
    text = path.read_text(encoding="utf-8")
    assert re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text) == ["plots/confusion_matrix.png"]
    assert not (tmp_path / "plots" / "roc.png").exists()
    assert not (tmp_path / "plots" / "history.png").exists()
    assert table_row(text, "ROC-AUC", "n/a", "n/a")
    assert table_row(text, "accuracy", "0.7500", "[0.301, 0.954]")
    assert table_row(text, "cat", "1.0000 [0.439, 1.000]", "0.7500 [0.301, 0.954]", "0.8571 [0.400, 1.000]", "4")
    # absent: dog was predicted once (precision 0 is defined, of 1 image), fox never; recall and F1 are 0/0
    assert table_row(text, "dog", "0.0000 [0.000, 0.793]", "n/a", "n/a", "0")
    assert table_row(text, "fox", "n/a", "n/a", "n/a", "0")
    assert "Absent from the evaluated data (no images): dog, fox." in text
    assert table_row(text, "**cat**", "3", "1", "0")
    assert "Run details" not in text
    assert (
        "sensitivity (positive class" not in text and "| specificity" not in text
    )  # no row (the method note names them)
