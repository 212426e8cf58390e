"""Checkpoint: one class opens every kind of checkpoint, and speaks one preprocessing vocabulary.

A .pt file, a training run directory, a cross-validation run directory (its refit model, or its fold
models as an ensemble), an exported .onnx file and a .keras file all load through
:meth:`Checkpoint.load`; old files whose preprocessing keys use other spellings read the same.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from resnexus.engine.checkpoint import (
    Checkpoint,
    FoldEnsemble,
    eval_preprocess,
    load_checkpoint,
    load_for_inference,
    make_checkpoint,
    save_atomic,
)
from resnexus.engine.rundir import RunDir
from resnexus.models import create_model
from resnexus.models.pretrained import Preprocessing
from resnexus.models.weights import WeightsError
from tests.helpers import max_abs_diff, randomize_

CLASSES = ["cat", "dog", "red panda"]
MODEL_CONFIG = {"layers": [1, 1, 1]}
PREPROCESSING = Preprocessing(image_size=16, crop_fraction=0.8, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))


def _model(seed: int = 0) -> torch.nn.Module:
    return randomize_(create_model("resnet20_cifar", num_classes=len(CLASSES), **MODEL_CONFIG), seed=seed).eval()


def _save(path: Path, seed: int = 0, **extra: object) -> Path:
    ckpt = make_checkpoint(
        _model(seed),
        model_name="resnet20_cifar",
        model_config=MODEL_CONFIG,
        class_names=CLASSES,
        image_size=PREPROCESSING.image_size,
        mean=PREPROCESSING.mean,
        std=PREPROCESSING.std,
        crop_fraction=PREPROCESSING.crop_fraction,
        extra={"config": {"epochs": 1}, **extra},
    )
    return save_atomic(ckpt, path)


def _logits(model: torch.nn.Module | object) -> torch.Tensor:
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(x)


def test_a_pt_file_gives_its_model_preprocessing_names_and_config(tmp_path):
    path = _save(tmp_path / "best.pt")
    checkpoint = Checkpoint.load(path)
    assert checkpoint.kind == "torch" and checkpoint.path == path and checkpoint.run_dir is None
    assert checkpoint.class_names == CLASSES and checkpoint.model_name == "resnet20_cifar"
    assert checkpoint.preprocessing == PREPROCESSING
    assert checkpoint.config == {"epochs": 1} and checkpoint.model_config == MODEL_CONFIG
    assert max_abs_diff(_logits(checkpoint.model()), _logits(_model())) == 0.0
    assert "state_dict" not in checkpoint.metadata  # the weights stay out of the metadata
    assert checkpoint.as_dict()["state_dict"].keys() == _model().state_dict().keys()


def test_sha256_is_the_files_digest(tmp_path):
    path = _save(tmp_path / "best.pt")
    assert Checkpoint.load(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_and_cross_validation_directories_load_their_selected_model(tmp_path):
    run = RunDir(tmp_path / "run")
    _save(run.best())
    checkpoint = Checkpoint.load(run.path)
    assert checkpoint.path == run.best() and checkpoint.run_dir == run

    cv = RunDir(tmp_path / "cv")
    for k in (1, 2):
        _save(cv.fold(k).best(), seed=k)
    _save(cv.refit.best(), seed=3)
    cv.cv_metrics.write_text(json.dumps({"protocol": {"folds": 2}}), encoding="utf-8")
    refit = Checkpoint.load(cv.path)
    assert refit.path == cv.refit.best() and refit.run_dir == cv.refit
    assert max_abs_diff(_logits(refit.model()), _logits(_model(3))) == 0.0

    ensemble = Checkpoint.load(cv.path, ensemble=True)
    assert ensemble.kind == "ensemble" and isinstance(ensemble.model(), FoldEnsemble)
    assert [m.path for m in ensemble.members] == [cv.fold(1).best(), cv.fold(2).best()]
    assert ensemble.metadata["ensemble_members"] == [str(cv.fold(k).best()) for k in (1, 2)]
    assert ensemble.preprocessing == PREPROCESSING and ensemble.class_names == CLASSES
    expected = torch.stack([_logits(_model(k)).softmax(1) for k in (1, 2)]).mean(0)
    assert max_abs_diff(_logits(ensemble.model()).softmax(1), expected) < 1e-6
    assert ensemble.sha256 == hashlib.sha256("".join(m.sha256 for m in ensemble.members).encode()).hexdigest()


def test_an_old_checkpoints_spellings_read_as_todays_vocabulary(tmp_path):
    new = _save(tmp_path / "new.pt")
    old = torch.load(new, weights_only=True)
    for key in ("image_size", "crop_fraction", "model_config"):
        del old[key]
    old |= {"input_size": [3, 16, 16], "crop_pct": 0.8, "resnexus_config": MODEL_CONFIG}
    torch.save(old, tmp_path / "old.pt")
    before, after = Checkpoint.load(tmp_path / "old.pt"), Checkpoint.load(new)
    assert before.preprocessing == after.preprocessing == PREPROCESSING
    assert max_abs_diff(_logits(before.model()), _logits(after.model())) == 0.0
    legacy = load_checkpoint(tmp_path / "old.pt")  # the older API sees today's keys too
    assert (legacy["image_size"], legacy["crop_fraction"], legacy["model_config"]) == (16, 0.8, MODEL_CONFIG)
    _, meta = load_for_inference(tmp_path / "old.pt")
    assert Preprocessing.from_metadata(meta) == PREPROCESSING


@pytest.mark.parametrize(
    "meta",
    [
        {"image_size": 16, "crop_fraction": 0.8},
        {"img_size": 16, "crop_pct": 0.8},
        {"input_size": 16, "crop_pct": 0.8},
        {"input_size": [3, 16, 16], "crop_fraction": 0.8},
        {"input_shape": [16, 16, 3], "crop_pct": 0.8},
    ],
)
def test_every_spelling_of_the_image_size_and_crop_fraction_is_read(meta):
    assert Preprocessing.from_metadata(meta | {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}) == PREPROCESSING


def test_the_eval_transform_is_one_whatever_it_is_built_from(tmp_path):
    checkpoint = Checkpoint.load(_save(tmp_path / "best.pt"))
    image = torch.randint(0, 256, (3, 23, 19), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = [eval_preprocess(checkpoint), eval_preprocess(checkpoint.metadata), checkpoint.transforms()]
    crops = [view(image) for view in views]
    assert all(torch.equal(crops[0], crop) for crop in crops[1:]) and crops[0].shape == (3, 16, 16)
    assert PREPROCESSING.resize_size == 20  # 16 / 0.8
    # torchvision's Weights.transforms() form: one callable, uint8 in, normalised float out
    assert max_abs_diff(PREPROCESSING.transforms()(image), crops[0]) < 1e-6


def test_a_bad_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt"):
        Checkpoint.load(tmp_path / "nowhere.pt")
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(WeightsError, match=r"notes.pt is not a PyTorch checkpoint"):
        Checkpoint.load(tmp_path / "notes.pt")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "plain.pt")
    with pytest.raises(WeightsError, match=r"plain.pt: not a resnexus checkpoint"):
        Checkpoint.load(tmp_path / "plain.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty is neither a cross-validation run"):
        Checkpoint.load(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"empty has no cv_metrics.json"):
        Checkpoint.load(tmp_path / "empty", ensemble=True)


@pytest.mark.slow
def test_an_exported_onnx_file_loads_with_the_same_metadata(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from resnexus.engine.export import export_onnx

    source = Checkpoint.load(_save(tmp_path / "best.pt"))
    exported = Checkpoint.load(export_onnx(source.path, tmp_path / "model.onnx").path)
    assert exported.kind == "onnx" and exported.config is None
    assert exported.preprocessing == source.preprocessing and exported.class_names == CLASSES
    assert exported.sha256 == hashlib.sha256((tmp_path / "model.onnx").read_bytes()).hexdigest()
    assert max_abs_diff(_logits(exported.model()), _logits(source.model())) < 1e-4
    with pytest.raises(WeightsError, match="holds no PyTorch weights"):
        _ = exported.state_dict


@pytest.mark.slow
def test_a_keras_file_loads_as_its_pytorch_twin(tmp_path):
    pytest.importorskip("keras")
    from resnexus.engine.export import export_keras

    source = Checkpoint.load(_save(tmp_path / "best.pt"))
    result = export_keras(source.path, tmp_path / "model.keras")
    twin = Checkpoint.load(result.path)
    assert twin.kind == "keras" and twin.preprocessing == source.preprocessing and twin.class_names == CLASSES
    assert max_abs_diff(_logits(twin.model()), _logits(source.model())) < 1e-4
    assert sorted(twin.state_dict) == sorted(source.state_dict)  # its weights, under the PyTorch names
