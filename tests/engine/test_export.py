"""ONNX export: the file runs on onnxruntime with the eager model's outputs and carries its metadata."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from resnexus.cli import main
from resnexus.engine import evaluate, predict
from resnexus.engine.checkpoint import make_checkpoint, save_atomic
from resnexus.engine.export import OnnxClassifier, export_onnx
from resnexus.models import create_model
from tests.helpers import randomize_

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    model = randomize_(create_model("resnext29_8x64d", num_classes=3, base_width=4, cardinality=2))
    ckpt = make_checkpoint(
        model,
        model_name="resnext29_8x64d",
        model_config={"base_width": 4, "cardinality": 2},
        class_names=["a", "b", "c"],
        image_size=32,
        mean=(0.4,) * 3,
        std=(0.2,) * 3,
        crop_fraction=1.0,
    )
    path = save_atomic(ckpt, tmp / "best.pt")
    images = tmp / "images"
    rng = np.random.default_rng(0)
    for cls in ("a", "b", "c"):
        (images / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(images / cls / f"{i}.png")
    return path, export_onnx(path, tmp / "model.onnx"), images, model.eval()


def test_onnxruntime_gives_the_eager_logits_for_any_batch_size(exported):
    _, result, _, model = exported
    assert result.max_abs_diff < 1e-4
    runtime = OnnxClassifier(result.path)
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(runtime(x), model(x), atol=1e-4, rtol=1e-4)
    assert runtime.meta["class_names"] == ["a", "b", "c"] and runtime.meta["image_size"] == 32


def test_predict_and_evaluate_accept_the_onnx_file(exported, tmp_path):
    ckpt, result, images, _ = exported
    eager = list(csv.DictReader(predict(ckpt, images, tmp_path / "eager.csv").open()))
    onnx = list(csv.DictReader(predict(result.path, images, tmp_path / "onnx.csv").open()))
    assert [r["label"] for r in onnx] == [r["label"] for r in eager] and len(onnx) == 9
    for a, b in zip(onnx, eager):
        assert all(abs(float(a[f"prob_{c}"]) - float(b[f"prob_{c}"])) < 1e-5 for c in "abc")
    assert evaluate(result.path, images)["accuracy"] == evaluate(ckpt, images)["accuracy"]


def test_cli_export_reports_the_check(exported, tmp_path, capsys):
    ckpt, *_ = exported
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert f"ONNX model: {tmp_path / 'm.onnx'} (opset 18)" in out and "max |logit difference|" in out
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no weights file (m.onnx.tmp.data) beside it


def test_a_failed_export_leaves_no_file(exported, tmp_path, monkeypatch):
    """The file is serialised in memory and written by files.atomic_write: all of it, or nothing."""
    ckpt, *_ = exported
    real_export = torch.onnx.export

    class Unwritable:
        def __init__(self, proto):
            self.metadata_props = proto.metadata_props

        def SerializeToString(self):
            raise OSError("No space left on device")

    def failing_export(*args, **kwargs):
        program = real_export(*args, **kwargs)
        return type("Program", (), {"model_proto": Unwritable(program.model_proto)})()

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    with pytest.raises(OSError, match="No space left"):
        export_onnx(ckpt, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_foreign_onnx_file_is_refused(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match=r"x\.onnx: not a readable ONNX model"):
        OnnxClassifier(tmp_path / "x.onnx")
