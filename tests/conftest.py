"""Test-wide settings: Keras (a test-only dependency) runs on the torch backend."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")
