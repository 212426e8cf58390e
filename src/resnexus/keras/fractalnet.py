"""FractalNet in Keras, built from the rows of :mod:`resnexus.models.fractalnet`, drop-path included.

The graph is the PyTorch model's flattened column view: in every block, column ``c`` is a chain of
``2**(c-1)`` conv units (3x3 conv -> dropout -> BN -> ReLU, layers ``blocks.{b}.columns.{c-1}.{i}.conv``
/ ``.drop`` / ``.bn``), and where several columns end a unit at the same depth a
:class:`FractalJoin` takes the element-wise mean of their outputs. A 2x2 max-pool follows every
block, then global average pooling and the linear classifier ``fc``.

Drop-path follows :meth:`resnexus.models.fractalnet.FractalNet.sample_drop_path` rule for rule.
One :class:`FractalDropPath` layer (``drop_path``) draws the decision for the whole network once
per call, i.e. once per mini-batch: with probability ``global_drop_ratio`` global (one column
``k``, uniform over ``1..C``, alone in every block), else local (every input of every join
dropped with probability ``local_drop_prob``; a join that lost all of its inputs keeps one,
chosen uniformly). The draw is a vector, the *plan*: entry 0 is the global column (0 for local
mode and inference), entry ``1 + u`` says whether conv unit ``u`` runs in PyTorch for this batch
(units numbered in PyTorch module order). Joins average the inputs whose unit runs, and every
BatchNorm (:class:`PlanGatedBatchNorm`) updates its moving statistics only when its unit runs,
so a training step changes the same statistics as in PyTorch, where a dropped unit is skipped.
Keras still computes the skipped units (a static graph); their outputs are masked out, so they
receive no gradient. Outside training the plan is all ones: the full network, every join
averaging all of its inputs.

Single-column ("anytime") inference, PyTorch's ``model(x, column=k)``, is :func:`column_model`:
a second Keras model over the same layers (shared weights) that runs column ``k`` alone.

The custom layers use ``keras.ops`` / ``keras.random`` only (any backend) and are registered
serialisable, so a saved ``.keras`` file reloads without ``safe_mode=False``. The drop-path draw
is seedable: :func:`keras.utils.set_random_seed` before building seeds the ``drop_path`` layer's
:class:`keras.random.SeedGenerator` (as it seeds every Dropout), and ``FractalDropPath(seed=...)``
takes a seed of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers, ops

from ..models.fractalnet import FractalNet
from .layers import BN_EPS, BN_MOMENTUM, conv, relu
from .registry import classifier_head, register_keras_builder

__all__ = [
    "FractalDropPath",
    "FractalJoin",
    "PlanGatedBatchNorm",
    "build_fractalnet",
    "column_model",
    "fractal_schedule",
    "unit_index",
]


def fractal_schedule(num_columns: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Per depth ``1 .. 2**(C-1)`` of a block: the (0-based column, unit index) pairs whose unit
    ends there, as :class:`resnexus.models.fractalnet.FractalBlock` walks them. Entries with two
    or more pairs are joins."""
    schedule = []
    for d in range(1, 2 ** (num_columns - 1) + 1):
        ends = []
        for c in range(num_columns):
            span = 2 ** (num_columns - 1 - c)
            if d % span == 0:
                ends.append((c, d // span - 1))
        schedule.append(tuple(ends))
    return tuple(schedule)


def unit_index(block: int, column: int, unit: int, num_columns: int) -> int:
    """The number of conv unit ``blocks.{block}.columns.{column}.{unit}`` (0-based), in PyTorch
    module order; the plan's entry for it is ``1 + unit_index``."""
    return block * (2**num_columns - 1) + (2**column - 1) + unit


@keras.saving.register_keras_serializable(package="resnexus")
class FractalDropPath(layers.Layer):
    """Draws one drop-path plan for the whole network per call (see the module docstring).

    Takes any tensor (the image, so the layer sits in the graph) and returns the plan, a float
    vector of ``1 + num_blocks * (2**num_columns - 1)`` entries. Outside training: all units on.
    """

    def __init__(
        self,
        num_blocks: int,
        num_columns: int,
        local_drop_prob: float = 0.15,
        global_drop_ratio: float = 0.5,
        seed: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not (0.0 <= local_drop_prob <= 1.0 and 0.0 <= global_drop_ratio <= 1.0):
            raise ValueError("local_drop_prob and global_drop_ratio must be probabilities")
        self.num_blocks = num_blocks
        self.num_columns = num_columns
        self.local_drop_prob = float(local_drop_prob)
        self.global_drop_ratio = float(global_drop_ratio)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # Static bookkeeping: the size of every join (blocks in order, each block's joins in
        # FractalBlock.joins order), and for every unit its 1-based column and the flat index of
        # the join input it feeds (-1: none, a unit of the deepest column between two joins).
        schedule = fractal_schedule(num_columns)
        self.join_sizes: list[int] = []
        unit_join_input = [-1] * self.num_units
        unit_column = [0] * self.num_units
        flat = 0
        for b in range(num_blocks):
            for c in range(num_columns):
                for i in range(2**c):
                    unit_column[unit_index(b, c, i, num_columns)] = c + 1
            for ends in schedule:
                if len(ends) < 2:
                    continue
                self.join_sizes.append(len(ends))
                for c, i in ends:
                    unit_join_input[unit_index(b, c, i, num_columns)] = flat
                    flat += 1
        self.num_join_inputs = flat
        self._unit_join_input = [flat if k < 0 else k for k in unit_join_input]  # `flat` = an always-on slot
        self._unit_column = unit_column

    @property
    def num_units(self) -> int:
        return self.num_blocks * (2**self.num_columns - 1)

    def call(self, x, training=None):
        if not training:
            return ops.concatenate([ops.zeros((1,)), ops.ones((self.num_units,))])
        sg = self.seed_generator
        is_global = keras.random.uniform((), seed=sg) < self.global_drop_ratio
        column = keras.random.randint((), 1, self.num_columns + 1, seed=sg)
        dropped = keras.random.uniform((max(self.num_join_inputs, 1),), seed=sg) < self.local_drop_prob
        pick = keras.random.uniform((max(len(self.join_sizes), 1),), seed=sg)
        kept = []
        start = 0
        for j, n in enumerate(self.join_sizes):
            keep = ops.logical_not(dropped[start : start + n])
            # a join whose inputs were all dropped keeps one of them, chosen uniformly
            rescue_at = ops.minimum(ops.cast(ops.floor(pick[j] * n), "int32"), n - 1)
            rescue = ops.equal(ops.arange(n, dtype="int32"), rescue_at)
            kept.append(ops.where(ops.any(keep), keep, rescue))
            start += n
        kept.append(ops.ones((1,), dtype="bool"))  # units that feed no join always run in local mode
        local = ops.take(ops.concatenate(kept), ops.convert_to_tensor(self._unit_join_input, dtype="int32"))
        single = ops.equal(ops.convert_to_tensor(self._unit_column, dtype="int32"), ops.cast(column, "int32"))
        active = ops.where(is_global, single, local)
        head = ops.where(is_global, ops.cast(column, "float32"), 0.0)
        return ops.concatenate([ops.reshape(head, (1,)), ops.cast(active, "float32")])

    def compute_output_shape(self, input_shape):
        return (1 + self.num_units,)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_blocks": self.num_blocks,
            "num_columns": self.num_columns,
            "local_drop_prob": self.local_drop_prob,
            "global_drop_ratio": self.global_drop_ratio,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="resnexus")
class FractalJoin(layers.Layer):
    """The join: element-wise mean of the inputs whose unit runs under the plan.

    Called on ``[x_1, ..., x_n, plan]``; ``plan_indices[i]`` is the plan entry of input ``i``.
    A join none of whose inputs runs (global drop-path on a column that does not pass through it)
    feeds only units that do not run either; it returns zeros.
    """

    def __init__(self, plan_indices: Sequence[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.plan_indices = [int(i) for i in plan_indices]

    def call(self, inputs):
        *xs, plan = inputs
        if len(xs) != len(self.plan_indices):
            raise ValueError(f"{self.name}: {len(xs)} inputs for {len(self.plan_indices)} plan entries")
        total = None
        count = None
        for x, index in zip(xs, self.plan_indices):
            on = ops.cast(plan[index] > 0.5, x.dtype)
            term = ops.where(plan[index] > 0.5, x, ops.zeros_like(x))
            total = term if total is None else total + term
            count = on if count is None else count + on
        return total / ops.maximum(count, ops.ones_like(count))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self) -> dict:
        return {**super().get_config(), "plan_indices": self.plan_indices}


@keras.saving.register_keras_serializable(package="resnexus")
class PlanGatedBatchNorm(layers.BatchNormalization):
    """BatchNorm whose moving statistics update in training only when the plan runs its unit.

    A :class:`keras.layers.BatchNormalization` (the converter copies it like any other); called
    without ``plan`` (e.g. in :func:`column_model`) it is exactly that layer.
    """

    def __init__(self, plan_index: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.plan_index = int(plan_index)

    def call(self, inputs, plan=None, training=None, mask=None):
        if plan is None or not training or not self.trainable or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        mean, variance = self._moments(x, mask)
        gate = ops.cast(plan[self.plan_index] > 0.5, x.dtype) * (1.0 - self.momentum)
        moving_mean = ops.cast(self.moving_mean, x.dtype)
        moving_variance = ops.cast(self.moving_variance, x.dtype)
        self.moving_mean.assign(moving_mean + gate * (mean - moving_mean))
        self.moving_variance.assign(moving_variance + gate * (variance - moving_variance))
        outputs = ops.batch_normalization(
            x,
            mean=mean,
            variance=variance,
            axis=self.axis,
            offset=ops.cast(self.beta, x.dtype) if self.center else None,
            scale=ops.cast(self.gamma, x.dtype) if self.scale else None,
            epsilon=self.epsilon,
        )
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, inputs_shape, plan_shape=None):
        return tuple(inputs_shape)

    def get_config(self) -> dict:
        return {**super().get_config(), "plan_index": self.plan_index}


def conv_unit(
    x: keras.KerasTensor, plan: keras.KerasTensor | None, width: int, dropout: float, *, name: str, index: int
) -> keras.KerasTensor:
    """:class:`resnexus.models.fractalnet.ConvUnit`: 3x3 conv -> dropout -> BN -> ReLU."""
    x = conv(x, width, 3, name=f"{name}_conv")
    if dropout > 0:
        x = layers.Dropout(dropout, name=f"{name}_drop")(x)
    bn = PlanGatedBatchNorm(1 + index, axis=-1, epsilon=BN_EPS, momentum=BN_MOMENTUM, name=f"{name}_bn")
    x = bn(x, plan=plan) if plan is not None else bn(x)
    return relu(x, name=f"{name}_act")


def build_fractalnet(
    inputs: keras.KerasTensor,
    columns: int = 3,
    channels: Sequence[int] = (64, 128, 256, 512, 512),
    dropout: Sequence[float] | float = 0.0,
    num_classes: int = 10,
    in_chans: int = 3,
    local_drop_prob: float = 0.15,
    global_drop_ratio: float = 0.5,
    *,
    block_form: str = "c",
) -> keras.KerasTensor:
    """The Keras graph of :class:`resnexus.models.fractalnet.FractalNet`: logits (or features).

    ``block_form`` exists for the common converter signature (FractalNet has one form).
    """
    del in_chans  # read off the input
    if block_form != "c":
        raise ValueError(f"FractalNet has one block form ('c'), got block_form={block_form!r}")
    if columns < 1:
        raise ValueError(f"a fractal block needs at least one column, got {columns}")
    channels = tuple(channels)
    dropouts = (float(dropout),) * len(channels) if isinstance(dropout, (int, float)) else tuple(dropout)
    if len(dropouts) != len(channels):
        raise ValueError(f"{len(dropouts)} dropout rates for {len(channels)} blocks")
    plan = FractalDropPath(len(channels), columns, local_drop_prob, global_drop_ratio, name="drop_path")(inputs)
    schedule = fractal_schedule(columns)
    x = inputs
    for b, (width, rate) in enumerate(zip(channels, dropouts)):
        current = [x] * columns  # each column's input to its next unit
        joins = 0
        for ends in schedule:
            outs = []
            for c, i in ends:
                index = unit_index(b, c, i, columns)
                outs.append(conv_unit(current[c], plan, width, rate, name=f"blocks_{b}_columns_{c}_{i}", index=index))
            if len(ends) == 1:
                current[ends[0][0]] = outs[0]
                continue
            indices = [1 + unit_index(b, c, i, columns) for c, i in ends]
            joined = FractalJoin(indices, name=f"blocks_{b}_join{joins}")([*outs, plan])
            for c, _ in ends:
                current[c] = joined
            joins += 1
        x = layers.MaxPooling2D(2, name=f"blocks_{b}_pool")(current[-1])
    return classifier_head(x, num_classes, name="fc")


def column_model(model: keras.Model, column: int) -> keras.Model:
    """Column ``column`` (1-based, 1 = shallowest) of a Keras FractalNet alone, sharing its layers:
    PyTorch's ``model(x, column=k)`` (anytime inference). No joins and no drop-path; dropout and
    BatchNorm follow ``training`` as usual."""
    planner = model.get_layer("drop_path")
    if not 1 <= column <= planner.num_columns:
        raise ValueError(f"column must be in 1..{planner.num_columns}, got {column}")
    names = {layer.name for layer in model.layers}
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    x = inputs
    for b in range(planner.num_blocks):
        for i in range(2 ** (column - 1)):
            prefix = f"blocks_{b}_columns_{column - 1}_{i}"
            for part in ("conv_pad", "conv", "drop", "bn", "act"):
                if f"{prefix}_{part}" in names:
                    x = model.get_layer(f"{prefix}_{part}")(x)
        x = model.get_layer(f"blocks_{b}_pool")(x)
    x = model.get_layer("global_pool")(x)
    if "fc" in names:
        x = model.get_layer("fc")(x)
    return keras.Model(inputs, x, name=f"{model.name}_column{column}")


register_keras_builder(FractalNet, build_fractalnet)
