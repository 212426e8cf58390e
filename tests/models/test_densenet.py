"""DenseNet: sizes, torchvision/timm/Keras weight compatibility, memory-efficient mode, stages."""

from __future__ import annotations

import pytest
import torch

import resnexus
from resnexus.models import densenet as densenet_module
from resnexus.models.base import FeatureExtractor
from tests.helpers import max_abs_diff, randomize_

IMAGENET_VARIANTS = ["densenet121", "densenet161", "densenet169", "densenet201"]
# torchvision's counts with 1000 classes (checked against torchvision.models.* below as well)
PARAMS = {
    "densenet121": 7_978_856,
    "densenet161": 28_681_000,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
}
# the larger variants cost seconds each on 2 shared cores; densenet121 keeps the fast path covered
SLOW_VARIANTS = {"densenet161", "densenet169", "densenet201"}


def _variants(names: list[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_VARIANTS else n for n in names]


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _torchvision(name: str) -> torch.nn.Module:
    import torchvision

    return getattr(torchvision.models, name)(weights=None)


# -- sizes and layout ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", IMAGENET_VARIANTS)
def test_param_count_and_keys_match_torchvision(name: str) -> None:
    with torch.device("meta"):
        ours = resnexus.create_model(name)
        theirs = _torchvision(name)
    assert _n_params(ours) == _n_params(theirs) == PARAMS[name]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_densenet_bc_100_12_cifar() -> None:
    model = resnexus.create_model("densenet_bc_100_12", num_classes=10)
    assert _n_params(model) == 769_162
    info = resnexus.model_info("densenet_bc_100_12")
    assert info.params == 769_162 and info.input_size == (3, 32, 32)
    entry = resnexus.models.get_entry("densenet_bc_100_12")
    assert entry.mean == resnexus.models.registry.CIFAR_MEAN
    assert entry.std == resnexus.models.registry.CIFAR_STD
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_registry_metadata() -> None:
    assert resnexus.list_models("densenet*") == [*IMAGENET_VARIANTS, "densenet_bc_100_12"]
    entry = resnexus.models.get_entry("densenet121")
    assert entry.equivalents == {"torchvision": "densenet121", "timm": "densenet121", "keras": "DenseNet121"}
    assert entry.reference is not None and entry.reference.top1_error == 25.02 and entry.reference.top5_error == 7.71


# -- loading other libraries' weights ------------------------------------------------------------
def _compare_logits(theirs: torch.nn.Module, name: str, tmp_path, seed: int = 0) -> float:
    randomize_(theirs, seed=seed).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(theirs.state_dict(), path)
    ours = resnexus.create_model(name, weights=path).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return max_abs_diff(ours(x), theirs(x))


@pytest.mark.parametrize("name", _variants(IMAGENET_VARIANTS))
def test_torchvision_weights_give_same_logits(name: str, tmp_path) -> None:
    assert _compare_logits(_torchvision(name), name, tmp_path) < 1e-4


@pytest.mark.parametrize("name", _variants(IMAGENET_VARIANTS))
def test_timm_weights_give_same_logits(name: str, tmp_path) -> None:
    timm = pytest.importorskip("timm")
    assert _compare_logits(timm.create_model(name, pretrained=False), name, tmp_path, seed=1) < 1e-4


def test_old_torchvision_keys_load(tmp_path) -> None:
    """Checkpoints from torchvision's first DenseNet release name layers `norm.1`, `conv.2`..."""
    theirs = randomize_(_torchvision("densenet121"), seed=2).eval()
    old = {}
    for key, value in theirs.state_dict().items():
        if ".denselayer" in key:
            for part in ("norm1", "conv1", "norm2", "conv2"):
                key = key.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        old[key] = value
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    assert "features.denseblock1.denselayer1.conv.2.weight" in old
    path = tmp_path / "old.pth"
    torch.save(old, path)
    ours = resnexus.create_model("densenet121", weights=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_abs_diff(ours(x), theirs(x)) < 1e-4


def test_remap_leaves_current_keys_alone() -> None:
    with torch.device("meta"):
        model = resnexus.create_model("densenet121")
    state = model.state_dict()
    assert list(model.remap_state_dict(state)) == list(state)


# -- memory-efficient mode -----------------------------------------------------------------------
def _train_step(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(x)
    (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_memory_efficient_same_outputs_gradients_and_stats(monkeypatch) -> None:
    calls = []
    real_checkpoint = densenet_module.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(densenet_module, "checkpoint", counting_checkpoint)
    torch.manual_seed(0)
    plain = resnexus.create_model("densenet121", num_classes=10)
    efficient = resnexus.create_model("densenet121", num_classes=10, memory_efficient=True)
    randomize_(plain)
    efficient.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)

    out_p, grads_p = _train_step(plain, x)
    assert not calls
    out_e, grads_e = _train_step(efficient, x)
    assert len(calls) == 58 and all(flag is False for flag in calls)  # one per dense layer, non-reentrant

    assert max_abs_diff(out_p, out_e) < 1e-5
    for name, g in grads_p.items():
        assert max_abs_diff(g, grads_e[name]) <= 1e-4 * max(1.0, g.abs().max().item()), name
    # recomputation in backward must not update the BatchNorm running statistics a second time
    for (name, b_p), b_e in zip(plain.named_buffers(), efficient.buffers()):
        assert torch.allclose(b_p.float(), b_e.float(), atol=1e-6), name

    calls.clear()
    efficient.eval()
    with torch.no_grad():
        assert max_abs_diff(efficient(x), plain.eval()(x)) < 1e-5
    assert not calls  # checkpointing only when training with grad enabled


def test_memory_efficient_with_dropout_recomputes_the_same_masks() -> None:
    """The recomputation in backward must draw the dropout masks the first forward drew."""
    torch.manual_seed(0)
    plain = resnexus.create_model(
        "densenet_bc_100_12", num_classes=3, growth_rate=4, block_config=(3, 3, 3), drop_rate=0.3
    )
    efficient = resnexus.create_model(
        "densenet_bc_100_12", num_classes=3, growth_rate=4, block_config=(3, 3, 3), drop_rate=0.3, memory_efficient=True
    )
    randomize_(plain)
    efficient.load_state_dict(plain.state_dict())
    x = torch.randn(3, 3, 16, 16)
    torch.manual_seed(7)
    out_p, grads_p = _train_step(plain, x)
    torch.manual_seed(7)
    out_e, grads_e = _train_step(efficient, x)
    assert max_abs_diff(out_p, out_e) < 1e-6
    for name, g in grads_p.items():
        assert max_abs_diff(g, grads_e[name]) <= 1e-5 * max(1.0, g.abs().max().item()), name
    torch.manual_seed(8)  # other masks give other gradients: the comparison above can fail
    _, grads_other = _train_step(plain, x)
    assert any(max_abs_diff(g, grads_other[n]) > 1e-3 for n, g in grads_p.items())


# -- stages --------------------------------------------------------------------------------------
def test_feature_info_and_stage_shapes() -> None:
    model = resnexus.create_model("densenet121").eval()
    assert [(f.module, f.channels, f.stride) for f in model.feature_info] == [
        ("features.transition1.relu", 256, 4),
        ("features.transition2.relu", 512, 8),
        ("features.transition3.relu", 1024, 16),
        ("features.relu5", 1024, 32),
    ]
    modules = dict(model.named_modules())
    assert all(f.module in modules for f in model.feature_info)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stages = model.forward_stages(x)
        final = model.forward_features(x)
        logits = model(x)
    for f, s in zip(model.feature_info, stages):
        assert s.shape == (1, f.channels, 64 // f.stride, 64 // f.stride)
    assert torch.equal(stages[-1], final)
    assert torch.allclose(model.forward_head(final), logits)

    extractor = resnexus.create_model("densenet121", features_only=True, out_indices=(1, 3)).eval()
    assert isinstance(extractor, FeatureExtractor)
    assert extractor.channels == [512, 1024] and extractor.strides == [8, 32]


@pytest.mark.parametrize(
    "name,channels",
    [
        ("densenet161", [384, 768, 2112, 2208]),
        ("densenet169", [256, 512, 1280, 1664]),
        ("densenet201", [256, 512, 1792, 1920]),
    ],
)
def test_feature_channels_other_variants(name: str, channels: list[int]) -> None:
    with torch.device("meta"):
        model = resnexus.create_model(name)
    assert [f.channels for f in model.feature_info] == channels
    assert [f.stride for f in model.feature_info] == [4, 8, 16, 32]


def test_cifar_stages() -> None:
    model = resnexus.create_model("densenet_bc_100_12", num_classes=10).eval()
    assert [(f.channels, f.stride) for f in model.feature_info] == [(216, 1), (300, 2), (342, 4)]
    with torch.no_grad():
        stages = model.forward_stages(torch.randn(1, 3, 32, 32))
    assert [tuple(s.shape) for s in stages] == [(1, 216, 32, 32), (1, 300, 16, 16), (1, 342, 8, 8)]


# -- Keras ---------------------------------------------------------------------------------------
def _random_keras_densenet121(seed: int = 0):
    keras = pytest.importorskip("keras")
    import numpy as np

    model = keras.applications.DenseNet121(weights=None, input_shape=(64, 64, 3), classifier_activation=None)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = (w.shape for w in weights)
            new = [
                1 + 0.1 * rng.standard_normal(gamma),
                0.1 * rng.standard_normal(beta),
                0.1 * rng.standard_normal(mean),
                0.5 + rng.random(var),
            ]
        else:  # kernels scaled by fan-in so activations stay O(1); random biases
            new = [
                rng.standard_normal(w.shape) * (0.5 / np.sqrt(np.prod(w.shape[:-1])))
                if w.ndim > 1
                else 0.1 * rng.standard_normal(w.shape)
                for w in weights
            ]
        layer.set_weights([w.astype("float32") for w in new])
    return keras, model


@pytest.mark.slow
def test_keras_densenet121_weights_give_same_logits(tmp_path) -> None:
    import numpy as np

    keras, kmodel = _random_keras_densenet121()
    ours_spec = resnexus.create_model("densenet121").keras_layers()
    assert [layer.name for layer in kmodel.layers if layer.weights] == [s.name for s in ours_spec]
    assert len(ours_spec) == 242

    x = np.random.default_rng(1).standard_normal((2, 64, 64, 3)).astype("float32")
    expected = torch.from_numpy(keras.ops.convert_to_numpy(kmodel(x, training=False)))
    x_nchw = torch.from_numpy(x).permute(0, 3, 1, 2)

    kmodel.save_weights(tmp_path / "d.weights.h5")  # Keras 3 layout: layers named conv2d_7, ...
    # default epsilon (1e-5) and Keras' own (1.001e-5) both match; the latter is exact by design
    for eps in (1e-5, 1.001e-5):
        ours = resnexus.create_model("densenet121", weights=tmp_path / "d.weights.h5", bn_eps=eps).eval()
        with torch.no_grad():
            assert max_abs_diff(ours(x_nchw), expected) < 1e-4

    kmodel.save(tmp_path / "d.h5")  # legacy HDF5 layout: layers named conv2_block1_1_conv, ...
    ours = resnexus.create_model("densenet121", weights=tmp_path / "d.h5").eval()
    with torch.no_grad():
        assert max_abs_diff(ours(x_nchw), expected) < 1e-4


def test_keras_layers_structure() -> None:
    with torch.device("meta"):
        spec = resnexus.create_model("densenet121").keras_layers()
        targets = dict(resnexus.create_model("densenet121").named_modules())
    assert len(spec) == 242  # 1 stem conv + 1 stem bn + 58 x 4 + 3 x 2 transitions + final bn + dense
    assert spec[0].name == "conv1_conv" and spec[0].target == "features.conv0"
    assert spec[-1].kind == "dense" and spec[-1].target == "classifier"
    assert all(s.target in targets for s in spec)
    assert [s.kind for s in spec].count("conv2d") == 120
    with torch.device("meta"), pytest.raises(NotImplementedError):
        resnexus.create_model("densenet161").keras_layers()


def _write_old_keras_h5(kmodel, path, rename: dict[str, str]) -> None:
    """An HDF5 file laid out like the ones older Keras releases published (layer names of the time)."""
    import h5py

    with h5py.File(path, "w") as f:
        names = []
        for layer in kmodel.layers:
            name = rename.get(layer.name, layer.name)
            names.append(name.encode())
            group = f.create_group(name)
            weight_names = []
            for i, w in enumerate(layer.get_weights()):
                weight_names.append(f"{name}/w{i}:0".encode())
                group.create_dataset(f"{name}/w{i}:0", data=w)  # nested, as Keras wrote them
            group.attrs["weight_names"] = weight_names
        f.attrs["layer_names"] = names


@pytest.mark.slow
def test_keras_file_with_old_layer_names_loads_by_position_and_exactly(tmp_path) -> None:
    import numpy as np

    keras, kmodel = _random_keras_densenet121(seed=2)
    path = tmp_path / "densenet121_weights_tf_dim_ordering_tf_kernels.h5"
    _write_old_keras_h5(kmodel, path, {"conv1_conv": "conv1/conv", "conv1_bn": "conv1/bn", "predictions": "fc1000"})
    x = np.random.default_rng(3).standard_normal((1, 64, 64, 3)).astype("float32")
    expected = torch.from_numpy(keras.ops.convert_to_numpy(kmodel(x, training=False)))
    ours = resnexus.create_model("densenet121", weights=path).eval()  # PyTorch's eps: folded into the variance
    with torch.no_grad():
        assert max_abs_diff(ours(torch.from_numpy(x).permute(0, 3, 1, 2)), expected) < 2e-6


@pytest.mark.slow
@pytest.mark.parametrize(("name", "keras_name"), [("densenet169", "DenseNet169"), ("densenet201", "DenseNet201")])
def test_keras_layer_order_of_the_deeper_densenets(name: str, keras_name: str) -> None:
    keras = pytest.importorskip("keras")
    kmodel = getattr(keras.applications, keras_name)(weights=None, input_shape=(64, 64, 3))
    with torch.device("meta"):
        spec = resnexus.create_model(name).keras_layers()
    assert [layer.name for layer in kmodel.layers if layer.weights] == [s.name for s in spec]
