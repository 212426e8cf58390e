"""Inputs shared by the report and plot tests, and the check that a file is a drawn PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Same hand-computed binary case as test_metrics: TP 3, FN 1, FP 2, TN 4.
BIN_Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
BIN_S = np.array([0.9, 0.8, 0.7, 0.3, 0.6, 0.55, 0.4, 0.2, 0.1, 0.05])
BIN_P = np.stack([1 - BIN_S, BIN_S], axis=1)
BIN_NAMES = ["benign", "malignant"]

HISTORY = [
    {
        "epoch": e,
        "train_loss": 1.0 / e,
        "val_loss": 1.2 / e,
        "train_accuracy": 0.5 + 0.05 * e,
        "val_accuracy": 0.45 + 0.05 * e,
    }
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
