"""One optimizer update of a Keras model on Keras' torch backend: Keras' own code against the update
``resnexus.keras.torch_kernels.use_torch_optimizer`` gives it, and PyTorch's fused AdamW on the same
weights as the baseline.

Every update applies the same random gradients to the weights of ``--model`` (as built by
``resnexus.keras.create_model``); the variants take turns within each round and the figure is the
median over rounds of each round's median update time (the first ``--warmup`` updates of every
variant are not timed). Rows:

* ``keras-adamw``: ``keras.optimizers.AdamW`` as Keras runs it on torch (``_foreach`` ops);
* ``resnexus-adamw``: the same optimizer after ``use_torch_optimizer`` (PyTorch's fused kernel);
* ``keras-coupled-sgd`` / ``resnexus-coupled-sgd``: ``CoupledSGD`` (SGD with L2 on the kernels,
  what ``--optimizer sgd`` trains with), one variable at a time / multi-tensor;
* ``torch-fused-adamw``: ``torch.optim.AdamW(fused=True)`` on tensors of the same shapes, what
  ``--framework torch`` runs.

    python benchmarks/keras_optimizer_speed.py                       # resnext50_32x4d, 128 px
    python benchmarks/keras_optimizer_speed.py --model lenet --size 32 --steps 3 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ["KERAS_BACKEND"] = "torch"  # before Keras is imported: this measures Keras' torch backend

import keras
import torch

VARIANTS = ("torch-fused-adamw", "keras-adamw", "resnexus-adamw", "keras-coupled-sgd", "resnexus-coupled-sgd")


def make_updates(model: keras.Model) -> dict[str, Callable[[], None]]:
    """For each variant, a function that applies one update of fixed random gradients."""
    from resnexus.engine.keras_fit import CoupledSGD
    from resnexus.keras.torch_kernels import use_torch_optimizer

    variables = model.trainable_variables
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(v.shape, generator=generator) * 1e-3 for v in variables]

    def keras_update(optimizer: keras.optimizers.Optimizer, fast: bool) -> Callable[[], None]:
        if isinstance(optimizer, keras.optimizers.AdamW):
            optimizer.exclude_from_weight_decay(var_list=[v for v in variables if len(v.shape) <= 1])
        if fast and not use_torch_optimizer(optimizer):
            raise RuntimeError(f"use_torch_optimizer left {type(optimizer).__name__} unchanged")
        optimizer.build(variables)
        return lambda: optimizer.apply(grads, variables)

    params = [torch.nn.Parameter(v.value.detach().clone()) for v in variables]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": 0.05},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    reference = torch.optim.AdamW(groups, lr=1e-3, fused=True)

    def adamw() -> keras.optimizers.AdamW:
        return keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=0.05, epsilon=1e-8)

    def sgd() -> CoupledSGD:
        return CoupledSGD(l2=5e-5, learning_rate=0.01, momentum=0.9, nesterov=True)

    return {
        "torch-fused-adamw": reference.step,
        "keras-adamw": keras_update(adamw(), fast=False),
        "resnexus-adamw": keras_update(adamw(), fast=True),
        "keras-coupled-sgd": keras_update(sgd(), fast=False),
        "resnexus-coupled-sgd": keras_update(sgd(), fast=True),
    }


def measure(updates: dict[str, Callable[[], None]], steps: int, warmup: int, rounds: int) -> dict[str, float]:
    """Median over rounds of each variant's median update seconds, the variants taking turns."""
    per_round: dict[str, list[float]] = {name: [] for name in updates}
    for _ in range(rounds):
        for name, update in updates.items():
            times = []
            for i in range(warmup + steps):
                start = time.perf_counter()
                update()
                if i >= warmup:
                    times.append(time.perf_counter() - start)
            per_round[name].append(statistics.median(times))
    return {name: statistics.median(values) for name, values in per_round.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnext50_32x4d")
    parser.add_argument(
        "--size", type=int, default=128, help="input height and width (the weights do not depend on it)"
    )
    parser.add_argument("--steps", type=int, default=8, help="timed updates per variant and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from resnexus import keras as rk
    from resnexus.engine.runtime import cpu_model

    model = rk.create_model(args.model, num_classes=2, input_shape=(args.size, args.size, 3))
    count = sum(v.value.numel() for v in model.trainable_variables)
    print(
        f"{cpu_model()}, {torch.get_num_threads()} threads; torch {torch.__version__}, "
        f"keras {keras.__version__}; {args.model}: {len(model.trainable_variables)} trainable variables, {count:,} weights"
    )
    seconds = measure(make_updates(model), args.steps, args.warmup, args.rounds)
    baseline = seconds["torch-fused-adamw"]
    print(f"{'update':<22} {'ms':>8} {'x torch fused AdamW':>20}")
    for name in VARIANTS:
        print(f"{name:<22} {seconds[name] * 1000:8.1f} {seconds[name] / baseline:20.2f}")
    return {"model": args.model, "seconds": seconds}


if __name__ == "__main__":
    main()
