"""Training and evaluation transforms (torchvision.transforms.v2) on uint8 CHW image tensors.

Geometry and colour work on uint8 (cheap, and what the decoder gives); conversion to float
and normalisation come last, then Random Erasing, which is defined on normalised inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torchvision.transforms import v2


@dataclass
class AugmentConfig:
    """Training augmentation strengths; 0 switches a step off.

    ``color_jitter`` is the brightness, contrast and saturation jitter (no hue: a hue shift
    changes what medical and natural colours mean); ``rotation`` is in degrees (+/-);
    ``random_erasing`` is the probability of erasing one rectangle (Zhong et al., 2020).
    """

    random_resized_crop_scale: tuple[float, float] = (0.35, 1.0)
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: float = 0.2
    random_erasing: float = 0.25
    rotation: float = 0.0


def _normalize(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def train_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], augment: AugmentConfig
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Random augmentation to ``image_size`` squares: uint8 CHW in, normalised float32 out.

    Order: rotation (on the whole image, so the crop trims its corners), random resized crop,
    flips, colour jitter, to float + normalise, Random Erasing (paper defaults: area
    0.02-0.33, aspect 0.3-3.3, random-noise fill).
    """
    steps: list[v2.Transform] = []
    if augment.rotation:
        steps.append(v2.RandomRotation(augment.rotation, interpolation=v2.InterpolationMode.BILINEAR))
    steps.append(
        v2.RandomResizedCrop(image_size, scale=tuple(augment.random_resized_crop_scale), antialias=True)
    )
    if augment.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(augment.hflip))
    if augment.vflip > 0:
        steps.append(v2.RandomVerticalFlip(augment.vflip))
    if augment.color_jitter > 0:
        j = augment.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    steps += _normalize(mean, std)
    if augment.random_erasing > 0:
        steps.append(
            v2.RandomErasing(p=augment.random_erasing, scale=(0.02, 0.33), ratio=(0.3, 3.3), value="random")
        )
    return v2.Compose(steps)


def eval_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], crop_fraction: float = 0.875
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Deterministic evaluation view: shorter side to ``image_size / crop_fraction``, centre crop.

    The 0.875 default is the classic ImageNet protocol (resize 256, crop 224); 1.0 keeps the
    whole (centre square of the) image.
    """
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    resize = max(image_size, int(math.floor(image_size / crop_fraction + 1e-6)))
    return v2.Compose(
        [v2.Resize(resize, antialias=True), v2.CenterCrop(image_size), *_normalize(mean, std)]
    )
