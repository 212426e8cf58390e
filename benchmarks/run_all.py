"""The five speed benchmarks of the fast-by-default work, one after the other, in one command.

Each runs in its own process (so none inherits another's memory high-water mark or thread
state) with settings sized to finish all five in about 11 minutes on 2 CPU cores; every script
takes larger settings on its own command line for tighter medians. The output of each is
printed as it comes and, with ``--out``, also written to a file with the machine and the
wall time of each benchmark.

    python benchmarks/run_all.py [--out benchmarks/latest.txt] [--only 1,3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHMARKS = [
    ("1. training throughput: resnexus train vs a tutorial loop (MSLD, 224 px)",
     ["train_vs_tutorial.py", "--images", "48", "--rounds", "2", "--epochs", "3"]),
    ("2. resnexus vs timm: training step and inference (bf16, channels_last, batch 16)",
     ["zoo_vs_timm.py", "--rounds", "4", "--steps", "1", "--warmup", "1"]),
    ("3. DenseNet-121 memory-efficient mode: peak memory and time (batch 32, 224 px)",
     ["densenet_memory.py", "--steps", "3"]),
    ("4. single-image predict latency: eager vs onnxruntime",
     ["predict_latency.py", "--rounds", "5", "--reps", "5"]),
    ("5. fraction of the hardware's peak, and where a training step's time goes",
     ["hardware_peak.py", "--steps", "3"]),
]  # fmt: skip


# library chatter that is not a result: deprecation warnings, the profiler's start/stop lines
_NOISE = ("W1", "  warnings.warn", "USDT:", "ERROR:")


def machine() -> str:
    import torch

    from resnexus.engine.runtime import cpu_model

    cpu = cpu_model()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} threads, AMX {'yes' if amx else 'no'}, {gpu}; torch {torch.__version__}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="also write everything printed to this file")
    p.add_argument("--only", help="comma-separated benchmark numbers, e.g. 1,3")
    args = p.parse_args()
    chosen = {int(n) for n in args.only.split(",")} if args.only else set(range(1, len(BENCHMARKS) + 1))
    lines: list[str] = []

    def emit(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    emit(f"machine: {machine()}")
    started, failed = time.perf_counter(), []
    for number, (title, command) in enumerate(BENCHMARKS, start=1):
        if number not in chosen:
            continue
        emit(f"\n== {title}\n$ python benchmarks/{' '.join(command)}")
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(HERE / command[0]), *command[1:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Warning" not in line and not line.startswith(_NOISE):
                emit(line.rstrip("\n"))
        if proc.wait() != 0:
            failed.append(number)
            emit(f"(benchmark {number} failed with exit status {proc.returncode})")
        emit(f"[{time.perf_counter() - t0:.0f} s]")
    emit(f"\nall done in {(time.perf_counter() - started) / 60:.1f} min" + (f"; failed: {failed}" if failed else ""))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
