"""Grouped, stratified splits and folds; the train/val/test folder layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnexus.data import DataError, Samples, kfold_splits, resolve_splits, split_samples

from .images import make_tree


def _samples(per_class: dict[str, tuple[int, int]]) -> Samples:
    """Fake samples (no files needed): {class: (groups, images per group)}, group ids per class."""
    paths, labels, groups = [], [], []
    names = sorted(per_class)
    for y, name in enumerate(names):
        n_groups, per_group = per_class[name]
        for g in range(n_groups):
            for k in range(per_group):
                paths.append(Path(f"/d/{name}/{name}{g}_{k}.png"))
                labels.append(y)
                groups.append(f"{name}{g}")
    return Samples(paths=paths, labels=labels, class_names=names, groups=groups, root=Path("/d"))


def _groups(s: Samples) -> set[str]:
    return set(s.groups)


def test_grouped_split_keeps_groups_and_classes():
    s = _samples({"a": (10, 3), "b": (8, 2), "c": (6, 4)})
    parts = split_samples(s, val_fraction=0.2, test_fraction=0.2, seed=3)
    assert set(parts) == {"train", "val", "test"}
    assert sum(len(p) for p in parts.values()) == len(s)
    assert sorted(p for part in parts.values() for p in part.paths) == sorted(s.paths)
    tr, va, te = (_groups(parts[k]) for k in ("train", "val", "test"))
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert all(n > 0 for n in parts["train"].class_counts().values())
    assert all(part.class_names == s.class_names for part in parts.values())
    # roughly the asked sizes, in whole groups
    assert 0.1 < len(parts["test"]) / len(s) < 0.32
    assert 0.1 < len(parts["val"]) / len(s) < 0.32


def test_split_is_deterministic_for_a_seed():
    s = _samples({"a": (10, 2), "b": (10, 3)})
    one = split_samples(s, seed=1)
    two = split_samples(s, seed=1)
    assert all(one[k].paths == two[k].paths for k in one)
    others = [split_samples(s, seed=k)["test"].paths for k in range(2, 6)]
    assert any(o != one["test"].paths for o in others)


def test_singleton_groups_give_exact_stratified_split():
    s = _samples({"a": (50, 1), "b": (30, 1), "c": (20, 1)})
    parts = split_samples(s, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert len(parts["test"]) == 20 and len(parts["val"]) == 10 and len(parts["train"]) == 70
    assert parts["test"].class_counts() == {"a": 10, "b": 6, "c": 4}


def test_zero_fractions_omit_parts():
    s = _samples({"a": (5, 1), "b": (5, 1)})
    assert set(split_samples(s, val_fraction=0.0, test_fraction=0.2)) == {"train", "test"}
    assert set(split_samples(s, val_fraction=0.2, test_fraction=0.0)) == {"train", "val"}
    only = split_samples(s, val_fraction=0.0, test_fraction=0.0)
    assert set(only) == {"train"} and len(only["train"]) == 10


def test_too_few_to_split_says_counts():
    s = _samples({"a": (1, 4), "b": (6, 1)})
    with pytest.raises(DataError, match=r"'a': 4 images / 1 groups"):
        split_samples(s)
    tiny = _samples({"a": (2, 1), "b": (2, 1), "c": (2, 1)})
    with pytest.raises(DataError, match="too few"):
        split_samples(tiny, val_fraction=0.1, test_fraction=0.1)
    with pytest.raises(DataError, match="< 1"):
        split_samples(s, val_fraction=0.5, test_fraction=0.5)


def test_kfold_partitions_and_groups():
    s = _samples({"a": (9, 2), "b": (6, 3), "c": (5, 1)})
    folds = kfold_splits(s, folds=4, seed=0)
    assert len(folds) == 4
    vals = [i for _, val in folds for i in val]
    assert sorted(vals) == list(range(len(s)))  # val parts partition the data
    for train, val in folds:
        assert sorted(train + val) == list(range(len(s)))
        assert not ({s.groups[i] for i in train} & {s.groups[i] for i in val})
        assert {s.labels[i] for i in train} == {0, 1, 2}
    assert kfold_splits(s, folds=4, seed=0) == folds


def test_kfold_errors():
    s = _samples({"a": (3, 1), "b": (3, 1)})
    with pytest.raises(DataError, match=r"--folds must be >= 2"):
        kfold_splits(s, folds=1)
    with pytest.raises(DataError, match="6 groups"):
        kfold_splits(s, folds=7)


def test_group_errors_say_how_the_groups_were_formed(tmp_path):
    """--group-by patient on files not named <id>_<n>: the message shows the groups the pattern made."""
    root = make_tree(tmp_path / "d", {"cat": [f"blue_{i}.png" for i in range(4)], "dog": ["red.png", "red_1.png"]})
    samples = resolve_splits(root, group_by="patient", val_fraction=0.0, test_fraction=0.0)["train"]
    how = "2 groups from --group-by 'patient' (the file stem without a trailing _N): every image maps to one of "
    counts = "'cat': 4 images / 1 groups; 'dog': 2 images / 1 groups; "
    with pytest.raises(DataError) as error:
        kfold_splits(samples, folds=3)
    assert (
        str(error.value)
        == f"cannot make 3 folds from 2 groups; 6 images: {counts}{how}'blue' (4 images), 'red' (2 images)"
    )
    with pytest.raises(DataError) as error:
        resolve_splits(root, group_by="patient")
    assert str(error.value).endswith(f"{counts}{how}'blue' (4 images), 'red' (2 images)")
    with pytest.raises(DataError, match=r"\(a regular expression on the file name.*\): .* 'png' \(6 images\)$"):
        resolve_splits(root, group_by="png", test_fraction=0.5)  # the whole match: one group
    many = resolve_splits(root, group_by=r"(\w+)\.png", val_fraction=0.0, test_fraction=0.0)["train"]
    with pytest.raises(DataError, match=r"6 groups from --group-by .* 'blue_0' \(1 images\), .*, \.\.\. \(1 more\)$"):
        kfold_splits(many, folds=7)


def test_group_errors_name_the_csv_column(tmp_path):
    root = make_tree(tmp_path / "d", {"cat": ["a.png", "b.png"], "dog": ["c.png", "d.png"]})
    rows = ["path,label,site", "cat/a.png,cat,x", "cat/b.png,cat,x", "dog/c.png,dog,y", "dog/d.png,dog,y"]
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(
        DataError, match=r"2 groups from --group-by 'site' \(the CSV column 'site'\): .* 'x' \(2 images\)"
    ):
        resolve_splits(root / "list.csv", group_by="site")


def test_ungrouped_errors_list_no_groups():
    with pytest.raises(DataError) as error:
        kfold_splits(_samples({"a": (3, 1), "b": (3, 1)}), folds=7)
    assert "maps to" not in str(error.value)


def test_resolve_splits_explicit_layout(tmp_path):
    make_tree(tmp_path / "train", {"cat": ["c1.png", "c2.png"], "dog": ["d1.png", "d2.png"]})
    make_tree(tmp_path / "Valid", {"dog": ["d3.png"]})
    make_tree(tmp_path / "test", {"cat": ["c4.png"], "dog": ["d4.png"]})
    parts = resolve_splits(tmp_path)
    assert set(parts) == {"train", "val", "test"}
    assert len(parts["train"]) == 4 and parts["val"].labels == [1] and parts["test"].labels == [0, 1]
    assert parts["val"].class_names == ["cat", "dog"]
    make_tree(tmp_path / "test", {"bird": ["b.png"]})
    with pytest.raises(DataError, match="bird"):
        resolve_splits(tmp_path)


def test_resolve_splits_carves_val_from_train(tmp_path):
    make_tree(tmp_path / "train", {"a": [f"{i}.png" for i in range(5)], "b": [f"{i}.png" for i in range(5)]})
    parts = resolve_splits(tmp_path, val_fraction=0.2, test_fraction=0.3)
    assert set(parts) == {"train", "val"}  # no test folder: test_fraction unused
    assert len(parts["val"]) == 2 and len(parts["train"]) == 8


def test_resolve_splits_plain_folder(tmp_path):
    make_tree(tmp_path, {"a": [f"{i}.png" for i in range(5)], "b": [f"{i}.png" for i in range(5)]})
    parts = resolve_splits(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert {k: len(v) for k, v in parts.items()} == {"train": 6, "val": 2, "test": 2}
