"""Where and in which number format a model runs: the device, the autocast precision and the layout.

A home of its own because both training (engine/fit.py, engine/run.py) and the measurements of
``compare`` and the benchmarks choose it the same way, and none of them is the config.
"""

from __future__ import annotations

import platform
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Runtime", "autocast_dtype", "cpu_model", "precision_name"]


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 7B13"), for figures that must name their hardware; the
    architecture ("x86_64") where the system does not say."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where it is faster: GPUs with bf16, CPUs with AMX; fp16 on older GPUs; else fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r}: expected auto, bf16, fp16 or fp32")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # Measured on a 2-core Sapphire Rapids VM with AVX-512 bf16 but no AMX (resnext50_32x4d training
    # step, batch 16, 224 px): fp32 + channels_last 5.3-6.1 images/s, bf16 + channels_last 4.7-4.9.
    # bf16 only pays on CPUs with AMX tiles (the brief's machine: ~3x).
    return torch.bfloat16 if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() else None


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """``"fp32"``, ``"bfloat16"`` or ``"float16"``: what :func:`autocast_dtype` chose, for logs and reports."""
    return "fp32" if amp_dtype is None else str(amp_dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Runtime:
    """Where and in which number format the model runs, and the tensor layout it gets."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None: fp32
    channels_last: bool

    @classmethod
    def choose(cls, device: torch.device, precision: str, channels_last: bool | None = None) -> Runtime:
        """``precision`` ("auto", "bf16", ...) resolved for ``device``; ``channels_last`` None: oneDNN's
        preferred layout on CPUs (fp32 too: 1.2x), tensor cores' with AMP on GPUs."""
        amp_dtype = autocast_dtype(precision, device)
        if channels_last is None:
            channels_last = amp_dtype is not None or device.type == "cpu"
        return cls(device, amp_dtype, channels_last)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> AbstractContextManager[Any]:
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    @property
    def precision(self) -> str:
        return precision_name(self.amp_dtype)
