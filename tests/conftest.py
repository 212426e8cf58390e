"""Test-wide settings: Keras runs on the TensorFlow backend (the one resnexus.keras is tested on; JAX and
torch are checked in subprocesses), and everything resnexus
keeps between runs (decoded images, the built-in digits) goes to a temporary $RESNEXUS_HOME, removed at
the end, instead of the user's cache."""

import os
import shutil
import tempfile

import torchvision  # noqa: F401  before anything imports TensorFlow: the other order crashes (see resnexus.keras)

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up banner is not test output
_HOME = tempfile.mkdtemp(prefix="resnexus-test-home-")
os.environ["RESNEXUS_HOME"] = _HOME  # subprocesses (CLI tests, spawned compare runs) inherit it


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_HOME, ignore_errors=True)
