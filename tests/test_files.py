"""resnexus.files: whole-file writes that never leave half a file, and the one cache folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from resnexus.data import digits_folder
from resnexus.engine import TrainConfig, train
from resnexus.files import atomic_path, atomic_write, check_output_folder, default_cache_dir, write_text_atomic
from tests.helpers import bright_and_dark_folder


def _names_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- default_cache_dir ---------------------------------------------------------------------------
def test_cache_dir_is_resnexus_home_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("RESNEXUS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "home"
    assert default_cache_dir("decoded") == tmp_path / "home" / "decoded"
    assert default_cache_dir("a", "b") == tmp_path / "home" / "a" / "b"

    monkeypatch.delenv("RESNEXUS_HOME")
    assert default_cache_dir() == tmp_path / "xdg" / "resnexus"
    assert default_cache_dir("digits") == tmp_path / "xdg" / "resnexus" / "digits"

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert default_cache_dir("decoded") == tmp_path / "user" / ".cache" / "resnexus" / "decoded"


def test_cache_dir_ignores_empty_variables_and_expands_tilde(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("RESNEXUS_HOME", "")
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert default_cache_dir() == tmp_path / "user" / ".cache" / "resnexus"
    monkeypatch.setenv("RESNEXUS_HOME", "~/rn")
    assert default_cache_dir("digits") == tmp_path / "user" / "rn" / "digits"
    assert not (tmp_path / "user").exists()  # naming a folder does not create it


def test_everything_kept_between_runs_follows_resnexus_home(monkeypatch, tmp_path):
    """The decoded-image cache of a training run and the built-in digits: one variable moves both."""
    home = tmp_path / "home"
    monkeypatch.setenv("RESNEXUS_HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # must not be used
    data = bright_and_dark_folder(tmp_path / "data", per_class=6, size=16)
    config = TrainConfig(
        data=str(data),
        out=str(tmp_path / "run"),
        model="resnet20_cifar",
        model_config={"layers": (1, 1, 1)},
        epochs=1,
        batch_size=4,
        image_size=16,
        val_fraction=0.0,
        test_fraction=0.0,
        precision="fp32",
        workers=0,
        verbose=False,
    )
    train(config)
    assert len(list((home / "decoded").rglob("*.npy"))) == 12  # every image decoded once, cached there
    assert digits_folder() == home / "digits"
    assert not (tmp_path / "xdg").exists()


# -- atomic_write / write_text_atomic ------------------------------------------------------------
def test_write_text_atomic_writes_utf8_and_creates_the_folder(tmp_path):
    path = tmp_path / "a" / "b" / "report.md"
    assert write_text_atomic(path, "naïve | ü\n") == path
    assert path.read_bytes() == "naïve | ü\n".encode()
    assert write_text_atomic(str(path), "second") == path  # replaces, accepts a str
    assert path.read_text(encoding="utf-8") == "second"
    assert _names_in(path.parent) == ["report.md"]


def test_atomic_write_binary_and_open_arguments(tmp_path):
    with atomic_write(tmp_path / "x.npy", "wb") as f:
        np.save(f, np.arange(5))
    assert np.load(tmp_path / "x.npy").tolist() == [0, 1, 2, 3, 4]
    with atomic_write(tmp_path / "t.csv", "w", newline="", encoding="utf-8") as f:
        f.write("a,b\r\n1,2\r\n")
    assert (tmp_path / "t.csv").read_bytes() == b"a,b\r\n1,2\r\n"  # newline="" reaches open()


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_write(path) as f:
        f.write("half of the new")
        raise RuntimeError("disk on fire")
    assert path.read_text() == "old"
    assert _names_in(tmp_path) == ["metrics.json"]
    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "new.json") as f:  # Ctrl-C in the middle, too
        f.write("{")
        raise KeyboardInterrupt
    assert _names_in(tmp_path) == ["metrics.json"]


def test_atomic_write_only_writes_whole_files(tmp_path):
    for mode in ("a", "r", "w+", "x", "ab"):
        with pytest.raises(ValueError, match="whole files"), atomic_write(tmp_path / "f", mode):
            pass
    assert not list(tmp_path.iterdir())


def test_written_files_get_normal_permissions(tmp_path):
    """mkstemp makes 0600 files; what atomic_write leaves must look like any file open() would make."""
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        os.umask(0o077)
        write_text_atomic(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600


def test_concurrent_writers_leave_one_whole_file(tmp_path):
    """Two writers of one path (two DataLoader workers caching the same image): the last rename wins."""
    path = tmp_path / "entry.npy"
    with atomic_write(path, "wb") as first:
        with atomic_write(path, "wb") as second:
            np.save(second, np.full(1000, 2))
        np.save(first, np.full(1000, 1))
    assert np.load(path).tolist() == [1] * 1000
    assert _names_in(tmp_path) == ["entry.npy"]


def test_atomic_path_puts_a_written_file_or_folder_in_place_or_nothing(tmp_path):
    """For writers that want a name (Keras, TensorFlow): a whole file or folder at the path, or the old one."""
    target = tmp_path / "model.keras"
    with atomic_path(target, suffix=".tmp.keras") as staged:
        assert staged.name.endswith(".tmp.keras") and staged.parent == tmp_path
        staged.write_bytes(b"new")
    assert target.read_bytes() == b"new" and _names_in(tmp_path) == ["model.keras"]
    with pytest.raises(RuntimeError), atomic_path(target) as staged:
        staged.write_bytes(b"half")
        raise RuntimeError
    assert target.read_bytes() == b"new" and _names_in(tmp_path) == ["model.keras"]

    folder = tmp_path / "serving" / "1"
    for version in ("old", "new"):  # an existing folder is replaced whole
        with atomic_path(folder, folder=True) as staged:
            (staged / "assets").mkdir()
            (staged / "assets" / f"{version}.json").write_text(version)
    assert [p.name for p in (folder / "assets").iterdir()] == ["new.json"] and _names_in(folder.parent) == ["1"]
    with pytest.raises(KeyboardInterrupt), atomic_path(folder, folder=True) as staged:
        (staged / "saved_model.pb").write_bytes(b"half")
        raise KeyboardInterrupt
    assert (folder / "assets" / "new.json").is_file() and _names_in(folder.parent) == ["1"]
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "made", folder=True):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "made").stat().st_mode) == 0o755  # mkdtemp's 0700 is not kept


def test_check_output_folder_follows_links_and_accepts_the_data_inside_the_output(tmp_path):
    data = tmp_path / "project" / "data"
    data.mkdir(parents=True)
    (tmp_path / "link").symlink_to(data)
    with pytest.raises(
        ValueError, match=r"link/plots is inside the data folder .*: what is written there would be read"
    ):
        check_output_folder(tmp_path / "link" / "plots", outside={"data folder": data})
    run = tmp_path / "project"  # holds the data: the reverse is fine, once the folder is a run
    with pytest.raises(FileExistsError, match=r"holds files that are not a resnexus run \(data\)"):
        check_output_folder(run, outside={"data folder": data}, ours=("checkpoints",))
    (run / "checkpoints").mkdir()
    assert check_output_folder(run, outside={"data folder": data}, ours=("checkpoints",)) == run
    with pytest.raises(ValueError, match="is the checkpoint, an input of this command"):
        check_output_folder(run, inputs={"checkpoint": tmp_path / "project"})
    assert check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"  # created later
    assert not (tmp_path / "new").exists()
