"""Cross-validation end to end on a tiny generated folder whose file names carry patient ids."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import t as t_dist

from resnexus.cli import main
from resnexus.engine import TrainConfig, evaluate, load_checkpoint, model_from_checkpoint, predict
from resnexus.engine.checkpoint import Checkpoint, resolve_checkpoint
from resnexus.engine.crossval import CrossValResult, aggregate, cross_validate
from resnexus.engine.inference import predict_probabilities
from resnexus.reports.uncertainty import judge

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
        select="val",  # validation is carved only when it chooses the epoch (see the test below)
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
    # the mean's 95 % interval, corrected resampled t: mean ± t_(k-1) sqrt((1/k + n_test/n_train) s²), within [0, 1]
    acc = np.array([f["accuracy"] for f in record["folds"]])
    n_test = np.mean([f["n_test"] for f in record["folds"]])
    n_train = np.mean([f["n_train"] + f["n_val"] for f in record["folds"]])
    half = t_dist.ppf(0.975, FOLDS - 1) * np.sqrt((1 / FOLDS + n_test / n_train) * acc.var(ddof=1))
    assert record["ci"]["accuracy"] == [
        pytest.approx(max(acc.mean() - half, 0.0)),
        pytest.approx(min(acc.mean() + half, 1.0)),
    ]
    assert record["folds"][0]["accuracy_ci"] is not None  # each fold's own (Wilson) interval, from its metrics.json


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
    printed = capsys.readouterr().out
    assert "cross-validation (2 folds): accuracy" in printed
    assert f"deployable model: {out / 'refit' / 'checkpoints' / 'best.pt'} (all 26 images)" in printed
    assert len(json.loads((out / "cv_metrics.json").read_text())["folds"]) == 2
    assert load_checkpoint(out / "refit" / "checkpoints" / "best.pt")["trained_on"] == "all"
    assert main([*args[:-1], "1"]) == 2
    assert "at least 2 folds" in capsys.readouterr().err
    assert main([*args[:-2], "--no-refit"]) == 2  # without --folds
    assert "--no-refit goes with --folds" in capsys.readouterr().err
    # the directory is accepted where a checkpoint is; --ensemble uses the 2 fold models
    csv = tmp_path / "ensemble.csv"
    assert main(["predict", "--checkpoint", str(out), "--input", str(data), "--output", str(csv), "--ensemble"]) == 0
    assert len(csv.read_text().splitlines()) == 1 + 26
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(data)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("26 images: accuracy")


def test_cli_train_folds_no_refit(tmp_path, capsys):
    data = _make_folder(tmp_path / "lesions")
    out = tmp_path / "no-refit"
    common = ["--model", "resnet20_cifar", "--epochs", "1", "--batch-size", "8", "--image-size", "16"]
    args = ["train", "--data", str(data), "--out", str(out), *common, "--precision", "fp32", "--folds", "2"]
    assert main([*args, "--no-refit"]) == 0
    assert "no refit (--no-refit)" in capsys.readouterr().out
    assert not (out / "refit").exists()
    record = json.loads((out / "cv_metrics.json").read_text())
    assert record["refit"] == {"status": "skipped", "images": 26}
    report = (out / "cv_report.md").read_text(encoding="utf-8")
    assert "**No refit model** was trained (`--no-refit`)" in report and "`--ensemble`" in report
    # predict on the directory: refused, naming it and pointing at --ensemble
    csv = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(out), "--input", str(data), "--output", str(csv)]) == 2
    err = capsys.readouterr().err
    assert f"{out} is a cross-validation run without a refit model" in err and "pass --ensemble" in err
    assert not csv.exists()
    metrics = evaluate(out, data, ensemble=True)
    assert metrics["n"] == 26 and len(metrics["ensemble_members"]) == 2
    # an earlier run's refit model must not pass for this run's: --no-refit --overwrite refuses it
    (out / "refit" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="refit model of an earlier run"):
        cross_validate(_config(data, out, overwrite=True), 2, refit=False)


# -- refit, run directories as checkpoints, fold ensembles ----------------------------------------
def test_refit_model_is_trained_on_every_image(cv):
    _, out, config, result = cv
    assert result.refit_dir == out / "refit"
    refit = load_checkpoint(out / "refit" / "checkpoints" / "best.pt")
    assert refit["trained_on"] == "all" and refit["split_sizes"] == {"train": 2 * sum(PHOTOS)}
    saved = refit["config"]
    assert saved["val_fraction"] == 0.0 and saved["test_fraction"] == 0.0 and saved["select"] == "last"
    assert refit["epoch"] == config.epochs  # the final weights
    assert saved["model"] == config.model and saved["lr"] == config.lr and saved["seed"] == config.seed
    for k, fold in enumerate(result.folds, start=1):  # the fold models held images back
        ckpt = load_checkpoint(out / f"fold{k}" / "checkpoints" / "best.pt")
        assert ckpt["trained_on"] == "train split"
        assert ckpt["split_sizes"] == {"train": fold["n_train"], "val": fold["n_val"], "test": fold["n_test"]}
    record = json.loads((out / "cv_metrics.json").read_text())
    assert record["refit"]["status"] == "done" and record["refit"]["images"] == 2 * sum(PHOTOS)
    assert record["refit"]["checkpoint"] == "refit/checkpoints/best.pt"
    own = json.loads((out / "refit" / "metrics.json").read_text())
    assert own["split"] == "train" and own["n"] == 2 * sum(PHOTOS)  # training metrics, labelled as such
    assert "**not an estimate**" in (out / "refit" / "report.md").read_text(encoding="utf-8")


def test_cv_report_says_what_the_estimate_is_and_which_model_to_deploy(cv):
    result = cv[3]
    report = result.report.read_text(encoding="utf-8")
    estimate = f"**Cross-validated estimate of this recipe (mean ± std over {FOLDS} folds, [95 % confidence interval"
    assert estimate in report and "**95 % CI of the mean**" in report and "Nadeau and Bengio" in report
    assert "**The deployable model is the refit model, `refit/checkpoints/best.pt`**" in report
    assert f"trained on all {2 * sum(PHOTOS)} images, none held back" in report
    assert "[refit/report.md](refit/report.md)" in report and "did not finish" not in report


def test_a_cv_run_directory_stands_for_its_refit_model(cv, tmp_path):
    data, out, _, _ = cv
    refit = out / "refit" / "checkpoints" / "best.pt"
    assert resolve_checkpoint(out) == refit
    assert resolve_checkpoint(out / "fold2") == out / "fold2" / "checkpoints" / "best.pt"  # a plain run directory
    assert resolve_checkpoint(refit) == refit
    from_dir, from_file = evaluate(out, data), evaluate(refit, data)
    assert from_dir["checkpoint"] == str(refit)
    assert from_dir["confusion_matrix"] == from_file["confusion_matrix"] and from_dir["loss"] == from_file["loss"]
    a, b = predict(out, data, tmp_path / "dir.csv"), predict(refit, data, tmp_path / "file.csv")
    assert a.read_text() == b.read_text()


def test_explain_accepts_a_cv_run_directory(cv, tmp_path):
    data, out, _, _ = cv
    image = next((data / CLASSES[0]).glob("*.png"))
    raw = _explain_rows(out, image, tmp_path / "cam", calibrated=False)
    expected = predict_probabilities(out / "refit" / "checkpoints" / "best.pt", image)[1][0]
    assert float(raw[0]["probability"]) == pytest.approx(expected.max(), abs=2e-6)
    # by default the run's calibration applies, as predict's does
    calibrated = _explain_rows(out, image, tmp_path / "cam")
    judged = judge(expected[None], Checkpoint.load(out).calibration)
    assert calibrated[0]["predicted"] == CLASSES[int(judged.labels[0])]
    assert float(calibrated[0]["probability"]) == pytest.approx(judged.probs[0, judged.labels[0]], abs=2e-6)


def test_export_accepts_a_cv_run_directory(cv, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from resnexus.engine.export import export_onnx

    data, out, _, _ = cv
    onnx_file = export_onnx(out, tmp_path / "model.onnx").path
    refit = out / "refit" / "checkpoints" / "best.pt"
    _, from_onnx, _ = predict_probabilities(onnx_file, data)
    _, from_refit, _ = predict_probabilities(refit, data)
    np.testing.assert_allclose(from_onnx, from_refit, atol=1e-5)


def test_a_directory_without_a_model_is_refused_by_name(tmp_path):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(empty))} is neither a cross-validation run"):
        resolve_checkpoint(empty)
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(empty))} has no cv_metrics.json"):
        predict(empty, tmp_path, tmp_path / "p.csv", ensemble=True)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        resolve_checkpoint(tmp_path / "missing")


def test_ensemble_probabilities_are_the_mean_of_the_fold_models(cv, tmp_path):
    data, out, _, _ = cv
    paths, ensemble, names = predict_probabilities(out, data, ensemble=True)
    per_fold = [predict_probabilities(out / f"fold{k}" / "checkpoints" / "best.pt", data) for k in range(1, FOLDS + 1)]
    assert all(p == paths for p, _, _ in per_fold) and len(paths) == 2 * sum(PHOTOS)
    mean = np.mean([probs for _, probs, _ in per_fold], axis=0)
    np.testing.assert_allclose(ensemble, mean, rtol=0, atol=1e-6)
    assert not np.allclose(per_fold[0][1], per_fold[1][1], atol=1e-3)  # the folds' models do differ
    # the CSV and the metrics come from the same probabilities (the raw ones: no calibration applied)
    rows = predict(out, data, tmp_path / "ensemble.csv", ensemble=True, calibrated=False).read_text().splitlines()[1:]
    written = np.array([[float(v) for v in row.split(",")[2:]] for row in rows])
    np.testing.assert_allclose(written, mean, rtol=0, atol=1.5e-6)
    metrics = evaluate(out, data, ensemble=True)
    labels = np.array([names.index(Path(p).parent.name) for p in paths])
    assert metrics["accuracy"] == pytest.approx(float((mean.argmax(1) == labels).mean()))
    assert metrics["ensemble_members"] == [str(out / f"fold{k}" / "checkpoints" / "best.pt") for k in (1, 2, 3)]


def test_ensemble_grad_cam_is_the_mean_of_the_fold_models_maps(cv, tmp_path, monkeypatch):
    import torch

    from resnexus.data import UnlabeledDataset
    from resnexus.engine import explain as explain_module
    from resnexus.engine.checkpoint import eval_preprocess

    data, out, _, _ = cv
    image = sorted((data / CLASSES[1]).glob("*.png"))[0]
    maps: list[np.ndarray] = []
    monkeypatch.setattr(explain_module, "_save_overlay", lambda image, cam, path, title: maps.append(cam))
    rows = _explain_rows(out, image, tmp_path / "cam", ensemble=True, calibrated=False)
    folds = [load_checkpoint(out / f"fold{k}" / "checkpoints" / "best.pt") for k in range(1, FOLDS + 1)]
    models = [model_from_checkpoint(c) for c in folds]
    batch = UnlabeledDataset([image], eval_preprocess(folds[0]))[0][0][None]
    with torch.no_grad():
        probs = torch.stack([m(batch).softmax(1) for m in models]).mean(0)[0]
    target = int(probs.argmax())
    layer = explain_module.default_cam_layer(models[0])
    expected = np.mean([explain_module.grad_cam(m, batch, torch.tensor([target]), layer)[0].numpy() for m in models], 0)
    assert rows[0]["predicted"] == folds[0]["class_names"][target]
    assert float(rows[0]["probability"]) == pytest.approx(float(probs[target]), abs=2e-6)
    np.testing.assert_allclose(maps[0], expected, atol=1e-6)


def _explain_rows(
    checkpoint: Path, image: Path, out: Path, ensemble: bool = False, calibrated: bool = True
) -> list[dict[str, str]]:
    import csv

    from resnexus.engine.explain import explain

    with explain(checkpoint, image, out, ensemble=ensemble, overwrite=True, calibrated=calibrated).open(
        newline=""
    ) as f:
        return list(csv.DictReader(f))


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


def test_a_validation_part_too_small_to_choose_on_trains_instead(tmp_path, caplog):
    """--select auto never trusts a validation part under MIN_VAL_FOR_SELECTION images, so CV does
    not carve one: every non-test image of a fold trains (on MSLD: 120 photos, not 108)."""
    data = _make_folder(tmp_path / "data")
    with caplog.at_level(logging.INFO, logger="resnexus"):
        result = cross_validate(_config(data, tmp_path / "cv", select="auto", verbose=True), 2, refit=False)
    total = 2 * sum(PHOTOS)
    for fold in result.folds:
        assert fold["n_val"] == 0 and fold["n_train"] == total - fold["n_test"]
    record = json.loads((tmp_path / "cv" / "cv_splits.json").read_text())
    assert all(set(fold) == {"train", "test"} for fold in record["folds"])
    assert "20% of a fold's training images would be too few to choose an epoch on (< 100" in caplog.text
    report = (tmp_path / "cv" / "cv_report.md").read_text()
    assert "No validation set (too few images to choose an epoch on" in report
    assert json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())["protocol"]["val_fraction"] == 0.0


def test_jobs_train_the_same_runs_side_by_side(tmp_path):
    """--jobs 2: the fold runs and the refit in two worker processes, one thread each, give the same
    weights and metrics as the same runs one after another on one thread."""
    data = _make_folder(tmp_path / "data")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # each of the 2 workers gets 1
        side_by_side = cross_validate(_config(data, tmp_path / "jobs2"), 2, jobs=2)
        torch.set_num_threads(1)
        in_order = cross_validate(_config(data, tmp_path / "jobs1"), 2, jobs=1)
    finally:
        torch.set_num_threads(threads)
    assert [f["accuracy"] for f in side_by_side.folds] == [f["accuracy"] for f in in_order.folds]
    assert side_by_side.test_paths == in_order.test_paths
    for run in ("fold1", "fold2", "refit"):
        a = load_checkpoint(tmp_path / "jobs2" / run / "checkpoints" / "best.pt")["state_dict"]
        b = load_checkpoint(tmp_path / "jobs1" / run / "checkpoints" / "best.pt")["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), run
    record = json.loads((tmp_path / "jobs2" / "cv_metrics.json").read_text())
    assert record["refit"]["status"] == "done" and [f["fold"] for f in record["folds"]] == [1, 2]
    with pytest.raises(ValueError, match="--jobs must be a whole number >= 1, got 0"):
        cross_validate(_config(data, tmp_path / "bad"), 2, jobs=0)
    with pytest.raises(ValueError, match="--jobs must be a whole number >= 1, got True"):
        cross_validate(_config(data, tmp_path / "bad"), 2, jobs=True)
    assert not (tmp_path / "bad").exists()
