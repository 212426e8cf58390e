"""What a finished run of a study (``compare``, ``train --folds``) leaves for resuming the study.

A study of many runs writes a small JSON file into each run directory once that run has finished:
its outcome, its recipe and a fingerprint of its images. Resuming the study keeps those outcomes
instead of training the runs again, and refuses to mix in a run that finished with another recipe
or on other images (naming the run and what differs).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..data import Samples
from ..files import write_text_atomic
from .config import TrainConfig
from .run_checks import data_fingerprint

# how a run ran, not what it computes
NOT_THE_RECIPE = ("out", "resume", "overwrite", "verbose", "workers")


def recipe_of(config: TrainConfig) -> dict[str, Any]:
    """The fields of ``config`` that decide what a run computes, as JSON would give them back."""
    recipe = {k: v for k, v in asdict(config).items() if k not in NOT_THE_RECIPE}
    return json.loads(json.dumps(recipe, default=str))  # tuples as lists: comparable with what was saved


def record_finished(config: TrainConfig, splits: dict[str, Samples], outcome: dict[str, Any], name: str) -> None:
    """Write ``name`` into a finished run's directory (``config.out``): its outcome, recipe and images."""
    record = {"row": outcome, "recipe": recipe_of(config), "images": data_fingerprint(splits, config.data)["sha256"]}
    write_text_atomic(Path(config.out) / name, json.dumps(record, indent=2, default=str))


def finished_outcome(config: TrainConfig, splits: dict[str, Samples], name: str, command: str) -> dict[str, Any] | None:
    """The outcome a finished run recorded in ``name``, or None if it never finished. A run finished
    with another recipe or on other images is refused (``command``, e.g. "compare --resume", starts
    the message), except a shorter ``epochs`` alone: that run is continued to the longer one."""
    path = Path(config.out) / name
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        saved, outcome, images = record["recipe"], record["row"], record["images"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{command}: cannot read {path} ({error}); delete it to train that run again") from error
    now = recipe_of(config)
    changed = sorted(k for k in now.keys() | saved.keys() if now.get(k) != saved.get(k))
    if changed == ["epochs"] and isinstance(saved["epochs"], int) and config.epochs > saved["epochs"]:
        return None  # resumed with a longer --epochs: train continues it from its last.pt
    if changed:
        what = ", ".join(f"{k}: {saved.get(k)!r} then, {now.get(k)!r} now" for k in changed[:4])
        raise ValueError(
            f"{command}: {config.out} finished with another recipe ({what}); "
            "resume with the same options, or choose another out"
        )
    if images != data_fingerprint(splits, config.data)["sha256"]:
        raise ValueError(
            f"{command}: {config.out} was trained or tested on other images than this study's "
            "(the data folder or the split changed); choose another out"
        )
    return outcome
