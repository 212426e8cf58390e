"""How close a resnext50_32x4d training step comes to this CPU's nominal peak, and where its time goes.

Achieved FLOP/s = (FLOPs of one training step) / (median step time, batch 16, 224 px,
channels_last), for fp32 and for bf16 autocast, each against its own nominal peak. The step's
FLOPs are 3 x the forward FLOPs counted by torch.utils.flop_counter on the meta device (the
backward pass computes two convolutions per forward one: the input's and the weights'
gradients). The counter's own backward figure is not used: for grouped convolutions (all of
ResNeXt's 3x3s) it ignores the groups and overcounts about 16x (checked on one conv with
groups=32: 0.95 GFLOP counted where the forward is 0.029).

Nominal peak = cores x GHz x FLOPs per cycle per core. A Sapphire Rapids core has two 512-bit FMA
ports: fp32 = 2 ports x 16 lanes x 2 (multiply + add) = 64 FLOPs/cycle; bf16 without AMX
(AVX-512 VDPBF16PS: 32 products summed into 16 fp32 lanes) = 128; with AMX tiles 1024. The GHz
figure is /proc/cpuinfo's (the base clock).

On a GPU (benchmarks/gpu_suite.py) the nominal peak is the data sheet's (GPU_PEAK_TFLOPS), and
:func:`matmul_flops` measures what a large matrix product actually reaches.

Then torch.profiler splits the step of the precision `resnexus train` uses here into operator
groups (convolutions forward and backward, batch norm, ReLU, optimizer, the rest): the evidence
for what a faster data path or loop can and cannot change.

    python benchmarks/hardware_peak.py [--steps 4] [--batch 16] [--size 224]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

from resnexus import create_model
from resnexus.engine.config import autocast_dtype

# operator-name fragments -> group, first match wins (self CPU time of aten ops)
GROUPS = (
    ("convolution backward", ("convolution_backward",)),
    ("convolution forward", ("convolution", "mkldnn_conv")),
    ("batch norm", ("batch_norm",)),
    ("ReLU", ("threshold_backward", "relu", "clamp_min")),
    ("optimizer (fused AdamW)", ("adam",)),
)


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


def make_step(name: str, batch: int, size: int, dtype: torch.dtype | None):
    model = create_model(name, num_classes=1000).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype) if dtype else nullcontext():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def median_step_seconds(step, steps: int) -> float:
    step()  # oneDNN picks and caches its kernels on the first call
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_by_group(step, steps: int = 2) -> tuple[dict[str, float], float]:
    """Seconds per step in each operator group (self CPU time), and the step's total."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    totals = dict.fromkeys([g for g, _ in GROUPS] + ["other"], 0.0)
    for event in prof.key_averages():
        name = event.key.lower()
        group = next((g for g, keys in GROUPS if any(k in name for k in keys)), "other")
        totals[group] += event.self_cpu_time_total / 1e6 / steps
    return totals, sum(totals.values())


# Dense (no sparsity) tensor-core peaks from NVIDIA's data sheets, TFLOP/s: (bf16/fp16, fp32 without
# tensor cores). First matching name fragment wins, so the PCIe H100 is listed before the SXM one.
GPU_PEAK_TFLOPS = (
    ("H100 PCIe", 756.5, 51.2),
    ("H100", 989.4, 66.9),
    ("H200", 989.4, 66.9),
    ("GH200", 989.4, 66.9),
    ("A100", 312.0, 19.5),
    ("L40S", 362.1, 91.6),
    ("L4", 121.0, 30.3),
    ("A10", 125.0, 31.2),
    ("V100", 125.0, 15.7),  # fp16 only: no bf16 tensor cores
    ("T4", 65.0, 8.1),
)


def cpu_flops_per_cycle(dtype: torch.dtype | None) -> int:
    """FLOPs per cycle per core of a Sapphire Rapids-class core (see the module docstring)."""
    if dtype is None:
        return 64
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return 1024 if amx else 128


def gpu_peak_flops(name: str, dtype: torch.dtype | None) -> float | None:
    """The data-sheet FLOP/s of the GPU called ``name`` in ``dtype`` (None: fp32); None if not listed."""
    for fragment, half, single in GPU_PEAK_TFLOPS:
        if fragment in name:
            return (single if dtype is None else half) * 1e12
    return None


def nominal_peak_flops(device: torch.device, dtype: torch.dtype | None) -> tuple[float | None, str]:
    """(FLOP/s, how it was found) of ``device`` in ``dtype`` (None: fp32); None where unknown."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name, dtype)
        if peak is None:
            return None, f"no data-sheet peak known for {name}"
        return peak, f"{name} data sheet, {'fp32' if dtype is None else 'dense tensor cores'}"
    cores, ghz, per_cycle = torch.get_num_threads(), cpu_ghz(), cpu_flops_per_cycle(dtype)
    return cores * ghz * 1e9 * per_cycle, f"{cores} x {ghz:.2f} GHz x {per_cycle} FLOPs/cycle"


def matmul_flops(device: torch.device, dtype: torch.dtype | None, n: int = 8192, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n matrix product on random data: the peak this device actually reaches."""
    a = torch.randn(n, n, device=device, dtype=dtype or torch.float32)
    b = torch.randn(n, n, device=device, dtype=dtype or torch.float32)
    a @ b  # warm-up: kernel choice
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnext50_32x4d")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    flops = step_flops(args.model, args.batch, args.size)
    cores, ghz = torch.get_num_threads(), cpu_ghz()
    amx = cpu_flops_per_cycle(torch.bfloat16) == 1024
    print(
        f"{args.model} training step, batch {args.batch}, {args.size} px, channels_last, fused AdamW; "
        f"{cores} threads at {ghz:.2f} GHz, AMX {'yes' if amx else 'no'}"
    )
    print(
        f"  FLOPs per step (3 x forward): {flops / 1e9:.1f} G ({flops / args.batch / 1e9:.1f} G per image); "
        f"median of {args.steps} steps"
    )
    for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        seconds = median_step_seconds(make_step(args.model, args.batch, args.size, dtype), args.steps)
        per_cycle = cpu_flops_per_cycle(dtype)
        achieved, peak = flops / seconds / 1e9, nominal_peak_flops(torch.device("cpu"), dtype)[0] / 1e9
        print(
            f"  {label}: {seconds:.2f} s/step ({args.batch / seconds:.2f} images/s), {achieved:.0f} GFLOP/s of a "
            f"nominal {peak:.0f} ({cores} x {ghz:.2f} GHz x {per_cycle} FLOPs/cycle): {100 * achieved / peak:.1f} % of peak"
        )

    dtype = autocast_dtype("auto", torch.device("cpu"))
    groups, total = time_by_group(make_step(args.model, args.batch, args.size, dtype))
    label = "fp32" if dtype is None else "bf16"
    print(f"  where the {label} step's time goes (torch.profiler, self CPU time, {total:.2f} s/step profiled):")
    for group, seconds in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"    {group:26s} {seconds:6.3f} s  {100 * seconds / total:5.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
