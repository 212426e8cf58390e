"""Weights between a resnexus PyTorch model and its Keras twin, exactly, in both directions.

The Keras builders name every weighted layer after the PyTorch module holding the same weights
(:func:`~resnexus.keras.layers.keras_name`: ``layer1.0.conv1`` -> ``layer1_0_conv1``), so one rule
per layer type covers every family:

    nn.Conv2d      weight (out, in/groups, kh, kw)  <->  Conv2D kernel (kh, kw, in/groups, out), bias
    nn.BatchNorm2d weight, bias, running mean, var  <->  gamma, beta, moving_mean, moving_variance
    nn.Linear      weight (out, in)                 <->  Dense kernel (in, out), bias

plus one for the ResNeXt "split" form, whose per-group convolutions ``{name}_g{i}`` hold the
slices of the grouped kernel ``{name}``. The copy is strict: a module with no Keras layer, a Keras
layer left without weights, a shape or a BatchNorm epsilon that differs, each raises and names it.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import torch
from torch import nn

from ..models import create_model as create_torch_model
from ..models.forms import convert_model_form
from .layers import keras_name
from .registry import build_keras_model

__all__ = ["ConversionError", "convert_block_form", "from_torch", "to_torch"]

_WEIGHTED = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)


class ConversionError(ValueError):
    """The two models do not hold the same layers (names, shapes or settings differ)."""


def from_torch(
    model: nn.Module,
    input_shape: tuple[int | None, int | None, int] | None = None,
    *,
    block_form: str = "c",
) -> keras.Model:
    """The Keras model of a resnexus PyTorch model (from :func:`resnexus.create_model`), same weights.

    ``input_shape`` (height, width, channels) defaults to the model's own input size. ResNeXt
    models in form (a) or (b) are converted to (c) first (the same numbers); ``block_form="split"``
    gives the Keras split + concatenate form instead of the grouped convolution.
    """
    name = getattr(model, "model_name", None)
    if name is None:
        raise ConversionError(
            f"from_torch needs a model built by resnexus.create_model (a {type(model).__name__} "
            "without model_name): the name says which Keras graph to build"
        )
    overrides: dict[str, Any] = dict(getattr(model, "model_config", {}))
    if overrides.pop("block_form", "c") != "c":
        model = convert_model_form(model, "c")
    if input_shape is None:
        channels, height, width = model.pretrained_cfg["input_size"]
        input_shape = (height, width, channels)
    target = build_keras_model(name, model.num_classes, input_shape, **overrides, block_form=block_form)
    copy_torch_to_keras(model, target)
    return target


def to_torch(model: keras.Model, **overrides: Any) -> nn.Module:
    """The resnexus PyTorch model of a Keras model from :func:`resnexus.keras.create_model`, same weights.

    The Keras model's name is the registry name; its class count and input channels are read off
    the model, and the spec overrides it was built with travel with it (``resnexus_config``, kept
    in ``.keras`` files by :func:`resnexus.keras.save_keras`). ``overrides`` adds to or replaces
    them (for a model built some other way); a mismatch is caught by the strict copy.
    """
    num_classes = _keras_num_classes(model)
    in_chans = model.input_shape[-1]
    overrides = {**getattr(model, "resnexus_config", {}), **overrides}
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if k != "block_form"}
    target = create_torch_model(model.name, num_classes=num_classes, in_chans=in_chans, **overrides)
    height, width = model.input_shape[1:3]
    if height is not None and width is not None:
        target.pretrained_cfg = {**target.pretrained_cfg, "input_size": (in_chans, height, width)}
    copy_keras_to_torch(model, target)
    return target.eval()


def convert_block_form(model: keras.Model, form: str) -> keras.Model:
    """The same Keras ResNeXt in the other block form ('c' grouped or 'split'), same weights."""
    return from_torch(to_torch(model), input_shape=model.input_shape[1:], block_form=form)


# -- the copy ----------------------------------------------------------------------------------
def copy_torch_to_keras(source: nn.Module, target: keras.Model) -> None:
    """Every weighted PyTorch module into the Keras layer of the same name (strict)."""
    layers = _keras_weighted_layers(target)
    filled: set[str] = set()
    for name, module in _torch_weighted_modules(source):
        key = keras_name(name)
        if key in layers:
            layer = layers[key]
            _check_settings(name, module, layer)
            layer.set_weights(_keras_values(name, module, layer))
            filled.add(key)
        elif isinstance(module, nn.Conv2d) and f"{key}_g0" in layers:
            filled.update(_set_split_conv(name, module, layers))
        else:
            raise ConversionError(f"PyTorch module {name!r} ({type(module).__name__}) has no Keras layer {key!r}")
    left = sorted(set(layers) - filled)
    if left:
        raise ConversionError(
            f"Keras layers left without weights: {', '.join(left[:8])}{' ...' if len(left) > 8 else ''}"
        )


def copy_keras_to_torch(source: keras.Model, target: nn.Module) -> None:
    """Every weighted Keras layer into the PyTorch module of the same name (strict)."""
    layers = _keras_weighted_layers(source)
    used: set[str] = set()
    with torch.no_grad():
        for name, module in _torch_weighted_modules(target):
            key = keras_name(name)
            if key in layers:
                _check_settings(name, module, layers[key])
                _load_torch_values(name, module, layers[key].get_weights())
                used.add(key)
            elif isinstance(module, nn.Conv2d) and f"{key}_g0" in layers:
                groups = [layers[f"{key}_g{i}"] for i in range(module.groups)]
                kernel = np.concatenate([g.get_weights()[0] for g in groups], axis=-1)
                _load_torch_values(name, module, [kernel])
                used.update(g.name for g in groups)
            else:
                raise ConversionError(f"PyTorch module {name!r} has no Keras layer {key!r}")
    left = sorted(set(layers) - used)
    if left:
        raise ConversionError(f"Keras layers with no PyTorch module: {', '.join(left[:8])}")


def _torch_weighted_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, _WEIGHTED)]
    keys = [keras_name(n) for n, _ in found]
    if len(set(keys)) != len(keys):  # two module paths differing only by "." vs "_"
        clash = sorted({k for k in keys if keys.count(k) > 1})
        raise ConversionError(f"{type(model).__name__}: module paths that share a Keras name: {clash}")
    return found


def _keras_weighted_layers(model: keras.Model) -> dict[str, keras.layers.Layer]:
    found: dict[str, keras.layers.Layer] = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if layer.weights and isinstance(
            layer, (keras.layers.Conv2D, keras.layers.BatchNormalization, keras.layers.Dense)
        ):
            found[layer.name] = layer
    return found


def _keras_values(name: str, module: nn.Module, layer: keras.layers.Layer) -> list[np.ndarray]:
    """The PyTorch module's tensors in the order and layout ``layer.set_weights`` takes."""
    t = {k: v.detach().cpu().float().numpy() for k, v in module.state_dict().items() if v.dtype.is_floating_point}
    if isinstance(module, nn.Conv2d):
        values = [t["weight"].transpose(2, 3, 1, 0)]
    elif isinstance(module, nn.Linear):
        values = [t["weight"].T]
    else:
        values = [t["weight"], t["bias"], t["running_mean"], t["running_var"]]
        return _check_shapes(name, values, layer)
    if "bias" in t:
        values.append(t["bias"])
    return _check_shapes(name, values, layer)


def _load_torch_values(name: str, module: nn.Module, values: list[np.ndarray]) -> None:
    """The inverse of :func:`_keras_values`, copied into the module's tensors in place."""
    if isinstance(module, nn.BatchNorm2d):
        targets = [module.weight, module.bias, module.running_mean, module.running_var]
        arrays = values
    else:
        kernel = values[0].transpose(3, 2, 0, 1) if isinstance(module, nn.Conv2d) else values[0].T
        targets = [module.weight] + ([module.bias] if module.bias is not None else [])
        arrays = [kernel, *values[1:]]
    if len(targets) != len(arrays):
        raise ConversionError(
            f"{name}: {len(arrays)} Keras weights for {len(targets)} PyTorch tensors (a bias differs)"
        )
    for tensor, array in zip(targets, arrays):
        if tuple(tensor.shape) != tuple(array.shape):
            raise ConversionError(f"{name}: Keras shape {tuple(array.shape)} vs PyTorch {tuple(tensor.shape)}")
        tensor.copy_(torch.from_numpy(np.ascontiguousarray(array)).to(tensor.dtype))


def _set_split_conv(name: str, module: nn.Conv2d, layers: dict[str, keras.layers.Layer]) -> list[str]:
    """The grouped kernel's slice ``i`` (its output channels of group i) into ``{name}_g{i}``."""
    kernel = module.weight.detach().cpu().float().numpy().transpose(2, 3, 1, 0)
    per_group = kernel.shape[-1] // module.groups
    names = []
    for i in range(module.groups):
        layer = layers.get(f"{keras_name(name)}_g{i}")
        if layer is None:
            raise ConversionError(f"{name} has {module.groups} groups but Keras has no layer {keras_name(name)}_g{i}")
        layer.set_weights(_check_shapes(layer.name, [kernel[..., i * per_group : (i + 1) * per_group]], layer))
        names.append(layer.name)
    return names


def _check_shapes(name: str, values: list[np.ndarray], layer: keras.layers.Layer) -> list[np.ndarray]:
    expected = [tuple(w.shape) for w in layer.weights]
    got = [tuple(v.shape) for v in values]
    if expected != got:
        raise ConversionError(f"{name}: PyTorch gives shapes {got}, the Keras layer holds {expected}")
    return values


def _check_settings(name: str, module: nn.Module, layer: keras.layers.Layer) -> None:
    """Equal weights give equal outputs only with equal settings: compare what could differ."""
    if isinstance(module, nn.BatchNorm2d) and not np.isclose(module.eps, layer.epsilon, rtol=1e-6):
        raise ConversionError(f"{name}: BatchNorm epsilon {module.eps} in PyTorch, {layer.epsilon} in Keras")
    if isinstance(module, nn.Conv2d):
        stride = tuple(module.stride)
        if stride != tuple(layer.strides) or module.groups != layer.groups:
            raise ConversionError(
                f"{name}: stride {stride} groups {module.groups} in PyTorch, "
                f"stride {tuple(layer.strides)} groups {layer.groups} in Keras"
            )


def _keras_num_classes(model: keras.Model) -> int:
    """The class count: the width of the output, or 0 for a model without a classifier."""
    if isinstance(model.layers[-1], keras.layers.Dense):
        return int(model.layers[-1].units)
    return 0
