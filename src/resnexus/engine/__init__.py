"""Training and inference: the run's configuration (config.py), the loop (fit.py), checkpoints,
evaluation and prediction (inference.py), ONNX export, cross-validation and comparisons."""

# ruff: noqa: E402  (the imports follow the TensorFlow/Triton guard on purpose: resnexus._compat)

from .._compat import hide_triton_after_tensorflow

hide_triton_after_tensorflow()  # TensorFlow imported after resnexus but before the engine (see _compat)

from .checkpoint import Checkpoint, load_checkpoint, model_from_checkpoint
from .comparison import CompareResult, compare
from .config import TrainConfig
from .crossval import CrossValResult, cross_validate
from .frameworks import train
from .inference import evaluate, predict
from .run import TrainResult
from .rundir import RunDir

__all__ = [
    "Checkpoint",
    "CompareResult",
    "CrossValResult",
    "RunDir",
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
