"""Model zoo: one module per family, each a spec table registered with :mod:`resnexus.models.registry`.

Layout, bottom up: ``base`` (the interface every classifier shares), ``layers`` and ``blocks``
(pieces several families build with), ``weights`` (reading other libraries' files),
``pretrained`` (the catalog entry type, download once, verify, offline folder),
``registry`` (names -> builders), then one module per family (``resnet``, ``forms``, ``res2net``,
``resnet_v2``, ``densenet``, ``fractalnet``, ``lenet``). A family module registers its spec
tables when it is imported; importing them all here is what fills the registry, so the
registry itself never imports a family.
"""

from . import densenet, fractalnet, lenet, res2net, resnet, resnet_v2  # registers every spec table
from .base import FeatureExtractor, FeatureInfo, ImageClassifier, KerasLayer
from .pretrained import PretrainedWeights
from .registry import (
    InputSpec,
    ModelEntry,
    ModelInfo,
    Reference,
    create_model,
    get_entry,
    list_models,
    list_pretrained,
    model_info,
    model_options,
    register_family,
    register_model,
)

__all__ = [
    "FeatureExtractor",
    "FeatureInfo",
    "ImageClassifier",
    "InputSpec",
    "KerasLayer",
    "ModelEntry",
    "ModelInfo",
    "PretrainedWeights",
    "Reference",
    "create_model",
    "densenet",
    "fractalnet",
    "get_entry",
    "lenet",
    "list_models",
    "list_pretrained",
    "model_info",
    "model_options",
    "register_family",
    "register_model",
    "res2net",
    "resnet",
    "resnet_v2",
]
