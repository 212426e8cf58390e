"""Which Keras 3 backend (TensorFlow, JAX or torch) a process uses, chosen before Keras is imported.

Keras fixes its backend when it is first imported (``KERAS_BACKEND``, else ``~/.keras/keras.json``),
so every resnexus path that imports Keras (``train --framework keras``, reading a ``.keras`` file,
``export --format keras / savedmodel``, ``compare``'s inference speed) calls :func:`use_keras_backend`
first. This module imports neither Keras nor a backend: it only finds which ones are installed.

Where Keras is already loaded in the process with another backend, a different backend is refused
in one line rather than trained in a subprocess: a run started from Python returns its result,
logs and stop signals from the caller's process, and the command line always starts a fresh one.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "FASTEST_MEASURED",
    "METADATA_MEMBER",
    "auto_backend",
    "choose_backend",
    "installed_backends",
    "loaded_backend",
    "read_metadata",
    "saved_backend",
    "use_backend_for_reading",
    "use_keras_backend",
]

BACKENDS = ("tensorflow", "jax", "torch")
METADATA_MEMBER = "resnexus.json"  # resnexus' member inside a .keras zip (resnexus.keras.files writes it)

# Keras backends by training images/s, fastest first, per device and model kind ("grouped": a
# ResNeXt / Res2NeXt grouped convolution; "plain": every other model). Measured with
# benchmarks/keras_vs_torch.py on 2 cores of an AMD EPYC, no GPU (keras 3.15, torch 2.14, jax 0.10,
# tensorflow-cpu 2.21; 64 px, batch 16, 2 rounds alternating; figures in benchmarks/RESULTS.md):
# resnext50_32x4d trains at 0.04x PyTorch's images/s on TensorFlow (its grouped convolutions),
# ~1x on Keras' torch backend (PyTorch's own kernels). No GPU has been measured: CUDA uses the
# CPU order until it is.
FASTEST_MEASURED: dict[tuple[str, str], tuple[str, ...]] = {
    ("cpu", "grouped"): ("torch", "jax", "tensorflow"),
    ("cpu", "plain"): ("torch", "jax", "tensorflow"),
}


def installed_backends() -> list[str]:
    """The Keras backends whose package can be imported here (found without importing them)."""
    return [name for name in BACKENDS if importlib.util.find_spec(name) is not None]


def loaded_backend() -> str | None:
    """The backend of the Keras already imported in this process, or None if Keras is not loaded."""
    if "keras" not in sys.modules:
        return None
    import keras

    return keras.backend.backend()


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``resnexus.json`` member of a ``.keras`` file (``{}`` for a file Keras saved on its own),
    read without Keras: a resumed run learns its backend before Keras is imported."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            if METADATA_MEMBER not in archive.namelist():
                return {}
            return json.loads(archive.read(METADATA_MEMBER))
    except (zipfile.BadZipFile, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a readable .keras file: {error}") from None


def saved_backend(path: str | Path) -> str | None:
    """The backend a resnexus ``.keras`` file was trained with (its metadata), None if unrecorded."""
    try:
        return read_metadata(path).get("keras_backend")
    except (OSError, ValueError):
        return None  # the reader proper says what is wrong with the file


def _device() -> str:
    import torch  # a dependency of resnexus: asks for a GPU without importing any Keras backend

    return "cuda" if torch.cuda.is_available() else "cpu"


def auto_backend(model: str | None, device: str | None = None) -> tuple[str, str]:
    """(backend, why): the fastest installed backend of :data:`FASTEST_MEASURED` for ``model`` on ``device``."""
    installed = installed_backends()
    if not installed:
        raise ValueError('--framework keras needs a Keras backend: pip install "resnexus[keras]"')
    device = device or _device()
    kind = "plain"
    if model is not None:
        from .models.registry import get_entry

        kind = "grouped" if get_entry(model).config.get("cardinality", 1) > 1 else "plain"
    order = FASTEST_MEASURED.get((device, kind), FASTEST_MEASURED[("cpu", kind)])
    backend = next((b for b in order if b in installed), installed[0])
    return backend, f"auto: the fastest installed for a {kind} model on {device}, measured"


def choose_backend(requested: str, model: str | None = None, resumed: str | None = None) -> tuple[str, str]:
    """(backend, why) for a Keras run: ``requested`` is ``auto`` or a backend name; ``resumed`` is the
    backend of the run being resumed. Refuses, in one line, a backend that is not installed, one
    other than the process's loaded Keras, or one other than the resumed run's."""
    if requested not in ("auto", *BACKENDS):
        raise ValueError(f"--keras-backend {requested!r}: expected auto, {', '.join(BACKENDS)}")
    loaded = loaded_backend()
    if requested == "auto":
        if resumed is not None:
            backend, why = resumed, "the resumed run's"
        elif loaded is not None:
            backend, why = loaded, "Keras is already loaded in this process with it"
        elif os.environ.get("KERAS_BACKEND"):
            backend, why = os.environ["KERAS_BACKEND"], "KERAS_BACKEND"
        else:
            backend, why = auto_backend(model)
    else:
        backend, why = requested, "--keras-backend"
    if resumed is not None and backend != resumed:
        raise ValueError(
            f"--resume: the run was trained on Keras' {resumed} backend, not {backend} (the augmentation's random "
            f"draws differ between backends): resume with --keras-backend {resumed}"
        )
    return backend, why


def use_keras_backend(backend: str, why: str = "") -> str:
    """Make ``backend`` the one Keras uses in this process (before Keras is first imported) and
    import Keras; returns the backend. One line if it is not installed or Keras is already loaded
    with another."""
    loaded = loaded_backend()
    if loaded is not None:
        if loaded != backend:
            raise ValueError(
                f"Keras backend {backend} ({why or 'asked for'}): Keras is already loaded in this process with the "
                f"{loaded} backend and a process has one; run it in a new process (the resnexus command starts "
                f"one) or set KERAS_BACKEND={backend} before importing Keras"
            )
        return loaded
    if backend not in installed_backends():
        raise ValueError(
            f"Keras backend {backend} ({why or 'asked for'}) is not installed "
            f"(installed: {', '.join(installed_backends()) or 'none'}): pip install {backend}"
        )
    os.environ["KERAS_BACKEND"] = backend
    if backend == "jax" and _device() == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # no search for accelerators JAX would not find
    if backend == "tensorflow":
        import torchvision  # noqa: F401  before TensorFlow: the other order crashes (resnexus._compat)
    import keras

    if keras.backend.backend() != backend:  # e.g. a keras.json Keras read before the variable
        raise ValueError(f"Keras started on {keras.backend.backend()}, not {backend}: check ~/.keras/keras.json")
    logger.info(f"Keras {keras.__version__}: {backend} backend ({why or 'asked for'})")
    return backend


def use_backend_for_reading(path: str | Path | None = None) -> str:
    """Before a ``.keras`` file is read: Keras as loaded; else ``KERAS_BACKEND``; else the backend
    the file was trained with, if installed; else the fastest installed (any backend reads any file)."""
    loaded = loaded_backend()
    if loaded is not None:
        return loaded
    if os.environ.get("KERAS_BACKEND"):
        return use_keras_backend(os.environ["KERAS_BACKEND"], "KERAS_BACKEND")
    trained = saved_backend(path) if path is not None else None
    if trained in installed_backends():
        return use_keras_backend(trained, "the backend that trained the file")
    backend, why = auto_backend(None, "cpu")
    return use_keras_backend(backend, why)
