"""Pre-activation ResNetV2 in the ``keras.applications`` layout (ResNet50V2 / 101V2 / 152V2).

The architecture is He et al., "Identity Mappings in Deep Residual Networks" (ECCV 2016): every
block normalises and activates its input (BN-ReLU) before the convolutions, and the identity path
carries the raw sum from block to block. Keras' implementation, whose ImageNet weights people
actually use, differs from the paper's (and from timm's ``resnetv2``) in details that change the
numbers, so this module reproduces Keras exactly instead:

* Stem: 7x7 stride-2 convolution *with* bias, no BatchNorm and no ReLU, then a 3x3 stride-2 max
  pool whose one-pixel border is padded with zeros (not -inf). Because nothing rectifies the conv
  output first, the zero border can win the max, so it must be zeros to match.
* Stride: on the *last* block of stages conv2, conv3 and conv4 (stage conv5 keeps its size). That
  block's identity shortcut is subsampled with a 1x1 max pool (i.e. every other pixel). Stage
  outputs are therefore at strides 8, 16, 32 and 32, not the usual 4, 8, 16, 32.
* The projection shortcut (first block of each stage) is a 1x1 convolution *with* bias applied to
  the pre-activated input; the block's last 1x1 convolution also has a bias (nothing normalises it).
* BatchNorm epsilon is 1.001e-5 everywhere, as in Keras.

Module names describe the layer (there is no torchvision layout for this family):
``stem.conv``, ``stages.<i>.blocks.<j>.{preact_norm, shortcut, conv1, norm1, conv2, norm2, conv3}``,
``post_norm``, ``fc``. :meth:`ResNetV2.keras_layers` maps each to its Keras layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from .base import FeatureInfo, ImageClassifier, KerasLayer
from .layers import init_conv_bn_linear
from .pretrained import KERAS_LICENSE, KERAS_TF_EVAL, PretrainedWeights
from .registry import KERAS_TF_INPUT, Reference, register_family, register_pretrained

BN_EPS = 1.001e-5  # Keras applications' epsilon; PyTorch's default 1e-5 would drift from their outputs
EXPANSION = 4
STEM_WIDTH = 64
WIDTHS = (64, 128, 256, 512)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class Stem(nn.Module):
    """7x7/2 conv with bias, then 3x3/2 max pool over a zero-padded border (no norm, no ReLU)."""

    def __init__(self, in_chans: int, width: int = STEM_WIDTH) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=True)
        # MaxPool2d's own padding uses -inf; Keras pads with zeros before pooling.
        self.pad = nn.ZeroPad2d(1)
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.pad(self.conv(x)))


class PreActBottleneck(nn.Module):
    """Keras' ``residual_block_v2``: BN-ReLU first, then 1x1 -> 3x3 (strided) -> 1x1 (with bias).

    ``shortcut`` is a biased 1x1 conv on the pre-activation (``conv_shortcut=True``), a 1x1 max
    pool of the raw input when the block is strided, or the identity.
    """

    def __init__(self, in_channels: int, width: int, stride: int = 1, conv_shortcut: bool = False) -> None:
        super().__init__()
        out_channels = width * EXPANSION
        self.conv_shortcut = conv_shortcut
        self.preact_norm = _bn(in_channels)
        self.preact_act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if conv_shortcut:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=True)
        elif stride > 1:
            self.shortcut = nn.MaxPool2d(1, stride=stride)
        else:
            if in_channels != out_channels:
                raise ValueError(f"identity shortcut needs in == out channels, got {in_channels} != {out_channels}")
            self.shortcut = nn.Identity()
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.norm1 = _bn(width)
        self.act1 = nn.ReLU(inplace=True)
        # Keras zero-pads by 1 then runs a 'valid' conv: identical to padding=1 here.
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.norm2 = _bn(width)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        preact = self.preact_act(self.preact_norm(x))
        shortcut = self.shortcut(preact if self.conv_shortcut else x)
        out = self.act1(self.norm1(self.conv1(preact)))
        out = self.act2(self.norm2(self.conv2(out)))
        return shortcut + self.conv3(out)


class Stage(nn.Module):
    """``depth`` blocks; the first projects the shortcut, the last carries the stride (Keras order)."""

    def __init__(self, in_channels: int, width: int, depth: int, stride: int) -> None:
        super().__init__()
        blocks = []
        for i in range(depth):
            blocks.append(
                PreActBottleneck(
                    in_channels if i == 0 else width * EXPANSION,
                    width,
                    stride=stride if i == depth - 1 else 1,
                    conv_shortcut=i == 0,
                )
            )
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class ResNetV2(ImageClassifier):
    """Pre-activation bottleneck ResNet, layer for layer the ``keras.applications`` ResNet*V2.

    ``feature_info`` lists the four stage outputs at strides 8, 16, 32, 32 (the stride sits on the
    last block of each of the first three stages). The last entry is the ``post_norm`` BN-ReLU
    output, i.e. what :meth:`forward_features` returns and what the classifier pools, because a
    pre-activation network's raw stage sums are never normalised otherwise.

    The registry's builder: a spec row plus ``num_classes`` / ``in_chans`` are its arguments.
    """

    def __init__(
        self,
        depths: Sequence[int],
        widths: Sequence[int] = WIDTHS,
        num_classes: int = 1000,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if len(depths) != len(widths):
            raise ValueError(f"depths {tuple(depths)} and widths {tuple(widths)} differ in length")
        self.num_classes = num_classes
        self.stem = Stem(in_chans)
        stages, feature_info = [], []
        channels, stride = STEM_WIDTH, 4
        for i, (depth, width) in enumerate(zip(depths, widths)):
            stage_stride = 2 if i < len(depths) - 1 else 1
            stages.append(Stage(channels, width, depth, stage_stride))
            channels, stride = width * EXPANSION, stride * stage_stride
            feature_info.append(FeatureInfo(module=f"stages.{i}", channels=channels, stride=stride))
        self.stages = nn.Sequential(*stages)
        self.post_norm = _bn(channels)
        self.post_act = nn.ReLU(inplace=True)
        feature_info[-1] = FeatureInfo(module="post_act", channels=channels, stride=stride)
        self.feature_info = feature_info
        self.num_features = channels
        self.fc: nn.Module = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()
        init_conv_bn_linear(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.post_act(self.post_norm(self.stages(self.stem(x))))

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        # the last entry is the BN-ReLU'd map the head sees (see the class docstring)
        outs[-1] = self.post_act(self.post_norm(x))
        return outs

    def keras_layers(self) -> list[KerasLayer]:
        """Weighted layers in Keras' ``model.layers`` order.

        Within a block Keras creates preact_bn, 1_conv, 1_bn, 2_conv, 2_bn, then the projection
        ``0_conv`` (first block only) and ``3_conv``: the graph is listed in topological order and
        the shortcut conv is only consumed by the final Add.
        """
        out = [KerasLayer("conv1_conv", "conv2d", "stem.conv")]
        for s, stage in enumerate(self.stages):
            for b, block in enumerate(stage.blocks):
                k, t = f"conv{s + 2}_block{b + 1}", f"stages.{s}.blocks.{b}"
                out += [
                    KerasLayer(f"{k}_preact_bn", "batch_normalization", f"{t}.preact_norm"),
                    KerasLayer(f"{k}_1_conv", "conv2d", f"{t}.conv1"),
                    KerasLayer(f"{k}_1_bn", "batch_normalization", f"{t}.norm1"),
                    KerasLayer(f"{k}_2_conv", "conv2d", f"{t}.conv2"),
                    KerasLayer(f"{k}_2_bn", "batch_normalization", f"{t}.norm2"),
                ]
                if block.conv_shortcut:
                    out.append(KerasLayer(f"{k}_0_conv", "conv2d", f"{t}.shortcut"))
                out.append(KerasLayer(f"{k}_3_conv", "conv2d", f"{t}.conv3"))
        out.append(KerasLayer("post_bn", "batch_normalization", "post_norm"))
        if isinstance(self.fc, nn.Linear):
            out.append(KerasLayer("predictions", "dense", "fc"))
        return out


_KERAS_TABLE = "keras.io/api/applications (Keras Applications table)"
_PAPER = "He et al., 'Identity Mappings in Deep Residual Networks', ECCV 2016"

# name -> stage depths (stage widths are 64-128-256-512 in every variant)
SPECS: dict[str, dict[str, Any]] = {
    "resnet50v2":   dict(depths=(3, 4, 6, 3)),
    "resnet101v2":  dict(depths=(3, 4, 23, 3)),
    "resnet152v2":  dict(depths=(3, 8, 36, 3)),
}  # fmt: skip


def _keras_reference(top1_accuracy: float, params_millions: float) -> Reference:
    """keras.io lists top-1 accuracy; the registry records error."""
    return Reference(
        source=f"{_KERAS_TABLE}; architecture: {_PAPER}",
        top1_error=round(100.0 - top1_accuracy, 1),
        params_millions=params_millions,
        note="Keras layout: stride on the last block of a stage, stem without BN, 'tf' preprocessing",
    )


# keras.io's table: top-1 accuracy (%), parameters (millions)
REFERENCES: dict[str, Reference] = {
    "resnet50v2":   _keras_reference(76.0, 25.6),
    "resnet101v2":  _keras_reference(77.2, 44.7),
    "resnet152v2":  _keras_reference(78.0, 60.4),
}  # fmt: skip

EQUIVALENTS: dict[str, dict[str, str]] = {
    "resnet50v2":   {"keras": "ResNet50V2"},
    "resnet101v2":  {"keras": "ResNet101V2"},
    "resnet152v2":  {"keras": "ResNet152V2"},
}  # fmt: skip

_KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"


def _keras(name: str, md5: str, top1: float) -> PretrainedWeights:
    return PretrainedWeights(
        tag="keras",
        url=f"{_KERAS}{name}_weights_tf_dim_ordering_tf_kernels.h5",
        hash=md5,
        hash_kind="md5",
        layout="keras",
        preprocessing=KERAS_TF_EVAL,
        top1=top1,
        license=KERAS_LICENSE,
        source="https://github.com/keras-team/keras/blob/v3.15.1/keras/src/applications/resnet.py "
        f"(BASE_WEIGHTS_PATH, WEIGHTS_HASHES['{name}'][0]); top-1: https://keras.io/api/applications/",
        recommended=True,
        note="Keras resizes to 224 without a crop in its usage example; its table reports a single centre crop",
    )


# keras.applications' files with the classifier (md5 hashes: Keras' WEIGHTS_HASHES, 32 hex digits).
PRETRAINED: dict[str, tuple[PretrainedWeights, ...]] = {
    "resnet50v2":   (_keras("resnet50v2",  "3ef43a0b657b3be2300d5770ece849e0", 76.0),),
    "resnet101v2":  (_keras("resnet101v2", "6343647c601c52e1368623803854d971", 77.2),),
    "resnet152v2":  (_keras("resnet152v2", "a49b44d1979771252814e80f8ec446f9", 78.0),),
}  # fmt: skip

register_family("resnet_v2", ResNetV2, SPECS, REFERENCES, EQUIVALENTS, inputs=KERAS_TF_INPUT)
register_pretrained(PRETRAINED)
