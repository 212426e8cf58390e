"""Keras FractalNet: equal logits and weights both ways, and drop-path by the PyTorch model's rules.

Inference (every join averaging all of its inputs, and single-column inference) is compared with
PyTorch at full width. Training-mode drop-path is compared on a narrow network: the Keras model
returns its plan next to its logits, the same plan is handed to the PyTorch model, and the two
forwards (batch-statistics BatchNorm, no dropout) and the BatchNorm running means they leave
behind must agree. The plan's rules (one decision per batch, global vs local ratio, per-input drop
rate, at least one input per join) are checked statistically over many seeded draws.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import resnexus
from resnexus import keras as rk
from resnexus.models import get_entry
from resnexus.models.fractalnet import ConvUnit, DropPathPlan, FractalBlock
from tests.helpers import keras_logits, keras_trainable_params, max_abs_diff, randomize_, run_on_keras_backend

keras = pytest.importorskip("keras")
from resnexus.keras.fractalnet import (  # noqa: E402  (needs keras)
    FractalDropPath,
    FractalJoin,
    PlanGatedBatchNorm,
    column_model,
    fractal_schedule,
    unit_index,
)
from resnexus.keras.layers import keras_name  # noqa: E402  (needs keras)

ROOT = Path(__file__).resolve().parents[2]
ROWS = [n for n in resnexus.list_models() if get_entry(n).builder.__name__ == "FractalNet"]
NARROW = dict(channels=(8, 16, 16, 32, 32), dropout=0.0)  # drop-path checks: small and dropout off


def _x(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _numpy(t) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(t))


def _torch_plan(plan: np.ndarray, model: torch.nn.Module) -> DropPathPlan:
    """The PyTorch DropPathPlan that a Keras plan vector describes."""
    if plan[0] > 0:
        return DropPathPlan("global", column=int(plan[0]))
    columns = model.num_columns
    keep = []
    joins = [ends for ends in fractal_schedule(columns) if len(ends) > 1]
    for b in range(len(model.blocks)):
        keep.append(
            tuple(tuple(c + 1 for c, i in ends if plan[1 + unit_index(b, c, i, columns)] > 0.5) for ends in joins)
        )
    return DropPathPlan("local", keep=tuple(keep))


def _draw_plans(planner: FractalDropPath, count: int) -> np.ndarray:
    """``count`` training-mode draws of the plan layer (compiled: one eager call takes ~0.1 s)."""
    x = keras.ops.zeros((1, 32, 32, 3))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        draw = tf.function(lambda: planner(x, training=True))
    else:  # pragma: no cover - the suite runs on TensorFlow

        def draw():
            return planner(x, training=True)

    return np.stack([_numpy(draw()) for _ in range(count)])


# -- structure, parameters, inference -------------------------------------------------------------
def test_every_fractalnet_row_has_a_keras_builder() -> None:
    assert set(ROWS) == {"fractalnet20", "fractalnet40"}
    assert set(ROWS) <= set(rk.list_keras_models())


@pytest.mark.parametrize("name", ROWS)
def test_keras_parameter_count_equals_pytorch(name: str) -> None:
    """33,724,618 (C=3) and 76,106,634 (C=4) with 10 classes, as the PyTorch module documents."""
    model = rk.create_model(name, num_classes=10)
    expected = {"fractalnet20": 33_724_618, "fractalnet40": 76_106_634}[name]
    assert keras_trainable_params(model) == resnexus.model_info(name, num_classes=10).params == expected
    assert model.name == name and model.output_shape == (None, 10)


@pytest.mark.parametrize("columns", [1, 2, 3, 4])
def test_schedule_and_unit_numbering_are_the_pytorch_blocks(columns: int) -> None:
    block = FractalBlock(2, 2, columns)
    assert fractal_schedule(columns) == block._schedule
    torch_units = [n for n, m in block.named_modules() if isinstance(m, ConvUnit)]
    assert [f"columns.{c}.{i}" for c in range(columns) for i in range(2**c)] == torch_units
    assert [unit_index(1, c, i, columns) for c in range(columns) for i in range(2**c)] == list(
        range(2**columns - 1, 2 * (2**columns - 1))
    )


def test_layers_joins_and_dropout_follow_the_pytorch_model() -> None:
    model = rk.create_model("fractalnet20", num_classes=10)
    source = resnexus.create_model("fractalnet20", num_classes=10)
    names = {layer.name for layer in model.layers}
    torch_names = {
        keras_name(n) for n, m in source.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d))
    }
    assert torch_names <= names
    for b, block in enumerate(source.blocks):
        joins = [layer for layer in model.layers if layer.name.startswith(f"blocks_{b}_join")]
        assert [len(j.plan_indices) for j in joins] == [len(cols) for cols in block.joins] == [2, 3]
        for c, column in enumerate(block.columns):
            for i, unit in enumerate(column):
                has_dropout = isinstance(unit.drop, torch.nn.Dropout)
                assert (f"blocks_{b}_columns_{c}_{i}_drop" in names) == has_dropout
                if has_dropout:
                    assert model.get_layer(f"blocks_{b}_columns_{c}_{i}_drop").rate == pytest.approx(unit.drop.p)
                assert isinstance(model.get_layer(f"blocks_{b}_columns_{c}_{i}_bn"), PlanGatedBatchNorm)
    assert isinstance(model.get_layer("drop_path"), FractalDropPath)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("fractalnet20", {}),
        ("fractalnet40", {"channels": (16, 16, 32, 32, 64)}),  # C=4 and the row's dropout rates, narrower
        pytest.param("fractalnet40", {}, marks=pytest.mark.slow),
    ],
)
def test_from_torch_gives_pytorch_logits_every_column_and_weights_back(name: str, overrides: dict) -> None:
    source = randomize_(resnexus.create_model(name, num_classes=5, **overrides), seed=3).eval()
    x = _x()
    model = rk.from_torch(source, input_shape=(32, 32, 3))
    with torch.no_grad():
        assert max_abs_diff(keras_logits(model, x), source(x)) < 1e-4
        for k in range(1, source.num_columns + 1):  # anytime inference: model(x, column=k)
            single = column_model(model, k)
            assert max_abs_diff(keras_logits(single, x), source(x, column=k)) < 1e-4, k
    back = rk.to_torch(model)
    assert back.state_dict().keys() == source.state_dict().keys()
    for key, value in source.state_dict().items():
        if value.dtype.is_floating_point:
            assert torch.equal(back.state_dict()[key], value), key


def test_column_model_shares_the_weights() -> None:
    model = rk.create_model("fractalnet20", num_classes=3, **NARROW)
    single = column_model(model, 2)
    assert single.get_layer("blocks_1_columns_1_0_conv") is model.get_layer("blocks_1_columns_1_0_conv")
    assert "drop_path" not in {layer.name for layer in single.layers}
    assert len([n for n in (layer.name for layer in single.layers) if n.endswith("_conv")]) == 5 * 2
    with pytest.raises(ValueError, match=r"column must be in 1\.\.3"):
        column_model(model, 4)


# -- drop-path: the same forward as PyTorch for the same plan ---------------------------------------
def _train_step_pair(seed: int, **overrides) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, object, object]:
    """One training-mode forward of a Keras FractalNet (seeded) and of PyTorch under the same plan."""
    source = randomize_(resnexus.create_model("fractalnet20", num_classes=4, **NARROW, **overrides), seed=seed)
    keras.utils.set_random_seed(seed)
    model = rk.from_torch(source, input_shape=(32, 32, 3))
    with_plan = keras.Model(model.input, [model.output, model.get_layer("drop_path").output])
    x = _x(batch=4, seed=seed)
    logits, plan = with_plan(x.permute(0, 2, 3, 1).numpy(), training=True)
    plan = _numpy(plan)
    source.train()
    source.sample_drop_path = lambda: _torch_plan(plan, source)
    with torch.no_grad():
        expected = source(x)
    return plan, torch.from_numpy(_numpy(logits).copy()), expected, model, source


@pytest.mark.parametrize("seed", range(6))
def test_training_forward_and_batch_norm_updates_equal_pytorch_under_the_same_plan(seed: int) -> None:
    """Local or global, the masked Keras graph computes what PyTorch computes when it skips the
    dropped convs, and moves exactly the BatchNorm statistics PyTorch moves (the others stay)."""
    plan, got, expected, model, source = _train_step_pair(seed)
    assert max_abs_diff(got, expected) < 1e-4
    for name, module in source.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            layer = model.get_layer(keras_name(name))
            assert np.abs(layer.moving_mean.numpy() - module.running_mean.numpy()).max() < 1e-5, name
            if plan[layer.plan_index] < 0.5:  # a skipped unit: untouched in both
                assert torch.equal(module.num_batches_tracked, torch.tensor(0)), name
                assert np.array_equal(layer.moving_variance.numpy(), module.running_var.numpy()), name


@pytest.mark.parametrize("seed", range(3))
def test_global_drop_path_gives_exactly_one_columns_output(seed: int) -> None:
    """global_drop_ratio=1: every batch is global; the output is PyTorch's column-k forward
    (training mode) for the drawn k, and differs from the other columns'."""
    plan, got, _, _, source = _train_step_pair(10 + seed, global_drop_ratio=1.0)
    column = int(plan[0])
    assert 1 <= column <= 3
    x = _x(batch=4, seed=10 + seed)
    matches = []
    for k in range(1, 4):
        with torch.no_grad():
            matches.append(max_abs_diff(got, source(x, column=k)) < 1e-4)
    assert matches == [k == column for k in range(1, 4)]


# -- drop-path: the rules, statistically ---------------------------------------------------------
def _split(plan: np.ndarray, planner: FractalDropPath) -> tuple[int, list[np.ndarray], np.ndarray]:
    """Global column (0 = local), each join's input mask, and the units that feed no join."""
    active = plan[1:] > 0.5
    masks, loose = [], []
    for b in range(planner.num_blocks):
        schedule = fractal_schedule(planner.num_columns)
        for ends in schedule:
            units = [unit_index(b, c, i, planner.num_columns) for c, i in ends]
            if len(ends) > 1:
                masks.append(active[units])
            else:
                loose.extend(active[units])
    return int(plan[0]), masks, np.array(loose)


def test_drop_path_rules_and_rates_match_the_configuration() -> None:
    p, ratio, draws = 0.15, 0.5, 1500
    planner = FractalDropPath(5, 3, local_drop_prob=p, global_drop_ratio=ratio, seed=7)
    plans = _draw_plans(planner, draws)
    assert plans.shape == (draws, 1 + 5 * 7)
    columns = plans[:, 0].astype(int)
    assert abs((columns > 0).mean() - ratio) < 0.05  # one global/local decision per call (per batch)
    assert set(np.bincount(columns[columns > 0], minlength=4)[1:] > 0.28 * (columns > 0).sum()) == {True}
    dropped = {2: [], 3: []}
    for plan in plans:
        column, masks, loose = _split(plan, planner)
        if column:  # global: exactly column k's units run, in every block
            unit_columns = np.array([c + 1 for b in range(5) for c in range(3) for _ in range(2**c)])
            assert np.array_equal(plan[1:] > 0.5, unit_columns == column)
        else:  # local: every join keeps at least one input; units feeding no join always run
            assert all(m.any() for m in masks) and loose.all()
            for m in masks:
                dropped[len(m)].extend(~m)
    for n, values in dropped.items():  # P(dropped) = p - p**n / n (the all-dropped join keeps one)
        assert abs(np.mean(values) - (p - p**n / n)) < 0.012, (n, np.mean(values))


def test_a_join_that_lost_every_input_keeps_one_chosen_uniformly() -> None:
    planner = FractalDropPath(2, 3, local_drop_prob=1.0, global_drop_ratio=0.0, seed=3)
    plans = _draw_plans(planner, 600)
    kept_at = {2: np.zeros(2), 3: np.zeros(3)}
    for plan in plans:
        column, masks, _ = _split(plan, planner)
        assert column == 0
        for m in masks:
            assert m.sum() == 1
            kept_at[len(m)] += m
    for n, counts in kept_at.items():
        assert np.all(np.abs(counts / counts.sum() - 1 / n) < 0.06), (n, counts)


def test_pytorch_draws_by_the_same_rules() -> None:
    """The reference: PyTorch's sample_drop_path has the rates the Keras test above expects."""
    torch.manual_seed(0)
    source = resnexus.create_model("fractalnet20", num_classes=3, **NARROW)
    plans = [source.sample_drop_path() for _ in range(3000)]
    assert abs(np.mean([pl.mode == "global" for pl in plans]) - 0.5) < 0.04
    local = [pl for pl in plans if pl.mode == "local"]
    two = [2 - len(keep[0]) for pl in local for keep in pl.keep]
    assert abs(np.mean(two) / 2 - (0.15 - 0.15**2 / 2)) < 0.012


def test_drop_path_is_seedable_and_off_outside_training() -> None:
    a = _draw_plans(FractalDropPath(5, 4, seed=11), 30)
    b = _draw_plans(FractalDropPath(5, 4, seed=11), 30)
    c = _draw_plans(FractalDropPath(5, 4, seed=12), 30)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    plans = []
    for _ in range(2):  # the global Keras seed seeds the model's drop-path layer
        keras.utils.set_random_seed(5)
        model = rk.create_model("fractalnet20", num_classes=3, **NARROW)
        plans.append(_draw_plans(model.get_layer("drop_path"), 10))
    assert np.array_equal(plans[0], plans[1])
    plan = _numpy(model.get_layer("drop_path")(keras.ops.zeros((3, 32, 32, 3)), training=False))
    assert plan[0] == 0 and plan[1:].min() == 1.0 and plan.shape == (1 + 5 * 7,)
    assert rk.to_torch(model).blocks[1].columns[0][0].conv.out_channels == 16  # the overrides travel


def test_join_is_the_mean_of_the_active_inputs() -> None:
    xs = [np.full((1, 2, 2, 1), v, dtype="float32") for v in (1.0, 2.0, 6.0)]
    join = FractalJoin([1, 2, 3])
    for mask, mean in (([1, 1, 1], 3.0), ([1, 0, 1], 3.5), ([0, 1, 0], 2.0), ([0, 0, 0], 0.0)):
        plan = np.array([0.0, *mask], dtype="float32")
        assert np.allclose(_numpy(join([*xs, plan])), mean)


# -- files and backends ------------------------------------------------------------------------------
def test_keras_file_round_trip_reloads_the_custom_layers(tmp_path) -> None:
    source = randomize_(resnexus.create_model("fractalnet20", num_classes=3, channels=(8, 8, 16, 16, 16)), seed=8)
    source.eval()
    model = rk.from_torch(source, input_shape=(32, 32, 3))
    path = rk.save_keras(model, tmp_path / "fractalnet20.keras", {"classes": ["a", "b", "c"]})
    loaded, meta = rk.load_keras(path)
    x = _x()
    assert meta == {"classes": ["a", "b", "c"]} and loaded.name == "fractalnet20"
    assert max_abs_diff(keras_logits(loaded, x), keras_logits(model, x)) == 0.0
    assert loaded.get_layer("drop_path").get_config() == model.get_layer("drop_path").get_config()
    assert isinstance(loaded.get_layer("blocks_2_columns_2_3_bn"), PlanGatedBatchNorm)
    with torch.no_grad():
        assert max_abs_diff(keras_logits(column_model(loaded, 3), x), source(x, column=3)) < 1e-4
    trained = _numpy(loaded(x.permute(0, 2, 3, 1).numpy(), training=True))  # drop-path runs after reload
    assert np.isfinite(trained).all()


@pytest.mark.slow
def test_model_fit_trains_through_drop_path() -> None:
    """A compiled training step (model.fit): drop-path, the gated BatchNorm and the joins in a graph."""
    keras.utils.set_random_seed(0)
    model = rk.create_model("fractalnet20", num_classes=3, channels=(8, 8, 16, 16, 16))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=loss)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 32, 32, 3)).astype("float32"), rng.integers(0, 3, 16)
    kernel = model.get_layer("blocks_0_columns_2_0_conv").get_weights()[0].copy()  # runs in most plans
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert not np.array_equal(model.get_layer("blocks_0_columns_2_0_conv").get_weights()[0], kernel)
    assert np.isfinite(model.predict(x[:2], verbose=0)).all()


# The custom layers are checked on JAX. The Keras torch backend refuses the dotted layer names
# (PyTorch module paths) every family uses ("parameter name can't contain '.'"), for ResNet too.
BACKEND_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import torch
import resnexus
import keras
assert keras.backend.backend() == {backend!r}
from resnexus import keras as rk
from resnexus.keras.fractalnet import column_model
from tests.helpers import keras_logits, max_abs_diff, randomize_

source = randomize_(resnexus.create_model("fractalnet20", num_classes=3, channels=(8, 8, 16, 16, 16)), seed=2).eval()
x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
model = rk.from_torch(source, input_shape=(32, 32, 3))
with torch.no_grad():
    print("full", max_abs_diff(keras_logits(model, x), source(x)))
    print("column", max_abs_diff(keras_logits(column_model(model, 2), x), source(x, column=2)))
planner = model.get_layer("drop_path")
for _ in range(3):
    plan = keras.ops.convert_to_numpy(planner(keras.ops.zeros((1, 32, 32, 3)), training=True))
    assert plan.shape == (36,) and set(plan[1:].tolist()) <= {{0.0, 1.0}}
out = keras.ops.convert_to_numpy(model(x.permute(0, 2, 3, 1).numpy(), training=True))
assert out.shape == (2, 3) and (out == out).all()
print("training ok")
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax"])  # torch: see the note above
def test_fractalnet_custom_layers_on_other_backends(backend: str) -> None:
    pytest.importorskip(backend)
    done, shown = run_on_keras_backend(BACKEND_SCRIPT.format(root=str(ROOT), backend=backend), backend, ROOT)
    assert done.returncode == 0 and "training ok" in done.stdout, shown
    diffs = dict(re.findall(r"^(full|column) (\S+)$", done.stdout, re.M))
    assert set(diffs) == {"full", "column"} and all(float(d) < 1e-4 for d in diffs.values()), shown
