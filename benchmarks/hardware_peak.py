"""How close a resnext50_32x4d training step comes to this CPU's nominal bf16 peak.

Achieved FLOP/s = (FLOPs of one training step) / (median step time, bf16 autocast + channels_last,
batch 16, 224 px). The step's FLOPs are 3 x the forward FLOPs counted by torch.utils.flop_counter
on the meta device (the backward pass computes two convolutions per forward one: the input's and
the weights' gradients). The counter's own backward figure is not used: for grouped convolutions
(all of ResNeXt's 3x3s) it ignores the groups and overcounts about 16x (checked on one conv with
groups=32: 0.95 GFLOP counted where the forward is 0.029).
Nominal peak = cores x GHz x FLOPs per cycle per core. Without AMX, a Sapphire Rapids core's
best bf16 instruction is AVX-512 VDPBF16PS: 32 bf16 products summed into 16 fp32 lanes = 64 FLOPs,
two per cycle on the two 512-bit FMA ports = 128 FLOPs/cycle. With AMX (not exposed on this VM)
the tile unit does 1024 bf16 FLOPs/cycle. The GHz figure is /proc/cpuinfo's (the base clock).

    python benchmarks/hardware_peak.py [--steps 5] [--batch 16] [--size 224]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from resnexus import create_model


def cpu_ghz() -> float:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1000
    raise RuntimeError("no 'cpu MHz' in /proc/cpuinfo")


def step_flops(name: str, batch: int, size: int) -> int:
    """3 x the counted forward FLOPs: forward, input gradients, weight gradients."""
    with torch.device("meta"):
        model = create_model(name, num_classes=1000)
        x = torch.zeros(batch, 3, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return 3 * counter.get_total_flops()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnext50_32x4d")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    flops = step_flops(args.model, args.batch, args.size)
    model = create_model(args.model, num_classes=1000).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, 3, args.size, args.size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,))
    times = []
    for step in range(args.steps + 1):  # the first step warms up oneDNN
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    achieved = flops / seconds / 1e9
    cores, ghz = torch.get_num_threads(), cpu_ghz()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    per_cycle = 1024 if amx else 128
    peak = cores * ghz * per_cycle
    print(f"{args.model}, batch {args.batch}, {args.size} px, bf16 + channels_last, {cores} threads at {ghz:.2f} GHz, "
          f"AMX {'yes' if amx else 'no'}")  # fmt: skip
    print(f"  FLOPs per training step (3 x forward): {flops / 1e9:.1f} G ({flops / args.batch / 1e9:.1f} G per image)")
    print(f"  median step: {seconds:.2f} s ({args.batch / seconds:.2f} images/s) over {args.steps} steps")
    print(f"  achieved: {achieved:.0f} GFLOP/s; nominal bf16 peak {peak:.0f} GFLOP/s "
          f"({cores} x {ghz:.2f} GHz x {per_cycle} FLOPs/cycle): {100 * achieved / peak:.1f} % of peak")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
