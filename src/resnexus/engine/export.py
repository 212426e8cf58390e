"""ONNX export of a checkpoint, and an onnxruntime model that ``predict`` and ``evaluate`` can use.

The exported file carries the checkpoint's class names and preprocessing in its metadata
(``resnexus`` key, JSON), so ``resnexus predict --checkpoint model.onnx`` needs nothing else.
The batch dimension is dynamic. After writing, the export runs the same random batch through
onnxruntime and eager PyTorch and reports the largest difference of the logits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_checkpoint, model_from_checkpoint

META_KEY = "resnexus"
# what inference needs from a checkpoint, and what the ONNX file therefore carries
_INFERENCE_KEYS = ("model_name", "model_config", "num_classes", "in_chans", "class_names", "image_size",
                   "mean", "std", "crop_fraction", "positive_class")  # fmt: skip


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float  # onnxruntime vs eager PyTorch logits on a random batch
    opset: int


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ValueError(f"ONNX export needs {module}: pip install 'resnexus[onnx]'") from error


def export_onnx(checkpoint: str | Path, output: str | Path, opset: int = 18, batch: int = 2) -> ExportResult:
    """Write ``output`` (.onnx) from a resnexus checkpoint and check it against eager PyTorch."""
    onnx = _require("onnx")
    _require("onnxscript")  # torch's exporter translates with it
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    size = ckpt["image_size"]
    example = torch.randn(batch, ckpt.get("in_chans", 3), size, size, generator=torch.Generator().manual_seed(0))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    torch.onnx.export(
        model, (example,), str(tmp), dynamo=True, opset_version=opset, input_names=["images"],
        output_names=["logits"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False,
    )  # fmt: skip
    proto = onnx.load(str(tmp))
    meta = {k: ckpt.get(k) for k in _INFERENCE_KEYS}
    proto.metadata_props.add(key=META_KEY, value=json.dumps(meta))
    onnx.save(proto, str(tmp))
    tmp.replace(output)

    runtime = OnnxClassifier(output)
    with torch.no_grad():
        diff = (runtime(example) - model(example)).abs().max().item()
    return ExportResult(path=output, max_abs_diff=diff, opset=opset)


class OnnxClassifier:
    """An onnxruntime session that behaves like an eval-mode model: tensor in, logits tensor out."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        ort = _require("onnxruntime")
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
        if META_KEY not in props:
            raise ValueError(f"{self.path}: no resnexus metadata; export it with `resnexus export`")
        self.meta: dict[str, Any] = json.loads(props[META_KEY])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().contiguous().cpu().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])

    def eval(self) -> OnnxClassifier:  # the inference helpers call model.eval()
        return self

    def to(self, *args: Any, **kwargs: Any) -> OnnxClassifier:
        return self


def load_for_inference(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """(model, inference metadata) from a resnexus checkpoint or an exported .onnx file."""
    if Path(path).suffix.lower() == ".onnx":
        runtime = OnnxClassifier(path)
        return runtime, runtime.meta
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt), ckpt
