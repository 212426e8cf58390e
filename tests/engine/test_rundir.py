"""RunDir: the one owner of a run directory's layout."""

from pathlib import Path

from resnexus.engine.rundir import RunDir


def test_paths_of_a_training_run(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.best() == tmp_path / "run" / "checkpoints" / "best.pt"
    assert run.last("keras") == tmp_path / "run" / "checkpoints" / "last.keras"
    assert (run.history.name, run.metrics.name, run.report.name) == ("history.csv", "metrics.json", "report.md")
    assert run.tensorboard == tmp_path / "run" / "tensorboard"


def test_saved_checkpoints_are_found_by_framework(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.saved_best() is None and run.saved_last() is None and run.saved_checkpoints() == []
    run.checkpoints.mkdir()
    assert run.saved_checkpoints() == []  # an empty folder left by a failed start holds no run
    run.best("keras").write_bytes(b"k")
    assert run.saved_best() == tmp_path / "checkpoints" / "best.keras"
    run.best().write_bytes(b"t")
    assert run.saved_best() == tmp_path / "checkpoints" / "best.pt"  # PyTorch's wins
    run.last("keras").write_bytes(b"k")
    assert run.saved_last() == run.last("keras")
    assert [p.name for p in run.saved_checkpoints()] == ["best.keras", "best.pt", "last.keras"]


def test_cross_validation_layout(tmp_path: Path) -> None:
    cv = RunDir(tmp_path)
    assert cv.fold(3) == RunDir(tmp_path / "fold3")
    assert cv.refit.best() == tmp_path / "refit" / "checkpoints" / "best.pt"
    assert not cv.is_cross_validation()
    cv.cv_run.write_text("{}")
    assert cv.is_cross_validation()


def test_the_run_holding_a_checkpoint(tmp_path: Path) -> None:
    assert RunDir.holding(tmp_path / "r" / "checkpoints" / "best.pt") == RunDir(tmp_path / "r")
    assert RunDir.holding(tmp_path / "model.pt") is None
