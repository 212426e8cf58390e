"""Reading weights saved by torchvision, timm, the papers' official repos and Keras into our models.

Our module names follow torchvision/timm, so most files load as they are; the rest is handled
here in one place:

* containers: ``{"state_dict": ...}``, ``{"model": ...}``, ``{"model_state_dict": ...}``, and
  the ``module.`` prefix that DataParallel / DDP add;
* legacy layouts: each family's :meth:`~resnexus.models.base.ImageClassifier.remap_state_dict`
  (e.g. DenseNet's old ``norm.1`` keys);
* Keras ``.h5`` files (both Keras 3 ``.weights.h5`` and the legacy layout of the files that
  keras.applications downloads), through the family's :meth:`keras_layers`;
* fine-tuning: a classifier with another class count is left out and the model keeps its fresh
  head; a first convolution with another input-channel count is adapted.

Everything else must match exactly: a missing or unexpected key is an error that names the file
and the keys, never a silent partial load. Pickled files are read with ``weights_only=True``, so a
file cannot run code (:func:`load_torch_file`, which every checkpoint and weights file goes through).

This module sits below the registry (``create_model(..., weights=...)`` calls :func:`load_weights`)
and knows models only through :class:`~resnexus.models.base.ImageClassifier`; it imports nothing
else from the package but the one hash-checked download (:mod:`resnexus.models.pretrained`).
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .base import ImageClassifier, KerasLayer
from .pretrained import cache_dir, download, file_digest, hash_matches

logger = logging.getLogger(__name__)

_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "params")
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)  # BatchNorm's step counter: not a weight
_SHOWN = 10  # how many keys an error message lists
KERAS_APPLICATIONS_BN_EPS = 1.001e-5  # the BatchNormalization epsilon keras.applications models use


class WeightsError(ValueError):
    """A weights file that cannot be loaded into the model it was given to."""


@dataclass
class LoadReport:
    """What :func:`load_weights` did, for logs and tests."""

    source: str
    loaded: int = 0
    classifier_reset: bool = False
    adapted_input: list[str] = field(default_factory=list)


# -- reading files -----------------------------------------------------------------------------
def resolve_source(source: str | os.PathLike[str]) -> Path:
    """A local path for ``source``; URLs are downloaded once into torch's hub cache.

    Downloads go through :func:`resnexus.models.pretrained.download`, the hash-checked one: a URL
    ending in ``#sha256=<hex digest>`` (pip's convention) is verified against it, in the cache too;
    one without gets its digest logged.
    """
    text = os.fspath(source)
    url = urlparse(text)
    if url.scheme not in ("http", "https"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        return path
    expected = url.fragment.removeprefix("sha256=") if url.fragment.startswith("sha256=") else None
    target = cache_dir() / Path(url.path).name
    if target.is_file():
        digest = file_digest(target, "sha256") if expected else None
        if digest is None or hash_matches(expected or "", "sha256", digest):
            return target
        logger.warning(
            "damaged cached file %s (sha256 %s, expected %s): downloading it again", target, digest, expected
        )
        target.unlink()
    download(url._replace(fragment="").geturl(), target, expected=expected, hash_kind="sha256")
    return target


def is_keras_file(path: Path) -> bool:
    return path.suffix in (".h5", ".hdf5", ".keras")


def read_state_dict(source: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors of a ``.pth``/``.pt``/``.bin``/``.ckpt`` or ``.safetensors`` file, unwrapped."""
    path = resolve_source(source)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own error types
            raise WeightsError(f"{path}: not a readable safetensors file ({error})") from error
    return unwrap_state_dict(load_torch_file(path), str(path))


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_PICKLE_PROTOCOL = b"\x80"  # the first opcode of a binary pickle: the legacy torch.save format
_HEAD = 16  # how many leading bytes a "not a checkpoint" message shows


def load_torch_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` with tensors and plain containers only, and errors that say what the file is.

    A file that is neither a zip archive nor a binary pickle (text, an image, an HDF5 or
    safetensors file under another suffix) is named with its first bytes; one that holds other
    Python objects is refused. No message repeats PyTorch's advice to load without the safety.
    """
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(_HEAD)
    if not head.startswith((_ZIP_MAGIC, _PICKLE_PROTOCOL)):
        raise WeightsError(f"{path} is not a PyTorch checkpoint ({_describe_head(head)})")
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols asks the user to file an issue
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise WeightsError(
            f"refusing to load {path}: it holds Python objects other than tensors and plain "
            f"containers, which could run code when unpickled ({_unpickler_reason(error)})"
        ) from None
    except Exception as error:  # torch's unpickler fails on garbage with assorted error types
        reason = _unpickler_reason(error) if "weights_only" in str(error) else f"{type(error).__name__}: {error}"
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None


def _describe_head(head: bytes) -> str:
    if not head:
        return "it is empty"
    if head.startswith(b"\x89HDF"):
        return "it is an HDF5 file: Keras weights need the .h5 suffix"
    if len(head) > 8 and head[8:9] == b"{":
        return "it looks like a safetensors file: give it the .safetensors suffix"
    return f"it starts with {head!r}"


def _unpickler_reason(error: Exception) -> str:
    """What PyTorch's safe unpickler objected to, without its advice on turning the safety off."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0] if lines else type(error).__name__
    return reason.split(". Please use", 1)[0].rstrip(".")


def unwrap_state_dict(obj: Any, source: str = "<object>") -> dict[str, Tensor]:
    """Find the state dict inside the usual checkpoint containers and strip ``module.``."""
    while isinstance(obj, Mapping) and not _looks_like_state_dict(obj):
        inner = next((obj[k] for k in _CONTAINER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            raise WeightsError(f"{source}: no state dict found; top-level keys are {sorted(map(str, obj))[:_SHOWN]}")
        obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{source}: expected a dict of tensors, found {type(obj).__name__}")
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _looks_like_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


# -- Keras -------------------------------------------------------------------------------------
def read_keras_h5(path: str | os.PathLike[str]) -> dict[str, list[Any]]:
    """Layer name -> its arrays in Keras order, from a Keras 3 or a legacy ``.h5`` weights file.

    Keras 3 ``.weights.h5`` files store ``layers/<name>/vars/<i>`` where ``<name>`` is the
    layer's kind plus a counter (``conv2d_7``); legacy files store groups named after the
    layers (``conv2_block1_1_conv``) with a ``weight_names`` attribute giving the order.
    """
    import h5py  # here, not at the top: a tenth of a second that only Keras files need

    path = resolve_source(path)
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise WeightsError(f"{path}: not a readable HDF5 file ({error})") from error
    with file:
        root = file.get("model_weights", file)
        layers: dict[str, list[Any]] = {}
        if "layer_names" in root.attrs:  # legacy Keras 2 layout
            for raw in root.attrs["layer_names"]:
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                group = root[name]
                names = [w.decode() if isinstance(w, bytes) else str(w) for w in group.attrs.get("weight_names", [])]
                if names:
                    layers[name] = [group[w][()] for w in names]
        elif "layers" in root:  # Keras 3 layout
            for name, group in root["layers"].items():
                if "vars" in group and len(group["vars"]):
                    variables = group["vars"]
                    layers[name] = [variables[str(i)][()] for i in range(len(variables))]
        else:
            raise WeightsError(f"{path}: no Keras weights found (neither 'layer_names' nor 'layers')")
    return layers


def _keras3_names(spec: list[KerasLayer]) -> list[str]:
    """The names Keras 3 gives the layers in a ``.weights.h5``: kind plus a per-kind counter."""
    counters: dict[str, int] = {}
    names = []
    for layer in spec:
        n = counters.get(layer.kind, 0)
        names.append(layer.kind if n == 0 else f"{layer.kind}_{n}")
        counters[layer.kind] = n + 1
    return names


def keras_state_dict(model: ImageClassifier, layers: dict[str, list[Any]], source: str) -> dict[str, Tensor]:
    """Convert Keras arrays to our state dict using the model's Keras layer list."""
    spec = model.keras_layers()
    names = [layer.name for layer in spec]
    if not all(n in layers for n in names):
        names = _keras3_names(spec)
        if not all(n in layers for n in names) and len(layers) == len(spec) and not any(n in layers for n in names):
            # legacy files from older Keras releases name some layers differently ("conv1/conv",
            # "fc1000"); they list layers in model order, so pair by position (shapes checked later)
            names = list(layers)
    missing = [f"{n} ({layer.name})" for n, layer in zip(names, spec) if n not in layers]
    unexpected = sorted(set(layers) - set(names))
    if missing or unexpected:
        raise WeightsError(
            f"{source}: does not match the Keras layout of {type(model).__name__} "
            f"({len(spec)} weighted layers expected, {len(layers)} found); "
            f"missing: {missing[:_SHOWN]}, unexpected: {unexpected[:_SHOWN]}"
        )
    state: dict[str, Tensor] = {}
    for file_name, layer in zip(names, spec):
        arrays = [torch.from_numpy(a.copy()) for a in layers[file_name]]
        if layer.kind == "conv2d":
            state[f"{layer.target}.weight"] = arrays[0].permute(3, 2, 0, 1)
            if len(arrays) > 1:
                state[f"{layer.target}.bias"] = arrays[1]
        elif layer.kind == "dense":
            state[f"{layer.target}.weight"] = arrays[0].t()
            state[f"{layer.target}.bias"] = arrays[1]
        elif layer.kind == "batch_normalization":
            for suffix, array in zip(("weight", "bias", "running_mean", "running_var"), arrays):
                state[f"{layer.target}.{suffix}"] = array
            # keras.applications normalise with eps 1.001e-5; fold the difference into the variance
            # so that a model built with PyTorch's 1e-5 gives exactly Keras' outputs
            eps = getattr(model.get_submodule(layer.target), "eps", KERAS_APPLICATIONS_BN_EPS)
            state[f"{layer.target}.running_var"] = arrays[3] + (KERAS_APPLICATIONS_BN_EPS - eps)
        else:
            raise WeightsError(f"{source}: Keras layer kind {layer.kind!r} ({layer.name}) is not supported")
    return {k: v.contiguous() for k, v in state.items()}


# -- loading -----------------------------------------------------------------------------------
def load_weights(model: nn.Module, source: str | os.PathLike[str], *, strict: bool = True) -> LoadReport:
    """Load a weights file into ``model`` (in place) and say what was done.

    Raises :class:`WeightsError` naming the file and the missing / unexpected / mis-shaped keys
    when the file does not fit, unless ``strict=False``.
    """
    path = resolve_source(source)
    report = LoadReport(source=str(path))
    if is_keras_file(path):
        if not isinstance(model, ImageClassifier):
            raise WeightsError(f"{path}: Keras weights need a resnexus model, got {type(model).__name__}")
        state = keras_state_dict(model, read_keras_h5(path), str(path))
    else:
        state = read_state_dict(path)
        if isinstance(model, ImageClassifier):
            state = model.remap_state_dict(state)

    own = model.state_dict()
    if isinstance(model, ImageClassifier):
        _drop_mismatched_classifier(model, state, own, report)
        _adapt_input_channels(model, state, own, report)

    fresh_head = getattr(model, "classifier_name", "fc") + "." if report.classifier_reset else None
    missing = [
        k
        for k in own
        if k not in state and not k.endswith(_OPTIONAL_SUFFIXES) and not (fresh_head and k.startswith(fresh_head))
    ]
    unexpected = [k for k in state if k not in own]
    mis_shaped = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if strict and (missing or unexpected or mis_shaped):
        raise WeightsError(_mismatch_message(path, model, missing, unexpected, mis_shaped))
    loadable = {k: v.to(own[k].dtype) for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(loadable, strict=False)
    report.loaded = len(loadable)
    logger.info("loaded %d tensors from %s", report.loaded, path)
    return report


def _mismatch_message(
    path: Path, model: nn.Module, missing: list[str], unexpected: list[str], shapes: list[str]
) -> str:
    name = getattr(model, "model_name", type(model).__name__)
    parts = [f"{path} does not fit model {name}:"]
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if keys:
            more = f" ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:_SHOWN])}{more}")
    return "\n  ".join(parts)


def _drop_mismatched_classifier(
    model: ImageClassifier, state: dict[str, Tensor], own: dict[str, Tensor], report: LoadReport
) -> None:
    """Fine-tuning: keep the model's fresh classifier when the file's has another class count."""
    prefix = model.classifier_name + "."
    head = [k for k in state if k.startswith(prefix)]
    if not head and any(k.startswith(prefix) for k in own):  # a backbone-only file
        report.classifier_reset = True
        logger.warning("%s: the file has no classifier; the model keeps a freshly initialised one", report.source)
    elif head and any(k not in own or state[k].shape != own[k].shape for k in head):
        file_classes = state[prefix + "weight"].shape[0] if prefix + "weight" in state else "?"
        for k in head:
            del state[k]
        report.classifier_reset = True
        logger.warning(
            "%s: classifier '%s' has %s classes, the model %s; it was left out and the model keeps a "
            "freshly initialised classifier (fine-tuning)",
            report.source,
            model.classifier_name,
            file_classes,
            f"has {model.num_classes}" if model.num_classes else "has none",
        )


def _adapt_input_channels(
    model: ImageClassifier, state: dict[str, Tensor], own: dict[str, Tensor], report: LoadReport
) -> None:
    """Grey-scale or multi-band input: fold or tile the first convolution's RGB filters.

    One channel gets the sum of the RGB filters (a grey image is R=G=B); N channels get the RGB
    filters repeated and scaled by 3/N so activations keep their magnitude.
    """
    first = next((k for k, v in own.items() if v.dim() == 4), None)
    if first is None or first not in state:
        return
    w, target = state[first], own[first]
    if w.shape == target.shape or w.shape[0] != target.shape[0] or w.shape[2:] != target.shape[2:]:
        return
    if w.shape[1] != 3:
        return
    n = target.shape[1]
    if n == 1:
        state[first] = w.sum(dim=1, keepdim=True)
    else:
        state[first] = w.repeat(1, (n + 2) // 3, 1, 1)[:, :n] * (3.0 / n)
    report.adapted_input.append(first)
    logger.warning("%s: '%s' adapted from 3 to %d input channels", report.source, first, n)


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Save a state dict as ``.safetensors`` (no pickle at all) or ``.pth`` by the file's suffix."""
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
