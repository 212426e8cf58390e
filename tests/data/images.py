"""Tiny generated image files for the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def pixels(width: int = 12, height: int = 10, seed: int = 0) -> np.ndarray:
    """A reproducible random RGB array (height, width, 3)."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_image(path: Path, width: int = 12, height: int = 10, seed: int = 0, **save_kwargs) -> Path:
    """Write a small RGB image; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels(width, height, seed)).save(path, **save_kwargs)
    return path


def make_tree(root: Path, layout: dict[str, list[str]]) -> Path:
    """Class folders under ``root``: ``{class: [relative file names]}``, tiny PNG/JPEG files."""
    for i, (cls, names) in enumerate(layout.items()):
        for j, name in enumerate(names):
            write_image(root / cls / name, seed=i * 1000 + j)
    return root
