"""LeNet-5 (LeCun, Bottou, Bengio, Haffner, "Gradient-Based Learning Applied to Document
Recognition", Proc. IEEE 86(11), 1998) as a small baseline on 3x256x256 images.

Layout of the paper's C1-S2-C3-S4-C5/F6-output chain::

    conv5x5(6) -> ReLU -> maxpool2 -> conv5x5(16) -> ReLU -> maxpool2
    -> flatten -> fc 120 -> ReLU -> fc 84 -> ReLU -> classifier

Modernised where the paper's choices are obsolete: ReLU instead of the scaled tanh, max-pooling
instead of trainable sub-sampling, full C3 connectivity instead of the paper's partial table, and a
linear classifier instead of the RBF output layer. Convolutions are unpadded as in the paper, so
the flattened size depends on the input: for ``img_size`` S it is
``16 * ((((S - 4) // 2) - 4) // 2) ** 2``, i.e. 16 * 61 * 61 = 59,536 at 256 (the paper's C5 is
this fc on a 5x5 map, 16 * 5 * 5, at 32x32). The model therefore only accepts ``img_size`` inputs.

Parameters at 256x256 (every conv and fc has a bias): conv1 456 + conv2 2,416 + fc1 7,144,440 +
fc2 10,164 + classifier 85 * n for n classes: 7,158,326 for 10 classes, 7,242,476 for 1000.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import ImageClassifier
from .registry import InputSpec, Reference, register_family

__all__ = ["LeNet", "lenet_feature_size"]


def lenet_feature_size(img_size: int) -> int:
    """Side of the last feature map: two unpadded 5x5 convs, each followed by a 2x2 max-pool."""
    side = ((img_size - 4) // 2 - 4) // 2
    if side < 1:
        raise ValueError(f"img_size {img_size} is too small for LeNet (needs at least 16)")
    return side


class LeNet(ImageClassifier):
    """LeNet-5 with ReLU and max-pooling; the classifier is ``fc`` (84 -> num_classes).

    The registry's builder: a spec row plus ``num_classes`` / ``in_chans`` are its arguments.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, img_size: int = 256) -> None:
        super().__init__()
        self.img_size = img_size
        self.conv1 = nn.Conv2d(in_chans, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU(inplace=True)
        side = lenet_feature_size(img_size)
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.num_features = 84
        self.num_classes = num_classes
        self.fc = nn.Linear(84, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = []  # no multi-scale stages worth exposing to a detection neck

    def forward_features(self, x: Tensor) -> Tensor:
        """The 16-channel map after the second pool (16 x 61 x 61 at 256x256)."""
        x = self.pool(self.act(self.conv1(x)))
        return self.pool(self.act(self.conv2(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Flatten and the fc stack: LeNet has no global pool, its head is input-size specific."""
        x = torch.flatten(x, 1)
        x = self.act(self.fc2(self.act(self.fc1(x))))
        return x if pre_logits else self.fc(x)


IMG_SIZE = 256  # the only input size a LeNet accepts is the one it was built for

SPECS: dict[str, dict[str, Any]] = {
    "lenet":  dict(img_size=IMG_SIZE),
}  # fmt: skip

REFERENCES: dict[str, Reference] = {
    "lenet": Reference(
        source="LeCun et al., Proc. IEEE 1998 (LeNet-5)",
        dataset="MNIST",
        note=(
            "Layout only: the paper's LeNet-5 reads 32x32 grey digits with tanh, trainable "
            "sub-sampling and RBF outputs; this is a ReLU/max-pool baseline at 3x256x256 with "
            "no published accuracy to compare against."
        ),
    ),
}

EQUIVALENTS: dict[str, dict[str, str]] = {}  # not in torchvision, timm or Keras

register_family("lenet", LeNet, SPECS, REFERENCES, EQUIVALENTS, inputs=InputSpec(input_size=(3, IMG_SIZE, IMG_SIZE)))
