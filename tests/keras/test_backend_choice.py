"""``--keras-backend``: which Keras backend trains (resnexus.keras_backend), and that its files work on any other.

Keras fixes its backend when first imported and this test session runs on TensorFlow (tests/conftest.py),
so runs on another backend go through the command line in a fresh interpreter without ``KERAS_BACKEND``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resnexus import keras_backend as kb
from resnexus.engine.config import TrainConfig, validate_config
from tests.helpers import bright_and_dark_folder

ROOT = Path(__file__).resolve().parents[2]
TINY_YAML = """model: resnet20_cifar
model_config: {layers: [1, 1, 1]}
epochs: 1
batch_size: 8
image_size: 16
workers: 0
cache_dir: "off"
"""


# -- the choice, without Keras ------------------------------------------------------------------
@pytest.fixture
def fresh(monkeypatch):
    """As in a new process: no Keras loaded, no KERAS_BACKEND, every backend installed."""
    monkeypatch.setattr(kb, "loaded_backend", lambda: None)
    monkeypatch.setattr(kb, "installed_backends", lambda: ["tensorflow", "jax", "torch"])
    monkeypatch.delenv("KERAS_BACKEND", raising=False)


def test_auto_picks_the_measured_table_first_installed(fresh, monkeypatch):
    assert kb.choose_backend("auto", "resnext50_32x4d")[0] == kb.FASTEST_MEASURED["cpu", "grouped"][0] == "torch"
    assert kb.choose_backend("auto", "resnet50v2")[0] == kb.FASTEST_MEASURED["cpu", "plain"][0]
    monkeypatch.setattr(kb, "installed_backends", lambda: ["tensorflow"])
    assert kb.auto_backend("resnext50_32x4d", "cpu")[0] == "tensorflow"  # the only one there is
    monkeypatch.setattr(kb, "installed_backends", lambda: ["jax", "tensorflow"])
    assert kb.auto_backend("resnext50_32x4d", "cpu")[0] == "jax"


def test_auto_keeps_keras_backend_the_loaded_keras_and_the_resumed_run(fresh, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert kb.choose_backend("auto", "resnet50v2") == ("jax", "KERAS_BACKEND")
    monkeypatch.setattr(kb, "loaded_backend", lambda: "tensorflow")
    assert kb.choose_backend("auto", "resnet50v2")[0] == "tensorflow"
    assert kb.choose_backend("auto", "resnet50v2", resumed="torch")[0] == "torch"
    assert kb.choose_backend("jax", "resnet50v2") == ("jax", "--keras-backend")


def test_resuming_on_another_backend_is_refused_naming_both(fresh):
    with pytest.raises(ValueError, match=r"trained on Keras' torch backend, not jax.*--keras-backend torch$"):
        kb.choose_backend("jax", "resnet50v2", resumed="torch")


def test_a_backend_not_installed_or_unknown_is_refused(fresh, monkeypatch):
    monkeypatch.setattr(kb, "installed_backends", lambda: ["torch"])
    with pytest.raises(
        ValueError, match=r"^Keras backend jax \(--keras-backend\) is not installed \(installed: torch\)"
    ):
        kb.use_keras_backend("jax", "--keras-backend")
    with pytest.raises(ValueError, match=r"--keras-backend 'mxnet': expected auto, tensorflow, jax, torch"):
        kb.choose_backend("mxnet")
    with pytest.raises(ValueError, match=r"keras_backend.*'mxnet'"):
        validate_config(TrainConfig(keras_backend="mxnet"))


def test_another_backend_than_the_loaded_keras_is_refused_in_one_line():
    keras = pytest.importorskip("keras")
    other = "jax" if keras.backend.backend() != "jax" else "torch"
    with pytest.raises(ValueError) as error:
        kb.use_keras_backend(other, "--keras-backend")
    message = str(error.value)
    assert "\n" not in message and f"already loaded in this process with the {keras.backend.backend()}" in message
    assert kb.use_keras_backend(keras.backend.backend()) == keras.backend.backend()


def test_saved_backend_reads_the_metadata_without_keras(tmp_path):
    import zipfile

    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(kb.METADATA_MEMBER, json.dumps({"keras_backend": "jax"}))
    assert kb.saved_backend(path) == "jax"
    (tmp_path / "bad.keras").write_text("not a zip")
    assert kb.saved_backend(tmp_path / "bad.keras") is None


# -- runs on each backend, through the command line ----------------------------------------------
def _cli(*args: str, backend_env: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"} | {"PYTHONWARNINGS": "ignore"}
    if backend_env:
        env["KERAS_BACKEND"] = backend_env
    return subprocess.run(
        [sys.executable, "-m", "resnexus", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )


PROBS_SCRIPT = """
import sys, numpy as np
from resnexus.keras_backend import use_backend_for_reading
print(use_backend_for_reading(sys.argv[1]))
import keras
from resnexus.keras import load_keras
model, _ = load_keras(sys.argv[1])
x = np.random.default_rng(0).standard_normal((4, 16, 16, 3)).astype("float32")
np.save(sys.argv[2], keras.ops.convert_to_numpy(keras.ops.softmax(model.predict_on_batch(x), axis=-1)))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bright_and_dark_folder(tmp_path_factory.mktemp("data") / "halves", per_class=12, size=20)


def _train(data: Path, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    config = out.parent / "tiny.yaml"
    config.write_text(TINY_YAML)
    return _cli(
        "train", "--config", str(config), "--data", str(data), "--framework", "keras", "--out", str(out), *flags
    )


@pytest.fixture(scope="module")
def torch_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run on Keras' torch backend, chosen by ``auto`` (the table's CPU choice)."""
    pytest.importorskip("keras")
    if "torch" not in kb.installed_backends():
        pytest.skip("Keras' torch backend is not installed")
    out = tmp_path_factory.mktemp("runs") / "torch-run"
    done = _train(data, out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow  # a fresh interpreter trains (about a minute on 2 cores)
def test_auto_trains_on_the_tables_choice_and_records_it(torch_run):
    assert kb.auto_backend("resnet20_cifar", "cpu")[0] == "torch"
    report = (torch_run / "report.md").read_text()
    assert "(torch backend), model.fit" in report
    for name in ("best.keras", "last.keras"):
        assert kb.saved_backend(torch_run / "checkpoints" / name) == "torch"


@pytest.mark.slow
def test_a_torch_backend_file_predicts_the_same_on_tensorflow(torch_run, tmp_path):
    """best.keras from the torch backend, read in this TensorFlow process and in a torch one: the same probabilities."""
    keras = pytest.importorskip("keras")
    from resnexus.keras import load_keras

    best = torch_run / "checkpoints" / "best.keras"
    done = subprocess.run(
        [sys.executable, "-c", PROBS_SCRIPT, str(best), str(tmp_path / "p.npy")],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0 and done.stdout.split()[0] == "torch", done.stderr[-3000:]
    model, _ = load_keras(best)
    x = np.random.default_rng(0).standard_normal((4, 16, 16, 3)).astype("float32")
    here = keras.ops.convert_to_numpy(keras.ops.softmax(model.predict_on_batch(x), axis=-1))
    np.testing.assert_allclose(here, np.load(tmp_path / "p.npy"), atol=1e-5)
    assert keras.backend.backend() != "torch"


@pytest.mark.slow
def test_savedmodel_export_of_a_torch_backend_run_runs_on_tensorflow(torch_run, tmp_path):
    pytest.importorskip("tensorflow")
    done = _cli(
        "export",
        "--checkpoint",
        str(torch_run),
        "--format",
        "savedmodel",
        "--output",
        str(tmp_path / "sm"),
        backend_env="torch",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "sm" / "saved_model.pb").is_file()


@pytest.mark.slow
def test_resume_on_another_backend_is_refused_and_on_its_own_continues(torch_run):
    other = next((b for b in kb.installed_backends() if b != "torch"), None)
    if other is not None:
        done = _cli("train", "--resume", str(torch_run), "--epochs", "2", "--keras-backend", other)
        assert done.returncode != 0
        assert f"trained on Keras' torch backend, not {other}" in done.stderr, done.stderr[-3000:]
    done = _cli("train", "--resume", str(torch_run), "--epochs", "2", backend_env="tensorflow")  # auto: the run's
    assert done.returncode == 0, done.stderr[-3000:]
    assert len((torch_run / "history.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs
    assert "(torch backend), model.fit" in (torch_run / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_train_on_each_installed_backend(backend, data, tmp_path):
    pytest.importorskip("keras")
    if backend not in kb.installed_backends():
        pytest.skip(f"{backend} is not installed")
    done = _train(data, tmp_path / "run", "--keras-backend", backend)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"({backend} backend), model.fit" in (tmp_path / "run" / "report.md").read_text()
    assert kb.saved_backend(tmp_path / "run" / "checkpoints" / "best.keras") == backend
