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
    """Train and evaluate one model: the Python side of ``resnexus train``.

    The data is checked (every image read once) and split, the model trained with the framework
    ``config.framework`` names, and the selected weights evaluated on the test split. Both
    frameworks write the same run directory (:meth:`RunDir.layout`: checkpoints, history.csv,
    metrics.json, report.md).

    Args:
        config: What to train on what and how; ``None`` fields are filled by the recipe
            (see :class:`TrainConfig`). Without ``data``: the built-in digits.
        splits: Ready-made ``"train"`` (and optional ``"val"`` / ``"test"``) samples that replace
            the split made from ``config.data``; cross-validation and ``compare`` use it to give
            several runs exactly the same images.

    Returns:
        The run directory, the test metrics, the epoch history, the selected epoch and the time.

    Raises:
        ValueError: A bad option or combination (one line naming it), or data that cannot be used
            as asked (:class:`~resnexus.data.DataError`: a missing class, an unreadable file,
            too few images or groups for the split).
        FileNotFoundError: ``config.data`` or a weights file does not exist.
        FileExistsError: ``config.out`` already holds a run and neither ``resume`` nor
            ``overwrite`` is set.
        TrainingInterrupted: A stop signal (SIGINT, SIGTERM) arrived; everything needed to resume
            was saved first, and the message says how to resume.
    """
    if config.framework == "keras":
        from ..keras_backend import choose_backend, saved_backend, use_keras_backend

        last = RunDir(config.out).last("keras") if config.resume and config.out else None
        resumed = saved_backend(last) if last is not None and last.is_file() else None
        use_keras_backend(*choose_backend(config.keras_backend, config.model, resumed))  # before Keras is imported
        from .keras_fit import train_keras  # Keras (and its backend) only when asked for

        return train_keras(config, splits)
    return train_torch(config, splits)
