"""One registry: the only place model names are resolved.

Family modules call :func:`register_model` once per row of their spec table; users call
:func:`create_model`, :func:`list_models` and :func:`model_info`.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
from dataclasses import dataclass, field
from os import PathLike
from typing import Any, Callable

import torch
from torch import nn

from .base import FeatureExtractor, ImageClassifier

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
# Keras "tf" preprocessing (ResNetV2): x / 127.5 - 1, i.e. mean 0.5 and std 0.5 on [0, 1] pixels.
KERAS_TF_MEAN = (0.5, 0.5, 0.5)
KERAS_TF_STD = (0.5, 0.5, 0.5)

# Imported on first use so `import resnexus` stays cheap; each registers its spec table.
_FAMILY_MODULES = ("resnet", "resnet_v2", "res2net", "densenet", "fractalnet", "lenet")


@dataclass(frozen=True)
class Reference:
    """What the paper (or the reference implementation) reports for a model, and where."""

    source: str  # e.g. "Xie et al., CVPR 2017, Table 3"
    dataset: str = "ImageNet-1k"
    top1_error: float | None = None  # percent
    top5_error: float | None = None  # percent
    params_millions: float | None = None
    gflops: float | None = None  # as the paper counts them (multiply-adds)
    note: str = ""


@dataclass(frozen=True)
class ModelEntry:
    """A registered variant: the builder, the row of its spec table and its metadata."""

    name: str
    family: str
    builder: Callable[..., ImageClassifier]
    config: dict[str, Any]
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    reference: Reference | None = None
    # the same architecture's name in other libraries, for weight loading and comparisons
    equivalents: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    """Measured facts about a model at its default input size and 1000 (or its default) classes."""

    name: str
    family: str
    params: int
    macs: int  # multiply-accumulates of one forward pass at `input_size`
    input_size: tuple[int, int, int]
    num_classes: int
    reference: Reference | None
    equivalents: dict[str, str]
    config: dict[str, Any]


_REGISTRY: dict[str, ModelEntry] = {}
_families_loaded = False


def register_model(
    name: str,
    family: str,
    builder: Callable[..., ImageClassifier],
    config: dict[str, Any] | None = None,
    *,
    input_size: tuple[int, int, int] = (3, 224, 224),
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    reference: Reference | None = None,
    equivalents: dict[str, str] | None = None,
) -> None:
    """Add one named variant. Called by the family modules at import time."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = ModelEntry(
        name=name,
        family=family,
        builder=builder,
        config=dict(config or {}),
        input_size=input_size,
        mean=mean,
        std=std,
        reference=reference,
        equivalents=dict(equivalents or {}),
    )


def _load_families() -> None:
    global _families_loaded
    if not _families_loaded:
        for module in _FAMILY_MODULES:
            importlib.import_module(f"resnexus.models.{module}")
        _families_loaded = True


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; an unknown name raises with the nearest known names."""
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `resnexus models` lists them"
        raise ValueError(f"unknown model {name!r}{hint}") from None


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    _load_families()
    return sorted(
        n for n, e in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and (family is None or e.family == family)
    )


def create_model(
    name: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    weights: str | PathLike[str] | None = None,
    *,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model.

    ``overrides`` replace entries of the variant's spec row (e.g. ``cardinality=16``).
    ``weights`` is a local ``.pth``/``.pt``/``.safetensors``/Keras ``.h5`` file or a URL; a file
    whose classifier has another class count loads everything but the classifier.
    ``features_only=True`` returns a :class:`FeatureExtractor` giving the stage outputs.
    """
    entry = get_entry(name)
    config = {**entry.config, **overrides}
    model = entry.builder(num_classes=num_classes, in_chans=in_chans, **config)
    model.model_name = name
    model.pretrained_cfg = {
        "input_size": (in_chans, *entry.input_size[1:]),
        "mean": entry.mean,
        "std": entry.std,
    }
    if weights is not None:
        from ..weights import load_weights

        load_weights(model, weights)
    if features_only:
        return FeatureExtractor(model, out_indices)
    return model


def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of a batch of one (convolutions and linears)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.zeros((1, *input_size), device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


@functools.lru_cache(maxsize=None)
def model_info(name: str, num_classes: int | None = None) -> ModelInfo:
    """Parameter count and MACs (measured on the meta device, so free) plus the paper's numbers."""
    entry = get_entry(name)
    if num_classes is None:
        num_classes = 10 if entry.input_size[1] <= 32 else 1000
    with torch.device("meta"):
        model = entry.builder(num_classes=num_classes, in_chans=entry.input_size[0], **entry.config)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    return ModelInfo(
        name=name,
        family=entry.family,
        params=params,
        macs=count_macs(model, entry.input_size),
        input_size=entry.input_size,
        num_classes=num_classes,
        reference=entry.reference,
        equivalents=dict(entry.equivalents),
        config=dict(entry.config),
    )
