"""Scanning class folders, CSV listings and files to predict."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnexus.data import (
    GROUP_PATTERNS,
    IMAGE_EXTENSIONS,
    DataError,
    group_ids,
    natural_key,
    scan_csv,
    scan_folder,
    scan_unlabeled,
)

from .images import make_tree, write_image


def test_extensions_are_lowercase_with_dot():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"} == IMAGE_EXTENSIONS


def test_scan_folder_spaces_non_ascii_and_nesting(tmp_path):
    make_tree(
        tmp_path,
        {
            "Ünïcode class": ["b.png", "a.JPG"],
            "with space": ["x.jpeg", "deep/er/y.png"],
            "Alpha": ["1.webp"],
        },
    )
    s = scan_folder(tmp_path)
    assert s.class_names == sorted(["Ünïcode class", "with space", "Alpha"])
    assert len(s) == 5
    assert s.class_counts() == {"Alpha": 1, "with space": 2, "Ünïcode class": 2}
    rel = [p.relative_to(tmp_path).as_posix() for p in s.paths]
    assert rel == [
        "Alpha/1.webp",
        "with space/deep/er/y.png",
        "with space/x.jpeg",
        "Ünïcode class/a.JPG",
        "Ünïcode class/b.png",
    ]
    assert [s.class_names[y] for y in s.labels] == [r.split("/")[0] for r in rel]
    assert s.groups == rel  # no pattern: each file its own group
    assert s.root == tmp_path.absolute()


def test_hidden_and_stray_files_skipped(tmp_path):
    make_tree(tmp_path, {"cat": ["c1.png", ".hidden.png", ".thumbs/t.png"], "dog": ["d1.png"]})
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / "Thumbs.db").write_bytes(b"\0")
    (tmp_path / "README.md").write_text("stray file at the root")
    make_tree(tmp_path, {".git": ["x.png"], "__MACOSX": [".x.png"]})
    s = scan_folder(tmp_path)
    assert s.class_names == ["cat", "dog"]
    assert [p.name for p in s.paths] == ["c1.png", "d1.png"]


def test_empty_class_folder_is_named(tmp_path):
    make_tree(tmp_path, {"cat": ["c.png"]})
    (tmp_path / "empty one").mkdir()
    (tmp_path / "empty one" / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match="empty one"):
        scan_folder(tmp_path)


def test_missing_root_and_no_class_folders(tmp_path):
    with pytest.raises(DataError, match="nope"):
        scan_folder(tmp_path / "nope")
    write_image(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="no class folders"):
        scan_folder(tmp_path / "flat")


def test_given_class_names_align_labels(tmp_path):
    make_tree(tmp_path / "test", {"dog": ["d.png"]})
    s = scan_folder(tmp_path / "test", class_names=["cat", "dog"])
    assert s.class_names == ["cat", "dog"] and s.labels == [1]
    assert s.class_counts() == {"cat": 0, "dog": 1}
    make_tree(tmp_path / "test", {"bird": ["b.png"]})
    with pytest.raises(DataError, match="bird"):
        scan_folder(tmp_path / "test", class_names=["cat", "dog"])


def test_subset_keeps_class_names(tmp_path):
    make_tree(tmp_path, {"a": ["1.png", "2.png"], "b": ["3.png"]})
    s = scan_folder(tmp_path)
    sub = s.subset([2])
    assert sub.class_names == ["a", "b"] and sub.labels == [1] and len(sub) == 1
    assert sub.paths == [s.paths[2]] and sub.groups == [s.groups[2]]


def test_group_ids_patient_convention():
    names = [Path("x/a13_1.jpg"), Path("a13_2.jpg"), Path("17.jpg"), Path("17_2.jpg"), Path("b_7_10.png")]
    assert group_ids(names, "patient") == ["a13", "a13", "17", "17", "b_7"]
    assert group_ids(names, GROUP_PATTERNS["patient"]) == ["a13", "a13", "17", "17", "b_7"]


def test_group_ids_regex_and_none():
    paths = [Path("cls/p01-img3.png"), Path("cls/p02-img1.png")]
    assert group_ids(paths, r"p(\d+)-") == ["01", "02"]  # first capture group
    assert group_ids(paths, r"p\d+") == ["p01", "p02"]  # whole match
    assert group_ids(paths, None) == ["cls/p01-img3.png", "cls/p02-img1.png"]
    with pytest.raises(DataError, match=r"other\.png"):
        group_ids([Path("cls/other.png")], r"p(\d+)-")
    with pytest.raises(DataError, match="invalid group pattern"):
        group_ids(paths, "(")


def test_scan_folder_group_by(tmp_path):
    make_tree(tmp_path, {"pox": ["a13_1.jpg", "a13_2.jpg"], "other": ["17.jpg", "17_2.jpg"]})
    s = scan_folder(tmp_path, group_by="patient")
    assert s.groups == ["17", "17", "a13", "a13"]


def test_natural_sort():
    names = ["img10.png", "img2.png", "IMG1.png", "img02b.png", "a/img3.png"]
    assert sorted(names, key=natural_key) == ["a/img3.png", "IMG1.png", "img2.png", "img02b.png", "img10.png"]
    assert natural_key("x1b") < natural_key("x1b2")  # mixed lengths compare without TypeError


def test_scan_unlabeled(tmp_path):
    for name in ["img10.png", "img2.png", "sub/img1.jpg", ".hidden.png"]:
        write_image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    assert [p.relative_to(tmp_path).as_posix() for p in scan_unlabeled(tmp_path)] == [
        "img2.png",
        "img10.png",
        "sub/img1.jpg",
    ]
    assert scan_unlabeled(tmp_path / "img2.png") == [tmp_path / "img2.png"]
    with pytest.raises(DataError, match=r"missing\.png"):
        scan_unlabeled(tmp_path / "missing.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        scan_unlabeled(tmp_path / "empty")


def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_scan_csv(tmp_path):
    write_image(tmp_path / "imgs" / "a.png")
    write_image(tmp_path / "imgs" / "b c.png")
    write_image(tmp_path / "imgs" / "d.png")
    csv = _csv(
        tmp_path / "list.csv",
        "path,label,patient\nimgs/a.png,dog,p1\nimgs/b c.png,cat,p1\n"
        f"{(tmp_path / 'imgs' / 'd.png').as_posix()},dog,p2\n",
    )
    s = scan_csv(csv)
    assert s.class_names == ["cat", "dog"] and s.labels == [1, 0, 1]
    assert s.paths == [(tmp_path / "imgs" / n).resolve() for n in ["a.png", "b c.png", "d.png"]]
    assert s.groups == ["imgs/a.png", "imgs/b c.png", "imgs/d.png"]
    g = scan_csv(csv, group_column="patient", class_names=["dog", "cat", "bird"])
    assert g.groups == ["p1", "p1", "p2"] and g.labels == [0, 1, 0]
    with pytest.raises(DataError, match=r"row 3.*'cat'"):
        scan_csv(csv, class_names=["dog"])
    with pytest.raises(DataError, match="missing column"):
        scan_csv(csv, group_column="site")


def test_scan_csv_other_root(tmp_path):
    write_image(tmp_path / "data" / "a.png")
    (tmp_path / "meta").mkdir()
    csv = _csv(tmp_path / "meta" / "l.csv", "path,label\na.png,x\n")
    assert scan_csv(csv, root=tmp_path / "data").paths == [(tmp_path / "data" / "a.png").resolve()]


def test_scan_csv_rejects_escape(tmp_path):
    write_image(tmp_path / "escape.png")
    write_image(tmp_path / "data" / "ok.png")
    csv = _csv(tmp_path / "data" / "l.csv", "path,label\nok.png,a\n../escape.png,a\n")
    with pytest.raises(DataError, match=r"row 3.*\.\./escape\.png.*outside"):
        scan_csv(csv)
    csv = _csv(tmp_path / "data" / "l.csv", f"path,label\n{(tmp_path / 'escape.png').as_posix()},a\n")
    with pytest.raises(DataError, match=r"row 2.*outside"):
        scan_csv(csv)


def test_scan_csv_missing_file_named_with_row(tmp_path):
    write_image(tmp_path / "ok.png")
    csv = _csv(tmp_path / "l.csv", "path,label\nok.png,a\nok.png,b\ngone.png,a\n")
    with pytest.raises(DataError, match=r"row 4.*gone\.png"):
        scan_csv(csv)


def test_scan_dataset_reads_folders_and_csvs_with_group_columns_or_regexes(tmp_path):
    from resnexus.data import scan_dataset

    for name in ("p1_a.png", "p1_b.png", "p2_a.png"):
        write_image(tmp_path / "imgs" / name)
    listing = _csv(tmp_path / "l.csv", "path,label,site\nimgs/p1_a.png,x,s1\nimgs/p1_b.png,y,s2\nimgs/p2_a.png,x,s2\n")
    assert scan_dataset(listing, group_by="site").groups == ["s1", "s2", "s2"]  # a column
    assert scan_dataset(listing, group_by=r"(p\d+)_").groups == ["p1", "p1", "p2"]  # a regex on names
    assert scan_dataset(listing).groups == ["imgs/p1_a.png", "imgs/p1_b.png", "imgs/p2_a.png"]
    write_image(tmp_path / "tree" / "cls" / "a.png")
    assert scan_dataset(tmp_path / "tree").class_names == ["cls"]
