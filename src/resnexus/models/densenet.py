"""DenseNet (Huang, Liu, van der Maaten & Weinberger, "Densely Connected Convolutional Networks", CVPR 2017).

Every layer of a dense block sees the concatenation of all earlier outputs of the block and adds
``growth_rate`` new channels; transitions (BN-ReLU-1x1 conv-2x2 average pool) halve the width
("compression 0.5") and the resolution between blocks. All variants here are DenseNet-BC: each
layer is BN-ReLU-1x1 conv (``bn_size * growth_rate`` channels)-BN-ReLU-3x3 conv.

Module names are torchvision's (``features.denseblock1.denselayer1.norm1`` ...), so torchvision and
timm checkpoints load as they are; :meth:`DenseNet.remap_state_dict` renames the keys of the old
torchvision files (``denselayer1.norm.1.weight``). :meth:`DenseNet.keras_layers` lists the weighted
layers of ``keras.applications.DenseNet121/169/201``, which compute the same function as ours: Keras
zero-pads before its stem max-pool where we pad with -inf, but the pool follows a ReLU, so both
take the same maxima; Keras' BatchNorm epsilon is 1.001e-5 instead of 1e-5, a relative change of
about 5e-9 / var in each normalisation scale (pass ``bn_eps=1.001e-5`` for bit-level parity).

Stage outputs (``forward_stages`` / ``feature_info``), ImageNet variants:

=====  ==================================  ======  =====================================
stage  tensor                              stride  channels (121 / 161 / 169 / 201)
=====  ==================================  ======  =====================================
1      ``features.transition1.relu``       4       256 / 384 / 256 / 256
2      ``features.transition2.relu``       8       512 / 768 / 512 / 512
3      ``features.transition3.relu``       16      1024 / 2112 / 1280 / 1792
4      ``features.relu5``                  32      1024 / 2208 / 1664 / 1920
=====  ==================================  ======  =====================================

i.e. the full concatenated output of each dense block, batch-normalised and rectified by the
transition that follows it (what the transition's 1x1 conv sees; same shapes as timm's raw block
outputs, but on a normalised scale), and the final BN-ReLU map that enters the global pool.
DenseNet-BC-100-12 (CIFAR, 32x32) has no stride-2 stem, so its three stages sit at strides 1, 2, 4
with 216, 300 and 342 channels.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .base import FeatureInfo, ImageClassifier, KerasLayer
from .layers import conv1x1, conv3x3, init_conv_bn_linear
from .pretrained import KERAS_LICENSE, KERAS_TORCH_EVAL, PretrainedWeights, torchvision_weights
from .registry import CIFAR_INPUT, Reference, register_family, register_pretrained

__all__ = ["DenseBlock", "DenseLayer", "DenseNet", "Transition"]

# Old torchvision checkpoints named the layers of a dense layer `norm.1`, `relu.1`, `conv.1`, ...
_OLD_DENSELAYER_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12])\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
)


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bottleneck) - BN-ReLU-3x3 conv over the concatenation of its inputs."""

    def __init__(
        self,
        in_channels: int,
        growth_rate: int,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        width = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_channels, eps=bn_eps)
        self.conv1 = conv1x1(in_channels, width)
        self.norm2 = nn.BatchNorm2d(width, eps=bn_eps)
        self.conv2 = conv3x3(width, growth_rate)
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def new_features(self, x: Tensor, norm: Callable[[nn.BatchNorm2d, Tensor], Tensor] | None = None) -> Tensor:
        """BN-ReLU-1x1 conv-BN-ReLU-3x3 conv (+ dropout) of the concatenated input: the
        ``growth_rate`` new channels. ``norm`` replaces the BatchNorm calls (recomputation)."""
        norm = norm or (lambda bn, t: bn(t))
        x = self.conv1(F.relu(norm(self.norm1, x), inplace=True))
        x = self.conv2(F.relu(norm(self.norm2, x), inplace=True))
        if self.drop_rate > 0:  # in a recomputation, checkpoint has restored the RNG: the same mask
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x

    def _checkpointed(self, features: Sequence[Tensor]) -> Tensor:
        """The layer under torch.utils.checkpoint: only its output is kept for backward, which
        runs it again. The first forward already updated the running statistics; the second
        normalises with the same batch statistics but leaves them alone (else every batch
        would count twice)."""
        calls = 0

        def run(*xs: Tensor) -> Tensor:
            nonlocal calls
            calls += 1
            return self.new_features(_concat(xs), norm=None if calls == 1 else _batch_norm_without_update)

        return checkpoint(run, *features, use_reentrant=False)

    def forward(self, features: Tensor | Sequence[Tensor]) -> Tensor:
        """New features from one concatenated tensor or from the list of earlier outputs."""
        if isinstance(features, Tensor):
            return self.new_features(features)
        if self.memory_efficient and self.training and torch.is_grad_enabled():
            return self._checkpointed(features)
        return self.new_features(_concat(features))


def _concat(features: Sequence[Tensor]) -> Tensor:
    return torch.cat(list(features), 1) if len(features) > 1 else features[0]


def _batch_norm_without_update(bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """Training-mode batch norm of ``x`` that leaves ``bn``'s running statistics as they are."""
    return F.batch_norm(
        x,
        bn.running_mean.clone() if bn.running_mean is not None else None,
        bn.running_var.clone() if bn.running_var is not None else None,
        bn.weight,
        bn.bias,
        True,
        0.0,
        bn.eps,
    )


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; returns the input concatenated with every layer's output."""

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth_rate: int,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            self[f"denselayer{i + 1}"] = DenseLayer(
                in_channels + i * growth_rate, growth_rate, bn_size, drop_rate, memory_efficient, bn_eps
            )
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: Tensor) -> Tensor:
        layers: list[DenseLayer] = list(self.values())  # type: ignore[arg-type]
        if layers and layers[0].memory_efficient and self.training and torch.is_grad_enabled():
            # Keep only the individual outputs; each layer is recomputed from them in backward.
            features = [x]
            for layer in layers:
                features.append(layer(features))
            return torch.cat(features, 1)
        # Plain path: grow one running concatenation. Each step copies the block so far once (as
        # concatenating the list would), and the result of the last step is the block output,
        # so there is no extra final concatenation and backward adds one gradient per layer.
        for layer in layers:
            x = torch.cat((x, layer(x)), 1)
        return x


class Transition(nn.Module):
    """BN-ReLU-1x1 conv-2x2 average pool between dense blocks: compresses width, halves resolution."""

    def __init__(self, in_channels: int, out_channels: int, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels, eps=bn_eps)
        self.relu = nn.ReLU(inplace=True)
        self.conv = conv1x1(in_channels, out_channels)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)

    def pre_act(self, x: Tensor) -> Tensor:
        """BN-ReLU of the block output (the stage feature map)."""
        return self.relu(self.norm(x))

    def reduce(self, x: Tensor) -> Tensor:
        return self.pool(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.reduce(self.pre_act(x))


class DenseNet(ImageClassifier):
    """DenseNet-BC. ``stem="imagenet"``: 7x7/2 conv-BN-ReLU-3x3/2 max pool with
    ``num_init_features`` channels; ``stem="cifar"``: one 3x3 conv with ``num_init_features``
    channels (2 x growth rate in the paper) and nothing else, as in the authors' CIFAR models.

    ``memory_efficient=True`` checkpoints every dense layer while training (torch.utils.checkpoint):
    only each layer's ``growth_rate`` new channels are kept, and its concatenated input, bottleneck
    and BN-ReLU maps are recomputed in backward, so activation memory grows linearly instead of
    quadratically with depth for the cost of one more forward of each dense layer. torchvision's
    and timm's mode recompute only the bottleneck, and the stored 3x3 inputs dominate what remains.
    Outputs, gradients and running statistics equal the plain path's.

    The registry's builder: a spec row plus ``num_classes`` / ``in_chans`` are its arguments.
    """

    classifier_name = "classifier"

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        compression: float = 0.5,
        stem: str = "imagenet",
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
        bn_eps: float = 1e-5,
        num_classes: int = 1000,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        self.growth_rate = growth_rate
        self.block_config = tuple(block_config)
        self.num_init_features = num_init_features
        self.bn_size = bn_size
        self.compression = compression
        self.stem = stem
        self.num_classes = num_classes

        features = nn.Sequential()
        if stem == "imagenet":
            features.add_module("conv0", nn.Conv2d(in_chans, num_init_features, 7, stride=2, padding=3, bias=False))
            features.add_module("norm0", nn.BatchNorm2d(num_init_features, eps=bn_eps))
            features.add_module("relu0", nn.ReLU(inplace=True))
            features.add_module("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
            stride = 4
        else:
            features.add_module("conv0", conv3x3(in_chans, num_init_features))
            stride = 1

        self.feature_info = []
        channels = num_init_features
        for i, num_layers in enumerate(self.block_config):
            block = DenseBlock(num_layers, channels, growth_rate, bn_size, drop_rate, memory_efficient, bn_eps)
            features.add_module(f"denseblock{i + 1}", block)
            channels = block.out_channels
            if i < len(self.block_config) - 1:
                features.add_module(f"transition{i + 1}", Transition(channels, int(channels * compression), bn_eps))
                self.feature_info.append(FeatureInfo(f"features.transition{i + 1}.relu", channels, stride))
                channels = int(channels * compression)
                stride *= 2
        features.add_module("norm5", nn.BatchNorm2d(channels, eps=bn_eps))
        features.add_module("relu5", nn.ReLU(inplace=True))
        self.feature_info.append(FeatureInfo("features.relu5", channels, stride))
        self.features = features
        self.num_features = channels
        self.classifier: nn.Module = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()

        init_conv_bn_linear(self)
        if isinstance(self.classifier, nn.Linear):
            nn.init.zeros_(self.classifier.bias)  # as torchvision and the authors' code do

    # -- forwards ----------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """The final BN-ReLU feature map (``features.relu5``), before global pooling."""
        return self.features(x)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """One map per ``feature_info`` entry: BN-ReLU'd block outputs, then the final map."""
        stages: list[Tensor] = []
        for module in self.features.children():
            if isinstance(module, Transition):
                x = module.pre_act(x)
                stages.append(x)
                x = module.reduce(x)
            else:
                x = module(x)
        stages.append(x)
        return stages

    # -- interop -----------------------------------------------------------------------------
    def remap_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rename old torchvision keys (``denselayer1.norm.1.weight`` -> ``denselayer1.norm1.weight``).

        torchvision's first DenseNet files were saved when a dense layer was an ``nn.Sequential``
        with children named ``norm.1``, ``conv.2``...; current files (and timm's) pass unchanged.
        """
        out: dict[str, Tensor] = {}
        for key, value in state_dict.items():
            m = _OLD_DENSELAYER_KEY.match(key)
            out[f"{m.group(1)}{m.group(2)}.{m.group(3)}" if m else key] = value
        return out

    def keras_layers(self) -> list[KerasLayer]:
        """Weighted layers of ``keras.applications.DenseNet121/169/201`` in ``model.layers`` order.

        Names are Keras 3's (``conv1_conv``, ``conv2_block1_0_bn``, ..., ``bn``, ``predictions``).
        Keras' DenseNet is fixed to growth rate 32, 64 stem channels, a 4x bottleneck and
        compression 0.5, so other configurations have no Keras twin.
        """
        if (self.stem, self.growth_rate, self.num_init_features, self.bn_size, self.compression) != (
            "imagenet",
            32,
            64,
            4,
            0.5,
        ):
            raise NotImplementedError("only the ImageNet DenseNets with k=32 (121/169/201) exist in Keras")
        conv, bn = "conv2d", "batch_normalization"
        spec = [KerasLayer("conv1_conv", conv, "features.conv0"), KerasLayer("conv1_bn", bn, "features.norm0")]
        for b, num_layers in enumerate(self.block_config, start=1):
            for j in range(1, num_layers + 1):
                keras_name, ours = f"conv{b + 1}_block{j}", f"features.denseblock{b}.denselayer{j}"
                spec += [
                    KerasLayer(f"{keras_name}_0_bn", bn, f"{ours}.norm1"),
                    KerasLayer(f"{keras_name}_1_conv", conv, f"{ours}.conv1"),
                    KerasLayer(f"{keras_name}_1_bn", bn, f"{ours}.norm2"),
                    KerasLayer(f"{keras_name}_2_conv", conv, f"{ours}.conv2"),
                ]
            if b < len(self.block_config):
                spec += [
                    KerasLayer(f"pool{b + 1}_bn", bn, f"features.transition{b}.norm"),
                    KerasLayer(f"pool{b + 1}_conv", conv, f"features.transition{b}.conv"),
                ]
        spec.append(KerasLayer("bn", bn, "features.norm5"))
        if isinstance(self.classifier, nn.Linear):
            spec.append(KerasLayer("predictions", "dense", "classifier"))
        return spec


# -- registry ------------------------------------------------------------------------------------
_PAPER = "Huang et al., CVPR 2017"
_IMAGENET_TABLE3 = f"{_PAPER}, Table 3 (ImageNet val, single-crop 224)"

# ImageNet DenseNet-BC (the paper's Table 1; 161 is the k=48 model released with the code).
# name                   growth rate k   layers per dense block        stem width
SPECS: dict[str, dict[str, Any]] = {
    "densenet121":  dict(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64),
    "densenet161":  dict(growth_rate=48, block_config=(6, 12, 36, 24), num_init_features=96),
    "densenet169":  dict(growth_rate=32, block_config=(6, 12, 32, 32), num_init_features=64),
    "densenet201":  dict(growth_rate=32, block_config=(6, 12, 48, 32), num_init_features=64),
}  # fmt: skip

# CIFAR DenseNet-BC (Table 2). Depth 100 = 3 blocks x 16 layers x 2 convs + stem conv + 2 transition convs
# + classifier.
CIFAR_SPECS: dict[str, dict[str, Any]] = {
    "densenet_bc_100_12":  dict(growth_rate=12, block_config=(16, 16, 16), num_init_features=24, stem="cifar"),
}  # fmt: skip

REFERENCES: dict[str, Reference] = {
    "densenet121": Reference(_IMAGENET_TABLE3, top1_error=25.02, top5_error=7.71, params_millions=8.0,
                             note="torchvision weights: acc@1 74.434 / acc@5 91.972"),
    "densenet161": Reference(
        "Huang et al., official repo README (github.com/liuzhuang13/DenseNet), Torch model, 224 1-crop",
        top1_error=22.2,
        params_millions=28.7,
        note="not in the paper's Table 3 (k=48 variant released with the code); no top-5 given there; "
        "torchvision weights: acc@1 77.138 / acc@5 93.560",
    ),
    "densenet169": Reference(_IMAGENET_TABLE3, top1_error=23.80, top5_error=6.85, params_millions=14.1,
                             note="torchvision weights: acc@1 75.600 / acc@5 92.806"),
    "densenet201": Reference(_IMAGENET_TABLE3, top1_error=22.58, top5_error=6.34, params_millions=20.0,
                             note="torchvision weights: acc@1 76.896 / acc@5 93.370"),
    "densenet_bc_100_12": Reference(
        f"{_PAPER}, Table 2 (DenseNet-BC, L=100, k=12)",
        dataset="CIFAR-10+",
        top1_error=4.51,
        params_millions=0.8,
        note="C10 5.92, C10+ 4.51, C100 24.15, C100+ 22.27 (% error; + = standard augmentation); "
        "the paper adds dropout 0.2 only without augmentation (drop_rate=0.2)",
    ),
}  # fmt: skip

# Keras has the k=32 models only; nobody has the CIFAR one.
EQUIVALENTS: dict[str, dict[str, str]] = {
    "densenet121":  {"torchvision": "densenet121", "timm": "densenet121", "keras": "DenseNet121"},
    "densenet161":  {"torchvision": "densenet161", "timm": "densenet161"},
    "densenet169":  {"torchvision": "densenet169", "timm": "densenet169", "keras": "DenseNet169"},
    "densenet201":  {"torchvision": "densenet201", "timm": "densenet201", "keras": "DenseNet201"},
}  # fmt: skip

_TV = "https://download.pytorch.org/models/"
_KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
_KERAS_SOURCE = (
    "https://github.com/keras-team/keras/blob/v3.15.1/keras/src/applications/densenet.py (url, file_hash); "
    "top-1: https://keras.io/api/applications/"
)


def _tv(file: str, top1: float, weights_class: str) -> PretrainedWeights:
    return torchvision_weights(
        "IMAGENET1K_V1", _TV + file, top1, weights_class, "densenet", resize_size=256, recommended=True
    )


def _keras(file: str, md5: str, top1: float) -> PretrainedWeights:
    return PretrainedWeights(
        tag="keras",
        url=_KERAS + file,
        hash=md5,
        hash_kind="md5",
        layout="keras",
        preprocessing=KERAS_TORCH_EVAL,
        top1=top1,
        license=KERAS_LICENSE,
        source=_KERAS_SOURCE,
        note="Keras resizes to 224 without a crop in its usage example; its table reports a single centre crop",
    )


# Published ImageNet weights: torchvision's DenseNet*_Weights (url with the SHA-256 prefix, acc@1) and
# keras.applications' files (URL and md5 `file_hash` from Keras' source, top-1 from keras.io's table).
PRETRAINED: dict[str, tuple[PretrainedWeights, ...]] = {
    "densenet121": (
        _tv("densenet121-a639ec97.pth", 74.434, "DenseNet121_Weights"),
        _keras("densenet121_weights_tf_dim_ordering_tf_kernels.h5", "9d60b8095a5708f2dcce2bca79d332c7", 75.0),
    ),
    "densenet161": (_tv("densenet161-8d451a50.pth", 77.138, "DenseNet161_Weights"),),
    "densenet169": (
        _tv("densenet169-b2777c0a.pth", 75.600, "DenseNet169_Weights"),
        _keras("densenet169_weights_tf_dim_ordering_tf_kernels.h5", "d699b8f76981ab1b30698df4c175e90b", 76.2),
    ),
    "densenet201": (
        _tv("densenet201-c1103571.pth", 76.896, "DenseNet201_Weights"),
        _keras("densenet201_weights_tf_dim_ordering_tf_kernels.h5", "1ceb130c1ea1b78c3bf6114dbdfd8807", 77.3),
    ),
}  # fmt: skip

register_family("densenet", DenseNet, SPECS, REFERENCES, EQUIVALENTS)
register_family("densenet", DenseNet, CIFAR_SPECS, REFERENCES, EQUIVALENTS, inputs=CIFAR_INPUT)
register_pretrained(PRETRAINED)
