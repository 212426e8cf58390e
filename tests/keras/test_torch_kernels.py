"""On Keras' torch backend, resnexus' Keras models compute with PyTorch's channels-last kernels
(resnexus.keras.torch_kernels) and get what Keras' own layers get: outputs, gradients, moving statistics.

The comparison runs in a fresh interpreter on the torch backend (the test session's Keras runs on
TensorFlow, where nothing is replaced). Each model is built by resnexus (fast path) and again from
its config by Keras alone (Keras' own layers), with the same weights and random BatchNorm
statistics; both then take the same training step's forward and backward pass and an eval pass.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import run_on_keras_backend

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import keras, numpy as np, torch
assert keras.backend.backend() == "torch"
from resnexus import keras as rk
from resnexus.keras.torch_kernels import use_torch_kernels

def compare(name, fast):
    plain = keras.Model.from_config(fast.get_config())  # Keras' own layers: nothing replaced
    rng = np.random.default_rng(0)
    weights = [rng.uniform(0.5, 1.5, w.shape).astype("float32") if "variance" in v.path
               else rng.normal(0, 0.3, w.shape).astype("float32")
               for v, w in zip(fast.weights, fast.get_weights())]
    fast.set_weights(weights)
    plain.set_weights(weights)
    replaced = sum("convolution_op" in vars(l) or "call" in vars(l) for l in fast._flatten_layers(include_self=False))
    x = torch.randn(3, *fast.input_shape[1:], generator=torch.Generator().manual_seed(1))
    r = torch.randn(fast.output_shape[1:], generator=torch.Generator().manual_seed(2))
    out, grads = [], []
    for model in (fast, plain):
        logits = model(x, training=True)
        variables = [v.value for v in model.trainable_variables]
        grads.append(torch.autograd.grad((logits * r).sum(), variables))
        out.append(logits.detach())
    diff_train = (out[0] - out[1]).abs().max().item()
    # relative to each gradient's size (a floor for those that are zero in exact arithmetic: a bias before a BatchNorm)
    scale = max(b.abs().max().item() for b in grads[1])
    diff_grad = max(((a - b).abs().max() / (b.abs().max() + 1e-3 * scale)).item() for a, b in zip(*grads))
    def moving(variables, values):  # every BatchNorm's moving mean and variance, one vector ([0] if none)
        return np.concatenate([np.zeros(1)] + [w.ravel() for v, w in zip(variables, values) if "moving" in v.path])

    stats = [moving(m.weights, m.get_weights()) for m in (fast, plain)]
    diff_stats = float(np.abs(stats[0] - stats[1]).max())
    moved = float(np.abs(stats[1] - moving(fast.weights, weights)).max())
    diff_eval = (fast(x, training=False) - plain(x, training=False)).abs().max().item()
    print(f"model={{name}} replaced={{replaced}} train={{diff_train:.2e}} grad={{diff_grad:.2e}} stats={{diff_stats:.2e}} "
          f"moved={{moved:.2e}} eval={{diff_eval:.2e}}")

shallow = dict(layers=(1, 1, 1), cardinality=4, base_width=4)
compare("resnext", rk.create_model("resnext29_8x64d", num_classes=3, input_shape=(32, 32, 3), **shallow))
compare("lenet", rk.create_model("lenet", num_classes=3))  # convolutions with biases, valid padding

# strided "same" padding: not PyTorch's symmetric padding, so Keras' own code runs it
inputs = keras.Input((9, 9, 4))
y = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="strided")(inputs)
y = keras.layers.BatchNormalization(name="bn")(y)
y = keras.layers.Conv2D(5, 3, padding="same", dilation_rate=2, use_bias=True, name="dilated")(y)
y = keras.layers.Dense(2, name="fc")(keras.layers.GlobalAveragePooling2D()(y))
odd = keras.Model(inputs, y)
print(f"odd_replaced={{use_torch_kernels(odd)}}")
compare("odd", odd)

path = {tmp!r} + "/m.keras"
model = rk.create_model("resnext29_8x64d", num_classes=3, input_shape=(32, 32, 3), **shallow)
rk.save_keras(model, path, {{}})
loaded, _ = rk.load_keras(path)
classes = sorted({{type(l).__module__ + "." + type(l).__name__ for l in loaded._flatten_layers(include_self=False) if "Conv" in type(l).__name__}})
print("loaded_classes=" + ",".join(classes), "loaded_fast=" + str("convolution_op" in vars(loaded.get_layer("conv1"))))
"""


@pytest.mark.slow  # a fresh interpreter on Keras' torch backend (~40 s on 2 cores)
def test_torch_kernels_match_keras_layers(tmp_path: Path) -> None:
    pytest.importorskip("keras")
    pytest.importorskip("torch")
    script = SCRIPT.format(root=str(ROOT), tmp=str(tmp_path))
    done, shown = run_on_keras_backend(script, "torch", ROOT)
    assert done.returncode == 0, shown
    rows = {m[0]: dict(re.findall(r"(\w+)=(\S+)", m[1])) for m in re.findall(r"model=(\w+) (.*)", done.stdout)}
    assert set(rows) == {"resnext", "lenet", "odd"}, shown
    # every Conv2D and BatchNorm of the shallow ResNeXt (3 + 4 per block x 3 blocks + stem... counted by Keras)
    assert int(rows["resnext"]["replaced"]) > 20, shown
    assert int(rows["lenet"]["replaced"]) == 2, shown  # its two convolutions (no BatchNorm)
    assert "odd_replaced=3" in done.stdout, shown  # the strided one is replaced too, and falls back
    for name, row in rows.items():
        assert float(row["train"]) < 1e-4, (name, shown)
        assert float(row["grad"]) < 1e-4, (name, shown)
        assert float(row["stats"]) < 1e-5, (name, shown)
        assert float(row["eval"]) < 1e-4, (name, shown)
        if name != "lenet":
            assert float(row["moved"]) > 1e-3, (name, shown)  # the training pass did update the statistics
    assert "loaded_classes=keras.src.layers.convolutional.conv2d.Conv2D" in done.stdout, shown
    assert "loaded_fast=True" in done.stdout, shown


def test_nothing_is_replaced_on_another_backend() -> None:
    keras = pytest.importorskip("keras")
    from resnexus import keras as rk
    from resnexus.keras.torch_kernels import use_torch_kernels

    assert keras.backend.backend() != "torch"
    model = rk.create_model("lenet", num_classes=2)
    assert use_torch_kernels(model) == 0
    assert all("convolution_op" not in vars(layer) for layer in model.layers)
