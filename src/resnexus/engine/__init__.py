"""Training and inference: the run's configuration (config.py), the loop (fit.py), checkpoints,
evaluation and prediction (inference.py), ONNX export, cross-validation and comparisons."""

from .checkpoint import load_checkpoint, model_from_checkpoint
from .comparison import CompareResult, compare
from .config import TrainConfig
from .crossval import CrossValResult, cross_validate
from .fit import TrainResult
from .frameworks import train
from .inference import evaluate, predict

__all__ = [
    "CompareResult",
    "CrossValResult",
    "TrainConfig",
    "TrainResult",
    "compare",
    "cross_validate",
    "evaluate",
    "load_checkpoint",
    "model_from_checkpoint",
    "predict",
    "train",
]
