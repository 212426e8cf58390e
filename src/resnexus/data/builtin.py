"""A real dataset that needs no download: scikit-learn's bundled handwritten digits.

1797 greyscale 8x8 images of the digits 0-9 (the UCI "optdigits" test set) ship inside
scikit-learn, so a fresh install can train and evaluate end to end offline. They are written
once as an ordinary class-folder tree, so they go through exactly the code path user data does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import atomic_folder, default_cache_dir
from .scan import DataError

DIGITS_COUNT = 1797
_MARKER = ".complete"  # hidden, so scan_folder ignores it


def _complete(root: Path, counts: dict[int, int]) -> bool:
    if not (root / _MARKER).is_file():
        return False
    for digit, n in counts.items():
        folder = root / str(digit)
        if not folder.is_dir() or sum(1 for p in folder.iterdir() if p.suffix == ".png") != n:
            return False
    return True


def digits_folder(root: str | Path | None = None) -> Path:
    """Write the digits as ``root/<digit>/digit_<index>.png`` once and return ``root``.

    Images are saved at their native 8x8 as 8-bit greyscale PNG, values scaled from 0..16 to
    0..255 as ``(v * 255 + 8) // 16`` (rounded); ``<index>`` is the row in
    ``sklearn.datasets.load_digits()``. The default root is ``default_cache_dir("digits")``
    (resnexus/files.py: under ``$RESNEXUS_HOME`` when set).
    A complete folder is left alone; a new one is built in a temporary folder beside ``root``
    and renamed into place, so an interrupted run never leaves a half-written set.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    root = Path(root).expanduser() if root is not None else default_cache_dir("digits")
    digits = load_digits()
    images = digits.images.astype(np.int64)  # (1797, 8, 8), values 0..16
    targets = digits.target.astype(int)
    counts = {d: int((targets == d).sum()) for d in range(10)}
    if _complete(root, counts):
        return root
    if root.exists() and not root.is_dir():
        raise DataError(f"digits folder path is a file: {root}")
    if root.is_dir() and any(root.iterdir()) and not (root / _MARKER).exists():
        raise DataError(
            f"{root} exists and is not a digits folder written by resnexus; choose another folder or empty it"
        )
    try:
        with atomic_folder(root) as staged:
            for d in range(10):
                (staged / str(d)).mkdir()
            pixels = ((images * 255 + 8) // 16).astype(np.uint8)
            for i, (img, d) in enumerate(zip(pixels, targets)):
                Image.fromarray(img).save(staged / str(d) / f"digit_{i}.png")
            (staged / _MARKER).write_text(f"{len(targets)}\n")
    except OSError:
        if not _complete(root, counts):  # another process won the race with a complete set?
            raise
    return root
