"""A tiny trained checkpoint (seconds on 2 cores) and its photos, shared by the serve tests."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from resnexus.engine import train
from tests.helpers import bright_and_dark_folder, tiny_config


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of 20-px noise PNGs, "bright" and "dark" (6 each)."""
    return bright_and_dark_folder(tmp_path_factory.mktemp("serve") / "photos", 6, size=20)


@pytest.fixture(scope="session")
def run_dir(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training run directory (checkpoints/best.pt, metrics.json) of a 1-block-per-stage CIFAR ResNet."""
    out = tmp_path_factory.mktemp("serve") / "run"
    train(tiny_config(photos, out, verbose=True))
    return out


@pytest.fixture(scope="session")
def cv_dir(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cross-validation directory's layout around the same model: refit/ and cv_metrics.json."""
    out = tmp_path_factory.mktemp("serve") / "cv"
    shutil.copytree(run_dir, out / "refit")
    record = {"protocol": {"folds": 3}, "mean": {"accuracy": 0.75}, "std": {"accuracy": 0.05}}
    (out / "cv_metrics.json").write_text(json.dumps(record), encoding="utf-8")
    return out


def raw_probabilities(checkpoint: str | Path, paths: list[Path]) -> np.ndarray:
    """The model's own (uncalibrated) probabilities of ``paths``, computed as ``predict`` does:
    Checkpoint.load, then the engine's Predictor; nothing of the server's code."""
    import torch

    from resnexus.data import UnlabeledDataset
    from resnexus.engine.checkpoint import Checkpoint
    from resnexus.engine.inference import Predictor

    loaded = Checkpoint.load(checkpoint)
    predictor = Predictor(loaded.model(), loaded.metadata)
    crops = UnlabeledDataset(paths, predictor.crop)
    return predictor.probabilities(torch.stack([crops[i][0] for i in range(len(paths))]))


def _calibrated_cv(run_dir: Path, out: Path, oof_images: int, ci: list[float] | None) -> Path:
    """A cross-validation directory around the run's model with a calibration.json fitted on the
    model's probabilities of ``oof_images`` other photos (half of each class, standing in for the
    out-of-fold ones), with "dark" as the positive class and the threshold for sensitivity 1 on them.

    Other photos than the served ones: a served image whose score were the conformal threshold
    itself would sit on the set's edge, where float rounding decides."""
    from resnexus.data import scan_unlabeled
    from resnexus.engine.rundir import RunDir
    from resnexus.reports.uncertainty import fit_calibration

    shutil.copytree(run_dir, out / "refit")
    record = {"protocol": {"folds": 4}, "mean": {"accuracy": 0.62}, "std": {"accuracy": 0.08}}
    if ci is not None:
        record["ci"] = {"accuracy": ci}
    (out / "cv_metrics.json").write_text(json.dumps(record), encoding="utf-8")
    paths = scan_unlabeled(bright_and_dark_folder(out.parent / f"{out.name}-oof", oof_images // 2, size=20, seed=7))
    labels = np.array([["bright", "dark"].index(p.parent.name) for p in paths])
    calibration = fit_calibration(
        raw_probabilities(run_dir, paths), labels, ["bright", "dark"], positive_class="dark", target_sensitivity=1.0
    )
    calibration.save(RunDir(out).calibration)
    return out


@pytest.fixture(scope="session")
def calibrated_cv_dir(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CV directory calibrated on 12 photos; no CI in cv_metrics.json."""
    return _calibrated_cv(run_dir, tmp_path_factory.mktemp("serve") / "calibrated", 12, None)


@pytest.fixture(scope="session")
def unsure_cv_dir(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CV directory calibrated on 6 photos only: too few for a finite 90 % conformal threshold
    (that needs 9), so every set at 90 % holds both classes; a 95 % CI in cv_metrics.json."""
    return _calibrated_cv(run_dir, tmp_path_factory.mktemp("serve") / "unsure", 6, [0.52, 0.71])


@pytest.fixture
def make_client(run_dir: Path) -> Iterator:
    """``make_client(**create_app kwargs)``: a TestClient with the app's lifespan running (batcher up)."""
    from fastapi.testclient import TestClient

    from resnexus.serve import create_app

    clients: list[TestClient] = []

    def make(checkpoint: str | Path = run_dir, **kwargs) -> TestClient:
        client = TestClient(create_app(checkpoint, **kwargs), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def upload(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart ``files`` entries for a TestClient request."""
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


def image_files(folder: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of every PNG under ``folder`` in predict's order (natural sort)."""
    from resnexus.data import scan_unlabeled

    return [(str(p), p.read_bytes()) for p in scan_unlabeled(folder)]


@pytest.fixture
def live_server(run_dir: Path) -> Iterator:
    """``live_server(create_app_kwargs, checkpoint=run_dir)`` -> (url, uvicorn.Server, app): the real server on a free
    127.0.0.1 port, in a thread; stopped at the end of the test."""
    import socket
    import threading
    import time

    import uvicorn

    from resnexus.serve import create_app

    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(create_app_kwargs: dict, checkpoint: Path = run_dir) -> tuple[str, uvicorn.Server, object]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        app = create_app(checkpoint, **create_app_kwargs)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread))
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}", server, app

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(10)


def hold_next_batch(batcher) -> tuple[threading.Event, threading.Event]:
    """Make ``batcher``'s batches wait: returns (started, release); a batch sets ``started`` and
    computes only once ``release`` is set (at most 10 s), so a test can act while it is in flight."""
    started, release = threading.Event(), threading.Event()
    run = batcher.run

    def slow(crops):
        started.set()
        release.wait(10)
        return run(crops)

    batcher.run = slow
    return started, release


@contextmanager
def serve_process(run_dir: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """A real ``resnexus serve`` process on a free 127.0.0.1 port, once ``/readyz`` says ready:
    (the process, its base URL). Killed on exit if it is still running."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "resnexus", "serve", "--checkpoint", str(run_dir), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "resnexus serve did not start"
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
