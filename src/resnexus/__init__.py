"""resnexus: the ResNet family of image classifiers, exact and verified.

import resnexus
model = resnexus.create_model("resnext50_32x4d", num_classes=2)
result = resnexus.train(resnexus.TrainConfig(data="photos/", model="resnext50_32x4d"))
checkpoint = resnexus.Checkpoint.load(result.run_dir)  # the trained model, its classes and preprocessing
"""

from typing import Any

from ._compat import hide_triton_after_tensorflow

hide_triton_after_tensorflow()  # `import keras` (TensorFlow) before resnexus must not crash torchvision later

from .models import create_model, list_models, model_info  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "Checkpoint",
    "CompareResult",
    "CrossValResult",
    "RunDir",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "compare",
    "create_model",
    "cross_validate",
    "evaluate",
    "list_models",
    "model_info",
    "predict",
    "train",
]

# the training API and what it returns or reads: imported from resnexus.engine on first use
_ENGINE = {
    "Checkpoint",
    "CompareResult",
    "CrossValResult",
    "RunDir",
    "TrainConfig",
    "TrainResult",
    "compare",
    "cross_validate",
    "evaluate",
    "predict",
    "train",
}


def __getattr__(name: str) -> Any:
    """The training API is imported on first use, so `import resnexus` stays light for model use."""
    if name in _ENGINE:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'resnexus' has no attribute {name!r}")
