"""The built-in digits dataset written from scikit-learn's bundled copy."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from resnexus.data import DataError, digits_folder, scan_folder


def test_digits_folder_written_once_with_right_labels(tmp_path):
    root = digits_folder(tmp_path / "digits")
    assert root == tmp_path / "digits"
    s = scan_folder(root)
    assert len(s) == 1797 and s.class_names == [str(d) for d in range(10)]
    digits = load_digits()
    assert s.class_counts() == {str(d): int((digits.target == d).sum()) for d in range(10)}
    for i in (0, 1, 500, 1796):
        path = root / str(digits.target[i]) / f"digit_{i}.png"
        assert path in s.paths and s.labels[s.paths.index(path)] == digits.target[i]
        with Image.open(path) as im:
            assert im.mode == "L" and im.size == (8, 8)
            got = np.asarray(im).astype(int)
        expected = (digits.images[i].astype(int) * 255 + 8) // 16
        assert np.array_equal(got, expected)
    assert not [p for p in tmp_path.iterdir() if p.name != "digits"]  # no temp folder left

    stamp = {p: p.stat().st_mtime_ns for p in list(root.rglob("*.png"))[:20]}
    assert digits_folder(root) == root  # complete: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp


def test_digits_folder_repairs_incomplete_set_and_refuses_foreign_folder(tmp_path):
    root = digits_folder(tmp_path / "d")
    (root / "3" / "digit_3.png").unlink()
    digits_folder(root)
    assert (root / "3" / "digit_3.png").is_file()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("user data")
    with pytest.raises(DataError, match="mine"):
        digits_folder(tmp_path / "mine")
    assert (tmp_path / "mine" / "keep.txt").is_file()


def test_default_digits_folder_follows_resnexus_home(monkeypatch, tmp_path):
    monkeypatch.setenv("RESNEXUS_HOME", str(tmp_path / "home"))
    assert digits_folder() == tmp_path / "home" / "digits"
    assert len(scan_folder(tmp_path / "home" / "digits")) == 1797
