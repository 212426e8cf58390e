"""Training and inference: the loop (fit.py), checkpoints, evaluation, prediction, CV, comparisons."""

from .checkpoint import load_checkpoint, model_from_checkpoint
from .comparison import CompareResult, compare
from .crossval import CrossValResult, cross_validate
from .fit import TrainConfig, TrainResult, train
from .inference import evaluate, predict

__all__ = [
    "CompareResult",
    "CrossValResult",
    "compare",
    "TrainConfig",
    "TrainResult",
    "cross_validate",
    "evaluate",
    "load_checkpoint",
    "model_from_checkpoint",
    "predict",
    "train",
]
