"""`resnexus serve` under load: N concurrent clients for a fixed time, dynamic batching on vs off.

For each model (random-init checkpoints at the model's native 224 px with 2 classes: speed does
not depend on the weights) and each runtime (PyTorch; ONNX Runtime when installed), the real
command `resnexus serve` runs in its own process on 127.0.0.1 and `--clients` threads each POST one
320x240 JPEG to /v1/predict in a loop for `--seconds`; every request is counted as sent, answered
or failed. Printed per configuration: throughput, p50 / p95 / p99 latency, errors, lost requests
(sent but never answered), the mean batch the server ran (from its /metrics) and the slowest
/healthz answer probed during the load. Exits 1 unless every configuration had zero errors and
no lost request.

    python benchmarks/serve_load.py [--models resnext50_32x4d,resnet18] [--seconds 20] [--clients 8]
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from resnexus import create_model
from resnexus.engine.checkpoint import make_checkpoint, save_atomic


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)
    sent: int = 0
    errors: int = 0
    health: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def photo() -> bytes:
    """A 320x240 JPEG of random pixels: what every client posts."""
    rng = np.random.default_rng(0)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def checkpoints(model: str, folder: Path, onnx: bool, image_size: int = 224) -> dict[str, Path]:
    """Random-init two-class checkpoints of ``model``: {runtime: path}, PyTorch and (``onnx``) ONNX."""
    network = create_model(model, num_classes=2).eval()
    ckpt = make_checkpoint(
        network,
        model_name=model,
        model_config={},
        class_names=["a", "b"],
        image_size=image_size,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        crop_fraction=0.875,
    )
    paths = {"pytorch": save_atomic(ckpt, folder / f"{model}.pt")}
    if onnx:
        from resnexus.engine.export import export_onnx

        paths["onnxruntime"] = export_onnx(paths["pytorch"], folder / f"{model}.onnx").path
    return paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(checkpoint: Path, batching: bool, max_batch: int, max_wait_ms: float) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    command = [sys.executable, "-m", "resnexus", "serve", "--checkpoint", str(checkpoint), "--port", str(port)]
    command += ["--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
    if not batching:
        command.append("--no-batching")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"resnexus serve exited with {process.returncode}: {' '.join(command)}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("resnexus serve did not become ready in 120 s")


def _client(url: str, photo: bytes, stop: float, load: Load) -> None:
    with httpx.Client(timeout=120) as client:
        while time.monotonic() < stop:
            with load.lock:
                load.sent += 1
            start = time.perf_counter()
            try:
                response = client.post(f"{url}/v1/predict", files=[("files", ("photo.jpg", photo, "image/jpeg"))])
                ok = response.status_code == 200 and len(response.json()["predictions"]) == 1
            except (httpx.HTTPError, ValueError):
                ok = False
            with load.lock:
                if ok:
                    load.latencies.append(time.perf_counter() - start)
                else:
                    load.errors += 1


def _probe_health(url: str, stop: float, load: Load) -> None:
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < stop:
            start = time.perf_counter()
            client.get(f"{url}/healthz")
            load.health.append(time.perf_counter() - start)
            time.sleep(0.5)


def _mean_batch(url: str) -> float:
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
        for s in family.samples
        if s.name.startswith("resnexus_batch_size_")
    }
    return samples["resnexus_batch_size_sum"] / max(1.0, samples["resnexus_batch_size_count"])


def run(
    checkpoint: Path,
    batching: bool,
    photo: bytes,
    seconds: float,
    clients: int,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
) -> dict[str, float]:
    """`resnexus serve` of ``checkpoint`` under ``clients`` concurrent clients for ``seconds``:
    throughput, latency quantiles (ms), errors, lost requests, mean batch, slowest /healthz (ms)."""
    process, url = _start(checkpoint, batching, max_batch, max_wait_ms)
    try:
        for _ in range(3):  # warm-up, not counted (the first batches pay oneDNN's kernel choice)
            httpx.post(f"{url}/v1/predict", files=[("files", ("w.jpg", photo, "image/jpeg"))], timeout=120)
        load = Load()
        stop = time.monotonic() + seconds
        threads = [threading.Thread(target=_client, args=(url, photo, stop, load)) for _ in range(clients)]
        threads.append(threading.Thread(target=_probe_health, args=(url, stop, load)))
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        mean_batch = _mean_batch(url)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    answered = len(load.latencies)
    q = np.quantile(load.latencies, [0.5, 0.95, 0.99]) * 1000 if answered else [float("nan")] * 3
    return {
        "requests": answered,
        "throughput": answered / elapsed,
        "p50": q[0],
        "p95": q[1],
        "p99": q[2],
        "errors": load.errors,
        "lost": load.sent - answered - load.errors,
        "mean_batch": mean_batch,
        "health_max": max(load.health) * 1000 if load.health else float("nan"),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnext50_32x4d,resnet18")
    p.add_argument("--seconds", type=float, default=20.0, help="load time per configuration")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients, one request in flight each")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--no-onnx", action="store_true", help="PyTorch only")
    args = p.parse_args()
    try:
        import onnxruntime  # noqa: F401

        onnx = not args.no_onnx
    except ImportError:
        onnx = False
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    print(
        f"{os.cpu_count()} cores, AMX {'yes' if amx else 'no'}, torch {torch.__version__}; {args.clients} clients, "
        f"{args.seconds:.0f} s per configuration, batching = --max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms}"
    )
    jpeg = photo()
    header = "| model | runtime | batching | requests | images/s | p50 ms | p95 ms | p99 ms | errors | lost | mean batch | slowest /healthz ms |"
    print(header)
    print("|" + "---|" * 3 + "---:|" * 9)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for runtime, checkpoint in checkpoints(model, Path(tmp), onnx).items():
                for batching in (True, False):
                    r = run(checkpoint, batching, jpeg, args.seconds, args.clients, args.max_batch, args.max_wait_ms)
                    failures += r["errors"] + r["lost"]
                    print(
                        f"| {model} | {runtime} | {'on' if batching else 'off'} | {r['requests']} | "
                        f"{r['throughput']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | {r['errors']} | "
                        f"{r['lost']} | {r['mean_batch']:.2f} | {r['health_max']:.0f} |",
                        flush=True,
                    )
    print("zero errors, no lost request: " + ("yes" if failures == 0 else f"NO ({failures})"))
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
