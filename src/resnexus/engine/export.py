"""ONNX export of a checkpoint, for ``predict`` and ``evaluate`` on onnxruntime.

The exported file carries the checkpoint's class names and preprocessing in its metadata
(``resnexus`` key, JSON), so ``resnexus predict --checkpoint model.onnx`` needs nothing else.
The batch dimension is dynamic. After writing, the export runs the same random batch through
onnxruntime and eager PyTorch and reports the largest difference of the logits. Reading the
file back (:class:`~resnexus.engine.checkpoint.OnnxClassifier`) is checkpoint handling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import (
    INFERENCE_KEYS,
    ONNX_META_KEY,
    OnnxClassifier,
    load_checkpoint,
    model_from_checkpoint,
    require_onnx_package,
    resolve_checkpoint,
)

__all__ = ["ExportResult", "OnnxClassifier", "export_onnx"]  # OnnxClassifier: the reader, in checkpoint.py


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float  # onnxruntime vs eager PyTorch logits on a random batch
    opset: int


def export_onnx(checkpoint: str | Path, output: str | Path, opset: int = 18, batch: int = 2) -> ExportResult:
    """Write ``output`` (.onnx) from a resnexus checkpoint and check it against eager PyTorch.

    ``checkpoint`` may be a run directory (a cross-validation run's refit model, see
    ``resolve_checkpoint``)."""
    onnx = require_onnx_package("onnx")
    require_onnx_package("onnxscript")  # torch's exporter translates with it
    ckpt = load_checkpoint(resolve_checkpoint(checkpoint))
    model = model_from_checkpoint(ckpt)
    size = ckpt["image_size"]
    example = torch.randn(batch, ckpt.get("in_chans", 3), size, size, generator=torch.Generator().manual_seed(0))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    torch.onnx.export(
        model,
        (example,),
        str(tmp),
        dynamo=True,
        opset_version=opset,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    proto = onnx.load(str(tmp))
    meta = {k: ckpt.get(k) for k in INFERENCE_KEYS}
    proto.metadata_props.add(key=ONNX_META_KEY, value=json.dumps(meta))
    onnx.save(proto, str(tmp))
    tmp.replace(output)

    runtime = OnnxClassifier(output)
    with torch.no_grad():
        diff = (runtime(example) - model(example)).abs().max().item()
    return ExportResult(path=output, max_abs_diff=diff, opset=opset)
