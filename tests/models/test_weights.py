"""The weight loader: formats, containers, fine-tuning, and refusing what does not fit."""

from __future__ import annotations

import functools
import http.server
import logging
import pickle
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import resnexus
from resnexus.models.weights import WeightsError, load_weights, read_state_dict, save_weights
from tests.helpers import max_abs_diff, randomize_

SMALL = dict(layers=(1, 1, 1, 1))  # a one-block-per-stage ResNet-18 keeps these tests fast


@pytest.fixture()
def source_model() -> torch.nn.Module:
    return randomize_(resnexus.create_model("resnet18", num_classes=7, **SMALL), seed=3).eval()


@pytest.fixture()
def x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return max_abs_diff(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".safetensors"])
def test_round_trip_through_every_format(tmp_path, source_model, x, suffix):
    path = save_weights(source_model, tmp_path / f"w{suffix}")
    model = resnexus.create_model("resnet18", num_classes=7, weights=path, **SMALL)
    assert _same_outputs(model, source_model, x) == 0.0


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd},
        lambda sd: {"model": sd, "epoch": 3, "optimizer": {"lr": 0.1}},
        lambda sd: {"model_state_dict": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
    ],
    ids=["state_dict", "model+extras", "model_state_dict+module", "ddp-prefix"],
)
def test_common_checkpoint_containers_are_unwrapped(tmp_path, source_model, x, wrap):
    torch.save(wrap(source_model.state_dict()), tmp_path / "ckpt.pth")
    model = resnexus.create_model("resnet18", num_classes=7, weights=tmp_path / "ckpt.pth", **SMALL)
    assert _same_outputs(model, source_model, x) == 0.0


def test_other_class_count_keeps_backbone_and_replaces_classifier(tmp_path, source_model, x, caplog):
    path = save_weights(source_model, tmp_path / "w.pth")
    with caplog.at_level(logging.WARNING, logger="resnexus"):
        model = resnexus.create_model("resnet18", num_classes=2, weights=path, **SMALL).eval()
    assert "7 classes" in caplog.text and "freshly initialised" in caplog.text
    assert model.fc.out_features == 2
    with torch.no_grad():
        ours = model.forward_head(model.forward_features(x), pre_logits=True)
        theirs = source_model.forward_head(source_model.forward_features(x), pre_logits=True)
    assert max_abs_diff(ours, theirs) == 0.0


def test_backbone_only_file_loads_with_fresh_classifier(tmp_path, source_model):
    state = {k: v for k, v in source_model.state_dict().items() if not k.startswith("fc.")}
    torch.save(state, tmp_path / "backbone.pth")
    model = resnexus.create_model("resnet18", num_classes=4, **SMALL)
    report = load_weights(model, tmp_path / "backbone.pth")
    assert report.classifier_reset and report.loaded == len(state)


def test_grey_scale_model_gets_folded_first_convolution(tmp_path, source_model, x):
    path = save_weights(source_model, tmp_path / "w.pth")
    grey = resnexus.create_model("resnet18", num_classes=7, in_chans=1, weights=path, **SMALL).eval()
    with torch.no_grad():  # a grey image is R = G = B, so summing the RGB filters is exact
        assert max_abs_diff(grey(x[:, :1]), source_model(x[:, :1].expand(-1, 3, -1, -1))) < 1e-5


def test_wrong_architecture_names_file_and_keys(tmp_path, source_model):
    path = save_weights(source_model, tmp_path / "resnet18.pth")
    with pytest.raises(WeightsError) as error:
        resnexus.create_model("resnet50", num_classes=7, **SMALL, weights=path)
    message = str(error.value)
    assert str(path) in message and "resnet50" in message
    assert "missing keys" in message and "layer1.0.conv3.weight" in message
    assert "shape mismatches" in message


def test_unexpected_keys_are_an_error_not_a_silent_partial_load(tmp_path, source_model):
    state = dict(source_model.state_dict())
    state["extra.weight"] = torch.zeros(3)
    del state["layer4.0.bn2.running_var"]
    torch.save(state, tmp_path / "odd.pth")
    model = resnexus.create_model("resnet18", num_classes=7, **SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match=r"1 missing keys: layer4\.0\.bn2\.running_var") as error:
        load_weights(model, tmp_path / "odd.pth")
    assert "1 unexpected keys: extra.weight" in str(error.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "model changed on failure"


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"state_dict": Exploit()}, f)
    with pytest.raises(WeightsError, match=r"refusing to load .*evil.pth"):
        read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.pth", b"", r"empty.pth is not a PyTorch checkpoint \(it is empty\)"),
        ("text.pth", b"these are not weights", r"is not a PyTorch checkpoint \(it starts with b'these are not we'\)"),
        ("cut.pth", b"PK\x03\x04garbage", "not a readable PyTorch checkpoint"),
        ("broken.safetensors", b"\x00\x01garbage", "not a readable safetensors file"),
        ("broken.h5", b"not hdf5", "not a readable HDF5 file"),
    ],
)
def test_corrupt_files_are_named(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=match) as error:
        load_weights(resnexus.create_model("resnet18", **SMALL), path)
    assert name in str(error.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.pth"):
        resnexus.create_model("resnet18", weights=tmp_path / "nowhere.pth")


def test_url_is_downloaded_once_into_the_hub_cache(tmp_path, source_model, x, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    save_weights(source_model, served / "remote.safetensors")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/remote.safetensors"
        model = resnexus.create_model("resnet18", num_classes=7, weights=url, **SMALL)
    finally:
        server.shutdown()
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / "remote.safetensors"
    assert cached.is_file()
    assert _same_outputs(model, source_model, x) == 0.0
    # the server is gone: a second load must come from the cache
    again = resnexus.create_model("resnet18", num_classes=7, weights=url, **SMALL)
    assert _same_outputs(again, source_model, x) == 0.0


def test_safetensors_written_by_other_tools_load(tmp_path, source_model, x):
    save_file({k: v.contiguous() for k, v in source_model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    model = resnexus.create_model("resnet18", num_classes=7, weights=tmp_path / "m.safetensors", **SMALL)
    assert _same_outputs(model, source_model, x) == 0.0
