"""Helpers shared by the tests: random-but-reproducible weights, logit comparison, tiny image folders,
a weights server on 127.0.0.1 (no test ever contacts another host), and the benchmark scripts as modules."""

from __future__ import annotations

import http.server
import importlib.util
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnexus.engine import TrainConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> Any:
    """A script of benchmarks/ as a module (benchmarks/ is no package; the scripts import each other
    by file name, as when run, so the folder goes on sys.path)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter and BatchNorm statistic with seeded random values.

    Freshly initialised BatchNorms have mean 0 / var 1 and zero biases, which would hide a
    swapped or missing statistic; random ones make a weight-loading comparison meaningful.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / max(1, p[0].numel()) ** 0.5 if p.dim() > 1 else 0.1))
            if name.endswith("weight") and p.dim() == 1:  # norm scales stay near one
                p.add_(1.0)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def bright_and_dark_folder(root: Path, per_class: int, size: int, seed: int = 0) -> Path:
    """Two class folders, "bright" and "dark", of noise images any crop or flip keeps apart."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, name in enumerate(("bright", "dark")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (size, size, 3)) + (20 if label else 140)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


class WeightsServer:
    """Serves ``files`` (path -> bytes) on 127.0.0.1 and counts requests; ``/cut/...`` sends half a file."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: Counter[str] = Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests[self.path] += 1
                body = server.files.get(self.path.removeprefix("/cut"))
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path.startswith("/cut/") else body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


TINY_RUN: dict[str, Any] = dict(
    model="resnet20_cifar",
    model_config={"layers": (1, 1, 1)},  # one block per stage: a training step takes milliseconds
    epochs=1,
    batch_size=8,
    image_size=16,
    precision="fp32",
    workers=0,
    cache_dir="off",
    verbose=False,
)


def tiny_config(data: str | Path, out: str | Path, **changes: Any) -> TrainConfig:
    """The TrainConfig of a run that finishes in seconds: :data:`TINY_RUN` with ``changes``."""
    return TrainConfig(data=str(data), out=str(out), **(TINY_RUN | changes))


def noise_folder(root: Path, per_class: int = 8, size: int = 8, classes: tuple[str, ...] = ("a", "b")) -> Path:
    """Class folders of random-noise PNGs: data a tiny run accepts, with nothing to learn."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def keras_logits(model: Any, x: torch.Tensor, training: bool = False) -> torch.Tensor:
    """A Keras model's output on a channels-first batch ``x`` (Keras sees it channels-last), as a tensor."""
    import keras

    out = model(x.permute(0, 2, 3, 1).contiguous().numpy(), training=training)
    return torch.from_numpy(keras.ops.convert_to_numpy(out).copy())


def keras_trainable_params(model: Any) -> int:
    """Trainable numbers of a Keras model: what PyTorch counts as parameters (BN running stats excluded)."""
    import math

    return sum(math.prod(w.shape) for w in model.trainable_weights)


def run_on_keras_backend(script: str, backend: str, root: Path) -> tuple[Any, str]:
    """Run ``script`` in a fresh interpreter whose Keras uses ``backend`` (Keras picks its backend once,
    at first import, and the test session runs on TensorFlow); returns the finished process and a text
    showing its exit code and output, for assertion messages."""
    import os
    import subprocess
    import sys

    env = os.environ | {"KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    return done, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
