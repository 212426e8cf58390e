"""resnexus._compat: TensorFlow imported before resnexus (or between resnexus and its engine) must not
crash the interpreter when torchvision / torch._dynamo load Triton later (a segmentation fault with
torch 2.14 / Triton 3.8 / TensorFlow 2.21). Each order runs in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ORDERS = {
    "keras, then resnexus.keras and the engine": "import keras; import resnexus.keras, resnexus.engine",
    "tensorflow, then resnexus": "import tensorflow; import resnexus, resnexus.engine",
    "resnexus, then keras, then the engine": "import resnexus; import keras; import resnexus.engine",
}


@pytest.mark.parametrize("statements", list(ORDERS.values()), ids=list(ORDERS))
def test_any_import_order_of_tensorflow_and_resnexus_survives(statements: str) -> None:
    pytest.importorskip("tensorflow")
    code = f"{statements}; import torchvision.models, torch._dynamo; print('alive')"
    env = os.environ | {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "alive", (done.returncode, done.stderr[-2000:])


def test_triton_is_hidden_only_when_tensorflow_came_first() -> None:
    code = (
        "import sys; from resnexus._compat import hide_triton_after_tensorflow as hide; "
        "first = hide(); sys.modules['tensorflow'] = object(); second = hide(); "
        "print(first, second, sys.modules['triton'] is None)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "True", "True"], done.stderr[-2000:]
