"""Test-wide settings: Keras (a test-only dependency) runs on the torch backend, and everything resnexus
keeps between runs (decoded images, the built-in digits) goes to a temporary $RESNEXUS_HOME, removed at
the end, instead of the user's cache."""

import os
import shutil
import tempfile

os.environ.setdefault("KERAS_BACKEND", "torch")
_HOME = tempfile.mkdtemp(prefix="resnexus-test-home-")
os.environ["RESNEXUS_HOME"] = _HOME  # subprocesses (CLI tests, spawned compare runs) inherit it


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_HOME, ignore_errors=True)
