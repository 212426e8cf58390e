"""Checkpoints that carry everything ``evaluate`` and ``predict`` need, written atomically.

A checkpoint is a plain dict of tensors, numbers, strings and lists, so it loads with
``torch.load(weights_only=True)``: model name and config, class names, preprocessing (image size,
mean, std, crop fraction), the weights, and for resuming the optimizer / scheduler state.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.registry import create_model
from ..weights import WeightsError, read_state_dict

FORMAT = "resnexus-checkpoint"
VERSION = 1


def plain(value: Any) -> Any:
    """Tuples, paths and dataclass-like leftovers turned into types ``weights_only`` accepts."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_atomic(obj: dict[str, Any], path: Path) -> Path:
    """Write to a temp file in the same folder, flush to disk, then rename over ``path``.

    A crash at any moment leaves either the previous file or the new one, never half of one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private (0600); a checkpoint is a normal file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def make_checkpoint(
    model: nn.Module,
    *,
    model_name: str,
    model_config: dict[str, Any],
    class_names: list[str],
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    crop_fraction: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return plain(
        {
            "format": FORMAT,
            "version": VERSION,
            "model_name": model_name,
            "model_config": model_config,
            "num_classes": len(class_names),
            "in_chans": int(getattr(model, "pretrained_cfg", {}).get("input_size", (3,))[0]),
            "class_names": list(class_names),
            "image_size": image_size,
            "mean": list(mean),
            "std": list(std),
            "crop_fraction": crop_fraction,
            **(extra or {}),
        }
    ) | {"state_dict": state}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a resnexus checkpoint (``weights_only=True``); a foreign file gets a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        read_state_dict(path)  # raises the loader's precise message (refused pickle, corrupt file)
        raise WeightsError(f"{path}: not a readable checkpoint ({error})") from error
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WeightsError(
            f"{path}: not a resnexus checkpoint (no '{FORMAT}' marker); to start from plain weights "
            f"use `train --weights {path}`"
        )
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (eval mode)."""
    model = create_model(
        ckpt["model_name"], num_classes=ckpt["num_classes"], in_chans=ckpt.get("in_chans", 3), **ckpt["model_config"]
    )
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
