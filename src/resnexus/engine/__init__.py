"""Training and inference: the loop (fit.py), checkpoints, evaluation and prediction."""

from .checkpoint import load_checkpoint, model_from_checkpoint
from .fit import TrainConfig, TrainResult, train
from .inference import evaluate, predict

__all__ = ["TrainConfig", "TrainResult", "evaluate", "load_checkpoint", "model_from_checkpoint", "predict", "train"]
