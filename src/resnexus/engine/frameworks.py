"""``train``: the entry point of a training run, whichever framework trains it.

``config.framework`` picks the loop: ``"torch"`` (:func:`resnexus.engine.fit.train`) or ``"keras"``
(:func:`resnexus.engine.keras_fit.train_keras`, imported only then, so the PyTorch path never loads
Keras or TensorFlow). Both run engine/run.py's lifecycle with their own backend; this module
only picks one, so that importing the PyTorch path never imports Keras.
"""

from __future__ import annotations

from ..data import Samples
from .config import TrainConfig
from .fit import TrainResult
from .fit import train as train_torch
from .rundir import RunDir

__all__ = ["train"]


def train(config: TrainConfig, splits: dict[str, Samples] | None = None) -> TrainResult:
    """Train and evaluate one model with the framework ``config.framework`` names.

    Both write the same run directory (history.csv, metrics.json, report.md, checkpoints/best.pt or
    best.keras); ``splits`` replaces the split made from ``config.data`` (cross-validation, compare).
    See :func:`resnexus.engine.fit.train` and :func:`resnexus.engine.keras_fit.train_keras`.
    """
    if config.framework == "keras":
        from ..keras_backend import choose_backend, saved_backend, use_keras_backend

        last = RunDir(config.out).last("keras") if config.resume and config.out else None
        resumed = saved_backend(last) if last is not None and last.is_file() else None
        use_keras_backend(*choose_backend(config.keras_backend, config.model, resumed))  # before Keras is imported
        from .keras_fit import train_keras  # Keras (and its backend) only when asked for

        return train_keras(config, splits)
    return train_torch(config, splits)
