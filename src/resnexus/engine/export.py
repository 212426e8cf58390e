"""Export of a checkpoint: ONNX (for ``predict`` / ``evaluate`` on onnxruntime), ``.keras`` and TF SavedModel.

The ONNX file carries the checkpoint's class names and preprocessing in its metadata
(``resnexus`` key, JSON), so ``resnexus predict --checkpoint model.onnx`` needs nothing else.
The batch dimension is dynamic. After writing, the export runs the same random batch through
onnxruntime and eager PyTorch and reports the largest difference of the logits. Reading the
file back (:class:`~resnexus.engine.onnx_model.OnnxClassifier`) is checkpoint handling.

:func:`export_keras` ships the same checkpoint to Keras users (``format="keras"``: a ``.keras``
file) and to TF Serving (``format="savedmodel"``): the weights move by
:func:`resnexus.keras.from_torch`, and the metadata (:func:`keras_metadata`) travels inside, as a
``resnexus.json`` member of the ``.keras`` zip or as ``assets/resnexus.json`` of the SavedModel.
The SavedModel's ``serving_default`` signature takes float32 NHWC images in [0, 1] at the model's
input size and normalises them itself, so a TF Serving client only resizes and crops. Keras and
TensorFlow are an optional extra, imported only here, when asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import atomic_folder, atomic_path, atomic_write, check_output_folder
from .checkpoint import FORMAT, VERSION, Checkpoint, resolve_checkpoint
from .inference import check_output_file, checkpoint_files
from .onnx_model import ONNX_META_KEY, OnnxClassifier, require_onnx_package

__all__ = [
    "KERAS_FORMATS",
    "ExportResult",
    "KerasExportResult",
    "OnnxClassifier",
    "export_keras",
    "export_onnx",
    "keras_metadata",
]  # OnnxClassifier: the reader, in onnx_model.py


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float  # onnxruntime vs eager PyTorch logits on a random batch
    opset: int


def export_onnx(checkpoint: str | Path, output: str | Path, opset: int = 18, batch: int = 2) -> ExportResult:
    """Write ``output`` (.onnx) from a resnexus checkpoint and check it against eager PyTorch.

    ``checkpoint`` may be a run directory (a cross-validation run's refit model, see
    ``resolve_checkpoint``)."""
    require_onnx_package("onnx")
    require_onnx_package("onnxscript")  # torch's exporter translates with it
    output = check_output_file(output, checkpoint_files(checkpoint), overwrite=True)  # before any work
    loaded = Checkpoint.load(_exportable_file(checkpoint))
    model = loaded.model()
    size = loaded.preprocessing.image_size
    example = torch.randn(batch, loaded.in_chans, size, size, generator=torch.Generator().manual_seed(0))
    program = torch.onnx.export(  # in memory (no file name): no weights file beside the output
        model,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    proto = program.model_proto
    proto.metadata_props.add(key=ONNX_META_KEY, value=json.dumps(loaded.inference_metadata()))
    with atomic_write(output, "wb") as f:  # the whole file or none, and no temporary file left
        f.write(proto.SerializeToString())

    runtime = OnnxClassifier(output)
    with torch.no_grad():
        diff = (runtime(example) - model(example)).abs().max().item()
    return ExportResult(path=output, max_abs_diff=diff, opset=opset)


def _exportable_file(checkpoint: str | Path) -> Path:
    """The checkpoint file to export (a run directory's best model), refusing an .onnx file."""
    source = resolve_checkpoint(checkpoint)
    if source.suffix.lower() == ".onnx":
        raise ValueError(
            f"{source}: export starts from a resnexus checkpoint (.pt, a Keras run's .keras) or a run directory, not .onnx"
        )
    return source


# -- Keras and TensorFlow ------------------------------------------------------------------------
KERAS_FORMATS = ("keras", "savedmodel")
METADATA_FILE = "resnexus.json"  # inside the .keras zip (resnexus.keras.files) and in a SavedModel's assets/
SERVING_SIGNATURE = "serving_default"


@dataclass
class KerasExportResult:
    path: Path
    format: str  # "keras" or "savedmodel"
    # the written model, read back (keras.saving.load_model / tf.saved_model.load), vs eager PyTorch on a
    # random batch: logits for .keras; for a SavedModel, its serving signature's probabilities
    max_abs_diff: float
    metadata: dict[str, Any]


def keras_metadata(ckpt: dict[str, Any] | Checkpoint, source: str | Path) -> dict[str, Any]:
    """What a Keras or TF Serving user needs besides the weights, as JSON: the checkpoint's inference
    keys (the same as an ONNX export carries) plus the preprocessing spelled out for channels-last input.
    The checkpoint marker makes an exported ``.keras`` file usable as ``--checkpoint`` as well."""
    if not isinstance(ckpt, Checkpoint):
        ckpt = Checkpoint(source, ckpt, kind="torch")
    prep, channels = ckpt.preprocessing, ckpt.in_chans
    size = prep.image_size
    return (
        {"format": FORMAT, "version": VERSION}
        | ckpt.inference_metadata()
        | {
            "source_checkpoint": str(source),
            "preprocessing": {
                "input_shape": [size, size, channels],
                "layout": "NHWC (channels last)" + (", RGB" if channels == 3 else ""),
                "resize_shorter_side": prep.resize_size,
                "interpolation": "bilinear, antialiased",
                "center_crop": size,
                "scale": "pixel / 255",
                "mean": list(prep.mean),
                "std": list(prep.std),
                "normalize": "(x - mean) / std",
            },
            "output": "logits (apply softmax for class probabilities)",
        }
    )


def _import_keras(fmt: str) -> Any:
    """``resnexus.keras`` (and for a SavedModel, TensorFlow), or one line saying how to install them."""
    try:
        from ..keras_backend import use_backend_for_reading, use_keras_backend

        if fmt == "savedmodel":  # TensorFlow's format: the command's own process picks it before Keras loads
            use_keras_backend("tensorflow", "--format savedmodel")
        else:
            use_backend_for_reading()
        from .. import keras as rk  # first: it loads torchvision before TensorFlow (see its __init__)

        if fmt == "savedmodel":
            import tensorflow  # noqa: F401  (the SavedModel writer)
    except ImportError as error:
        missing = error.name or "keras"
        raise ValueError(f'--format {fmt} needs {missing}: pip install "resnexus[keras]"') from None
    if fmt == "savedmodel":
        import keras

        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                f"--format savedmodel runs on Keras's TensorFlow backend, not {keras.backend.backend()!r}: "
                "set KERAS_BACKEND=tensorflow"
            )
    return rk


def _check_keras_output(output: Path, fmt: str, checkpoint: str | Path, overwrite: bool) -> Path:
    """Refuse an output that would destroy something, before any work (see ``check_output_file``)."""
    if fmt == "keras":
        if output.suffix != ".keras":
            raise ValueError(f"--output {output}: a Keras model file must end in .keras")
        return check_output_file(output, checkpoint_files(checkpoint), overwrite)
    # a SavedModel is a folder, replaced whole: never the checkpoint's run directory or a folder of other files
    output = check_output_folder(
        output,
        inputs={"checkpoint": checkpoint},
        ours=("saved_model.pb",),
        kind="a SavedModel",
        replaces=True,
        flag="--output",
    )
    sources = [Path(p).resolve() for p in checkpoint_files(checkpoint)]
    if any(output.resolve() in p.parents for p in sources):
        raise ValueError(f"--output {output} holds the checkpoint being exported; refusing to replace it")
    if (output / "saved_model.pb").is_file() and not overwrite:
        raise FileExistsError(f"--output {output} already exists; pass --overwrite to replace it")
    # the folder is written beside its final place, then renamed: check that place is writable
    return check_output_file(output / "saved_model.pb", overwrite=True).parent


def export_keras(
    checkpoint: str | Path, output: str | Path, format: str = "keras", overwrite: bool = False, batch: int = 2
) -> KerasExportResult:
    """Write ``output`` from a resnexus checkpoint: a ``.keras`` file or a TF SavedModel folder.

    ``checkpoint`` may be a run directory (``resolve_checkpoint``). An existing output is kept
    unless ``overwrite`` (a SavedModel folder is replaced only by one). The model is written under
    a temporary name, read back and compared with eager PyTorch on a random batch, then renamed:
    an interrupted export leaves nothing half-written at ``output``.
    """
    if format not in KERAS_FORMATS:
        raise ValueError(f"format must be one of {KERAS_FORMATS}, got {format!r}")
    source = _exportable_file(checkpoint)
    output = _check_keras_output(Path(output), format, checkpoint, overwrite)
    rk = _import_keras(format)
    loaded = Checkpoint.load(source)
    model = loaded.model()
    metadata = keras_metadata(loaded, source)
    prep, channels = loaded.preprocessing, loaded.in_chans
    size = prep.image_size
    keras_model = rk.from_torch(model, input_shape=(size, size, channels))
    example = torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(0))  # in [0, 1]
    mean = torch.tensor(prep.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32).view(1, -1, 1, 1)
    with torch.no_grad():
        logits = model((example - mean) / std)
    if format == "keras":
        with atomic_path(output, suffix=".tmp.keras") as staged:  # Keras writes only names ending in .keras
            rk.save_keras(keras_model, staged, metadata)
            reloaded, _ = rk.load_keras(staged)
            got = _keras_logits(reloaded, ((example - mean) / std).permute(0, 2, 3, 1).numpy())
            diff = float(np.abs(got - logits.numpy()).max())
        return KerasExportResult(output, format, diff, metadata)
    metadata["serving_signature"] = {
        "name": SERVING_SIGNATURE,
        "inputs": {"images": f"float32 [batch, {size}, {size}, {channels}], RGB in [0, 1], resized and cropped"},
        "outputs": {"probabilities": "float32 [batch, classes], softmax", "logits": "float32 [batch, classes]"},
        "normalization": "applied inside: (images - mean) / std",
    }
    with atomic_folder(output) as staged:
        _write_savedmodel(keras_model, staged, list(prep.mean), list(prep.std), (size, size, channels))
        (staged / "assets").mkdir(exist_ok=True)
        (staged / "assets" / METADATA_FILE).write_text(json.dumps(metadata, indent=2), encoding="utf-8")
        probs = _savedmodel_probabilities(staged, example.permute(0, 2, 3, 1).numpy())
        diff = float(np.abs(probs - logits.softmax(1).numpy()).max())
    return KerasExportResult(output, format, diff, metadata)


def _keras_logits(model: Any, images_nhwc: np.ndarray) -> np.ndarray:
    import keras

    return keras.ops.convert_to_numpy(model(images_nhwc, training=False))


def _write_savedmodel(
    model: Any, path: Path, mean: list[float], std: list[float], input_shape: tuple[int, int, int]
) -> None:
    """``model`` as a SavedModel whose serving signature takes [0, 1] images and normalises them itself."""
    import keras
    import tensorflow as tf

    mean_t = np.asarray(mean, dtype=np.float32)
    std_t = np.asarray(std, dtype=np.float32)

    def serve(images: Any) -> dict[str, Any]:
        logits = model((images - mean_t) / std_t, training=False)
        return {"probabilities": tf.nn.softmax(logits, axis=-1), "logits": logits}

    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = tf.TensorSpec((None, *input_shape), tf.float32, name="images")
    archive.add_endpoint(name=SERVING_SIGNATURE, fn=serve, input_signature=[spec])
    archive.write_out(str(path), verbose=False)


def _savedmodel_probabilities(path: Path, images_nhwc: np.ndarray) -> np.ndarray:
    """The serving signature's probabilities of a SavedModel read back from disk."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures[SERVING_SIGNATURE]
    return signature(images=tf.constant(images_nhwc, dtype=tf.float32))["probabilities"].numpy()
