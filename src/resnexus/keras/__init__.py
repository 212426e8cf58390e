"""The resnexus models in Keras 3: the same spec rows, the same weights, channels-last.

    from resnexus import keras as rk
    model = rk.create_model("resnext50_32x4d", num_classes=2)          # fresh, for model.fit
    model = rk.create_model("resnext50_32x4d", num_classes=2, weights="imagenet")
    keras_model = rk.from_torch(torch_model)                             # and back: rk.to_torch

Layout, bottom up: ``layers`` (PyTorch-exact primitives and the serialisable custom layers),
``registry`` (names -> Keras builders), one module per family with the builder its PyTorch
class's rows use, ``convert`` (weights both ways, by layer name), ``create``
(:func:`create_model`), ``files`` (``.keras`` files with resnexus' metadata inside) and
``torch_kernels`` (on Keras' torch backend, convolutions and batch norms as PyTorch's kernels).
The code is backend-agnostic Keras 3 (``keras.ops`` only) and runs on TensorFlow, JAX and torch;
``train --framework keras`` picks the backend before Keras is imported (resnexus.keras_backend). Needs the ``keras`` extra: ``pip install "resnexus[keras]"``.
Import ``resnexus.keras`` (or torchvision) before TensorFlow, see below.
"""

# ruff: noqa: E402  (the imports follow the TensorFlow/Triton guard on purpose: resnexus._compat)

# Triton (loaded by torchvision through torch._dynamo) must come before TensorFlow, or not at all:
# the other order crashes the interpreter (resnexus._compat). Load torchvision now, before Keras
# loads TensorFlow; if TensorFlow is already there, the package __init__ has hidden Triton.
from .._compat import hide_triton_after_tensorflow

hide_triton_after_tensorflow()
import torchvision  # noqa: F401  (isort: the order of these imports matters)

# each family module registers its builder with the registry when imported
from . import densenet, fractalnet, lenet, res2net, resnet, resnet_v2
from .convert import ConversionError, convert_block_form, from_torch, to_torch
from .create import create_model
from .files import load_keras, save_keras
from .fractalnet import column_model
from .layers import ChannelPadShortcut, ChannelSlice, keras_name
from .registry import list_keras_models

__all__ = [
    "ChannelPadShortcut",
    "ChannelSlice",
    "ConversionError",
    "column_model",
    "convert_block_form",
    "create_model",
    "densenet",
    "fractalnet",
    "from_torch",
    "keras_name",
    "lenet",
    "list_keras_models",
    "load_keras",
    "res2net",
    "resnet",
    "resnet_v2",
    "save_keras",
    "to_torch",
]
