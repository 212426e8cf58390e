"""The checks a run makes before its first step, and on resuming: the run directory, the data.

They belong to the run, not to the config: they read the disk (the images, the output folder, a
saved run's fingerprint), where the config only says what was asked for. ``train`` (PyTorch and
Keras alike, through engine/run.py), cross-validation and ``compare`` all check here.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data import Samples, resolve_splits
from ..data.check import DataCheck, check_data
from ..data.scan import DataError
from ..files import check_output_folder
from .rundir import RunDir

if TYPE_CHECKING:  # only as a type: config.py re-exports these checks, so it is not imported here
    from .config import TrainConfig

logger = logging.getLogger(__name__)

__all__ = [
    "check_before_training",
    "check_run_dir",
    "check_run_output",
    "check_same_data",
    "checked_splits",
    "data_fingerprint",
    "describe_splits",
    "split_subfolders",
]

RUN_FILES = RunDir.TRAIN_FILES  # a folder holding one of these is a train run


def data_fingerprint(splits: dict[str, Samples], data: str | Path) -> dict[str, Any]:
    """What a run trains on, saved in last.pt so that ``--resume`` can refuse other data: each split's
    images (path relative to ``data``, size in bytes, class) and a SHA-256 over all of them."""
    root = Path(data)
    root = root if root.is_dir() else root.parent  # a CSV: its paths are relative to its folder
    files = {
        name: sorted(
            [_relative(path, root), path.stat().st_size, samples.class_names[label]]
            for path, label in zip(samples.paths, samples.labels)
        )
        for name, samples in splits.items()
    }
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {"data": str(data), "images": sum(map(len, files.values())), "sha256": digest, "files": files}


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def check_same_data(saved: dict[str, Any] | None, now: dict[str, Any], run_dir: Path, *, verbose: bool = True) -> None:
    """Refuse to resume ``run_dir`` on other images than it was trained on, naming what differs.

    A last.pt of an older version records no fingerprint: it resumes, with a warning.
    """
    data = now["data"]
    if saved is None:
        (logger.warning if verbose else logger.debug)(
            f"warning: {run_dir} was saved by an older version that did not record its data: "
            f"cannot check that {data} still holds the images it was trained on"
        )
        return
    if saved["sha256"] == now["sha256"]:
        return
    before = {f[0]: (split, f) for split, files in saved["files"].items() for f in files}
    after = {f[0]: (split, f) for split, files in now["files"].items() for f in files}
    missing = sorted(set(before) - set(after))
    new = sorted(set(after) - set(before))
    changed = sorted(p for p in set(before) & set(after) if before[p][1] != after[p][1])
    parts = [f"{len(names)} {what}: {_some(names)}" for what, names in (("missing", missing), ("new", new)) if names]
    if changed:
        parts.append(f"{len(changed)} changed (size or class): {_some(changed)}")
    if parts:
        raise DataError(
            f"{run_dir} was trained on {saved['images']} images of {data}; {data} now has {now['images']} "
            f"({'; '.join(parts)}): restore them, or train a new run with another --out"
        )
    moved = sorted(p for p in before if before[p][0] != after[p][0])
    raise DataError(
        f"{run_dir} was trained on other splits of {data}: {len(moved)} images moved "
        f"({_some([f'{p}: {before[p][0]} -> {after[p][0]}' for p in moved])}); train a new run with another --out"
    )


def _some(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def check_before_training(config: TrainConfig, *, verbose: bool = True) -> DataCheck:
    """Read every image once; refuse unreadable ones (listing them) unless ``skip_bad_images``.

    The findings that do not stop the run are logged as warnings, or at DEBUG when not ``verbose``
    (the other ranks of a multi-process run, or a quiet caller).
    """
    check = check_data(config.data, split=False)  # split next, by checked_splits (or cross_validate)
    if check.structural_errors:
        raise DataError("the data cannot be trained on:\n" + "\n".join(map(str, check.structural_errors)))
    bad = check.errors
    if bad and not config.skip_bad_images:
        raise DataError(
            f"{len(bad)} image file(s) cannot be used; fix or remove them, or pass --skip-bad-images "
            "to train on the rest:\n" + "\n".join(map(str, bad))
        )
    warn = logger.warning if verbose else logger.debug
    for finding in check.of("warning"):
        warn(f"warning: {finding.path}: {finding.detail}")
    if bad:
        warn(f"skipping {len(bad)} unreadable image(s), listed in the report: " + ", ".join(str(f.path) for f in bad))
    return check


def checked_splits(config: TrainConfig, *, verbose: bool = True) -> tuple[dict[str, Samples], list[Path]]:
    """``config.data`` checked (:func:`check_before_training`) and split, the unreadable files left out.

    ``train`` and ``compare`` both start here, so a comparison's models see exactly the split a
    single run would; also returns the files skipped (``skip_bad_images``) for the report.
    """
    check = check_before_training(config, verbose=verbose)
    splits = resolve_splits(
        config.data,
        group_by=config.group_by,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
        exclude=check.unreadable,
        same_group=check.duplicates,
    )
    return splits, list(check.unreadable)


def split_subfolders(root: Path) -> list[str]:
    """The ``train`` / ``test`` folders directly under ``root`` (any case): a data set split on disk."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.casefold() in {"train", "test"})


def check_run_output(
    config: TrainConfig, out: str | Path | None = None, ours: Sequence[str] = RUN_FILES, kind: str = "a resnexus run"
) -> Path:
    """``out`` (default ``config.out``) checked against what the run reads, before any work
    (:func:`resnexus.files.check_output_folder`): not the data folder or inside it (a CSV: not the
    file), nor the weights folder; an existing folder is empty or ``kind`` (``ours``), else written
    into only with ``overwrite``. ``train`` (folds too) and ``compare`` all check here."""
    data = Path(config.data) if config.data is not None else None
    is_file = data is not None and data.is_file()
    return check_output_folder(
        config.out if out is None else out,
        inputs={"data file": data if is_file else None},
        outside={"data folder": None if is_file else data, "weights folder": config.weights_dir},
        ours=ours,
        kind=kind,
        overwrite=config.overwrite,
    )


def check_run_dir(config: TrainConfig) -> Path:
    """Never overwrite a finished or interrupted run silently, and suggest only what will work; never
    write a run into its data or a folder of other files (:func:`check_run_output`).

    A folder holds a run when its ``checkpoints/`` holds a checkpoint (an empty one, left by a failed
    start of an older version, does not count); ``--resume`` is suggested only when ``last.pt`` exists.
    """
    run_dir = check_run_output(config)
    if RunDir(run_dir).saved_checkpoints() and not (config.overwrite or config.resume):
        if RunDir(run_dir).saved_last() is not None:
            how = f"continue it with --resume {run_dir}, or choose another --out, or pass --overwrite"
        else:
            how = "it stopped before saving last.pt, so it cannot be resumed: choose another --out, or pass --overwrite"
        raise FileExistsError(f"{run_dir} already holds a run; {how}")
    return run_dir


def describe_splits(splits: dict[str, Samples]) -> str:
    """``"1257 train / 180 val / 360 test"``: the sizes of a run's splits, for logs and reports."""
    return " / ".join(f"{len(s)} {name}" for name, s in splits.items())
