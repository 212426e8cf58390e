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
from scipy.stats import t as t_dist

from resnexus.engine import TrainConfig, load_checkpoint, model_from_checkpoint
from resnexus.engine.comparison import COLUMNS, FOLD_COLUMNS, compare
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


def _binary(columns) -> list[str]:
    """The CSV's columns for two classes: the positive class, its sensitivity and specificity after the ROC-AUC;
    each metric (and the paired difference) followed by its 95 % interval's two ends."""
    keys = [key for key, _ in columns]
    at = keys.index("roc_auc") + 1
    keys = [*keys[:at], "positive_class", "sensitivity", "specificity", *keys[at:]]
    with_ci = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "sensitivity", "specificity", "accuracy_diff")
    return [name for key in keys for name in ([key, f"{key}_ci_low", f"{key}_ci_high"] if key in with_ci else [key])]


def _value(cell: str) -> float:
    """The number of a Markdown cell, without its interval: ``0.7500 [0.409, 0.928]`` -> 0.75."""
    return float(cell.split(" [")[0])


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
        assert reader.fieldnames == _binary(COLUMNS)
        csv_rows = list(reader)
    text = res.markdown.read_text(encoding="utf-8")
    md_rows = _markdown_table(text)
    headers = dict(COLUMNS) | {"sensitivity": "Sensitivity (dark)", "specificity": "Specificity"}
    assert [r["model"] for r in csv_rows] == [r["Model"] for r in md_rows] == MODELS
    for c, m, row in zip(csv_rows, md_rows, res.rows):
        assert c["positive_class"] == "dark"
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "sensitivity", "specificity"):
            assert float(c[key]) == row[key]  # CSV: full precision
            assert _value(m[headers[key]]) == pytest.approx(float(c[key]), abs=5e-5)
            low, high = row[f"{key}_ci"]  # the run's metrics.json interval, in both files
            assert [float(c[f"{key}_ci_low"]), float(c[f"{key}_ci_high"])] == [low, high]
            assert m[headers[key]].endswith(f" [{low:.3f}, {high:.3f}]")
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
    with pytest.raises(ValueError, match=r"lenet is built for 256x256 images only, not --image-size 16"):
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
    import resnexus.engine.compare_runs as cmp  # where compare trains each model

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


def test_report_names_the_precision_it_was_given(result):
    _, res = result
    assert "- precision: fp32, seed: 0, device: " in res.markdown.read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks the GPU's type there")
def test_report_says_what_auto_precision_chose(data, tmp_path, monkeypatch):
    # as on a CPU with AMX tiles, where "auto" trains in bf16: the recipe line must not just say "auto"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    res = compare(
        ["lenet"],
        _base(data, epochs=1, precision="auto"),
        tmp_path,
        isolate=False,
        model_configs={"lenet": CONFIGS["lenet"]},
    )
    assert res.rows[0]["status"] == "ok", res.rows[0]["error"]
    assert "- precision: auto (bfloat16 here), seed: 0, device: CPU" in res.markdown.read_text()
    assert "| precision | bfloat16 |" in (tmp_path / "lenet" / "report.md").read_text()  # what the run used


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


def _best_model(out: Path) -> str:
    """The comparison's best row as CompareResult.best picks it: highest accuracy, fewer MACs on a tie."""
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    return min(rows, key=lambda r: (-float(r["accuracy"]), int(r["macs"])))["model"]


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
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("comparison:")]
    assert lines == [f"comparison: {out / 'comparison.md'} (best: {_best_model(out)})"]  # once, not twice
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["model"] for r in rows] == ["resnet20_cifar", "resnet32_cifar"]
    # the paper's 10-class counts (269,722 and 464,154) less 8 of the 10 outputs (8 x 65 parameters)
    assert [int(r["params"]) for r in rows] == [269_722 - 520, 464_154 - 520]


# -- compare on repeated grouped K-fold cross-validation ---------------------------------------------
def _patients_folder(root: Path) -> Path:
    """Two classes of 6 patients with 2 photos each (``b3.png``, ``b3_1.png``): 24 images, 12 groups."""
    rng = np.random.default_rng(1)
    for label, name in enumerate(("bright", "dark")):
        (root / name).mkdir(parents=True)
        for patient in range(6):
            for stem in (f"{name[0]}{patient}", f"{name[0]}{patient}_1"):
                pixels = rng.integers(0, 90, (16, 16, 3)) + (20 if label else 140)
                Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{stem}.png")
    return root


@pytest.fixture(scope="module")
def cv_result(tmp_path_factory):
    data = _patients_folder(tmp_path_factory.mktemp("cvdata") / "patients")
    out = tmp_path_factory.mktemp("cvcmp")
    base = _base(data, epochs=1, val_fraction=0.0, group_by="patient")
    return out, compare(MODELS, base, out, isolate=False, model_configs=CONFIGS, folds=2, repeats=2)


def test_cv_every_model_trains_on_the_same_grouped_fold_runs(cv_result):
    out, _ = cv_result
    record = json.loads((out / "comparison_splits.json").read_text())
    assert record["fold_runs"] == ["r1f1", "r1f2", "r2f1", "r2f2"]
    for repeat in (0, 2):  # each repeat's two folds partition the 24 images, no patient on both sides
        first, second = record["folds"][repeat : repeat + 2]
        assert sorted(first["test"] + second["test"]) == sorted(first["train"] + first["test"])
        assert len(first["train"]) + len(first["test"]) == 24
        for fold in (first, second):
            patients = {side: {Path(f).stem.removesuffix("_1") for f in fold[side]} for side in ("train", "test")}
            assert not patients["train"] & patients["test"]
    assert record["folds"][0]["test"] != record["folds"][2]["test"]  # repeat 2 cuts other folds (seed + 1)
    rows = list(csv.DictReader((out / "comparison_folds.csv").open()))
    assert [(r["model"], r["repeat"], r["fold"]) for r in rows] == [
        (m, str(r), str(k)) for m in MODELS for r in (1, 2) for k in (1, 2)
    ]
    for row in rows:  # each fold run is an ordinary run directory tested on its held-out fold
        tested = record["folds"][2 * (int(row["repeat"]) - 1) + int(row["fold"]) - 1]["test"]
        metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        assert Path(row["run_dir"]) == out / row["model"] / f"r{row['repeat']}f{row['fold']}"
        assert metrics["split"] == "test" and metrics["n"] == len(tested) == int(row["n_test"])
        assert float(row["accuracy"]) == metrics["accuracy"] and int(row["n_train"]) == 24 - len(tested)


def test_cv_row_is_the_mean_with_corrected_se_and_the_paired_difference(cv_result):
    out, res = cv_result
    rows = list(csv.DictReader((out / "comparison_folds.csv").open()))
    acc = {m: np.array([float(r["accuracy"]) for r in rows if r["model"] == m]) for m in MODELS}
    n_test = np.mean([int(r["n_test"]) for r in rows])
    ratio = n_test / (24 - n_test)

    def se(values):  # Nadeau & Bengio: sqrt((1/n + n_test/n_train) * s^2)
        return float(np.sqrt((1 / len(values) + ratio) * np.var(values, ddof=1)))

    first, second = res.rows
    assert first["fold_runs"] == second["fold_runs"] == 4 and first["status"] == second["status"] == "ok"
    for row in res.rows:
        assert row["accuracy"] == pytest.approx(acc[row["model"]].mean(), abs=1e-12)
        assert row["accuracy_se"] == pytest.approx(se(acc[row["model"]]), abs=1e-12)
        assert "best_epoch" not in row or row["best_epoch"] is None
    assert first["accuracy_diff"] is None and first["accuracy_diff_se"] is None  # the reference
    diffs = acc[MODELS[1]] - acc[MODELS[0]]
    assert second["accuracy_diff"] == pytest.approx(diffs.mean(), abs=1e-12)
    assert second["accuracy_diff_se"] == pytest.approx(se(diffs), abs=1e-12)
    # the summary CSV and the Markdown table carry the same figures
    summary = list(csv.DictReader(res.csv.open()))
    assert list(summary[0]) == _binary(FOLD_COLUMNS)
    assert float(summary[1]["accuracy_diff"]) == second["accuracy_diff"] and summary[0]["accuracy_diff"] == ""
    md_rows = _markdown_table(res.markdown.read_text())
    headers = dict(FOLD_COLUMNS)
    assert md_rows[1][headers["fold_runs"]] == "4"
    assert _value(md_rows[1][headers["accuracy_diff"]]) == pytest.approx(second["accuracy_diff"], abs=5e-5)
    # 95 % intervals over the fold runs: corrected resampled t, mean ± t_(n-1) * the corrected SE, within [0, 1]
    half = t_dist.ppf(0.975, 3) * se(acc[MODELS[0]])
    expected = [max(first["accuracy"] - half, 0.0), min(first["accuracy"] + half, 1.0)]
    assert list(first["accuracy_ci"]) == pytest.approx(expected, abs=1e-12)
    assert [float(summary[0]["accuracy_ci_low"]), float(summary[0]["accuracy_ci_high"])] == list(first["accuracy_ci"])
    diff_half = t_dist.ppf(0.975, 3) * se(diffs)
    expected = np.clip([diffs.mean() - diff_half, diffs.mean() + diff_half], -1.0, 1.0)
    assert list(second["accuracy_diff_ci"]) == pytest.approx(expected.tolist())
    assert float(md_rows[0][headers["accuracy_se"]]) == pytest.approx(first["accuracy_se"], abs=5e-5)
    text = res.markdown.read_text()
    assert "2 x 2 stratified folds grouped by `patient` (fold seeds 0-1) of 24 images in 12 groups" in text


def test_cv_isolated_fold_runs_report_each_runs_peak_memory(tmp_path):
    """The CLI's default: every fold run in a process of its own; the row's memory is the largest."""
    data = _patients_folder(tmp_path / "patients")
    base = _base(data, epochs=1, val_fraction=0.0, group_by="patient")
    res = compare(["lenet"], base, tmp_path / "out", model_configs={"lenet": CONFIGS["lenet"]}, folds=2)
    row = res.rows[0]
    assert row["status"] == "ok" and row["fold_runs"] == 2 and row["error"] is None
    if not torch.cuda.is_available():  # each child's own peak RSS (the largest of the fold runs)
        assert 50 < row["peak_memory_mib"] < 64 * 1024
        assert 0 < row["baseline_memory_mib"] <= row["peak_memory_mib"]
    assert [p.name for p in sorted((tmp_path / "out" / "lenet").iterdir())] == ["r1f1", "r1f2"]  # no temp files left


def test_cv_bad_fold_settings_are_rejected_before_training(data, tmp_path):
    base = _base(data)
    with pytest.raises(ValueError, match="at least 2 folds, got 1"):
        compare(["lenet"], base, tmp_path / "a", model_configs={"lenet": CONFIGS["lenet"]}, folds=1)
    with pytest.raises(ValueError, match="repeats must be a whole number >= 1, got 0"):
        compare(["lenet"], base, tmp_path / "b", model_configs={"lenet": CONFIGS["lenet"]}, folds=2, repeats=0)
    with pytest.raises(ValueError, match="repeats must be a whole number >= 1, got True"):
        compare(["lenet"], base, tmp_path / "d", model_configs={"lenet": CONFIGS["lenet"]}, folds=2, repeats=True)
    with pytest.raises(ValueError, match=r"at least 2 folds, got 2\.0"):
        compare(["lenet"], base, tmp_path / "e", model_configs={"lenet": CONFIGS["lenet"]}, folds=2.0)
    with pytest.raises(ValueError, match="repeats=3 needs folds"):
        compare(["lenet"], base, tmp_path / "c", model_configs={"lenet": CONFIGS["lenet"]}, repeats=3)
    assert not any(tmp_path.rglob("*.pt"))


def test_cli_compare_with_folds(tmp_path, capsys):
    from resnexus.cli import main

    data = _patients_folder(tmp_path / "patients")
    out = tmp_path / "cmp"
    args = ["compare", "--models", "resnet20_cifar,resnet32_cifar", "--data", str(data), "--out", str(out)]
    args += ["--folds", "2", "--group-by", "patient", "--epochs", "1", "--image-size", "16", "--batch-size", "8"]
    assert main([*args, "--precision", "fp32", "--no-isolate", "--val-fraction", "0"]) == 0
    assert f"comparison: {out / 'comparison.md'}" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "comparison_folds.csv").open()))
    assert [(r["model"], r["fold"]) for r in rows] == [
        ("resnet20_cifar", "1"),
        ("resnet20_cifar", "2"),
        ("resnet32_cifar", "1"),
        ("resnet32_cifar", "2"),
    ]
    assert main([*args[:7], "--repeats", "2"]) == 2  # --repeats without --folds: one clear line
    assert "repeats=2 needs folds" in capsys.readouterr().err


# -- side by side (jobs) and resumable (resume) ------------------------------------------------------
def test_bad_jobs_are_rejected_before_training(data, tmp_path):
    base, lenet = _base(data), {"lenet": CONFIGS["lenet"]}
    with pytest.raises(ValueError, match="jobs must be a whole number >= 1, got 0"):
        compare(["lenet"], base, tmp_path / "a", model_configs=lenet, jobs=0)
    with pytest.raises(ValueError, match="jobs must be a whole number >= 1, got True"):
        compare(["lenet"], base, tmp_path / "b", model_configs=lenet, jobs=True)
    with pytest.raises(ValueError, match="cannot run with isolate=False"):
        compare(["lenet"], base, tmp_path / "c", model_configs=lenet, jobs=2, isolate=False)
    with pytest.raises(ValueError, match="train keras:lenet with jobs=1"):
        compare(["lenet", "keras:lenet"], base, tmp_path / "d", model_configs=lenet, jobs=2)
    with pytest.raises(ValueError, match=r"continue a comparison with resume=True \(--resume\)"):
        compare(["lenet"], _base(data, resume=True), tmp_path / "e", model_configs=lenet)
    assert not any(tmp_path.rglob("*.pt"))


@pytest.mark.slow  # two spawned processes, each re-importing PyTorch
def test_jobs_trains_runs_side_by_side_in_processes_of_their_own(data, tmp_path):
    res = compare(MODELS, _base(data, epochs=1), tmp_path, model_configs=CONFIGS, jobs=2)
    assert [r["status"] for r in res.rows] == ["ok", "ok"], [r["error"] for r in res.rows]
    for row in res.rows:
        run_dir = Path(row["run_dir"])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert row["accuracy"] == metrics["accuracy"] and row["macro_f1"] == metrics["macro_f1"]
        assert json.loads((run_dir / "compare_run.json").read_text())["row"]["accuracy"] == row["accuracy"]
        if not torch.cuda.is_available():  # still each run's own process, so its own peak memory
            assert 50 < row["peak_memory_mib"] < 64 * 1024
    assert "trained 2 side by side, each with 1/2 of the threads" in res.markdown.read_text()
    assert not list(tmp_path.glob(".compare-*.json"))


def test_cv_a_stopped_comparison_resumes_only_what_is_missing(tmp_path, monkeypatch):
    import resnexus.engine.compare_runs as cmp  # where compare trains each model

    data = _patients_folder(tmp_path / "patients")
    base = _base(data, epochs=1, val_fraction=0.0, group_by="patient")
    out = tmp_path / "out"
    real_train, trained, to_crash = cmp.train, [], ["lenet/r1f2"]

    def crashes_once(config, splits=None):
        run = Path(config.out).relative_to(out).as_posix()
        trained.append((run, config.resume))
        if run in to_crash:
            to_crash.remove(run)
            raise RuntimeError("simulated crash")
        return real_train(config, splits=splits)

    monkeypatch.setattr(cmp, "train", crashes_once)
    first = compare(MODELS, base, out, isolate=False, model_configs=CONFIGS, folds=2)
    assert [r["status"] for r in first.rows] == ["ok", "failed"]
    assert (out / "resnet20_cifar" / "r1f1" / "compare_run.json").is_file()
    assert not (out / "lenet" / "r1f2" / "compare_run.json").exists()  # a failed run records nothing
    first_folds = list(csv.DictReader((out / "comparison_folds.csv").open()))
    with pytest.raises(FileExistsError, match=r"continue the comparison with resume \(--resume\)"):
        compare(MODELS, base, out, isolate=False, model_configs=CONFIGS, folds=2)

    trained.clear()
    second = compare(MODELS, base, out, isolate=False, model_configs=CONFIGS, folds=2, resume=True)
    assert trained == [("lenet/r1f2", True)]  # the three finished runs are kept, not trained again
    assert [r["status"] for r in second.rows] == ["ok", "ok"]
    assert second.rows[0]["accuracy"] == first.rows[0]["accuracy"]
    folds = list(csv.DictReader((out / "comparison_folds.csv").open()))
    assert folds[:3] == first_folds[:3]  # the same fold runs, the same recorded numbers
    saved = json.loads((out / "lenet" / "r1f2" / "compare_run.json").read_text())
    assert float(folds[3]["accuracy"]) == pytest.approx(saved["row"]["accuracy"])

    # a finished run is never mixed with another recipe or other images: refused, naming it
    changed = _base(data, epochs=1, val_fraction=0.0, group_by="patient", lr=0.1)
    with pytest.raises(
        ValueError,
        match=re.escape(f"{out / 'resnet20_cifar' / 'r1f1'} finished with another recipe (lr: 0.05 then, 0.1 now"),
    ):
        compare(MODELS, changed, out, isolate=False, model_configs=CONFIGS, folds=2, resume=True)
    Image.new("RGB", (16, 16), (250, 250, 250)).save(data / "bright" / "b9.png")  # a new patient: new folds
    with pytest.raises(ValueError, match="r1f1 was trained or tested on other images"):
        compare(MODELS, base, out, isolate=False, model_configs=CONFIGS, folds=2, resume=True)
    assert trained == [("lenet/r1f2", True)]


def test_cli_compare_resume_and_jobs_reach_compare(tmp_path, monkeypatch, capsys):
    import resnexus.cli as cli
    from resnexus.engine.comparison import CompareResult

    seen = {}

    def fake_compare(models, base, out, **kwargs):
        seen.update(kwargs, models=models, base=base)
        return CompareResult(rows=[], markdown=Path(out) / "comparison.md", csv=Path(out), plot=Path(out))

    monkeypatch.setattr(cli.training, "compare", fake_compare)
    argv = ["compare", "--models", "lenet,resnet18", "--out", str(tmp_path), "--jobs", "2", "--resume"]
    assert cli.main([*argv, "--epochs", "3"]) == 0
    assert seen["jobs"] == 2 and seen["resume"] is True and seen["base"].resume is False
    assert seen["models"] == ["lenet", "resnet18"] and seen["base"].epochs == 3
