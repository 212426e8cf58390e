"""Continuing a run: the configuration it was started with, and the options a resumed run may change.

``train --resume RUN_DIR`` rebuilds the run's :class:`~resnexus.engine.config.TrainConfig` from its
last.pt (or last.keras) and accepts only options that change how it runs, never what it computes,
so the resumed run ends where an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..data import AugmentConfig
from .checkpoint import read_resume_state
from .config import FLAGS, TrainConfig, absolute_paths
from .rundir import RunDir

__all__ = ["RESUME_MAY_CHANGE", "resume_config", "resume_with"]


def resume_config(run_dir: str | Path) -> TrainConfig:
    """The configuration a run was started with, set up to continue it (a PyTorch run's last.pt,
    or a Keras run's last.keras)."""
    last, last_keras = RunDir(run_dir).last("torch"), RunDir(run_dir).last("keras")
    if not last.is_file() and not last_keras.is_file():
        raise FileNotFoundError(
            f"nothing to resume: {last} does not exist (the run never saved a resumable checkpoint); "
            f"start it again with --out {run_dir} --overwrite, or with another --out"
        )
    if last.is_file():
        saved = dict(read_resume_state(last)["config"])  # a file that cannot be resumed: refused here
    else:
        from ..keras_backend import read_metadata  # without importing Keras: its backend is not chosen yet

        saved = dict(read_metadata(last_keras)["config"])
    augment = saved.pop("augment", None)
    saved["augment"] = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in augment.items()})
    saved["model_config"] = {k: tuple(v) if isinstance(v, list) else v for k, v in saved["model_config"].items()}
    return TrainConfig(**saved | {"out": str(Path(run_dir).expanduser().resolve()), "resume": True})


# what a resumed run may be given: how it runs, never what it computes (a longer --epochs: see below)
RESUME_MAY_CHANGE = ("workers", "cache_dir", "checkpoint_every", "progress_every", "verbose", "keras_backend")


def resume_with(config: TrainConfig, given: dict[str, Any], refused: Sequence[str] = ()) -> TrainConfig:
    """``config`` (from :func:`resume_config`) with the options given on the command line, refusing in
    one line every option that would change the run (``refused``: more flags to name, e.g. --config).

    A value equal to the run's own is accepted; a longer ``epochs`` continues the run, the cosine
    decay re-stretched to the new total (so the learning rate rises again from where the shorter
    schedule had brought it); a shorter one is refused.
    """
    same = absolute_paths(asdict(config))
    wanted = absolute_paths(given)
    bad = list(refused)
    for key, value in given.items():
        saved = same.get(key, getattr(config, key))
        if key in RESUME_MAY_CHANGE or wanted.get(key, value) == saved:
            continue
        if key == "epochs" and isinstance(value, int) and value > config.epochs:
            continue
        flag = FLAGS.get(key, "--" + key.replace("_", "-"))
        bad.append(f"--epochs {value} (shorter than its {config.epochs})" if key == "epochs" else flag)
    if bad:
        raise ValueError(
            f"--resume {config.out} continues the run as it was started; it cannot change {', '.join(bad)} "
            "(only a longer --epochs, --workers, --cache-dir, --checkpoint-every and --progress-every): drop them, or start a new "
            "run with another --out"
        )
    return replace(config, **{k: v for k, v in given.items() if k in RESUME_MAY_CHANGE or k == "epochs"})
