"""Model zoo: every family registers its spec table with :mod:`resnexus.models.registry`."""

from .base import FeatureExtractor, FeatureInfo, ImageClassifier, KerasLayer
from .registry import ModelEntry, ModelInfo, Reference, create_model, get_entry, list_models, model_info, register_model

__all__ = [
    "FeatureExtractor",
    "FeatureInfo",
    "ImageClassifier",
    "KerasLayer",
    "ModelEntry",
    "ModelInfo",
    "Reference",
    "create_model",
    "get_entry",
    "list_models",
    "model_info",
    "register_model",
]
