"""Peak memory of a densenet121 training step with and without the memory-efficient mode.

Each mode runs in its own fresh process (so one cannot inherit the other's allocator high-water
mark): build the model, record the resident memory, run training steps (batch 32, 224 px, with
the precision and channels_last `resnexus train` picks for this machine), and report the peak
resident memory *above* that baseline (the activations, gradients and optimizer state the step
needs) and the median step time. The memory-efficient mode keeps only each dense layer's new
channels and recomputes the rest of the layer in backward (torch.utils.checkpoint).

    python benchmarks/densenet_memory.py [--batch 32] [--size 224] [--steps 3] [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def one_mode(memory_efficient: bool, batch: int, size: int, steps: int, precision: str) -> dict[str, float]:
    from contextlib import nullcontext

    import torch

    from resnexus import create_model
    from resnexus.engine.config import autocast_dtype

    dtype = autocast_dtype(precision, torch.device("cpu"))

    model = create_model("densenet121", num_classes=1000, memory_efficient=memory_efficient)
    model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,))
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype) if dtype else nullcontext():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "baseline_mib": baseline,
        "peak_mib": peak,
        "step_s": statistics.median(times[1:] or times),
        "precision": "fp32" if dtype is None else str(dtype).removeprefix("torch."),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"), help="default: what train picks")
    p.add_argument("--child", choices=("plain", "efficient"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one_mode(args.child == "efficient", args.batch, args.size, args.steps, args.precision)))
        return 0
    results = {}
    for mode in ("plain", "efficient"):
        command = [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--batch",
            str(args.batch),
            "--size",
            str(args.size),
            "--steps",
            str(args.steps),
            "--precision",
            args.precision,
        ]
        results[mode] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    plain, efficient = results["plain"], results["efficient"]
    extra_plain = plain["peak_mib"] - plain["baseline_mib"]
    extra_eff = efficient["peak_mib"] - efficient["baseline_mib"]
    print(
        f"densenet121 training step, batch {args.batch}, {args.size} px, {plain['precision']} + channels_last, "
        f"median of {max(1, args.steps - 1)} steps after the first:"
    )
    for name, r, extra in (("plain", plain, extra_plain), ("memory-efficient", efficient, extra_eff)):
        print(
            f"  {name:17s} peak {r['peak_mib']:7.0f} MiB (model and input {r['baseline_mib']:5.0f} MiB, "
            f"step {extra:6.0f} MiB), {r['step_s']:.2f} s/step"
        )
    print(
        f"  memory-efficient / plain: step memory {extra_eff / extra_plain:.2f}x, "
        f"peak {efficient['peak_mib'] / plain['peak_mib']:.2f}x, time {efficient['step_s'] / plain['step_s']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
