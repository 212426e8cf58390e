"""A train that fails before its first resumable checkpoint leaves nothing new behind, so the corrected
command runs without --overwrite; one that fails later leaves what --resume needs (issue 15, item 6)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from resnexus.engine import TrainConfig, fit, train
from resnexus.engine.config import check_run_dir
from resnexus.engine.resume import resume_config
from tests.helpers import noise_folder, tiny_config


@pytest.fixture()
def data(tmp_path) -> Path:
    return noise_folder(tmp_path / "data")


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    return tiny_config(data, out, **({"batch_size": 4, "image_size": 8, "cache_dir": None} | kw))


def _crash_in_epoch(monkeypatch, crash_epoch: int) -> None:
    """The first training step of ``crash_epoch`` fails, as BatchNorm did on a one-image batch under torchrun."""
    real = fit.train_one_epoch

    def failing(state, epoch, *args, **kwargs):
        if epoch == crash_epoch:
            raise RuntimeError("Expected more than 1 value per channel when training")
        return real(state, epoch, *args, **kwargs)

    monkeypatch.setattr(fit, "train_one_epoch", failing)


def _tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_a_failed_start_leaves_nothing_and_the_same_command_then_runs(data, tmp_path, monkeypatch):
    out = tmp_path / "new" / "deeper" / "run"
    _crash_in_epoch(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="Expected more than 1 value per channel"):
        train(_config(data, out))
    assert not (tmp_path / "new").exists()  # not even the parent folders it made
    monkeypatch.undo()
    train(_config(data, out))  # no --overwrite, no --resume
    assert (out / "checkpoints" / "best.pt").is_file()


def test_a_failed_start_in_an_existing_folder_removes_only_what_it_created(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "plan.txt").write_text("mine")
    (out / "checkpoints").mkdir()  # left empty by an older version's failed start: not a run
    _crash_in_epoch(monkeypatch, 1)
    with pytest.raises(RuntimeError):
        train(_config(data, out))
    assert _tree(out) == ["checkpoints", "notes", "notes/plan.txt"]
    monkeypatch.undo()
    train(_config(data, out))
    assert (out / "notes" / "plan.txt").read_text() == "mine" and (out / "checkpoints" / "last.pt").is_file()


def test_a_run_that_fails_after_saving_last_pt_can_be_resumed_as_suggested(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = _config(data, out, epochs=2, checkpoint_every=0.0)
    _crash_in_epoch(monkeypatch, 2)
    with pytest.raises(RuntimeError):
        train(config)
    assert (out / "checkpoints" / "last.pt").is_file()
    with pytest.raises(FileExistsError, match=f"continue it with --resume {out}"):
        check_run_dir(config)
    monkeypatch.undo()
    result = train(replace(resume_config(out), verbose=False))
    assert [row["epoch"] for row in result.history] == [1, 2]


def test_a_folder_without_last_pt_is_never_sent_to_resume(data, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "best.pt").write_bytes(b"weights of an older run")
    with pytest.raises(FileExistsError) as refused:
        check_run_dir(_config(data, out))
    assert str(refused.value) == (
        f"{out} already holds a run; it stopped before saving last.pt, so it cannot be resumed: "
        "choose another --out, or pass --overwrite"
    )
    with pytest.raises(FileNotFoundError, match=r"nothing to resume: .*last.pt does not exist"):
        resume_config(out)
