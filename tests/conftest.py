"""Test-wide settings: Keras (a test-only dependency) runs on the torch backend, and decoded-image
caches go to a temporary folder (removed at the end) instead of the user's cache."""

import os
import shutil
import tempfile

os.environ.setdefault("KERAS_BACKEND", "torch")
_CACHE = tempfile.mkdtemp(prefix="resnexus-test-cache-")
os.environ["RESNEXUS_CACHE_DIR"] = _CACHE  # subprocesses (CLI tests) inherit it


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_CACHE, ignore_errors=True)
