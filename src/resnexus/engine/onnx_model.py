"""An exported .onnx model read back as a classifier: what ``predict``, ``evaluate`` and ``serve`` run
when given an ONNX file (through :class:`~resnexus.engine.checkpoint.Checkpoint`), and what
``export`` checks its output with."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["ONNX_META_KEY", "OnnxClassifier", "require_onnx_package"]

ONNX_META_KEY = "resnexus"  # the ONNX metadata entry holding a checkpoint's inference keys (JSON)


def require_onnx_package(module: str) -> Any:
    """Import one of the optional ONNX packages, or say how to install them."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ValueError(f"ONNX export needs {module}: pip install 'resnexus[onnx]'") from error


class OnnxClassifier:
    """An onnxruntime session that behaves like an eval-mode model: tensor in, logits tensor out."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        ort = require_onnx_package("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own types for broken files
            raise ValueError(f"{self.path}: not a readable ONNX model ({error})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if ONNX_META_KEY not in props:
            raise ValueError(f"{self.path}: no resnexus metadata; export it with `resnexus export`")
        self.meta: dict[str, Any] = json.loads(props[ONNX_META_KEY])  # Checkpoint normalises old spellings
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().contiguous().cpu().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])

    def eval(self) -> OnnxClassifier:  # the inference helpers call model.eval()
        return self

    def to(self, *args: Any, **kwargs: Any) -> OnnxClassifier:
        return self
