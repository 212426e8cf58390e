"""The Keras models are backend-agnostic Keras 3: on JAX and on torch they give PyTorch's logits too.

Keras picks its backend once, when it is first imported, and the test session runs on TensorFlow
(tests/conftest.py), so each backend is checked in a fresh interpreter with ``KERAS_BACKEND`` set
before anything imports Keras. A shallow ResNeXt (random weights, random BatchNorm statistics)
is converted with ``from_torch`` in both block forms: the grouped convolution and the split +
per-group convolutions + concatenate of the write-up.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import run_on_keras_backend

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import os, sys
sys.path.insert(0, {root!r})
assert "keras" not in sys.modules
import keras
assert keras.backend.backend() == {backend!r}, keras.backend.backend()
assert "tensorflow" not in sys.modules, "the {backend} check must not run on TensorFlow"
import torch
import resnexus
from resnexus import keras as rk
from tests.helpers import keras_logits, max_abs_diff, randomize_

overrides = dict(layers=(1, 1, 1), cardinality=4, base_width=4)
source = randomize_(resnexus.create_model("resnext29_8x64d", num_classes=5, **overrides), seed=5).eval()
x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    expected = source(x)
for form in ("c", "split"):
    model = rk.from_torch(source, input_shape=(32, 32, 3), block_form=form)
    got = keras_logits(model, x)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    print(f"backend={{keras.backend.backend()}} form={{form}} max_abs_diff={{max_abs_diff(got, expected):.3e}}")
"""


@pytest.mark.slow  # a fresh interpreter per backend; building the Keras graph on JAX alone takes ~30 s on 2 cores
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_from_torch_gives_pytorch_logits_on_backend(backend: str) -> None:
    pytest.importorskip("keras")
    pytest.importorskip(backend)
    done, shown = run_on_keras_backend(SCRIPT.format(root=str(ROOT), backend=backend), backend, ROOT)
    assert done.returncode == 0, shown
    diffs = dict(re.findall(rf"backend={backend} form=(\w+) max_abs_diff=(\S+)", done.stdout))
    assert set(diffs) == {"c", "split"}, shown
    assert all(float(d) < 1e-4 for d in diffs.values()), shown
