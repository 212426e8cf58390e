"""Helpers shared by the tests: random-but-reproducible weights, logit comparison, tiny image folders."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


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
