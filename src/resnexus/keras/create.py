"""``create_model``: a Keras model by name, fresh or with any weights the PyTorch side can load."""

from __future__ import annotations

from os import PathLike
from typing import Any

import keras

from ..models import get_entry
from ..models import registry as torch_registry
from ..models.pretrained import PretrainedWeights
from .convert import from_torch
from .registry import build_keras_model

__all__ = ["create_model"]


def create_model(
    name: str,
    num_classes: int = 1000,
    input_shape: tuple[int | None, int | None, int] | None = None,
    weights: str | PathLike[str] | PretrainedWeights | None = None,
    *,
    weights_dir: str | PathLike[str] | None = None,
    **overrides: Any,
) -> keras.Model:
    """A Keras 3 functional model of registered model ``name`` (channels-last, logits out).

    ``input_shape`` is ``(height, width, channels)``; the default is the variant's own input size
    (224 px, 32 px for the CIFAR rows). ``num_classes=0`` builds it without a classifier (the
    pooled features); a negative count is refused. ``overrides`` replace entries of the spec row, as in
    :func:`resnexus.create_model`; ``block_form="split"`` builds ResNeXt's grouped 3x3 as split +
    C convolutions + concatenate. ``weights`` is anything :func:`resnexus.create_model` accepts
    (published weights by name, a file, a URL): they are loaded into the PyTorch model and moved
    across with :func:`resnexus.keras.from_torch`, so every source the PyTorch side reads reaches Keras.
    """
    entry = get_entry(name)
    if input_shape is None:
        channels, height, width = entry.input_size
        size = overrides.get("img_size", entry.config.get("img_size"))  # LeNet is built for one size
        input_shape = (size or height, size or width, channels)
    if weights is not None:
        torch_overrides = {k: v for k, v in overrides.items() if k != "block_form"}
        source = torch_registry.create_model(
            name,
            num_classes=num_classes,
            in_chans=input_shape[-1],
            weights=weights,
            weights_dir=weights_dir,
            **torch_overrides,
        )
        return from_torch(source, input_shape=input_shape, block_form=overrides.get("block_form", "c"))
    return build_keras_model(name, num_classes, input_shape, **overrides)
