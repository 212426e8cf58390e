"""Keras models by the registry's names: the same spec row, a Keras graph instead of an ``nn.Module``.

Each family module of :mod:`resnexus.keras` registers one builder against the PyTorch class its
rows are built with (``ResNet`` -> :func:`~resnexus.keras.resnet.build_resnet`). A builder takes
the Keras input tensor plus exactly the keyword arguments of the PyTorch class and returns the
output tensor, so :func:`build_keras_model` needs no table of its own: it reads the row from
:func:`resnexus.models.get_entry`, as :func:`resnexus.create_model` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import layers

from ..models import get_entry, list_models
from ..models.base import check_num_classes
from .layers import linear_default
from .torch_kernels import use_torch_kernels

__all__ = [
    "build_keras_model",
    "classifier_head",
    "keras_builder",
    "list_keras_models",
    "register_keras_builder",
]

_BUILDERS: dict[type, Callable[..., keras.KerasTensor]] = {}


def register_keras_builder(torch_class: type, builder: Callable[..., keras.KerasTensor]) -> None:
    """Build every row registered with ``torch_class`` with ``builder`` on the Keras side."""
    _BUILDERS[torch_class] = builder


def keras_builder(name: str) -> Callable[..., keras.KerasTensor]:
    """The Keras builder of registered model ``name``; a model without one is named in the error."""
    entry = get_entry(name)
    try:
        return _BUILDERS[entry.builder]
    except KeyError:
        raise ValueError(f"{name!r} ({entry.builder.__name__}) has no Keras builder") from None


def list_keras_models(pattern: str = "*") -> list[str]:
    """Registered names that :func:`create_model` can build."""
    return [n for n in list_models(pattern) if get_entry(n).builder in _BUILDERS]


def classifier_head(
    x: keras.KerasTensor, num_classes: int, *, name: str, activation: str | None = None
) -> keras.KerasTensor:
    """Global average pool + linear classifier (``name`` = the PyTorch classifier's name);
    ``num_classes=0`` returns the pooled features, as ``reset_classifier(0)`` does in PyTorch."""
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    if num_classes == 0:
        return x
    return layers.Dense(num_classes, activation=activation, kernel_initializer=linear_default(), name=name)(x)


def build_keras_model(
    name: str, num_classes: int, input_shape: tuple[int | None, int | None, int], **overrides: Any
) -> keras.Model:
    """The graph of ``name``'s spec row (with ``overrides``), freshly initialised; named ``name``.
    ``num_classes=0``: no classifier (the pooled features); a negative count is refused. On Keras'
    torch backend its convolutions and batch norms run PyTorch's kernels (:mod:`.torch_kernels`)."""
    num_classes = check_num_classes(num_classes)
    config = {**get_entry(name).config, **overrides}
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    outputs = keras_builder(name)(inputs, num_classes=num_classes, in_chans=input_shape[-1], **config)
    model = keras.Model(inputs, outputs, name=name)
    model.resnexus_config = dict(overrides)  # what differs from the spec row: to_torch rebuilds with it
    use_torch_kernels(model)  # on Keras' torch backend: PyTorch's channels-last kernels, no copies
    return model
