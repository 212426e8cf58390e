"""benchmarks/keras_optimizer_speed.py: every optimizer variant runs and is timed against the PyTorch
baseline measured in the same run (a small model, two rounds; in a fresh interpreter, because the
benchmark needs Keras' torch backend and the test session's Keras runs on TensorFlow)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a fresh interpreter importing Keras on torch (~15 s on 2 cores)
def test_every_update_is_timed_against_pytorchs_fused_adamw():
    pytest.importorskip("keras")
    args = [
        "--model",
        "resnet20_cifar",
        "--size",
        "32",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--rounds",
        "2",
        "--threads",
        "1",
    ]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "keras_optimizer_speed.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {m[0]: (float(m[1]), float(m[2])) for m in re.findall(r"^([\w-]+) +([\d.]+) +([\d.]+)$", done.stdout, re.M)}
    assert set(rows) == {
        "torch-fused-adamw",
        "keras-adamw",
        "resnexus-adamw",
        "keras-coupled-sgd",
        "resnexus-coupled-sgd",
    }, done.stdout
    assert rows["torch-fused-adamw"][1] == 1.0, done.stdout  # the baseline's own ratio
    for name, (ms, ratio) in rows.items():
        assert ms > 0 and ratio > 0, (name, done.stdout)
    from resnexus import keras as rk

    model = rk.create_model("resnet20_cifar", num_classes=2, input_shape=(32, 32, 3))  # on TensorFlow here
    count = sum(int(math.prod(v.shape)) for v in model.trainable_variables)
    assert f"resnet20_cifar: {len(model.trainable_variables)} trainable variables, {count:,} weights" in done.stdout
