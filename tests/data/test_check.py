"""check-data reports what train will refuse, with train's own message and numbers (issue 15, item 11)."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnexus.cli import main
from resnexus.data import DataError, scan_folder, split_samples
from resnexus.data.check import check_data
from resnexus.engine import TrainConfig
from resnexus.engine.config import checked_splits

from .images import make_tree


def _data(tmp_path: Path, small: int) -> Path:
    """Two classes of 8 images and a class ``c`` of ``small`` images."""
    names = [f"{i}.png" for i in range(8)]
    return make_tree(tmp_path / "data", {"a": names, "b": names, "c": names[:small]})


def _train_refusal(data: Path, tmp_path: Path, **kw) -> str:
    config = TrainConfig(data=str(data), out=str(tmp_path / "run"), model="resnet20_cifar", verbose=False, **kw)
    with pytest.raises(DataError) as refused:
        checked_splits(config)
    return str(refused.value)


@pytest.mark.parametrize("small", [1, 2])
def test_a_class_too_small_for_train_is_an_error_with_trains_message(small, tmp_path):
    data = _data(tmp_path, small)
    message = _train_refusal(data, tmp_path)
    report = check_data(data)
    assert [(f.problem, f.path) for f in report.errors] == [("split", data)]
    assert report.errors[0].detail == f"train (--val-fraction 0.1 --test-fraction 0.2) refuses: {message}"
    assert message.startswith("too few images to hold out ") and "'c': " in message


def test_the_validation_fraction_of_what_the_test_split_left_is_explained(tmp_path):
    """10 % of all images is 12.5 % of the 80 % left after the test split: the message says both."""
    message = _train_refusal(_data(tmp_path, 2), tmp_path)
    assert message.startswith(
        "too few images to hold out 10% for validation (12.5% of the 14 images left after the test split) ("
    )
    assert message.endswith("; 14 images: 'a': 6 images / 6 groups; 'b': 6 images / 6 groups; 'c': 2 images / 2 groups")


def test_check_data_splits_with_the_fractions_it_is_given(tmp_path, capsys):
    data = _data(tmp_path, 2)
    assert not check_data(data, val_fraction=0.0, test_fraction=0.0).errors
    assert main(["check-data", str(data), "--val-fraction", "0", "--test-fraction", "0"]) == 0
    assert main(["check-data", str(data)]) == 1
    listing = capsys.readouterr().out
    assert "error   split          " in listing and "12.5% of the 14 images left after the test split" in listing
    assert not check_data(data, val_fraction=0.0, test_fraction=0.5).errors  # and train accepts it:
    config = TrainConfig(data=str(data), out=str(tmp_path / "run"), val_fraction=0.0, test_fraction=0.5, verbose=False)
    splits, _ = checked_splits(config)
    assert {name: len(s) for name, s in splits.items()} == {"train": 9, "test": 9}


def test_a_grouped_split_scikit_learn_cannot_make_is_a_one_line_refusal(tmp_path):
    """StratifiedGroupKFold's ValueError came through as a traceback; now it is the split's DataError."""
    layout = {"a": ["p1_1.png", "p1_2.png", "p2_1.png", "p3_1.png"], "b": ["p4_1.png", "p5_1.png", "p6_1.png"]}
    samples = scan_folder(make_tree(tmp_path / "data", layout), group_by="patient")
    with pytest.raises(DataError) as refused:
        split_samples(samples, val_fraction=0.0, test_fraction=0.2)
    assert str(refused.value).startswith(
        "too few images to hold out 20% for test (n_splits=5 cannot be greater than the number of members in "
        "each class.; the held-out part is 1 of 5 grouped folds); 7 images: 'a': 4 images / 3 groups; "
    )
