"""One registry: the only place model names are resolved.

Every family module (``resnet.py``, ``densenet.py``, ...) ends the same way: spec tables
``{name: dict(...)}`` whose rows are the keyword arguments of the family's model class, a
``REFERENCES`` table (what the paper reports) and an ``EQUIVALENTS`` table (the same network's
name in torchvision, timm or Keras), handed to :func:`register_family` once per table together
with the :class:`InputSpec` the table's variants expect, and a ``PRETRAINED`` table (the
published weights, :mod:`resnexus.models.pretrained`) handed to :func:`register_pretrained`.
:mod:`resnexus.models` imports every family module, so the registry is complete as soon as
anything in the package is imported.
Users call :func:`create_model`, :func:`list_models`, :func:`model_info` and :func:`list_pretrained`.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import torch
from torch import nn

from .base import FeatureExtractor, ImageClassifier, check_num_classes
from .pretrained import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    KERAS_TF_MEAN,
    KERAS_TF_STD,
    SOURCES,
    PretrainedWeights,
    fetch_weights,
)
from .weights import load_weights

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class InputSpec:
    """The input a table's variants expect: image size, and the mean/std their pixels are normalised by."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


IMAGENET_INPUT = InputSpec()
CIFAR_INPUT = InputSpec((3, 32, 32), CIFAR_MEAN, CIFAR_STD)
KERAS_TF_INPUT = InputSpec((3, 224, 224), KERAS_TF_MEAN, KERAS_TF_STD)


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
    weights: tuple[str, ...] = ()  # tags of the published weights create_model(weights=...) accepts


_REGISTRY: dict[str, ModelEntry] = {}
_PRETRAINED: dict[str, tuple[PretrainedWeights, ...]] = {}


def register_model(
    name: str,
    family: str,
    builder: Callable[..., ImageClassifier],
    config: Mapping[str, Any] | None = None,
    *,
    input_size: tuple[int, int, int] = (3, 224, 224),
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    reference: Reference | None = None,
    equivalents: Mapping[str, str] | None = None,
) -> None:
    """Add one named variant (family modules register whole tables with :func:`register_family`)."""
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


def register_family(
    family: str,
    builder: Callable[..., ImageClassifier],
    specs: Mapping[str, Mapping[str, Any]],
    references: Mapping[str, Reference],
    equivalents: Mapping[str, Mapping[str, str]],
    *,
    inputs: InputSpec = IMAGENET_INPUT,
) -> None:
    """Register every row of one spec table; ``references`` and ``equivalents`` may cover other tables too.

    ``builder(num_classes=..., in_chans=..., **row)`` builds a variant: every family passes its
    model class.
    """
    for name, config in specs.items():
        register_model(
            name,
            family,
            builder,
            config,
            input_size=inputs.input_size,
            mean=inputs.mean,
            std=inputs.std,
            reference=references.get(name),
            equivalents=equivalents.get(name),
        )


def register_pretrained(table: Mapping[str, Iterable[PretrainedWeights]]) -> None:
    """Add a family's ``PRETRAINED`` table (model name -> published weights) to the catalog."""
    for name, entries in table.items():
        get_entry(name)  # a catalog row for an unregistered model is a typo
        entries = tuple(entries)
        tags = [e.tag for e in entries]
        if name in _PRETRAINED or len(set(tags)) != len(tags):
            raise ValueError(f"pretrained weights of {name!r} registered twice or with repeated tags: {tags}")
        if sum(e.recommended for e in entries) > 1:
            raise ValueError(f"{name!r}: more than one recommended ('imagenet') weights entry")
        _PRETRAINED[name] = entries


def list_pretrained(name: str | None = None) -> dict[str, tuple[PretrainedWeights, ...]]:
    """The catalog: model name -> its published weights (one model's, when ``name`` is given)."""
    if name is not None:
        get_entry(name)
        return {name: _PRETRAINED.get(name, ())}
    return dict(sorted(_PRETRAINED.items()))


def is_weights_tag(weights: object) -> bool:
    """True for "imagenet", a source name ("keras") or "source:tag"; False for paths and URLs."""
    if not isinstance(weights, str) or os.path.exists(weights):
        return False
    return weights == "imagenet" or (weights.split(":", 1)[0] in SOURCES and "://" not in weights)


def find_pretrained(name: str, tag: str) -> PretrainedWeights:
    """The catalog entry ``tag`` names for model ``name``; an unknown tag lists the ones that exist.

    ``"imagenet"`` is the recommended entry (else the first); a bare source name (``"keras"``,
    ``"torchvision"``) is that source's recommended or first entry; anything else matches a tag exactly.
    """
    entries = _PRETRAINED.get(get_entry(name).name, ())
    if not entries:
        raise ValueError(
            f"no published weights are known for {name!r}; pass a local file or a URL as weights= "
            f"(`resnexus models --weights` lists the models that have some)"
        )
    exact = [e for e in entries if e.tag == tag]
    if exact:
        return exact[0]
    candidates = list(entries) if tag == "imagenet" else [e for e in entries if e.source_name == tag]
    if candidates:
        return next((e for e in candidates if e.recommended), candidates[0])
    available = ", ".join(["imagenet", *(e.tag for e in entries)])
    raise ValueError(f"unknown weights {tag!r} for {name}; available: {available}")


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; an unknown name raises with the nearest known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `resnexus models` lists them"
        raise ValueError(f"unknown model {name!r}{hint}") from None


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """The registered model names, sorted, optionally filtered.

    Args:
        pattern: A shell-style pattern (``fnmatch``), e.g. ``"resnext*"``; ``"*"`` lists all.
        family: Only the models of this family (e.g. ``"resnext"``, ``"densenet"``; the
            ``family`` of :func:`model_info`).

    Returns:
        The matching names (``[]`` when the pattern matches none).

    Raises:
        ValueError: ``family`` is not a known family (named with the known ones, so a typo does not
            look like a pattern that matches nothing).
    """
    families = sorted({e.family for e in _REGISTRY.values()})
    if family is not None and family not in families:
        raise ValueError(f"unknown family {family!r}; known families: {', '.join(families)}")
    return sorted(
        n for n, e in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and (family is None or e.family == family)
    )


def create_model(
    name: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    weights: str | PathLike[str] | PretrainedWeights | None = None,
    *,
    weights_dir: str | PathLike[str] | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model, optionally with pretrained or saved weights.

    Args:
        name: A registered name (:func:`list_models`, ``resnexus models``).
        num_classes: Outputs of the classifier; ``0`` builds the model without one (it returns the
            pooled features).
        in_chans: Input channels.
        weights: Initial weights: a local ``.pth`` / ``.pt`` / ``.safetensors`` / Keras ``.h5`` file,
            a URL, or published weights by name: ``"imagenet"`` (the recommended entry of
            :func:`list_pretrained`), a source (``"torchvision"``, ``"keras"``, ``"official"``), a tag
            (``"torchvision:IMAGENET1K_V2"``) or a :class:`PretrainedWeights`. Published weights are
            downloaded once and verified. A file whose classifier has another class count loads
            everything but the classifier.
        weights_dir: A folder of downloaded weights files to use without network (default
            ``$RESNEXUS_WEIGHTS_DIR``).
        features_only: Return a :class:`FeatureExtractor` that gives the stage outputs instead of logits.
        out_indices: With ``features_only``: which stages (default all; negative counts from the end).
        **overrides: Entries of the variant's spec row to replace, e.g. ``cardinality=16``
            (:func:`model_options` lists them).

    Returns:
        The model in training mode, with ``model_name``, ``model_config`` (the overrides) and
        ``pretrained_cfg`` (input size, mean, std) set.

    Raises:
        ValueError: An unknown name (with the nearest known names), an option the family does not
            take (with those it does), a negative ``num_classes``, or weights that do not fit the
            model (:class:`WeightsError`, naming the file and the mismatch).
        FileNotFoundError: A weights file that does not exist, or published weights that cannot be
            downloaded and are not in ``weights_dir``.

    Example:
        ``create_model("resnext50_32x4d", num_classes=2, weights="imagenet")``
    """
    num_classes = check_num_classes(num_classes)
    entry = get_entry(name)
    check_overrides(name, overrides)
    config = {**entry.config, **overrides}
    model = entry.builder(num_classes=num_classes, in_chans=in_chans, **config)
    model.model_name = name
    model.model_config = dict(overrides)  # what differs from the spec row: enough to rebuild it (e.g. in Keras)
    size = config.get("img_size")  # a model built for one input size (LeNet) says so in its row
    model.pretrained_cfg = {
        "input_size": (in_chans, size, size) if size else (in_chans, *entry.input_size[1:]),
        "mean": entry.mean,
        "std": entry.std,
    }
    if is_weights_tag(weights):
        weights = find_pretrained(name, str(weights))
    if isinstance(weights, PretrainedWeights):
        prep = weights.preprocessing
        load_weights(model, fetch_weights(weights, weights_dir=weights_dir))
        model.pretrained_cfg = {  # timm's keys, for code written against timm; ours: PretrainedWeights.preprocessing
            "input_size": (in_chans, prep.image_size, prep.image_size),
            "mean": prep.mean,
            "std": prep.std,
            "crop_pct": prep.crop_fraction,
            "interpolation": prep.interpolation,
            "weights": weights.tag,
        }
    elif weights is not None:
        load_weights(model, weights)
    if features_only:
        return FeatureExtractor(model, out_indices)
    return model


def model_options(name: str) -> list[str]:
    """The spec keys ``create_model(name, **overrides)`` accepts: its family's constructor arguments
    (following ``**kwargs`` to the base class), less ``num_classes`` and ``in_chans``."""
    options: set[str] = set()
    builder = get_entry(name).builder
    classes = [c for c in builder.__mro__ if "__init__" in vars(c)] if inspect.isclass(builder) else [builder]
    for owner in classes:
        parameters = inspect.signature(owner).parameters.values()
        options |= {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return sorted(options - {"self", "num_classes", "in_chans"})


def check_overrides(name: str, overrides: Mapping[str, Any]) -> None:
    """Refuse spec overrides (``model_config``) that ``name``'s family does not take, listing those it does."""
    allowed = model_options(name)
    unknown = sorted(map(str, set(overrides) - set(allowed)))
    if unknown:
        family = get_entry(name).family
        raise ValueError(f"{name} ({family}) has no option {', '.join(unknown)}; its options: {', '.join(allowed)}")


def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of a batch of one (convolutions and linears)."""
    from torch.utils.flop_counter import FlopCounterMode  # here: a third of a second that only MAC counts need

    device = next(model.parameters()).device
    x = torch.zeros((1, *input_size), device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


@functools.cache
def model_info(name: str, num_classes: int | None = None) -> ModelInfo:
    """Parameter count and MACs (measured on the meta device, so free) plus the paper's numbers."""
    entry = get_entry(name)
    num_classes = (10 if entry.input_size[1] <= 32 else 1000) if num_classes is None else check_num_classes(num_classes)
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
        weights=tuple(w.tag for w in _PRETRAINED.get(name, ())),
    )
