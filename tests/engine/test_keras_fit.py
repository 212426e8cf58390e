"""``train --framework keras``: Keras' model.fit with the PyTorch path's checks, splits, reports and run directory."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from resnexus.cli import main
from resnexus.data import eval_transform
from resnexus.data.dataset import load_image
from resnexus.engine import TrainConfig, compare, evaluate, load_checkpoint, model_from_checkpoint, predict, train
from resnexus.engine.config import validate_config
from resnexus.engine.explain import explain
from resnexus.engine.export import export_keras
from resnexus.engine.run import Run
from tests.helpers import TINY_RUN, bright_and_dark_folder, tiny_config

keras = pytest.importorskip("keras")

from resnexus.engine import keras_fit  # noqa: E402  (needs Keras)
from resnexus.keras.files import load_keras, read_keras_metadata  # noqa: E402

HISTORY_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "seconds",
    "images_per_second",
]


def _keras_config(data: Path, out: Path, **changes: object) -> TrainConfig:
    """A tiny Keras run: 3 epochs of a one-block-per-stage CIFAR ResNet on 16-px crops, with every
    Keras augmentation switched on (crop zoom, flip, jitter, erasing, Mixup and CutMix)."""
    recipe = dict(
        framework="keras",
        epochs=3,
        optimizer="sgd",
        lr=0.05,
        warmup_epochs=1.0,
        checkpoint_every=0.0,
        val_fraction=0.2,
        test_fraction=0.25,
        mixup=0.2,
        cutmix=1.0,
    )
    return tiny_config(data, out, **(recipe | changes))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bright_and_dark_folder(tmp_path_factory.mktemp("data") / "halves", per_class=12, size=20)


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("runs") / "keras-run"
    config = _keras_config(data, out)
    return out, config, train(config)  # resnexus.train dispatches on config.framework


def _history(out: Path) -> list[dict[str, str]]:
    with (out / "history.csv").open() as f:
        return list(csv.DictReader(f))


def test_keras_run_writes_the_run_directory(run):
    out, _, result = run
    for name in ("checkpoints/best.keras", "checkpoints/last.keras", "history.csv", "metrics.json", "report.md"):
        assert (out / name).is_file(), name
    assert not list((out / "checkpoints").glob("*.pt"))
    rows = _history(out)
    assert list(rows[0]) == HISTORY_COLUMNS  # the PyTorch path's columns, in its order
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(float(r["train_loss"]) > 0 and 0 <= float(r["val_accuracy"]) <= 1 for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == result.metrics and metrics["framework"] == "keras"
    assert metrics["split"] == "test" and metrics["n"] == 6  # 25 % of 24 images, stratified
    assert metrics["class_names"] == ["bright", "dark"]
    report = (out / "report.md").read_text()
    assert f"Keras {keras.__version__} ({keras.backend.backend()} backend), model.fit" in report


def test_best_keras_carries_the_inference_metadata(run):
    out, config, result = run
    meta = read_keras_metadata(out / "checkpoints" / "best.keras")
    assert meta["framework"] == "keras" and meta["model_name"] == "resnet20_cifar"
    assert meta["class_names"] == ["bright", "dark"] and meta["image_size"] == 16
    assert meta["mean"] and meta["std"] and meta["crop_fraction"] == config.crop_fraction
    assert meta["epoch"] == result.best_epoch and meta["config"]["framework"] == "keras"
    best, last = (out / "checkpoints" / name for name in ("best.keras", "last.keras"))
    assert best.stat().st_size < last.stat().st_size  # best.keras: the model without the optimizer state
    last = read_keras_metadata(out / "checkpoints" / "last.keras")
    assert last["run_state"]["epoch"] == 3 and last["data"]["images"] == 24


def test_predict_on_the_run_directory_equals_the_keras_softmax(run, data, tmp_path):
    out, *_ = run
    csv_path = predict(out, data / "dark", tmp_path / "p.csv")  # the run directory: best.keras
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    model, meta = load_keras(out / "checkpoints" / "best.keras")
    prep = eval_transform(meta["image_size"], meta["mean"], meta["std"], meta["crop_fraction"])
    images = torch.stack([prep(load_image(Path(r["path"]))) for r in rows])
    logits = model(images.permute(0, 2, 3, 1).numpy(), training=False)
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))
    got = np.array([[float(r["prob_bright"]), float(r["prob_dark"])] for r in rows])
    assert np.abs(got - expected).max() < 1e-4


def test_evaluate_and_the_checkpoint_readers_take_best_keras(run, data, tmp_path):
    out, _, result = run
    metrics = evaluate(out, data)  # the whole folder: the run's test images among them
    assert metrics["n"] == 24 and metrics["class_names"] == ["bright", "dark"]
    ckpt = load_checkpoint(out / "checkpoints" / "best.keras")  # what export and explain read
    assert ckpt["class_names"] == ["bright", "dark"] and ckpt["epoch"] == result.best_epoch
    model = model_from_checkpoint(ckpt)
    keras_model, _ = load_keras(out / "checkpoints" / "best.keras")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch_logits = model(x)
    keras_logits = keras.ops.convert_to_numpy(keras_model(x.permute(0, 2, 3, 1).numpy(), training=False))
    assert np.abs(torch_logits.numpy() - keras_logits).max() < 1e-4


def test_explain_and_export_take_the_run_directory(run, data, tmp_path):
    out, *_ = run
    index = explain(out, data / "bright", tmp_path / "cam")  # Grad-CAM on the converted model
    assert len(index.read_text().splitlines()) == 13  # header + 12 images
    exported = export_keras(out, tmp_path / "again.keras")  # best.keras -> PyTorch -> .keras again
    assert exported.max_abs_diff < 1e-4 and exported.metadata["class_names"] == ["bright", "dark"]


def test_an_interrupted_run_resumes_from_its_last_epoch(run, data, tmp_path, monkeypatch, capsys):
    """Stopped hard after epoch 1 (an exception out of the epoch callback: the process state is lost
    as in a kill, the files are what was saved), ``--resume`` continues with epoch 2 and ends with
    the uninterrupted run's history."""
    _, uninterrupted_config, uninterrupted = run
    out = tmp_path / "stopped"
    config = replace(uninterrupted_config, out=str(out))
    original = Run.save

    def save_then_die(self, best, end_of_run):
        original(self, best, end_of_run)
        raise SystemExit("killed")

    monkeypatch.setattr(Run, "save", save_then_die)
    with pytest.raises(SystemExit):
        train(config)
    monkeypatch.undo()
    first = _history(out)
    assert [int(r["epoch"]) for r in first] == [1]
    assert read_keras_metadata(out / "checkpoints" / "last.keras")["run_state"]["epoch"] == 1
    assert main(["train", "--resume", str(out), "--lr", "0.5"]) == 2  # a changed recipe: refused, naming it
    assert "cannot change --lr" in capsys.readouterr().err
    assert main(["train", "--resume", str(out)]) == 0  # the saved config is quiet (verbose=False)
    rows = _history(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]  # each epoch once
    assert rows[0] == first[0]  # epoch 1 as it was (its time too): continued from epoch 2, not retrained
    resumed = [float(r["train_loss"]) for r in rows]
    assert resumed == pytest.approx([h["train_loss"] for h in uninterrupted.history], abs=1e-4)


@pytest.mark.slow  # two processes that import TensorFlow and PyTorch: ~1-2 minutes on 2 busy cores
def test_a_killed_keras_run_resumes(data, tmp_path):
    out = tmp_path / "killed"
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: resnet20_cifar\nmodel_config: {layers: [1, 1, 1]}\nframework: keras\nepochs: 6\n"
        "batch_size: 8\nimage_size: 16\nprecision: fp32\nworkers: 0\ncache_dir: 'off'\ncheckpoint_every: 0.0\n"
    )
    command = [sys.executable, "-m", "resnexus", "train", "--config", str(config), "--data", str(data)]
    process = subprocess.Popen(
        [*command, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy()
    )
    history = out / "history.csv"
    try:
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            if history.is_file() and len(history.read_text().splitlines()) >= 2:  # epoch 1 is on disk
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = read_keras_metadata(out / "checkpoints" / "last.keras")["run_state"]["epoch"]
    assert 1 <= done < 6
    resumed = subprocess.run(
        [sys.executable, "-m", "resnexus", "train", "--resume", str(out)], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {out} after epoch {done}" in resumed.stdout
    assert f"epoch {done + 1:3d}/6" in resumed.stdout and f"epoch {done:3d}/6" not in resumed.stdout
    assert [int(r["epoch"]) for r in _history(out)] == [1, 2, 3, 4, 5, 6]


def test_unsupported_options_are_refused_naming_them(tmp_path, capsys):
    base = TrainConfig(framework="keras")
    for changes, named in (
        (dict(ema_decay=0.999), "--ema"),
        (dict(compile=True), "--compile"),
        (dict(precision="bf16"), "--precision"),
        (dict(channels_last=True), "channels_last"),
        (dict(freeze=1), "--freeze"),
        (dict(balance="loss"), "--balance"),
        (dict(sync_bn=True), "--sync-bn"),
    ):
        with pytest.raises(ValueError, match=f"--framework keras does not support .*{named}"):
            validate_config(replace(base, **changes))
    with pytest.raises(ValueError, match="unknown framework 'jax': expected 'torch' or 'keras'"):
        validate_config(TrainConfig(framework="jax"))
    for flag in (["--nproc", "2"], ["--ema", "0.99"]):
        assert main(["train", "--framework", "keras", "--out", str(tmp_path / "r"), *flag]) == 2
        err = capsys.readouterr().err
        assert err.startswith("resnexus train: error: --framework keras does not support") and flag[0] in err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # two tiny trainings (one per framework) and the comparison table: ~40 s
def test_compare_puts_a_keras_and_a_torch_run_side_by_side(data, tmp_path):
    base = TrainConfig(data=str(data), **{k: v for k, v in TINY_RUN.items() if k not in ("model", "model_config")})
    tiny = {"layers": (1, 1, 1)}
    result = compare(
        ["resnet20_cifar", "keras:resnet20_cifar"],
        base,
        tmp_path / "cmp",
        isolate=False,
        model_configs={"resnet20_cifar": tiny},  # the bare name covers the keras: model too
    )
    assert [r["model"] for r in result.rows] == ["resnet20_cifar", "keras:resnet20_cifar"]
    assert all(r["status"] == "ok" for r in result.rows), [r["error"] for r in result.rows]
    assert result.rows[0]["params"] == result.rows[1]["params"]  # the same architecture
    assert (tmp_path / "cmp" / "resnet20_cifar" / "checkpoints" / "best.pt").is_file()
    assert (tmp_path / "cmp" / "keras-resnet20_cifar" / "checkpoints" / "best.keras").is_file()
    assert result.rows[1]["inference_images_per_second"] > 0
    table = result.markdown.read_text()
    assert "keras:resnet20_cifar" in table
    assert "trained with Keras' model.fit" in table


@pytest.mark.slow  # a subprocess on Keras' torch backend: ~30 s (JAX works too, but compiles for ~90 s)
def test_keras_training_runs_on_the_torch_backend(data, tmp_path):
    out = tmp_path / "torch-backend"
    script = (
        "from resnexus.engine import train\n"
        "from tests.helpers import tiny_config\n"
        f"r = train(tiny_config({str(data)!r}, {str(out)!r}, framework='keras', epochs=2, mixup=0.2, cutmix=1.0))\n"
        "import keras; print(keras.backend.backend(), r.metrics['n'])\n"
    )
    env = os.environ | {"KERAS_BACKEND": "torch"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2] == "torch"
    assert "(torch backend), model.fit" in (out / "report.md").read_text()
    assert read_keras_metadata(out / "checkpoints" / "best.keras")["framework"] == "keras"


def test_grouped_models_train_in_the_split_form_on_a_cpu(data, tmp_path):
    """ResNeXt trains as split + per-group convolutions on TensorFlow's CPU kernels (7x faster there),
    and its best.keras still converts to the grouped PyTorch model with equal logits."""
    grouped = dict(model="resnext29_8x64d", model_config={"layers": (1, 1, 1), "base_width": 4, "cardinality": 4})
    config = _keras_config(data, tmp_path / "rx", epochs=1, mixup=0.0, cutmix=0.0, **grouped)
    assert keras_fit.training_block_form(config) == {"block_form": "split"}
    assert keras_fit.training_block_form(_keras_config(data, tmp_path / "r")) == {}  # resnet20_cifar: not grouped
    assert (
        keras_fit.training_block_form(replace(config, model_config={**grouped["model_config"], "cardinality": 1})) == {}
    )
    result = train(config)
    model, _ = load_keras(result.run_dir / "checkpoints" / "best.keras")
    assert "layer1_0_conv2_g3" in {layer.name for layer in model.layers}
    ckpt = load_checkpoint(result.run_dir / "checkpoints" / "best.keras")
    torch_model = model_from_checkpoint(ckpt).eval()
    assert torch_model.layer1[0].conv2.groups == 4
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = torch_model(x).numpy()
    got = keras.ops.convert_to_numpy(model(x.permute(0, 2, 3, 1).numpy(), training=False))
    assert np.abs(got - expected).max() < 1e-4


def test_keras_cross_validation_refits_and_its_fold_models_ensemble(data, tmp_path):
    """``train --folds K --framework keras``: K Keras fold runs, the refit model as the run directory's
    model, and ``--ensemble`` averaging the K fold models' probabilities image by image."""
    from resnexus.engine import cross_validate
    from resnexus.engine.checkpoint import fold_checkpoints, load_for_inference, resolve_checkpoint

    config = _keras_config(data, tmp_path / "cv", epochs=1, mixup=0.0, cutmix=0.0, val_fraction=0.0, test_fraction=0.0)
    cross_validate(config, 2, refit=True)
    run_dir = tmp_path / "cv"
    assert resolve_checkpoint(run_dir) == run_dir / "refit" / "checkpoints" / "best.keras"
    folds = fold_checkpoints(run_dir)
    assert [p.name for p in folds] == ["best.keras", "best.keras"]
    record = json.loads((run_dir / "cv_metrics.json").read_text())
    assert (
        record["protocol"]["framework"] == "keras" and record["refit"]["checkpoint"] == "refit/checkpoints/best.keras"
    )
    assert "refit/checkpoints/best.keras" in (run_dir / "cv_report.md").read_text()
    # out-of-fold predictions: each Keras fold run wrote its test images' probabilities (from the PyTorch
    # twin of best.keras, as finish evaluates), and the cross-validation gathered them into calibration.json
    from resnexus.data import scan_dataset
    from resnexus.engine.out_of_fold import read_predictions, recompute_probabilities

    splits, names = json.loads((run_dir / "cv_splits.json").read_text()), record["protocol"]["class_names"]
    for k, fold in enumerate(splits["folds"], start=1):
        saved = read_predictions(run_dir / f"fold{k}" / "test_predictions.csv", names)
        tested = scan_dataset(data).subset([scan_dataset(data).paths.index(data / f) for f in fold["test"]])
        again = recompute_probabilities(run_dir / f"fold{k}", tested)
        np.testing.assert_allclose(np.stack([saved[f] for f in fold["test"]]), again, atol=1e-5)
    oof = (run_dir / "oof_predictions.csv").read_text().splitlines()
    assert len(oof) == 1 + sum(len(f["test"]) for f in splits["folds"])
    assert json.loads((run_dir / "calibration.json").read_text())["temperature"] > 0

    ensemble, meta = load_for_inference(run_dir, ensemble=True)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    members = [model_from_checkpoint(load_checkpoint(p)).eval() for p in folds]
    with torch.no_grad():
        expected = torch.stack([m(x).softmax(1) for m in members]).mean(0)
        got = ensemble(x).softmax(1)  # the ensemble's logits are the log of the mean probability
    assert torch.allclose(got, expected, atol=1e-6)
    assert meta["ensemble_members"] == [str(p) for p in folds]


@pytest.mark.slow  # two processes that import TensorFlow and PyTorch: 1-3 minutes on 2 busy cores
def test_the_same_seed_gives_the_same_keras_run_in_every_process(data, tmp_path):
    """A fresh process repeats a run's epoch-1 loss exactly: the initial weights come from the run's
    seed (one initializer shared by every layer drew its seed at import, once per process)."""
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: resnet20_cifar\nmodel_config: {layers: [1, 1, 1]}\nframework: keras\nepochs: 1\n"
        "batch_size: 8\nimage_size: 16\nprecision: fp32\nworkers: 0\ncache_dir: 'off'\n"
    )
    runs = {"a": 0, "b": 0}
    command = [sys.executable, "-m", "resnexus", "train", "--config", str(config), "--data", str(data)]
    processes = [
        subprocess.Popen(
            [*command, "--out", str(tmp_path / name), "--seed", str(seed)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, seed in runs.items()
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-2000:]
    loss = {name: float(_history(tmp_path / name)[0]["train_loss"]) for name in runs}
    assert loss["a"] == loss["b"]  # (another seed, another start: tests/keras/test_init.py)
