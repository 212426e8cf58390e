"""benchmarks/gpu_suite.py: its dry run (everything but CUDA, on the CPU) passes, and its pieces
report what they measure, skip what their budget leaves out and fail loudly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def suite():
    return load_benchmark("gpu_suite")


def test_loss_check_needs_finite_falling_losses(suite) -> None:
    assert suite.falls([0.7, 0.5, 0.3]) == (True, "losses 0.700 -> 0.500 -> 0.300")
    assert suite.falls([0.7, 0.8])[0] is False
    assert suite.falls([0.7, float("nan"), 0.3])[0] is False
    assert suite.falls([0.7])[0] is False  # one epoch shows nothing


def test_photos_are_two_tinted_classes(suite, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    root = suite.make_photos(tmp_path / "photos", 6, 20)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg")) == [
        "blue/00001.jpg",
        "blue/00003.jpg",
        "blue/00005.jpg",
        "red/00000.jpg",
        "red/00002.jpg",
        "red/00004.jpg",
    ]
    red = np.asarray(Image.open(root / "red/00000.jpg"), dtype=np.float64).mean((0, 1))
    blue = np.asarray(Image.open(root / "blue/00001.jpg"), dtype=np.float64).mean((0, 1))
    assert red[0] > red[2] + 30 and blue[2] > blue[0] + 30


def test_spent_budget_skips_and_an_error_is_a_failed_check(suite, tmp_path: Path, capsys) -> None:
    report = suite.Report("Test CPU", dry_run=True, section="train")
    ctx = suite.Context(torch.device("cpu"), suite.DRY_SIZES, report, tmp_path, tmp_path, suite.Budget(0.0))
    called = []
    assert ctx.run("late work", lambda: called.append(1)) is None
    assert called == []
    assert report.skipped == [{"section": "train", "name": "late work", "reason": "the section's 0 s budget is spent"}]

    ctx.budget = suite.Budget(None)

    def broken() -> None:
        raise RuntimeError("no kernel image for this device")

    ctx.run("broken step", broken)
    assert report.checks == [
        {
            "section": "train",
            "name": "broken step",
            "ok": False,
            "detail": "raised RuntimeError: no kernel image for this device",
        }
    ]
    assert report.summary()["ok"] is False
    assert all(line.startswith("[Test CPU] train: ") for line in capsys.readouterr().out.splitlines())


def test_gpu_peaks_from_the_data_sheets() -> None:
    peak = load_benchmark("hardware_peak")
    assert peak.gpu_peak_flops("NVIDIA H100 PCIe", torch.bfloat16) == pytest.approx(756.5e12)
    assert peak.gpu_peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16) == pytest.approx(989.4e12)
    assert peak.gpu_peak_flops("NVIDIA H200", None) == pytest.approx(66.9e12)
    assert peak.gpu_peak_flops("Imaginary GPU 9000", torch.float16) is None


def test_unknown_section_is_refused_by_name() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_suite.py"), "--sections", "train,warp"],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(ROOT / "src")},
        timeout=300,
    )
    assert done.returncode == 2
    assert "unknown sections ['warp']; known: train, paths, infer, serve, keras" in done.stderr


@pytest.mark.slow
def test_dry_run_exercises_every_section(tmp_path: Path) -> None:
    out = tmp_path / "dry.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_suite.py"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(ROOT / "src")},
        timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(out.read_text())
    device = summary["device"]
    assert summary["dry_run"] is True and summary["ok"] is True and device.endswith("no GPU")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines and all(line.startswith(f"[{device}] ") for line in lines)
    assert set(summary["section_seconds"]) == {"train", "paths", "infer", "serve", "keras"}
    assert [c for c in summary["checks"] if not c["ok"]] == []
    checks = {c["name"] for c in summary["checks"]}
    for name in (
        "pinned memory",
        "batch augmentation on the device = on the CPU",
        "Random Erasing on the device",
        "fp16 GradScaler on",
        "DDP gloo x 2: ranks agree",
        "predict wrote a row per photo",
    ):
        assert name in checks
    rows = {r["name"]: r for r in summary["rows"]}
    for case in ("resnexus bf16 channels_last", "torchvision fp16 channels_last", "timm bf16 channels_last 0 workers"):
        assert rows[case]["images_per_second"] > 0 and rows[case]["matmul_share"] > 0
    assert "resnexus bf16 contiguous compile 0 workers" in rows
    assert {"serve resnet18, dynamic batching on", "serve resnet18, dynamic batching off"} <= set(rows)
    keras_rows = {name for name in rows if name.startswith("keras ")}
    skipped = {s["name"] for s in summary["skipped"]}
    for backend in ("tensorflow", "jax", "torch"):
        assert f"keras {backend} fit" in keras_rows or f"keras {backend}" in skipped
