"""Cross-validation end to end on a tiny generated folder whose file names carry patient ids."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnexus.cli import main
from resnexus.engine import TrainConfig
from resnexus.engine.crossval import CrossValResult, aggregate, cross_validate

CLASSES = ("Monkey Pox", "Others")  # a space in a class folder, as in MSLD
# patients per class with 1-3 photos each: 7 patients, 13 images per class
PHOTOS = (1, 2, 3, 2, 1, 3, 1)
FOLDS = 3


def _make_folder(root: Path, size: int = 16, seed: int = 0, gap: int = 8) -> Path:
    """Noise images a little brighter in the second class: hard enough that folds score differently."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for p, count in enumerate(PHOTOS):
            for i in range(1, count + 1):
                img = rng.integers(0, 120, (size, size, 3), dtype=np.uint8) + 60 + gap * label
                Image.fromarray(img.astype(np.uint8)).save(folder / f"{name[0].lower()}{p}_{i}.png")
    return root


def _patient(path: str | Path) -> str:
    return re.match(r"^(.+?)_\d+\.png$", Path(path).name).group(1)  # independent of GROUP_PATTERNS


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    values = dict(
        data=str(data),
        out=str(out),
        model="resnet20_cifar",
        model_config={"layers": (1, 1, 1)},
        epochs=1,
        batch_size=8,
        lr=0.05,
        image_size=16,
        val_fraction=0.2,
        group_by="patient",
        precision="fp32",
        verbose=False,
        workers=0,
    )
    return TrainConfig(**(values | kw))


@pytest.fixture(scope="module")
def cv(tmp_path_factory):
    data = _make_folder(tmp_path_factory.mktemp("data") / "lesions")
    out = tmp_path_factory.mktemp("runs") / "cv"
    config = _config(data, out)
    return data, out, config, cross_validate(config, FOLDS)


def test_every_image_is_tested_exactly_once(cv):
    data, out, _, result = cv
    assert isinstance(result, CrossValResult) and result.run_dir == out
    all_images = sorted(data.rglob("*.png"))
    tested = [p for paths in result.test_paths for p in paths]
    assert len(result.test_paths) == FOLDS and all(paths for paths in result.test_paths)
    assert len(tested) == len(all_images) == 2 * sum(PHOTOS)
    assert sorted(Path(p).resolve() for p in tested) == [p.resolve() for p in all_images]
    for k, fold in enumerate(result.folds):  # each fold's run was evaluated on its test fold
        assert fold["fold"] == k + 1 and fold["split"] == "test"
        assert fold["n"] == fold["n_test"] == len(result.test_paths[k])
        assert sum(fold["confusion_matrix"][0]) + sum(fold["confusion_matrix"][1]) == fold["n"]


def test_no_patient_on_two_sides_of_any_fold(cv):
    data, out, _, result = cv
    record = json.loads((out / "cv_splits.json").read_text())
    assert len(record["folds"]) == FOLDS
    for k, fold in enumerate(record["folds"]):
        assert set(fold) == {"train", "val", "test"}
        assert sorted(fold["test"]) == sorted(Path(p).relative_to(data).as_posix() for p in result.test_paths[k])
        patients = {name: {_patient(p) for p in files} for name, files in fold.items()}
        assert not patients["train"] & patients["test"], f"fold {k + 1}: a patient in train and test"
        assert not patients["val"] & patients["test"] and not patients["train"] & patients["val"]
        # the three parts of a fold cover the data, and every patient's photos stay together
        assert sum(len(files) for files in fold.values()) == 2 * sum(PHOTOS)
    per_fold = [{_patient(p) for p in paths} for paths in result.test_paths]
    assert sum(map(len, per_fold)) == len(set().union(*per_fold)) == 2 * len(PHOTOS)  # each patient in one test fold


def test_fold_runs_are_ordinary_runs(cv):
    _, out, _, result = cv
    for k in range(1, FOLDS + 1):
        for name in ("checkpoints/best.pt", "metrics.json", "report.md"):
            assert (out / f"fold{k}" / name).is_file()
        saved = json.loads((out / f"fold{k}" / "metrics.json").read_text())
        assert saved["accuracy"] == result.folds[k - 1]["accuracy"]


def test_mean_and_std_are_numpys_over_the_folds(cv):
    _, out, _, result = cv
    record = json.loads((out / "cv_metrics.json").read_text())
    assert record["protocol"]["folds"] == FOLDS and record["protocol"]["group_by"] == "patient"
    assert record["protocol"]["images"] == 2 * sum(PHOTOS) and record["protocol"]["groups"] == 2 * len(PHOTOS)
    assert len(record["folds"]) == FOLDS
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "sensitivity", "specificity"):
        values = np.array([f[key] for f in record["folds"]], dtype=float)
        assert record["mean"][key] == pytest.approx(values.mean(), abs=1e-12)
        assert record["std"][key] == pytest.approx(values.std(ddof=1), abs=1e-12)
        assert result.mean[key] == record["mean"][key] and result.std[key] == record["std"][key]
    aucs = [f["roc_auc"] for f in record["folds"] if f["roc_auc"] is not None]
    if aucs:
        assert record["mean"]["roc_auc"] == pytest.approx(np.mean(aucs))
    pooled = np.sum([f["confusion_matrix"] for f in record["folds"]], axis=0)
    assert pooled.tolist() == record["pooled_confusion_matrix"] and pooled.sum() == 2 * sum(PHOTOS)


def test_report_shows_folds_and_mean_std(cv):
    _, out, _, result = cv
    report = result.report.read_text(encoding="utf-8")
    assert result.report == out / "cv_report.md"
    for key in ("accuracy", "macro_f1"):
        assert f"{result.mean[key]:.4f} ± {result.std[key]:.4f}" in report
    for fold in result.folds:
        assert f"| {fold['fold']} | {fold['n_train']} / {fold['n_val']} / {fold['n_test']} |" in report
        assert f"{fold['accuracy']:.4f}" in report
    assert "3 stratified, grouped folds" in report and "seed 0" in report and "`patient`" in report


def test_fewer_than_two_folds_is_rejected(tmp_path):
    for folds in (1, 0, -3):
        with pytest.raises(ValueError, match="at least 2 folds"):
            cross_validate(_config(tmp_path, tmp_path / "out"), folds)
    assert not (tmp_path / "out").exists()


def test_existing_cv_run_is_not_overwritten(cv):
    _, out, config, _ = cv
    before = (out / "cv_metrics.json").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a cross-validation run"):
        cross_validate(config, FOLDS)
    assert (out / "cv_metrics.json").read_bytes() == before


def test_a_presplit_folder_is_rejected_with_a_clear_message(tmp_path):
    _make_folder(tmp_path / "split" / "train")
    with pytest.raises(ValueError, match="one class-folder tree"):
        cross_validate(_config(tmp_path / "split", tmp_path / "out"), 2)


def test_aggregate_skips_missing_values():
    folds = [{"accuracy": 0.5, "roc_auc": None}, {"accuracy": 0.7, "roc_auc": 0.9}, {"accuracy": 0.9, "roc_auc": None}]
    mean, std, counts = aggregate(folds)
    assert mean["accuracy"] == pytest.approx(0.7) and std["accuracy"] == pytest.approx(0.2)
    assert mean["roc_auc"] == 0.9 and std["roc_auc"] is None and counts == {"accuracy": 3, "roc_auc": 1}
    assert "sensitivity" not in mean


def test_cli_train_folds(tmp_path, capsys):
    data = _make_folder(tmp_path / "lesions")
    out = tmp_path / "cli-cv"
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
        "--group-by",
        "patient",
        "--folds",
        "2",
    ]
    assert main(args) == 0
    assert "cross-validation (2 folds): accuracy" in capsys.readouterr().out
    assert len(json.loads((out / "cv_metrics.json").read_text())["folds"]) == 2
    assert main([*args[:-1], "1"]) == 2
    assert "at least 2 folds" in capsys.readouterr().err


def test_partition_check_catches_a_leaked_patient(tmp_path):
    from resnexus.data import Samples
    from resnexus.engine.crossval import _check_partition

    s = Samples(
        paths=[Path(f"p{i}_1.png") for i in range(4)],
        labels=[0, 1, 0, 1],
        class_names=["a", "b"],
        groups=["p0", "p1", "p0", "p3"],
        root=tmp_path,
    )

    def plan(train, test):
        return {"train": s.subset(train), "test": s.subset(test)}

    _check_partition(s, [plan([1, 3], [0, 2]), plan([0, 2], [1, 3])])
    leaked = [plan([1, 2], [0, 3]), plan([0, 3], [1, 2])]  # p0 on both sides
    with pytest.raises(AssertionError, match="groups on both train and test"):
        _check_partition(s, leaked)
