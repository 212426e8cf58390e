"""The surface every resnexus classifier shares.

Every family (ResNet, ResNeXt, Res2Net, DenseNet, ...) subclasses :class:`ImageClassifier`, so the
training loop, the weight loader and the feature extractor need to know only this interface:

    forward_features(x) -> last feature map (before global pooling)
    forward_head(x)     -> logits (global pool + classifier)
    forward_stages(x)   -> one feature map per entry of ``feature_info`` (for detection backbones)

Families that can read another library's layout override :meth:`remap_state_dict` (old or foreign
key names) and :meth:`keras_layers` (the Keras layer order, for ``.h5`` weight files).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def check_num_classes(num_classes: int) -> int:
    """``num_classes`` as an int: a whole number >= 1, or 0 for a model without a classifier (the
    pooled features). Refused otherwise, naming the value: a negative count used to build a
    feature extractor without a word (every head is ``Linear if num_classes > 0 else Identity``)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 0:
        raise ValueError(
            f"invalid num_classes {num_classes!r}: expected a whole number >= 1 (0: no classifier, "
            "the model returns its pooled features)"
        )
    return int(num_classes)


@dataclass(frozen=True)
class FeatureInfo:
    """One stage output a backbone can return: where it comes from, its width and its stride."""

    module: str  # dotted path of the module whose output this is, e.g. "layer2"
    channels: int
    stride: int  # input pixels per output pixel (4, 8, 16, 32)


@dataclass(frozen=True)
class KerasLayer:
    """One weighted Keras layer, in the order Keras lists ``model.layers``.

    ``kind`` is Keras' snake-case class name ("conv2d", "batch_normalization", "dense"): Keras 3
    ``.weights.h5`` files name layers by kind and counter (``conv2d_7``), legacy ``.h5`` files by
    ``name``; ``target`` is the dotted path of our module that receives the weights.
    """

    name: str
    kind: str
    target: str


class ImageClassifier(nn.Module):
    """Base class: backbone -> global average pool -> linear classifier.

    Subclasses set ``num_features`` (channels entering the classifier), ``feature_info``, and
    build a ``nn.Linear`` named by ``classifier_name`` ("fc" for ResNets as in torchvision,
    "classifier" for DenseNet).
    """

    classifier_name: str = "fc"
    num_features: int
    num_classes: int
    feature_info: list[FeatureInfo]

    # -- the three forwards ------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Outputs of the stages described by ``feature_info``, shallowest first."""
        raise NotImplementedError(f"{type(self).__name__} does not expose stage outputs")

    # -- the classifier ----------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one (fine-tuning to new classes);
        ``num_classes=0`` removes it (the model returns the pooled features)."""
        num_classes = check_num_classes(num_classes)
        self.num_classes = num_classes
        old = self.get_classifier()
        device = old.weight.device if isinstance(old, nn.Linear) else None
        head: nn.Module = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()
        setattr(self, self.classifier_name, head)

    # -- interop hooks -----------------------------------------------------------------------
    def remap_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Translate a foreign or legacy key layout into ours. Identity unless a family needs it."""
        return state_dict

    def keras_layers(self) -> list[KerasLayer]:
        """The weighted layers of the equivalent keras.applications model, in Keras' order."""
        raise NotImplementedError(f"{type(self).__name__} has no Keras equivalent")


class FeatureExtractor(nn.Module):
    """Wraps a classifier so that calling it returns the stage outputs instead of logits.

    The classifier is removed (replaced by Identity) so its parameters are neither counted nor
    trained; ``channels`` and ``strides`` tell a detection or segmentation neck what to expect.
    """

    def __init__(self, model: ImageClassifier, out_indices: tuple[int, ...] | None = None) -> None:
        super().__init__()
        n = len(model.feature_info)
        self.out_indices = tuple(range(n)) if out_indices is None else tuple(i % n for i in out_indices)
        if any(i >= n for i in self.out_indices):
            raise ValueError(f"out_indices {out_indices} out of range: the model has {n} stages")
        model.reset_classifier(0)
        self.model = model
        self.feature_info = [model.feature_info[i] for i in self.out_indices]

    @property
    def channels(self) -> list[int]:
        return [f.channels for f in self.feature_info]

    @property
    def strides(self) -> list[int]:
        return [f.stride for f in self.feature_info]

    def forward(self, x: Tensor) -> list[Tensor]:
        stages = self.model.forward_stages(x)
        return [stages[i] for i in self.out_indices]
