"""ResNetV2 (keras.applications layout): sizes, layer order and exact agreement with Keras.

The Keras-backed tests build ``keras.applications.ResNet50V2`` at 72x72 once per module, give every
weight (BN moving statistics included) seeded random values and save it in both the Keras 3
``.weights.h5`` format and the legacy ``.h5`` format that keras.applications downloads use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import resnexus
from resnexus.models.resnet_v2 import BN_EPS, ResNetV2
from tests.helpers import max_abs_diff, randomize_

# Trainable parameters with a 1000-class head, as keras counts them (model.count_params() minus
# the BN moving statistics); ours must equal them exactly.
PARAMS = {"resnet50v2": 25_568_360, "resnet101v2": 44_577_896, "resnet152v2": 60_236_904}
KERAS_NAMES = {"resnet50v2": "ResNet50V2", "resnet101v2": "ResNet101V2", "resnet152v2": "ResNet152V2"}
# keras' torch backend converts tensors with np.array(x), which NumPy 2 flags on every weight
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

SIZE = 64  # small inputs keep the tests cheap on 2 cores
# Keras comparison input: 72 -> 36 -> 18 -> 9 -> 5 -> 3, so the strided blocks (3x3 conv with zero
# pad, 1x1 max-pool shortcut) also meet odd-sized maps, where an off-by-one would show.
KERAS_SIZE = 72


def _meta_model(name: str, **kwargs: Any) -> ResNetV2:
    """Build on the meta device: shapes and counts without allocating or initialising weights."""
    entry = resnexus.models.get_entry(name)
    with torch.device("meta"):
        return entry.builder(**{**entry.config, **kwargs})


def _keras_trainable(model: Any) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def _keras_weighted_layers(model: Any) -> list[Any]:
    return [layer for layer in model.layers if layer.weights]


def _snake(class_name: str) -> str:
    """Keras' naming of a layer kind: Conv2D -> conv2d, BatchNormalization -> batch_normalization."""
    out = ""
    for i, c in enumerate(class_name):
        if c.isupper() and i > 0 and not class_name[i - 1].isupper() and not class_name[i - 1].isdigit():
            out += "_"
        out += c.lower()
    return out


def _keras_to_torch(kind: str, values: list[np.ndarray]) -> list[torch.Tensor]:
    """Our layout of one Keras layer's weights (the conversion the weight loader applies)."""
    t = [torch.from_numpy(np.asarray(v)) for v in values]
    if kind == "conv2d":  # (kh, kw, in, out) -> (out, in, kh, kw), then the bias if any
        return [t[0].permute(3, 2, 0, 1), *t[1:]]
    if kind == "dense":  # (in, out) -> (out, in)
        return [t[0].T, *t[1:]]
    return t  # batch_normalization: gamma, beta, moving_mean, moving_variance


def _torch_params(kind: str, module: nn.Module) -> list[torch.Tensor]:
    if kind == "batch_normalization":
        assert isinstance(module, nn.BatchNorm2d)
        return [module.weight, module.bias, module.running_mean, module.running_var]
    return [module.weight] + ([module.bias] if getattr(module, "bias", None) is not None else [])


# -- no Keras needed ---------------------------------------------------------------------------


def test_registered() -> None:
    assert resnexus.list_models(family="resnet_v2") == sorted(PARAMS)
    for name, keras_name in KERAS_NAMES.items():
        entry = resnexus.models.get_entry(name)
        assert entry.equivalents == {"keras": keras_name}
        assert entry.mean == entry.std == (0.5, 0.5, 0.5)  # Keras "tf" mode: [-1, 1]
        assert entry.reference is not None and entry.reference.params_millions is not None
        assert abs(entry.reference.params_millions - PARAMS[name] / 1e6) < 0.7  # keras.io rounds


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_param_count(name: str) -> None:
    model = _meta_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_keras_layers_targets_exist(name: str) -> None:
    """Every mapped module exists, each weighted module is mapped once, blocks appear in order."""
    model = _meta_model(name)
    layers = model.keras_layers()
    modules = dict(model.named_modules())
    assert len({layer.name for layer in layers}) == len(layers)
    targets = [layer.target for layer in layers]
    assert len(set(targets)) == len(targets)
    kinds = {"conv2d": nn.Conv2d, "batch_normalization": nn.BatchNorm2d, "dense": nn.Linear}
    for layer in layers:
        assert isinstance(modules[layer.target], kinds[layer.kind]), layer
    weighted = {n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))}
    assert set(targets) == weighted
    assert layers[0].name == "conv1_conv" and layers[-2].name == "post_bn" and layers[-1].name == "predictions"
    depths = resnexus.models.get_entry(name).config["depths"]
    # stem conv; 6 per block (preact_bn, 1_conv, 1_bn, 2_conv, 2_bn, 3_conv); 0_conv per stage; post_bn; head
    assert len(layers) == 1 + 6 * sum(depths) + len(depths) + 2


def test_keras_layers_without_head() -> None:
    model = _meta_model("resnet50v2", num_classes=0)
    assert model.keras_layers()[-1].name == "post_bn"


def test_layout_details() -> None:
    """The Keras specifics that distinguish this from the paper's / timm's ResNetV2."""
    model = _meta_model("resnet50v2")
    assert model.stem.conv.bias is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.stem.modules())
    for stage_index, stage in enumerate(model.stages):
        blocks = list(stage.blocks)
        assert isinstance(blocks[0].shortcut, nn.Conv2d) and blocks[0].shortcut.bias is not None
        for block in blocks:
            assert block.conv1.bias is None and block.conv2.bias is None and block.conv3.bias is not None
        strided = stage_index < 3
        assert blocks[-1].conv2.stride == ((2, 2) if strided else (1, 1))
        assert all(b.conv2.stride == (1, 1) for b in blocks[:-1])
        if strided:
            assert isinstance(blocks[-1].shortcut, nn.MaxPool2d)
    assert all(m.eps == BN_EPS for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_stem_pool_pads_with_zeros() -> None:
    """No ReLU precedes the stem pool, so its zero border can win the max; -inf padding would not."""
    model = ResNetV2(depths=(1, 1, 1, 1), num_classes=0).eval()
    with torch.no_grad():
        model.stem.conv.weight.zero_()
        model.stem.conv.bias.fill_(-1.0)
        out = model.stem(torch.zeros(1, 3, 16, 16))
    assert out.shape == (1, 64, 4, 4)
    assert (out[..., 0, :] == 0).all() and (out[..., :, 0] == 0).all()  # windows touching the pad
    assert (out[..., 1:, 1:] == -1).all()


def test_forward_stages_match_feature_info() -> None:
    model = randomize_(resnexus.create_model("resnet50v2", num_classes=10)).eval()
    assert [f.stride for f in model.feature_info] == [8, 16, 32, 32]
    assert [f.channels for f in model.feature_info] == [256, 512, 1024, 2048]
    modules = dict(model.named_modules())
    assert all(f.module in modules for f in model.feature_info)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        stages = model.forward_stages(x)
        features = model.forward_features(x)
        logits = model(x)
    assert len(stages) == len(model.feature_info)
    for out, info in zip(stages, model.feature_info):
        assert out.shape == (1, info.channels, SIZE // info.stride, SIZE // info.stride)
    assert torch.equal(stages[-1], features)  # the last stage is the BN-ReLU'd map the head pools
    assert (features >= 0).all()
    assert logits.shape == (1, 10)


def test_features_only() -> None:
    extractor = resnexus.create_model("resnet50v2", features_only=True, out_indices=(1, 3)).eval()
    assert extractor.channels == [512, 2048] and extractor.strides == [16, 32]
    assert sum(p.numel() for p in extractor.parameters()) == PARAMS["resnet50v2"] - (2048 * 1000 + 1000)
    with torch.no_grad():
        outs = extractor(torch.randn(1, 3, SIZE, SIZE))
    assert [tuple(o.shape) for o in outs] == [(1, 512, 4, 4), (1, 2048, 2, 2)]


def test_in_chans_and_train_step() -> None:
    model = ResNetV2(depths=(1, 1, 1, 1), num_classes=3, in_chans=1)
    out = model(torch.randn(2, 1, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 3) and model.stem.conv.weight.grad is not None


# -- against Keras -----------------------------------------------------------------------------


def _randomize_keras_(model: Any, seed: int = 0) -> None:
    """Seeded random values for every Keras weight, BN moving mean/variance included."""
    rng = np.random.default_rng(seed)
    for layer in _keras_weighted_layers(model):
        for w in layer.weights:
            shape = tuple(w.shape)
            if w.path.endswith("moving_variance"):
                v = rng.uniform(0.5, 1.5, shape)
            elif w.path.endswith("gamma"):
                v = 1.0 + 0.1 * rng.standard_normal(shape)
            elif len(shape) > 1:  # kernels: scaled by fan-in so activations stay O(1)
                v = rng.standard_normal(shape) * 0.5 / np.prod(shape[:-1]) ** 0.5
            else:
                v = 0.1 * rng.standard_normal(shape)
            w.assign(v.astype("float32"))


@pytest.fixture(scope="module")
def keras_resnet50v2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A randomised Keras ResNet50V2 (logits head), its output on a fixed input and its saved weights."""
    keras = pytest.importorskip("keras")
    import h5py

    model = keras.applications.ResNet50V2(
        weights=None, input_shape=(KERAS_SIZE, KERAS_SIZE, 3), classifier_activation=None
    )
    _randomize_keras_(model)
    x = torch.randn(2, 3, KERAS_SIZE, KERAS_SIZE, generator=torch.Generator().manual_seed(1))
    nhwc = x.permute(0, 2, 3, 1).numpy()  # Keras is channels-last, we are channels-first
    logits = torch.from_numpy(np.asarray(keras.ops.convert_to_numpy(model(nhwc, training=False))))
    folder = tmp_path_factory.mktemp("keras_resnet50v2")
    v3 = folder / "r.weights.h5"
    model.save_weights(v3)
    legacy = folder / "r_legacy.h5"
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    layers = [
        (layer.name, _snake(type(layer).__name__), [np.asarray(keras.ops.convert_to_numpy(w)) for w in layer.weights])
        for layer in _keras_weighted_layers(model)
    ]
    return {"model": model, "x": x, "logits": logits, "v3": v3, "legacy": legacy, "layers": layers}


def test_keras_param_count(keras_resnet50v2: dict[str, Any]) -> None:
    assert _keras_trainable(keras_resnet50v2["model"]) == PARAMS["resnet50v2"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet101v2", "resnet152v2"])
def test_keras_param_count_and_order_deep(name: str) -> None:
    keras = pytest.importorskip("keras")
    model = getattr(keras.applications, KERAS_NAMES[name])(weights=None, input_shape=(32, 32, 3))
    assert _keras_trainable(model) == PARAMS[name]
    ours = [(layer.name, layer.kind) for layer in _meta_model(name).keras_layers()]
    assert ours == [(layer.name, _snake(type(layer).__name__)) for layer in _keras_weighted_layers(model)]


def test_keras_layers_order_and_shapes(keras_resnet50v2: dict[str, Any]) -> None:
    ours = _meta_model("resnet50v2")
    modules = dict(ours.named_modules())
    layers = ours.keras_layers()
    assert [(layer.name, layer.kind) for layer in layers] == [(n, k) for n, k, _ in keras_resnet50v2["layers"]]
    for layer, (_, kind, values) in zip(layers, keras_resnet50v2["layers"]):
        expected = [tuple(t.shape) for t in _torch_params(kind, modules[layer.target])]
        assert [tuple(t.shape) for t in _keras_to_torch(kind, values)] == expected, layer


def test_keras_equivalence_inline_conversion(keras_resnet50v2: dict[str, Any]) -> None:
    """keras_layers() alone (no weight loader) is enough to reproduce Keras' outputs."""
    model = resnexus.create_model("resnet50v2").eval()
    modules = dict(model.named_modules())
    with torch.no_grad():
        for layer, (_, kind, values) in zip(model.keras_layers(), keras_resnet50v2["layers"]):
            for dst, src in zip(_torch_params(kind, modules[layer.target]), _keras_to_torch(kind, values), strict=True):
                dst.copy_(src)
        out = model(keras_resnet50v2["x"])
    assert max_abs_diff(out, keras_resnet50v2["logits"]) < 1e-4


@pytest.mark.parametrize("fmt", ["v3", "legacy"])
def test_keras_equivalence_weights_file(keras_resnet50v2: dict[str, Any], fmt: str) -> None:
    """create_model(weights=<Keras file>) gives Keras' logits, for both h5 layouts."""
    pytest.importorskip("resnexus.models.weights")
    path: Path = keras_resnet50v2[fmt]
    model = resnexus.create_model("resnet50v2", weights=path).eval()
    with torch.no_grad():
        out = model(keras_resnet50v2["x"])
    assert max_abs_diff(out, keras_resnet50v2["logits"]) < 1e-4
