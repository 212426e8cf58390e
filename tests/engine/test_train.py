"""End to end on a tiny generated image folder: train -> evaluate -> predict, checking contents."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import resnexus
from resnexus.cli import main
from resnexus.engine import TrainConfig, evaluate, load_checkpoint, predict, train

CLASSES = ("bright é", "dark images")  # spaces and non-ASCII in class folder names
TINY = dict(layers=(1, 1, 1))  # a 1-block-per-stage CIFAR ResNet: seconds, not minutes


def _make_folder(root: Path, per_class: int = 16, size: int = 16, seed: int = 0) -> Path:
    """Two classes any crop or flip keeps apart: dark and bright noise images."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8) + (20 if label else 140)
            Image.fromarray(img.astype(np.uint8)).save(folder / f"img{i}.png")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = _make_folder(tmp_path_factory.mktemp("data") / "halves")
    out = tmp_path_factory.mktemp("runs") / "run1"
    config = TrainConfig(
        data=str(data),
        out=str(out),
        model="resnet20_cifar",
        model_config=TINY,
        epochs=4,
        batch_size=8,
        lr=0.05,
        optimizer="sgd",
        image_size=16,
        val_fraction=0.2,
        test_fraction=0.25,
        verbose=False,
        precision="fp32",
    )
    return data, out, config, train(config)


def test_run_directory_holds_the_documented_outputs(run):
    _, out, _, result = run
    assert result.run_dir == out
    for name in ("checkpoints/best.pt", "checkpoints/last.pt", "metrics.json", "history.csv", "report.md"):
        assert (out / name).is_file(), name
    with (out / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert all(float(r["train_loss"]) > 0 and 0 <= float(r["val_accuracy"]) <= 1 for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n"] == 8  # 25% of 32 images, stratified
    assert metrics["class_names"] == list(CLASSES)
    assert metrics == result.metrics  # the file is what the API returned
    assert f"{metrics['accuracy']:.3f}"[:4] in (out / "report.md").read_text()


def test_checkpoint_carries_what_inference_needs(run):
    _, out, _, result = run
    ckpt = load_checkpoint(out / "checkpoints" / "best.pt")
    assert ckpt["model_name"] == "resnet20_cifar" and ckpt["model_config"] == {"layers": [1, 1, 1]}
    assert ckpt["class_names"] == list(CLASSES) and ckpt["image_size"] == 16
    assert ckpt["epoch"] == result.best_epoch
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["epoch"] == 4 and "optimizer" in last and "scheduler" in last


def test_the_task_is_learned(run):
    *_, result = run
    assert result.metrics["accuracy"] >= 0.75  # chance is 0.5


def test_evaluate_reproduces_train_metrics_on_the_same_images(run, tmp_path):
    data, out, config, result = run
    # rebuild the test split as a folder and evaluate the best checkpoint on it
    from resnexus.data import resolve_splits

    test = resolve_splits(data, val_fraction=0.2, test_fraction=0.25, seed=config.seed)["test"]
    for path, label in zip(test.paths, test.labels):
        target = tmp_path / "test" / CLASSES[label] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    metrics = evaluate(out / "checkpoints" / "best.pt", tmp_path, out=tmp_path / "m.json")
    assert metrics["n"] == result.metrics["n"]
    assert metrics["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert metrics["confusion_matrix"] == result.metrics["confusion_matrix"]
    assert json.loads((tmp_path / "m.json").read_text())["accuracy"] == metrics["accuracy"]


def test_predict_writes_one_row_per_image_in_natural_order(run, tmp_path):
    data, out, *_ = run
    csv_path = predict(out / "checkpoints" / "best.pt", data / CLASSES[1], tmp_path / "preds.csv")
    with csv_path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in rows] == [f"img{i}.png" for i in range(16)]  # img2 before img10
    assert set(rows[0]) == {"path", "label", *(f"prob_{c}" for c in CLASSES)}
    for r in rows:
        probs = [float(r[f"prob_{c}"]) for c in CLASSES]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert r["label"] == CLASSES[int(np.argmax(probs))]
    kaggle = predict(out / "checkpoints" / "best.pt", data / CLASSES[1], tmp_path / "sub.csv", id_label=True)
    lines = kaggle.read_text().splitlines()
    assert lines[0] == "id,label" and lines[1].startswith("img0,") and len(lines) == 17
    assert float(lines[1].split(",")[1]) == pytest.approx(float(rows[0][f"prob_{CLASSES[1]}"]), abs=1e-6)


def test_run_directory_is_never_overwritten_silently(run):
    _, out, config, _ = run
    before = (out / "checkpoints" / "best.pt").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(config)
    assert (out / "checkpoints" / "best.pt").read_bytes() == before


def test_same_seed_same_metrics(run, tmp_path):
    _, _, config, result = run
    again = train(TrainConfig(**{**config.__dict__, "out": str(tmp_path / "again")}))
    assert again.metrics["accuracy"] == result.metrics["accuracy"]
    assert [h["train_loss"] for h in again.history] == [h["train_loss"] for h in result.history]


def test_cli_train_evaluate_predict(run, tmp_path, capsys):
    data, *_ = run
    out = tmp_path / "cli-run"
    args = [
        "train",
        "--data",
        str(data),
        "--model",
        "resnet20_cifar",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--image-size",
        "16",
        "--precision",
        "fp32",
    ]
    assert main(args) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(out / "checkpoints/best.pt"), "--data", str(data)]) == 0
    assert "32 images: accuracy" in capsys.readouterr().out
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(out / "checkpoints/best.pt"),
                "--input",
                str(data),
                "--output",
                str(tmp_path / "p.csv"),
            ]
        )
        == 0
    )
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 33


def test_cli_bad_input_is_one_clear_line(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--model", "resnet20_cifar"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnexus train: error:") and "missing" in err and "Traceback" not in err
    assert main(["train", "--data", str(tmp_path), "--model", "resnext50_32x4"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_top_level_api_is_exported():
    assert resnexus.train is train and resnexus.TrainConfig is TrainConfig
    assert resnexus.evaluate is evaluate and resnexus.predict is predict


def test_bad_data_leaves_no_run_directory_behind(tmp_path):
    empty = tmp_path / "photos"
    (empty / "cats").mkdir(parents=True)  # a class folder with no images
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="cats"):
        train(TrainConfig(data=str(empty), out=str(out), model="resnet20_cifar", verbose=False))
    assert not (out / "checkpoints").exists()  # so the corrected command can reuse --out
