"""Published weights by name: download once, verify before use, never half a file, offline folder.

Every download goes to an HTTP server these tests start on 127.0.0.1; nothing else is contacted.
Torch's hub cache is pointed at the test's tmp_path, so the user's cache is never touched.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

import h5py
import numpy as np
import pytest
import torch

import resnexus
from resnexus.models import registry
from resnexus.models.pretrained import (
    HASH_KINDS,
    KERAS_MODES,
    KERAS_TF_EVAL,
    SOURCES,
    TIMM_EVAL,
    WEIGHTS_DIR_ENV,
    ChecksumError,
    DownloadError,
    PretrainedWeights,
    download,
)
from resnexus.models.registry import find_pretrained, list_pretrained
from resnexus.models.weights import KERAS_APPLICATIONS_BN_EPS
from tests.helpers import WeightsServer, max_abs_diff, randomize_

SMALL = dict(layers=(1, 1, 1, 1))  # a one-block-per-stage ResNet-18


@pytest.fixture()
def server() -> Iterator[WeightsServer]:
    s = WeightsServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture(autouse=True)
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    assert tmp_path in checkpoints.parents
    return checkpoints


@pytest.fixture()
def source_model() -> torch.nn.Module:
    return randomize_(resnexus.create_model("resnet18", num_classes=7, **SMALL), seed=5).eval()


@pytest.fixture()
def weights_bytes(tmp_path: Path, source_model: torch.nn.Module) -> bytes:
    """The tiny model's state dict as torchvision publishes its files (a plain pickled state dict)."""
    path = tmp_path / "made.pth"
    torch.save(source_model.state_dict(), path)
    return path.read_bytes()


def _entry(url: str, data: bytes, hash_kind: str = "sha256-prefix", **changes: object) -> PretrainedWeights:
    digest = (hashlib.md5 if hash_kind == "md5" else hashlib.sha256)(data).hexdigest()
    entry = PretrainedWeights(
        tag="torchvision:TEST",
        url=url,
        hash=digest[:8] if hash_kind == "sha256-prefix" else digest,
        hash_kind=hash_kind,
        layout="torchvision",
        preprocessing=TIMM_EVAL,
        top1=None,
        license="test",
        source="made by the test",
    )
    return replace(entry, **changes)


def _served_entry(server: WeightsServer, data: bytes, hash_kind: str = "sha256-prefix") -> PretrainedWeights:
    name = f"/tiny-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    server.files[name] = data
    return _entry(server.url(name), data, hash_kind)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval()(x)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- download once, verified ----------------------------------------------------------------------
@pytest.mark.parametrize("hash_kind", sorted(HASH_KINDS))
def test_downloaded_once_verified_and_loaded(server, hub_dir, source_model, weights_bytes, hash_kind):
    entry = _served_entry(server, weights_bytes, hash_kind)
    first = resnexus.create_model("resnet18", num_classes=7, weights=entry, **SMALL)
    second = resnexus.create_model("resnet18", num_classes=7, weights=entry, **SMALL)
    assert sum(server.requests.values()) == 1, server.requests
    assert _files(hub_dir) == [entry.file_name]  # the file, and no temporary file beside it
    assert (hub_dir / entry.file_name).read_bytes() == weights_bytes
    assert max_abs_diff(_logits(first), _logits(source_model)) == 0.0
    assert max_abs_diff(_logits(second), _logits(source_model)) == 0.0
    assert first.pretrained_cfg["weights"] == "torchvision:TEST"
    assert first.pretrained_cfg["input_size"] == (3, 224, 224) and first.pretrained_cfg["crop_pct"] == 0.875


def test_damaged_cache_file_is_downloaded_again(server, hub_dir, source_model, weights_bytes, caplog):
    entry = _served_entry(server, weights_bytes)
    hub_dir.mkdir(parents=True)
    (hub_dir / entry.file_name).write_bytes(weights_bytes[:100])
    with caplog.at_level(logging.WARNING, logger="resnexus"):
        model = resnexus.create_model("resnet18", num_classes=7, weights=entry, **SMALL)
    assert "damaged cached file" in caplog.text and "mismatch" in caplog.text
    assert sum(server.requests.values()) == 1
    assert max_abs_diff(_logits(model), _logits(source_model)) == 0.0


# -- every failure: one clear message, nothing left in the cache ------------------------------------
def test_wrong_hash_is_refused_and_nothing_is_kept(server, hub_dir, weights_bytes):
    entry = replace(_served_entry(server, weights_bytes, "sha256"), hash="0" * 64)
    actual = hashlib.sha256(weights_bytes).hexdigest()
    with pytest.raises(ChecksumError) as error:
        resnexus.create_model("resnet18", num_classes=7, weights=entry, **SMALL)
    message = str(error.value)
    assert f"expected {'0' * 64}, got {actual}" in message and entry.file_name in message
    assert _files(hub_dir) == []


def test_http_404_names_url_file_and_folder(server, hub_dir, weights_bytes):
    entry = _entry(server.url("/missing-0123abcd.pth"), weights_bytes)
    with pytest.raises(DownloadError) as error:
        resnexus.create_model("resnet18", num_classes=7, weights=entry, **SMALL)
    message = str(error.value)
    assert "HTTP 404" in message and entry.url in message
    assert "missing-0123abcd.pth" in message and str(hub_dir) in message and WEIGHTS_DIR_ENV in message
    assert _files(hub_dir) == []


def test_unreachable_host_names_url_file_and_offline_folder(tmp_path, hub_dir, weights_bytes):
    with socket.socket() as s:  # a port nobody listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = _entry(f"http://127.0.0.1:{port}/tiny-0123abcd.pth", weights_bytes)
    offline = tmp_path / "offline"
    with pytest.raises(DownloadError) as error:
        resnexus.create_model("resnet18", num_classes=7, weights=entry, weights_dir=offline, **SMALL)
    message = str(error.value)
    assert entry.url in message and "tiny-0123abcd.pth" in message and str(offline) in message
    assert "refused" in message.lower()
    assert _files(hub_dir) == []


def test_truncated_download_is_refused(server, hub_dir, weights_bytes):
    entry = _served_entry(server, weights_bytes)
    cut = replace(entry, url=entry.url.replace(f"/{entry.file_name}", f"/cut/{entry.file_name}"))
    with pytest.raises(DownloadError, match=r"cut off") as error:
        resnexus.create_model("resnet18", num_classes=7, weights=cut, **SMALL)
    assert cut.url in str(error.value)
    assert _files(hub_dir) == []


# -- one checked download, for catalog entries and plain URLs alike ------------------------------
def test_download_checks_the_hash_it_is_given(server, tmp_path, weights_bytes):
    server.files["/plain.pth"] = weights_bytes
    digest = hashlib.sha256(weights_bytes).hexdigest()
    target = tmp_path / "got" / "plain.pth"
    assert download(server.url("/plain.pth"), target, expected=digest) == digest
    assert target.read_bytes() == weights_bytes
    with pytest.raises(ChecksumError, match=r"sha256 mismatch for other.pth: expected 0{64}, got [0-9a-f]{64}"):
        download(server.url("/plain.pth"), tmp_path / "other.pth", expected="0" * 64)
    assert not [name for name in _files(tmp_path) if "other" in name]  # nothing left of the refused file


def test_weights_urls_go_through_the_checked_download(server, hub_dir, source_model, weights_bytes, caplog):
    server.files["/remote.pth"] = weights_bytes
    digest = hashlib.sha256(weights_bytes).hexdigest()
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        resnexus.create_model("resnet18", num_classes=7, weights=server.url("/remote.pth#sha256=" + "0" * 64), **SMALL)
    assert _files(hub_dir) == []
    pinned = resnexus.create_model(
        "resnet18", num_classes=7, weights=server.url(f"/remote.pth#sha256={digest}"), **SMALL
    )
    assert max_abs_diff(_logits(pinned), _logits(source_model)) == 0.0
    (hub_dir / "remote.pth").write_bytes(b"damaged")  # a pinned URL's cached copy is verified too
    with caplog.at_level(logging.WARNING):
        again = resnexus.create_model(
            "resnet18", num_classes=7, weights=server.url(f"/remote.pth#sha256={digest}"), **SMALL
        )
    assert "damaged cached file" in caplog.text and server.requests["/remote.pth"] == 3
    assert max_abs_diff(_logits(again), _logits(source_model)) == 0.0
    server.files["/unpinned.pth"] = weights_bytes
    with caplog.at_level(logging.WARNING):
        resnexus.create_model("resnet18", num_classes=7, weights=server.url("/unpinned.pth"), **SMALL)
    assert f"its sha256 is {digest}" in caplog.text  # not verified, but its digest is on record


# -- offline folder -------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["argument", "environment"])
def test_offline_folder_is_used_without_any_request(server, tmp_path, hub_dir, monkeypatch, source_model,
                                                    weights_bytes, how):  # fmt: skip
    entry = _served_entry(server, weights_bytes)
    offline = tmp_path / "dropped"
    offline.mkdir()
    (offline / entry.file_name).write_bytes(weights_bytes)
    if how == "environment":
        monkeypatch.setenv(WEIGHTS_DIR_ENV, str(offline))
        model = resnexus.create_model("resnet18", num_classes=7, weights=entry, **SMALL)
    else:
        model = resnexus.create_model("resnet18", num_classes=7, weights=entry, weights_dir=offline, **SMALL)
    assert sum(server.requests.values()) == 0
    assert _files(hub_dir) == []
    assert max_abs_diff(_logits(model), _logits(source_model)) == 0.0


def test_wrong_file_in_offline_folder_is_refused_and_kept(server, tmp_path, weights_bytes):
    entry = _served_entry(server, weights_bytes)
    offline = tmp_path / "dropped"
    offline.mkdir()
    (offline / entry.file_name).write_bytes(b"something else")
    with pytest.raises(ChecksumError, match=r"expected [0-9a-f]{8}, got [0-9a-f]{64}") as error:
        resnexus.create_model("resnet18", num_classes=7, weights=entry, weights_dir=offline, **SMALL)
    assert str(offline / entry.file_name) in str(error.value)
    assert (offline / entry.file_name).read_bytes() == b"something else"  # a user's file is never deleted
    assert sum(server.requests.values()) == 0


# -- names ----------------------------------------------------------------------------------------
def test_imagenet_tag_resolves_through_the_catalog(server, monkeypatch, source_model, weights_bytes):
    entry = replace(_served_entry(server, weights_bytes), recommended=True)
    monkeypatch.setitem(registry._PRETRAINED, "resnet18", (entry,))
    for tag in ("imagenet", "torchvision", "torchvision:TEST"):
        model = resnexus.create_model("resnet18", num_classes=7, weights=tag, **SMALL)
        assert max_abs_diff(_logits(model), _logits(source_model)) == 0.0
    assert sum(server.requests.values()) == 1


def test_model_info_lists_the_weights_tags():
    assert resnexus.models.model_info("resnet18").weights == ("torchvision:IMAGENET1K_V1",)
    assert resnexus.models.model_info("resnet20_cifar").weights == ()
    assert [e.tag for e in list_pretrained("densenet121")["densenet121"]] == ["torchvision:IMAGENET1K_V1", "keras"]


def test_tags_pick_the_documented_entries():
    assert find_pretrained("resnet50", "imagenet").tag == "torchvision:IMAGENET1K_V2"
    assert find_pretrained("resnet50", "torchvision:IMAGENET1K_V1").url.endswith("resnet50-0676ba61.pth")
    assert find_pretrained("resnext50_32x4d", "imagenet").url.endswith("resnext50_32x4d-1a0047aa.pth")
    assert find_pretrained("densenet121", "keras").hash == "9d60b8095a5708f2dcce2bca79d332c7"
    assert find_pretrained("densenet121", "imagenet").layout == "torchvision"
    assert find_pretrained("resnet50v2", "imagenet").preprocessing == KERAS_TF_EVAL
    assert find_pretrained("res2next50", "official").url.startswith("https://shanghuagao.")
    assert find_pretrained("res2next50", "timm").url.startswith("https://github.com/rwightman/")


def test_unknown_tag_lists_the_ones_that_exist():
    with pytest.raises(ValueError, match=r"unknown weights 'torchvision:V9' for resnet50; available: imagenet, "
                                         r"torchvision:IMAGENET1K_V1, torchvision:IMAGENET1K_V2$"):  # fmt: skip
        resnexus.create_model("resnet50", weights="torchvision:V9")
    with pytest.raises(ValueError, match=r"no published weights are known for 'resnet20_cifar'"):
        resnexus.create_model("resnet20_cifar", weights="imagenet")


def test_paths_and_urls_are_not_tags(tmp_path, source_model):
    assert not registry.is_weights_tag("https://example.org/keras.h5")
    assert not registry.is_weights_tag(str(tmp_path / "w.pth"))
    odd = tmp_path / "keras"  # a local file whose name is a source name stays a file
    torch.save(source_model.state_dict(), odd)
    model = resnexus.create_model("resnet18", num_classes=7, weights=str(odd), **SMALL)
    assert max_abs_diff(_logits(model), _logits(source_model)) == 0.0


# -- the Keras layout through the catalog ---------------------------------------------------------
def _write_legacy_keras_h5(model: torch.nn.Module, path: Path) -> None:
    """Our weights as the .h5 files keras.applications downloads: one group per layer, Keras order."""
    state = model.state_dict()
    with h5py.File(path, "w") as f:
        names = []
        for layer in model.keras_layers():
            t = layer.target
            if layer.kind == "conv2d":
                arrays = [state[f"{t}.weight"].permute(2, 3, 1, 0)]
                arrays += [state[f"{t}.bias"]] if f"{t}.bias" in state else []
            elif layer.kind == "dense":
                arrays = [state[f"{t}.weight"].t(), state[f"{t}.bias"]]
            else:  # batch_normalization: Keras normalises with eps 1.001e-5, ours 1e-5
                eps = model.get_submodule(t).eps
                var = state[f"{t}.running_var"] - (KERAS_APPLICATIONS_BN_EPS - eps)
                arrays = [state[f"{t}.weight"], state[f"{t}.bias"], state[f"{t}.running_mean"], var]
            group = f.create_group(layer.name)
            weight_names = [f"{layer.name}/w{i}:0" for i in range(len(arrays))]
            for weight_name, array in zip(weight_names, arrays):
                group[weight_name] = np.ascontiguousarray(array.numpy())
            group.attrs["weight_names"] = [w.encode() for w in weight_names]
            names.append(layer.name.encode())
        f.attrs["layer_names"] = names


def test_keras_file_from_the_catalog_loads(server, tmp_path):
    tiny = dict(depths=(1, 1, 1, 1))
    source = randomize_(resnexus.create_model("resnet50v2", num_classes=5, **tiny), seed=2).eval()
    _write_legacy_keras_h5(source, tmp_path / "k.h5")
    data = (tmp_path / "k.h5").read_bytes()
    server.files["/tiny_weights_tf_dim_ordering_tf_kernels.h5"] = data
    entry = _entry(server.url("/tiny_weights_tf_dim_ordering_tf_kernels.h5"), data, "md5",
                   tag="keras", layout="keras", preprocessing=KERAS_TF_EVAL)  # fmt: skip
    model = resnexus.create_model("resnet50v2", num_classes=5, weights=entry, **tiny)
    assert max_abs_diff(_logits(model), _logits(source)) < 1e-5
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)


# -- the real catalog -----------------------------------------------------------------------------
def _catalog() -> list[tuple[str, PretrainedWeights]]:
    return [(name, entry) for name, entries in list_pretrained().items() for entry in entries]


def test_catalog_covers_the_published_models():
    expected = {
        "torchvision": {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                        "resnext101_32x8d", "resnext101_64x4d", "densenet121", "densenet161", "densenet169",
                        "densenet201"},
        "keras": {"resnet50v2", "resnet101v2", "resnet152v2", "densenet121", "densenet169", "densenet201"},
        "timm": {"res2net50_26w_4s", "res2net50_48w_2s", "res2net50_14w_8s", "res2net50_26w_6s",
                 "res2net50_26w_8s", "res2net101_26w_4s", "res2next50"},
        "official": {"res2net50_v1b_26w_4s", "res2net101_v1b_26w_4s", "res2next50"},
    }  # fmt: skip
    found: dict[str, set[str]] = {}
    for name, entry in _catalog():
        found.setdefault(entry.layout, set()).add(name)
    assert found == expected
    v2 = {n for n, e in _catalog() if e.tag == "torchvision:IMAGENET1K_V2"}
    assert v2 == {"resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d"}


@pytest.mark.parametrize(("name", "entry"), _catalog(), ids=lambda v: v if isinstance(v, str) else v.tag)
def test_catalog_entry_is_well_formed(name, entry):
    registry.get_entry(name)
    url = urlparse(entry.url)
    assert url.scheme == "https" and url.netloc and url.path.endswith(entry.file_name)
    assert entry.layout in SOURCES and entry.source_name == entry.layout
    assert entry.hash_kind in HASH_KINDS and int(entry.hash, 16) >= 0 and entry.hash == entry.hash.lower()
    if entry.hash_kind == "sha256-prefix":
        assert len(entry.hash) >= 8 and entry.file_name.split("-")[-1].startswith(entry.hash)
    else:
        assert len(entry.hash) == HASH_KINDS[entry.hash_kind]
    assert entry.file_name.endswith(".h5" if entry.layout == "keras" else ".pth")
    prep = entry.preprocessing
    assert prep.input_size == 224 and prep.resize_size >= prep.input_size and 0 < prep.crop_fraction <= 1
    assert len(prep.mean) == len(prep.std) == 3 and all(0 < v <= 1 for v in (*prep.mean, *prep.std))
    assert prep.interpolation in ("bilinear", "bicubic")
    assert (prep.keras_mode in KERAS_MODES) == (entry.layout == "keras")
    assert entry.top1 is not None and 65 < entry.top1 < 90
    assert entry.license and entry.source.startswith("https://")
    assert find_pretrained(name, "imagenet") in list_pretrained(name)[name]
    assert sum(e.recommended for e in list_pretrained(name)[name]) == 1


def test_model_zoo_page_lists_the_catalog_weights():
    """docs/reference/models.md gets `resnexus models --weights --markdown`'s table when the site is built."""
    from docs.gen_pages import render

    from resnexus.cli import weights_table

    page = (Path(__file__).resolve().parents[2] / "docs" / "reference" / "models.md").read_text(encoding="utf-8")
    assert "<!-- generated: weights -->" in page
    assert weights_table(resnexus.list_models(), markdown=True) in render(page)
    plain = weights_table(["resnet50", "resnet20_cifar"]).splitlines()
    assert len(plain) == 3 and plain[2].split()[:4] == [
        "resnet50",
        "torchvision:IMAGENET1K_V2",
        "(imagenet)",
        "80.858%",
    ]
