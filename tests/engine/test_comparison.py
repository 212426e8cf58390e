"""compare(): two tiny models on one tiny generated folder, checking the written files' contents."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnexus.engine import TrainConfig, load_checkpoint, model_from_checkpoint
from resnexus.engine.comparison import COLUMNS, compare
from resnexus.reports import MISSING
from tests.helpers import bright_and_dark_folder

MODELS = ["resnet20_cifar", "lenet"]
CONFIGS = {"resnet20_cifar": {"layers": (1, 1, 1)}, "lenet": {"img_size": 16}}


def _base(data: Path, **overrides) -> TrainConfig:
    values = dict(
        data=str(data),
        epochs=2,
        batch_size=8,
        lr=0.05,
        image_size=16,
        val_fraction=0.25,
        test_fraction=0.25,
        precision="fp32",
        workers=0,
        verbose=False,
    )
    return TrainConfig(**values | overrides)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return bright_and_dark_folder(tmp_path_factory.mktemp("data") / "halves", per_class=12, size=16)


@pytest.fixture(scope="module")
def result(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    return out, compare(MODELS, _base(data), out, isolate=False, model_configs=CONFIGS)


def _markdown_table(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def test_one_row_per_model_with_sane_numbers(result):
    out, res = result
    assert [r["model"] for r in res.rows] == MODELS
    for row in res.rows:
        assert row["status"] == "ok" and row["error"] is None
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc"):
            assert 0.0 <= row[key] <= 1.0, (row["model"], key)
        assert row["params"] > 0 and row["macs"] > 0 and row["image_size"] == 16
        assert row["train_seconds"] > 0 and row["train_images_per_second"] > 0
        assert row["inference_images_per_second"] > 0
        assert row["peak_memory_mib"] is None  # in-process on CPU: not measured (documented)
        assert row["best_epoch"] in (1, 2)
        metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        assert row["accuracy"] == metrics["accuracy"] and row["macro_f1"] == metrics["macro_f1"]
        history = load_checkpoint(Path(row["run_dir"]) / "checkpoints" / "last.pt")["history"]
        speeds = [h["images_per_second"] for h in history]
        assert len(speeds) == 2 and row["train_images_per_second"] == pytest.approx(float(np.median(speeds)))
    assert res.rows[0]["run_dir"] == str(out / "resnet20_cifar")


def test_params_and_macs_are_those_of_the_trained_model(result):
    out, res = result
    for row in res.rows:
        ckpt = load_checkpoint(out / row["model"] / "checkpoints" / "best.pt")
        model = model_from_checkpoint(ckpt)
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert ckpt["num_classes"] == 2 and ckpt["image_size"] == 16
    lenet = res.rows[1]
    # at 16x16: conv1 3->6 5x5 -> 12x12, pool 6x6, conv2 6->16 5x5 -> 2x2, pool 1x1; fc 16->120->84->2
    assert lenet["macs"] == 6 * 75 * 144 + 16 * 150 * 4 + 16 * 120 + 120 * 84 + 84 * 2


def test_both_models_saw_the_same_test_images(result):
    out, _ = result
    m = [json.loads((out / name / "metrics.json").read_text()) for name in MODELS]
    assert m[0]["split"] == m[1]["split"] == "test"
    assert m[0]["n"] == m[1]["n"] == 6  # 25% of 24
    # confusion-matrix row sums are the true-class counts of the test images
    cms = [np.asarray(x["confusion_matrix"]) for x in m]
    assert cms[0].sum(1).tolist() == cms[1].sum(1).tolist() and cms[0].sum() == cms[1].sum() == 6


def test_csv_and_markdown_hold_the_same_numbers(result):
    _, res = result
    with res.csv.open(encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == [key for key, _ in COLUMNS]
        csv_rows = list(reader)
    text = res.markdown.read_text(encoding="utf-8")
    md_rows = _markdown_table(text)
    headers = dict(COLUMNS)
    assert [r["model"] for r in csv_rows] == [r["Model"] for r in md_rows] == MODELS
    for c, m, row in zip(csv_rows, md_rows, res.rows):
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc"):
            assert float(c[key]) == row[key]  # CSV: full precision
            assert float(m[headers[key]]) == pytest.approx(float(c[key]), abs=5e-5)
        for key in ("params", "macs", "image_size", "best_epoch"):
            assert int(c[key]) == row[key] == int(m[headers[key]].replace(",", ""))
        for key in ("train_seconds", "train_images_per_second", "inference_images_per_second"):
            assert float(m[headers[key]].replace(",", "")) == pytest.approx(float(c[key]), abs=0.051)
        assert c["peak_memory_mib"] == "" and m[headers["peak_memory_mib"]] == MISSING
    # recipe, split sizes and the best model by accuracy (ties: fewer MACs)
    assert "12 train / 6 val / 6 test" in text and "epochs: 2, batch size: 8" in text
    best = max(res.rows, key=lambda r: (r["accuracy"], -r["macs"]))
    assert res.best is not None and res.best["model"] == best["model"]
    assert re.search(rf"Best by accuracy: \*\*{best['model']}\*\*", text)
    assert "layers" in text and "img_size" in text  # the per-model overrides are recorded


def test_plot_is_a_png(result):
    _, res = result
    with Image.open(res.plot) as img:
        assert img.format == "PNG" and img.size[0] > 200 and img.size[1] > 150


def test_bad_input_is_rejected_before_training(data, tmp_path):
    base = _base(data)
    with pytest.raises(ValueError, match="no models"):
        compare([], base, tmp_path / "a")
    with pytest.raises(ValueError, match="unknown model 'resnet20_cifarr'"):
        compare(["resnet20_cifar", "resnet20_cifarr"], base, tmp_path / "b", isolate=False)
    with pytest.raises(ValueError, match="more than once: lenet"):
        compare(["lenet", "resnet20_cifar", "lenet"], base, tmp_path / "c", isolate=False)
    with pytest.raises(ValueError, match="not being compared: resnet18"):
        compare(["lenet"], base, tmp_path / "d", model_configs={"resnet18": {}})
    # LeNet's default img_size (256) cannot take 16x16 images: caught on the meta device, before any run
    with pytest.raises(ValueError, match=r"lenet .* cannot run on 16x16"):
        compare(
            ["resnet20_cifar", "lenet"],
            base,
            tmp_path / "e",
            isolate=False,
            model_configs={"resnet20_cifar": {"layers": (1, 1, 1)}},
        )
    with pytest.raises(ValueError, match="unknown precision"):
        compare(["lenet"], _base(data, precision="fp8"), tmp_path / "g", model_configs={"lenet": CONFIGS["lenet"]})
    with pytest.raises(TypeError):
        compare("lenet", base, tmp_path / "f")
    assert not any(tmp_path.rglob("*.pt"))  # nothing was trained


def test_a_failing_model_is_reported_and_the_others_still_run(data, tmp_path, monkeypatch):
    import resnexus.engine.comparison as cmp

    real_train = cmp.train

    def flaky(config, splits=None):
        if config.model == "resnet20_cifar":
            raise RuntimeError("simulated out of memory\nsecond line")
        return real_train(config, splits=splits)

    monkeypatch.setattr(cmp, "train", flaky)
    res = compare(MODELS, _base(data, epochs=1), tmp_path, isolate=False, model_configs=CONFIGS)
    failed, ok = res.rows
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: simulated out of memory second line"
    assert failed["accuracy"] is None and failed["params"] > 0  # static facts are still there
    assert ok["status"] == "ok" and ok["accuracy"] is not None
    text = res.markdown.read_text()
    assert "| Error |" in text and "simulated out of memory" in text
    assert res.best["model"] == "lenet" and "Best by accuracy: **lenet**" in text


@pytest.mark.slow  # a spawned process re-imports PyTorch: ~8-10 s on 2 busy cores
def test_isolated_runs_report_peak_memory(data, tmp_path):
    res = compare(["lenet"], _base(data, epochs=1), tmp_path, model_configs={"lenet": CONFIGS["lenet"]})  # isolate=True
    (row,) = res.rows
    assert row["status"] == "ok", row["error"]
    if torch.cuda.is_available():
        assert row["peak_memory_mib"] > 0
    else:  # the child's own peak RSS: at least the PyTorch runtime, far below the machine's memory
        assert 50 < row["peak_memory_mib"] < 64 * 1024
        assert 0 < row["baseline_memory_mib"] <= row["peak_memory_mib"]
        assert "the runtime alone held about" in res.markdown.read_text()
    assert (tmp_path / "lenet" / "checkpoints" / "best.pt").is_file()
    assert not list(tmp_path.glob(".compare-*.json"))  # the hand-over file is cleaned up


@pytest.mark.slow  # a spawned process re-imports PyTorch
def test_an_isolated_run_logs_like_the_parent(data, tmp_path, capfd):
    """The spawned child starts with logging unconfigured: it must still show its training log when the
    parent shows resnexus messages (as the CLI does), at the parent's level, as plain lines on stdout."""
    package = logging.getLogger("resnexus")
    parent_lines = io.StringIO()
    handler = logging.StreamHandler(parent_lines)
    level = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        compare(["lenet"], _base(data, epochs=1, verbose=True), tmp_path, model_configs={"lenet": CONFIGS["lenet"]})
    finally:
        package.removeHandler(handler)
        package.setLevel(level)
    assert f"compare [1/1]: lenet -> {tmp_path / 'lenet'}" in parent_lines.getvalue()
    child_output = capfd.readouterr().out  # the child writes to the inherited file descriptor 1
    assert f"report: {tmp_path / 'lenet' / 'report.md'}" in child_output.splitlines()


def test_cli_compare_writes_the_table(tmp_path, capsys):
    from resnexus.cli import main

    from .test_train import _make_folder

    data = _make_folder(tmp_path / "data")
    out = tmp_path / "cmp"
    assert main(["compare", "--models", "resnet20_cifar,resnet20_cifar", "--data", str(data), "--out", str(out)]) == 2
    assert "resnet20_cifar" in capsys.readouterr().err
    args = [
        "compare",
        "--models",
        "resnet20_cifar,resnet32_cifar",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--image-size",
        "16",
        "--batch-size",
        "8",
        "--precision",
        "fp32",
        "--no-isolate",
    ]
    assert main(args) == 0
    assert f"comparison: {out / 'comparison.md'}" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["model"] for r in rows] == ["resnet20_cifar", "resnet32_cifar"]
    # the paper's 10-class counts (269,722 and 464,154) less 8 of the 10 outputs (8 x 65 parameters)
    assert [int(r["params"]) for r in rows] == [269_722 - 520, 464_154 - 520]
