"""Can this model be built with these overrides, take this image size, freeze this many stages?

Checked before any work by building the model on the meta device (shapes only, no memory):
a mismatch found minutes into training (a matrix-shape error, a pooled map of size 0) is found in
seconds here, with the sizes that work. :func:`resnexus.engine.config.complete_config` calls them.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import torch

from ..models.registry import check_overrides, create_model

__all__ = ["MAX_IMAGE_SIZE", "check_freeze", "check_model_input"]

# The largest --image-size: the ResNet family is trained at 32-600 px, and memory grows with the
# square of the side: at 2048 px one training image of a ResNet-50 holds ~84x the activations of one
# at 224 px (several GB) and its decoded copy alone 16 MB. Larger is a typo (100000 px: 30 GB per image).
MAX_IMAGE_SIZE = 2048


# set by the data and the images, never by model_config
_NOT_MODEL_CONFIG = {
    "num_classes": "it is the number of classes in the data",
    "in_chans": "images are read as 3-channel RGB",
}


def check_model_input(model: str, model_config: dict[str, Any], image_size: int) -> None:
    """Refuse, in one line and before any work, a model_config the model cannot be built with or an
    image size it cannot take: the model is built on the meta device (shapes only, no memory) and
    runs a batch of one image of ``image_size``, so a mismatch found minutes into training (a
    matrix-shape error, a pooled map of size 0) is found here, with the sizes that work."""
    for key, why in _NOT_MODEL_CONFIG.items():
        if key in model_config:
            raise ValueError(f"model_config cannot set {key} ({why}); remove it")
    try:
        check_overrides(model, model_config)
    except ValueError as error:
        raise ValueError(f"model_config: {error}") from None
    _check_builds(model, json.dumps(model_config, sort_keys=True, default=list), image_size)


@functools.lru_cache(maxsize=64)
def _check_builds(model: str, model_config_json: str, image_size: int) -> None:
    """:func:`check_model_input` once per (model, overrides, size): train calls it for every fold run."""
    overrides = json.loads(model_config_json)
    try:
        with torch.device("meta"):
            network = create_model(model, num_classes=2, **overrides).eval()
    except Exception as error:  # a value of the wrong kind: whatever the constructor raised, in one line
        raise ValueError(f"model_config {overrides} cannot build {model}: {type(error).__name__}: {error}") from None
    reason = _forward_fails(network, image_size)
    if reason is None:
        return
    fixed = getattr(network, "img_size", None)  # built for one input size (LeNet: its fc layer)
    if fixed is not None:
        raise ValueError(
            f"{model} is built for {fixed}x{fixed} images only, not --image-size {image_size}: use "
            f"--image-size {fixed}, or model_config {{img_size: {image_size}}} to build it for {image_size} px"
        )
    smallest = _smallest_size(network, image_size)
    works = f"it needs at least {smallest} px" if smallest else "no size up to the maximum works"
    raise ValueError(f"{model} cannot take {image_size}x{image_size} images ({reason}); {works}")


def _forward_fails(network: torch.nn.Module, size: int) -> str | None:
    """Why a meta-device forward of one ``size`` x ``size`` image fails (the error's first line), or None."""
    try:
        with torch.no_grad():
            network(torch.empty(1, 3, size, size, device="meta"))
    except (RuntimeError, ValueError, IndexError) as error:
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return None


def _smallest_size(network: torch.nn.Module, failed: int) -> int | None:
    """The smallest image size above ``failed`` that ``network`` takes (bisection: a feature map that
    vanishes below some size is the only way a size-independent network fails), or None."""
    low, high = failed, MAX_IMAGE_SIZE
    if _forward_fails(network, high) is not None:
        return None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if _forward_fails(network, middle) else (low, middle)
    return high


def check_freeze(stages: int, model: str, finetune: bool) -> None:
    if not stages:
        return
    if not finetune:
        raise ValueError(f"--freeze {stages} needs --weights: frozen stages would keep their random initial values")
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        available = len(create_model(model).feature_info)
    if stages > available:
        raise ValueError(f"--freeze {stages}: {model} has {available} stages")
