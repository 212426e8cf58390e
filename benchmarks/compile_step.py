"""What `--compile` (torch.compile of the training step) buys: compiled vs eager training steps.

The same model, batch and optimizer, with the precision and memory layout `resnexus train`
picks for this machine; the one-off compile time is reported, then rounds alternate eager and
compiled steps and the medians and their ratio are printed.

    python benchmarks/compile_step.py [--model resnext50_32x4d] [--size 224] [--rounds 4]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from resnexus import create_model
from resnexus.engine.config import autocast_dtype


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnext50_32x4d")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = autocast_dtype("auto", device)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=2).to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (args.batch,), device=device)
    compiled = torch.compile(model)

    def step(forward) -> None:
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    step(compiled)
    compile_s = time.perf_counter() - start
    step(compiled)
    step(model)
    rates: dict[str, list[float]] = {"eager": [], "compiled": []}
    for r in range(args.rounds):
        for name in ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager"):
            forward = model if name == "eager" else compiled
            start = time.perf_counter()
            step(forward)
            step(forward)
            rates[name].append(2 * args.batch / (time.perf_counter() - start))
    eager, comp = statistics.median(rates["eager"]), statistics.median(rates["compiled"])
    label = "fp32" if dtype is None else str(dtype).removeprefix("torch.")
    print(
        f"{args.model} training step on {device}, {label} + channels_last, batch {args.batch}, {args.size} px, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"  compile + first step: {compile_s:.0f} s")
    print(
        f"  eager {eager:.2f} images/s, compiled {comp:.2f} images/s (medians of {args.rounds} rounds): "
        f"{comp / eager:.2f}x; break-even after {compile_s / max(1e-9, 1 / eager - 1 / comp):.0f} images"
        if comp > eager
        else f"  eager {eager:.2f} images/s, compiled {comp:.2f} images/s (medians of {args.rounds} rounds): "
        f"{comp / eager:.2f}x, so compiling never pays here"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
