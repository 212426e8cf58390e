"""Published weights in use. Fine-tuning: with --weights the recipe, the input size and the frozen
stages follow the weights, and the run's report says which weights it started from. Predicting:
`predict --model M --weights imagenet` labels images with ImageNet class names, no training."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import resnexus
from resnexus.cli import main
from resnexus.engine import TrainConfig, load_checkpoint, train
from resnexus.engine.config import (
    ADAMW_LR,
    DEFAULT_RECIPE,
    FINETUNE_LR_FACTOR,
    FINETUNE_RECIPE,
    SGD_LR_PER_256,
    SMALL_DATA_IMAGE_SIZE,
    complete_config,
)
from resnexus.models import registry
from resnexus.models.pretrained import TIMM_EVAL, WEIGHTS_DIR_ENV, PretrainedWeights
from tests.helpers import WeightsServer, bright_and_dark_folder, randomize_, tiny_config

SMALL = {"layers": (1, 1, 1, 1)}


@pytest.fixture()
def source_file(tmp_path: Path) -> Path:
    """A tiny resnet18's weights as torchvision publishes them (a plain state dict, 1000 classes)."""
    model = randomize_(resnexus.create_model("resnet18", **SMALL), seed=3)
    path = tmp_path / "tiny-resnet18.pth"
    torch.save(model.state_dict(), path)
    return path


def _catalog_entry(server: WeightsServer, path: str, data: bytes, input_size: int) -> PretrainedWeights:
    """A recommended torchvision-layout entry for ``data``, served at ``path`` by ``server``."""
    return PretrainedWeights(
        tag="torchvision:TEST",
        url=server.url(path),
        hash=hashlib.sha256(data).hexdigest()[:8],
        hash_kind="sha256-prefix",
        layout="torchvision",
        preprocessing=replace(
            TIMM_EVAL, image_size=input_size, crop_fraction=input_size / (input_size + input_size // 8)
        ),
        top1=None,
        license="test",
        source="made by the test",
        recommended=True,
    )


@pytest.fixture()
def catalog_entry(tmp_path: Path, source_file: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PretrainedWeights]:
    """resnet18's "imagenet" entry pointed at a server on 127.0.0.1 serving ``source_file``."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    server = WeightsServer()
    server.thread.start()
    data = source_file.read_bytes()
    name = f"/tiny-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    server.files[name] = data
    entry = _catalog_entry(server, name, data, input_size=40)
    monkeypatch.setitem(registry._PRETRAINED, "resnet18", (entry,))
    yield entry
    server.httpd.shutdown()
    server.httpd.server_close()


def _complete(**kw) -> TrainConfig:
    return complete_config(TrainConfig(data="unused", out="unused", model="resnet18", **kw))


def test_weights_bring_the_finetuning_recipe(source_file):
    scratch, finetune = _complete(), _complete(weights=str(source_file))
    assert (scratch.epochs, scratch.lr, scratch.image_size) == (
        DEFAULT_RECIPE["epochs"],
        ADAMW_LR,
        SMALL_DATA_IMAGE_SIZE,
    )
    assert finetune.epochs == FINETUNE_RECIPE["epochs"] == 30
    assert finetune.warmup_epochs == FINETUNE_RECIPE["warmup_epochs"]
    assert finetune.lr == pytest.approx(ADAMW_LR * FINETUNE_LR_FACTOR)
    assert finetune.image_size == 224  # a weights file: the model's own input size
    sgd = _complete(weights=str(source_file), optimizer="sgd", batch_size=32)
    assert sgd.lr == pytest.approx(SGD_LR_PER_256 * 32 / 256 * FINETUNE_LR_FACTOR)


def test_typed_values_win_over_the_finetuning_recipe(source_file):
    config = _complete(weights=str(source_file), epochs=7, lr=0.02, warmup_epochs=0.0, image_size=64)
    assert (config.epochs, config.lr, config.warmup_epochs, config.image_size) == (7, 0.02, 0.0, 64)


def test_published_weights_bring_their_input_size(catalog_entry):
    assert _complete(weights="imagenet").image_size == catalog_entry.preprocessing.input_size == 40


def test_unknown_weights_tag_fails_before_any_work():
    with pytest.raises(ValueError, match="unknown weights 'torchvision:NOPE' for resnet18"):
        _complete(weights="torchvision:NOPE")


def test_freeze_needs_weights_and_existing_stages(source_file):
    with pytest.raises(ValueError, match="--freeze 2 needs --weights"):
        _complete(freeze=2)
    with pytest.raises(ValueError, match="--freeze 5: resnet18 has 4 stages"):
        _complete(weights=str(source_file), freeze=5)
    with pytest.raises(ValueError, match=r"freeze \(--freeze\): -1"):
        _complete(weights=str(source_file), freeze=-1)


def test_finetuned_run_keeps_frozen_stages_and_reports_its_weights(tmp_path, catalog_entry, source_file):
    data = bright_and_dark_folder(tmp_path / "data", per_class=6, size=24)
    config = tiny_config(
        data, tmp_path / "run", model="resnet18", model_config=SMALL, weights="imagenet", freeze=2, epochs=2,
        batch_size=4, lr=0.05, image_size=24, val_fraction=0.0, test_fraction=0.0,
    )  # fmt: skip
    result = train(config)
    source = torch.load(source_file, weights_only=True)
    trained = load_checkpoint(result.run_dir / "checkpoints" / "best.pt")["state_dict"]
    frozen = [k for k in source if k.split(".")[0] in {"conv1", "bn1", "layer1", "layer2"}]
    assert frozen and all(torch.equal(trained[k], source[k]) for k in frozen)
    assert not torch.equal(trained["layer3.0.conv1.weight"], source["layer3.0.conv1.weight"])
    assert trained["fc.weight"].shape == (2, 512)  # the classifier replaced for the two classes
    report = (result.run_dir / "report.md").read_text()
    assert "| initial weights | torchvision:TEST (imagenet); fine-tuned; stem and first 2 stages frozen |" in report


def test_report_of_a_run_from_scratch_says_so(tmp_path):
    data = bright_and_dark_folder(tmp_path / "data", per_class=4, size=16)
    config = tiny_config(data, tmp_path / "run", batch_size=4, val_fraction=0.0, test_fraction=0.0)
    report = (train(config).run_dir / "report.md").read_text()
    assert "| initial weights | none: trained from scratch |" in report


def test_weights_dir_is_used_without_network(tmp_path, catalog_entry, source_file, monkeypatch):
    offline = tmp_path / "offline"
    offline.mkdir()
    file_name = Path(catalog_entry.url).name
    (offline / file_name).write_bytes(source_file.read_bytes())
    unreachable = replace(catalog_entry, url=f"http://127.0.0.1:9/{file_name}")  # port 9: nothing listens
    monkeypatch.setitem(registry._PRETRAINED, "resnet18", (unreachable,))
    data = bright_and_dark_folder(tmp_path / "data", per_class=4, size=16)
    config = tiny_config(
        data, tmp_path / "run", model="resnet18", model_config=SMALL, weights="imagenet", weights_dir=str(offline),
        freeze=4, batch_size=4, val_fraction=0.0, test_fraction=0.0,
    )  # fmt: skip
    trained = load_checkpoint(train(config).run_dir / "checkpoints" / "best.pt")["state_dict"]
    source = torch.load(source_file, weights_only=True)
    assert torch.equal(trained["layer4.0.conv1.weight"], source["layer4.0.conv1.weight"])  # all 4 stages frozen


def test_predict_with_published_imagenet_weights_writes_imagenet_class_names(tmp_path, monkeypatch):
    """A full-size resnet18 whose classifier always prefers class 207 ("golden retriever")."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    source = resnexus.create_model("resnet18")
    with torch.no_grad():
        source.fc.weight.zero_()
        source.fc.bias.zero_()
        source.fc.bias[207] = 5.0
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    data = path.read_bytes()
    server = WeightsServer()
    server.thread.start()
    try:
        name = f"/resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"
        server.files[name] = data
        entry = _catalog_entry(server, name, data, input_size=32)
        monkeypatch.setitem(registry._PRETRAINED, "resnet18", (entry,))
        images = bright_and_dark_folder(tmp_path / "photos", per_class=2, size=40)
        out = tmp_path / "preds.csv"
        assert main(["predict", "--model", "resnet18", "--weights", "imagenet", "--input", str(images),
                     "--output", str(out)]) == 0  # fmt: skip
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
    rows = list(csv.reader(out.open()))
    assert len(rows[0]) == 2 + 1000 and rows[0][2:5] == ["prob_tench", "prob_goldfish", "prob_great white shark"]
    assert [r[1] for r in rows[1:]] == ["golden retriever"] * 4
    assert sum(server.requests.values()) == 1


def test_predict_without_checkpoint_needs_model_and_published_weights(tmp_path, capsys, source_file):
    images = bright_and_dark_folder(tmp_path / "photos", per_class=1, size=16)
    out = str(tmp_path / "preds.csv")
    assert main(["predict", "--model", "resnet18", "--input", str(images), "--output", out]) == 2
    assert "needs either --checkpoint, or --model with --weights" in capsys.readouterr().err
    weights_file = ["--weights", str(source_file)]
    assert main(["predict", "--model", "resnet18", *weights_file, "--input", str(images), "--output", out]) == 2
    assert "a model you trained is given with --checkpoint" in capsys.readouterr().err
    assert not Path(out).exists()
