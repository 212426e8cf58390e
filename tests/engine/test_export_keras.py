"""Export to Keras and TF Serving: a trained run becomes a .keras file and a SavedModel that give
PyTorch's logits and ``predict``'s probabilities, and carry the class names and preprocessing."""

from __future__ import annotations

import csv
import json
import re
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from resnexus.cli import main
from resnexus.data import eval_transform, load_image
from resnexus.engine import predict, train
from resnexus.engine.checkpoint import load_for_inference
from resnexus.engine.export import export_keras
from tests.helpers import noise_folder, tiny_config

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

CLASSES = ("cat", "dog", "red panda")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny trained run (resize + centre crop at evaluation) exported in both formats."""
    tmp = tmp_path_factory.mktemp("keras_export")
    data = noise_folder(tmp / "data", per_class=6, size=20, classes=CLASSES)
    run_dir = tmp / "run"
    train(tiny_config(data, run_dir, image_size=16, crop_fraction=0.8, val_fraction=0.2, test_fraction=0.2))
    keras_file = export_keras(run_dir, tmp / "model.keras")
    savedmodel = export_keras(run_dir, tmp / "serving" / "1", format="savedmodel")
    return run_dir, keras_file, savedmodel


def test_keras_file_reloads_with_torch_logits_and_metadata(exported):
    run_dir, result, _ = exported
    import resnexus.keras  # noqa: F401  (registers the custom layers a .keras file may hold)

    assert result.path.is_file() and result.max_abs_diff < 1e-4
    model = keras.saving.load_model(result.path, compile=False)
    torch_model, ckpt = load_for_inference(run_dir)
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torch_model(x).numpy()
    got = keras.ops.convert_to_numpy(model(x.permute(0, 2, 3, 1).numpy(), training=False))
    assert got.shape == (5, 3) and np.abs(got - expected).max() < 1e-4
    with zipfile.ZipFile(result.path) as archive:
        meta = json.loads(archive.read("resnexus.json"))
    assert meta["class_names"] == list(CLASSES) == ckpt["class_names"]
    assert meta["model_name"] == "resnet20_cifar" and meta["model_config"] == ckpt["model_config"]
    prep = meta["preprocessing"]
    assert prep["input_shape"] == [16, 16, 3] and prep["resize_shorter_side"] == 20 and prep["center_crop"] == 16
    assert prep["mean"] == ckpt["mean"] and prep["std"] == ckpt["std"] and meta["crop_fraction"] == 0.8
    assert meta["source_checkpoint"] == str(run_dir / "checkpoints" / "best.pt")
    assert not [p for p in result.path.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_predict_accepts_the_exported_keras_file(exported, tmp_path):
    run_dir, result, _ = exported
    images = _image_files(tmp_path / "images")
    eager = list(csv.DictReader(predict(run_dir, images, tmp_path / "eager.csv").open()))
    from_keras = list(csv.DictReader(predict(result.path, images, tmp_path / "keras.csv").open()))
    assert [r["label"] for r in from_keras] == [r["label"] for r in eager] and len(eager) == 4
    for a, b in zip(from_keras, eager):
        assert all(abs(float(a[f"prob_{c}"]) - float(b[f"prob_{c}"])) < 1e-5 for c in CLASSES)


def _image_files(folder):
    """Real PNG and JPEG files of several sizes and aspect ratios (resize and crop both matter)."""
    rng = np.random.default_rng(3)
    folder.mkdir()
    for i, (h, w) in enumerate([(30, 22), (17, 40), (64, 64), (25, 31)]):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels[: h // 2] //= 2  # some structure, so the images differ beyond noise statistics
        Image.fromarray(pixels).save(folder / f"img{i}.{'png' if i % 2 else 'jpg'}", quality=90)
    return folder


def test_savedmodel_gives_predicts_probabilities_on_image_files(exported, tmp_path):
    import tensorflow as tf

    run_dir, _, result = exported
    assert (result.path / "saved_model.pb").is_file() and result.max_abs_diff < 1e-4
    images = _image_files(tmp_path / "images")
    rows = list(csv.DictReader(predict(run_dir, images, tmp_path / "predictions.csv").open()))
    assert len(rows) == 4

    meta = json.loads((result.path / "assets" / "resnexus.json").read_text())
    assert meta["class_names"] == list(CLASSES) and meta["serving_signature"]["name"] == "serving_default"
    # what a TF Serving client does with the metadata: resize + centre crop, scale to [0, 1], NHWC
    crop = eval_transform(meta["image_size"], meta["mean"], meta["std"], meta["crop_fraction"]).sample
    batch = np.stack([crop(load_image(row["path"])).permute(1, 2, 0).numpy() for row in rows]) / np.float32(255)
    serve = tf.saved_model.load(str(result.path)).signatures["serving_default"]
    out = serve(images=tf.constant(batch, dtype=tf.float32))
    probs = out["probabilities"].numpy()
    expected = np.array([[float(row[f"prob_{c}"]) for c in CLASSES] for row in rows])
    assert np.ptp(expected, axis=0).max() > 1e-3  # the images get different probabilities: a real check
    assert probs.shape == (4, 3) and np.abs(probs - expected).max() < 1e-4
    assert [CLASSES[i] for i in probs.argmax(1)] == [row["label"] for row in rows]
    np.testing.assert_allclose(tf.nn.softmax(out["logits"]).numpy(), probs, atol=1e-6)


def test_an_existing_output_is_refused_and_named(exported, tmp_path):
    run_dir, keras_file, savedmodel = exported
    with pytest.raises(FileExistsError, match=re.escape(str(keras_file.path)) + ".*--overwrite"):
        export_keras(run_dir, keras_file.path)
    with pytest.raises(FileExistsError, match=re.escape(str(savedmodel.path)) + ".*--overwrite"):
        export_keras(run_dir, savedmodel.path, format="savedmodel")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "plan.txt").write_text("mine")  # replaced whole, it would be lost: never, even with overwrite
    with pytest.raises(FileExistsError, match=r"notes already holds files that are not a SavedModel \(plan\.txt\)"):
        export_keras(run_dir, tmp_path / "notes", format="savedmodel", overwrite=True)
    assert (tmp_path / "notes" / "plan.txt").read_text() == "mine"
    with pytest.raises(ValueError, match=r"model\.h5: a Keras model file must end in \.keras"):
        export_keras(run_dir, tmp_path / "model.h5")
    with pytest.raises(ValueError, match="is the checkpoint, an input of this command"):
        export_keras(run_dir, run_dir, format="savedmodel", overwrite=True)


def test_a_bad_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing.pt"))):
        export_keras(tmp_path / "missing.pt", tmp_path / "m.keras")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt"):
        export_keras(tmp_path / "junk.pt", tmp_path / "m.keras")
    assert not (tmp_path / "m.keras").exists()


def test_cli_exports_keras_and_refuses_an_existing_output(exported, tmp_path, capsys):
    run_dir, *_ = exported
    target = tmp_path / "m.keras"
    assert main(["export", "--format", "keras", "--checkpoint", str(run_dir), "--output", str(target)]) == 0
    assert f"Keras model: {target}" in capsys.readouterr().out and target.is_file()
    argv = ["export", "--format", "keras", "--checkpoint", str(run_dir), "--output", str(target)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(target) in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert main([*argv, "--overwrite"]) == 0


@pytest.mark.slow  # a second SavedModel export: ~10 s on 2 busy cores
def test_savedmodel_overwrite_replaces_only_a_savedmodel(exported, tmp_path, capsys):
    run_dir, *_ = exported
    target = tmp_path / "sm"
    argv = ["export", "--format", "savedmodel", "--checkpoint", str(run_dir), "--output", str(target)]
    assert main(argv) == 0
    assert f"TF SavedModel: {target}" in capsys.readouterr().out
    (target / "stale.txt").write_text("from an older export")
    assert main([*argv, "--overwrite"]) == 0
    assert (target / "saved_model.pb").is_file() and not (target / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sm"]  # no temporary or old copy left


def test_without_keras_the_error_says_what_to_install(exported, tmp_path, monkeypatch, capsys):
    import resnexus

    run_dir, *_ = exported
    for name in [m for m in sys.modules if m == "resnexus.keras" or m.startswith("resnexus.keras.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr(resnexus, "keras", raising=False)
    monkeypatch.setitem(sys.modules, "keras", None)  # as if the extra were not installed
    argv = ["export", "--format", "savedmodel", "--checkpoint", str(run_dir), "--output", str(tmp_path / "sm")]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        'resnexus export: error: --format savedmodel needs keras: pip install "resnexus[keras]"'
    )
    assert not (tmp_path / "sm").exists()
