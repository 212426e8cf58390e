"""``.keras`` files that carry what resnexus needs to use them: class names, preprocessing, the run's config.

A ``.keras`` file is a zip archive (``config.json``, ``metadata.json``, ``model.weights.h5``);
Keras reads only its own members, so resnexus adds one more, ``resnexus.json``, and the file
stays an ordinary Keras model: ``keras.saving.load_model`` opens it without resnexus' help
once ``resnexus.keras`` is imported (which registers the custom layers; importing this module does). Files are written to a temporary name first
and renamed, so an interrupted save never replaces a good file with half of one.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import keras

from ..files import atomic_path
from ..keras_backend import METADATA_MEMBER, read_metadata
from .torch_kernels import use_torch_kernels

__all__ = ["METADATA_MEMBER", "load_keras", "read_keras_metadata", "save_keras"]


def save_keras(model: keras.Model, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Save ``model`` with ``metadata`` (JSON-serialisable) inside, atomically; returns the path."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"{path}: a Keras model file must end in .keras")
    with atomic_path(path, suffix=".keras") as temporary:
        model.save(temporary)
        if hasattr(model, "resnexus_config"):  # the spec overrides to_torch needs, unless given
            metadata = {"keras_model_config": model.resnexus_config, **metadata}
        with zipfile.ZipFile(temporary, "a") as archive:
            archive.writestr(METADATA_MEMBER, json.dumps(metadata, indent=2, default=str))
    return path


def read_keras_metadata(path: str | Path) -> dict[str, Any]:
    """The ``resnexus.json`` member of a ``.keras`` file (``{}`` for a file Keras saved on its own)."""
    return read_metadata(path)


def load_keras(path: str | Path) -> tuple[keras.Model, dict[str, Any]]:
    """The model and the resnexus metadata of a ``.keras`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Keras model file")
    metadata = read_keras_metadata(path)
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises several types for a damaged or foreign file
        raise ValueError(f"{path}: Keras could not load this model ({type(error).__name__}: {error})") from error
    if "keras_model_config" in metadata:
        model.resnexus_config = metadata.pop("keras_model_config")
    use_torch_kernels(model)
    return model, metadata
