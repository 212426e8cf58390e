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
y = keras.layers.MaxPooling2D(1, strides=2, name="stride_pool")(y)  # ResNetV2's shortcut
y = keras.layers.MaxPooling2D(2, strides=1, padding="same", name="same_pool")(y)  # Keras' own code
y = keras.layers.AveragePooling2D(2, strides=1, name="avg_pool")(y) + keras.layers.MaxPooling2D(2, strides=1)(y)
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
    assert int(rows["lenet"]["replaced"]) == 4, shown  # its two convolutions and two pooling layers (no BatchNorm)
    # 3 convolutions and BatchNorm, 4 pooling layers: the strided "same" convolution and the "same"
    # pooling are replaced too, and fall back
    assert "odd_replaced=7" in done.stdout, shown
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


OPTIMIZER_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import keras, numpy as np, torch
assert keras.backend.backend() == "torch"
from resnexus.keras.torch_kernels import use_torch_optimizer

def run(fused, dtype):
    rng = np.random.default_rng(0)
    shapes = [(3, 3, 4, 8), (8,), (1, 1, 8, 16), (16,), (16, 2)]
    variables = [keras.Variable(rng.normal(0, 0.5, s), dtype=dtype, name=f"w{{i}}") for i, s in enumerate(shapes)]
    schedule = keras.optimizers.schedules.ExponentialDecay(3e-2, decay_steps=1, decay_rate=0.7)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=0.3, epsilon=1e-8)
    optimizer.exclude_from_weight_decay(var_list=[v for v in variables if len(v.shape) <= 1])
    replaced = use_torch_optimizer(optimizer) if fused else False
    for step in range(6):
        # gradients from 1e-9 (below epsilon: where its placement shows) to 10, a new draw each step
        grads = [torch.as_tensor(rng.normal(0, 1, s) * 10.0 ** rng.uniform(-9, 1, s), dtype=getattr(torch, dtype))
                 for s in shapes]
        optimizer.apply(grads, variables)
    state = [v.numpy() for v in variables] + [v.numpy() for v in optimizer.variables]
    return replaced, state, optimizer

for dtype in ("float32", "float64"):
    replaced, fast, optimizer = run(True, dtype)
    _, plain, reference = run(False, dtype)
    diff = max(float(np.abs(a - b).max() / (np.abs(b).max() + 1e-30)) for a, b in zip(fast, plain))
    moved = float(np.abs(plain[0] - np.random.default_rng(0).normal(0, 0.5, (3, 3, 4, 8))).max())
    same_config = [{{k: v for k, v in o.get_config().items() if k != "name"}} for o in (optimizer, reference)]
    same_config = same_config[0] == same_config[1]  # the Keras config is untouched (names differ: adamw, adamw_1)
    print(f"dtype={{dtype}} replaced={{replaced}} diff={{diff:.2e}} moved={{moved:.2e}} iterations={{int(optimizer.iterations)}} "
          f"config={{same_config}}")

from resnexus.engine.keras_fit import CoupledSGD

def sgd_run(keras_optimizer):
    # CoupledSGD at a constant rate is torch.optim.SGD (Nesterov, L2 on kernels only): Keras' velocity is
    # PyTorch's momentum buffer times -lr
    rng = np.random.default_rng(1)
    shapes = [(3, 3, 4, 8), (8,), (16, 2)]
    start = [rng.normal(0, 0.5, s).astype("float32") for s in shapes]
    grads = [[rng.normal(0, 1, s).astype("float32") for s in shapes] for _ in range(5)]
    if keras_optimizer is None:
        params = [torch.nn.Parameter(torch.tensor(w)) for w in start]
        groups = [dict(params=[p for p in params if p.ndim > 1], weight_decay=0.1), dict(params=[params[1]], weight_decay=0.0)]
        optimizer = torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = torch.tensor(g)
            optimizer.step()
        return [p.detach().numpy() for p in params]
    variables = [keras.Variable(w) for w in start]
    for step in grads:
        keras_optimizer.apply([torch.tensor(g) for g in step], variables)
    return [v.numpy() for v in variables]

reference = sgd_run(None)
for fast in (True, False):
    optimizer = CoupledSGD(l2=0.1, learning_rate=0.05, momentum=0.9, nesterov=True)
    replaced = use_torch_optimizer(optimizer) if fast else False
    got = sgd_run(optimizer)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(got, reference))
    print(f"sgd={{'fast' if fast else 'keras'}} replaced={{replaced}} diff={{diff:.2e}}")

class OwnRule(keras.optimizers.SGD):  # a subclass with its own update keeps it
    def update_step(self, gradient, variable, learning_rate):
        variable.assign(variable - learning_rate * gradient)

print(f"own_rule_replaced={{use_torch_optimizer(OwnRule())}}")

from resnexus.engine.config import TrainConfig
from resnexus.engine.keras_fit import compile_for_training
from resnexus import keras as rk
model = rk.create_model("lenet", num_classes=2)
for name in ("adamw", "sgd"):
    settings = dict(lr=1e-3, weight_decay=0.05, warmup_epochs=1.0, label_smoothing=0.0, clip_grad_norm=0.0)
    compile_for_training(model, TrainConfig(data="unused", optimizer=name, epochs=2, **settings), steps_per_epoch=3)
    print(f"compiled={{name}} fused={{'_parallel_update_step' in vars(model.optimizer)}}")
"""


@pytest.mark.slow  # a fresh interpreter on Keras' torch backend (~15 s on 2 cores)
def test_torch_optimizer_updates_as_keras_does() -> None:
    """PyTorch's fused AdamW kernel gives Keras' AdamW its own values: weights, moments and step
    count after six steps of a decaying rate, with decay on kernels only and gradients far below
    epsilon; other dtypes keep Keras' own update. CoupledSGD, multi-tensor or not, is PyTorch's SGD
    with weight decay. ``train --framework keras`` uses both."""
    pytest.importorskip("keras")
    pytest.importorskip("torch")
    done, shown = run_on_keras_backend(OPTIMIZER_SCRIPT.format(root=str(ROOT)), "torch", ROOT)
    assert done.returncode == 0, shown
    rows = {m[0]: dict(re.findall(r"(\w+)=(\S+)", m[1])) for m in re.findall(r"dtype=(\w+) (.*)", done.stdout)}
    assert set(rows) == {"float32", "float64"}, shown
    for row in rows.values():
        assert row["replaced"] == "True" and row["iterations"] == "6" and row["config"] == "True", shown
        assert float(row["moved"]) > 0.05, shown  # the updates were not negligible
    assert float(rows["float32"]["diff"]) < 1e-5, shown  # float32 rounding between two formulas
    assert float(rows["float64"]["diff"]) == 0.0, shown  # not float32: Keras' own update, bit for bit
    assert "compiled=adamw fused=True" in done.stdout, shown
    assert "compiled=sgd fused=True" in done.stdout, shown
    assert "own_rule_replaced=False" in done.stdout, shown
    sgd = dict(re.findall(r"sgd=(\w+) replaced=\w+ diff=(\S+)", done.stdout))
    assert "sgd=fast replaced=True" in done.stdout and set(sgd) == {"fast", "keras"}, shown
    assert all(float(diff) < 1e-6 for diff in sgd.values()), shown  # both are PyTorch's SGD with weight decay
