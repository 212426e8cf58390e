"""Single-image prediction latency: eager PyTorch versus the exported ONNX model on onnxruntime.

A resnext50_32x4d checkpoint (random weights: latency does not depend on them) is exported with
`resnexus export`'s code path; then batch-1 forward passes alternate between eager fp32, eager
bf16 autocast + channels_last, eager fp32 as `predict` runs it (BatchNorm folded into the
convolutions, channels_last: engine.inference.optimize_for_inference) and onnxruntime fp32, in
rounds, and the medians and ratios are printed.

    python benchmarks/predict_latency.py [--model resnext50_32x4d] [--size 224] [--rounds 7] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from resnexus import create_model
from resnexus.engine.checkpoint import OnnxClassifier, make_checkpoint, save_atomic
from resnexus.engine.export import export_onnx
from resnexus.engine.inference import optimize_for_inference


def random_checkpoint(model_name: str, size: int, folder: Path) -> tuple[torch.nn.Module, Path]:
    """A random-init two-class checkpoint of ``model_name`` in ``folder`` and its model (eval mode)."""
    model = create_model(model_name, num_classes=2).eval()
    ckpt = make_checkpoint(
        model,
        model_name=model_name,
        model_config={},
        class_names=["a", "b"],
        image_size=size,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        crop_fraction=0.875,
    )
    return model, save_atomic(ckpt, folder / "m.pt")


def latencies(
    model_name: str, size: int, rounds: int, reps: int, device: torch.device | None = None
) -> tuple[dict[str, list[float]], str]:
    """Seconds per batch-1 forward pass of each runtime, one list per runtime (one entry per round),
    and the max |logit difference| of ONNX and the folded model against eager fp32, in words.

    ``device``: where the PyTorch models run (default the CPU); onnxruntime runs on the CPU, as
    ``predict model.onnx`` does.
    """
    device = device or torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        model, checkpoint = random_checkpoint(model_name, size, Path(tmp))
        exported = export_onnx(checkpoint, Path(tmp) / "m.onnx")
        runtime = OnnxClassifier(exported.path)
        model = model.to(device)
        x = torch.randn(1, 3, size, size)
        x_device = x.to(device)
        x_cl = x_device.contiguous(memory_format=torch.channels_last)
        model_cl = create_model(model_name, num_classes=2).eval().to(device, memory_format=torch.channels_last)
        model_cl.load_state_dict(model.state_dict())
        twin = create_model(model_name, num_classes=2)
        twin.load_state_dict(model.state_dict())
        folded, folded_format = optimize_for_inference(twin, device)
        x_folded = x_device.contiguous(memory_format=folded_format)
        with torch.no_grad():
            folded_diff = (folded(x_folded) - model(x_device)).abs().max().item()

        def eager_bf16() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                model_cl(x_cl)

        runs = {
            "eager fp32": lambda: model(x_device),
            "eager bf16 + channels_last": eager_bf16,
            "eager fp32, predict's path": lambda: folded(x_folded),
            "onnxruntime fp32": lambda: runtime(x),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        with torch.no_grad():
            for fn in runs.values():  # warm-up
                fn()
            for _ in range(rounds):
                for name, fn in runs.items():
                    _sync(device)
                    start = time.perf_counter()
                    for _ in range(reps):
                        fn()
                    _sync(device)
                    times[name].append((time.perf_counter() - start) / reps)
    return times, f"ONNX {exported.max_abs_diff:.1e}, folded {folded_diff:.1e}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnext50_32x4d")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--reps", type=int, default=5, help="forward passes per round and runtime")
    args = p.parse_args()
    times, diffs = latencies(args.model, args.size, args.rounds, args.reps)
    print(
        f"{args.model}, batch 1, {args.size} px, {torch.get_num_threads()} threads, "
        f"median of {args.rounds} alternating rounds x {args.reps} passes "
        f"(max |logit diff| vs eager: {diffs})"
    )
    base = statistics.median(times["eager fp32"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:28s} {1000 * median:7.1f} ms   speed vs eager fp32: {base / median:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
