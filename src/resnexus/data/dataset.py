"""Decoding images and the torch Datasets the training engine and prediction use."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from ..files import atomic_write
from .scan import DataError, Samples

# torchvision 0.29 deprecates its decoders in favour of TorchCodec but they work and are what we
# depend on; the warning would otherwise repeat for every image.
_TV_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"


def _decode_torchvision(data: bytes) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TV_DEPRECATION, category=DeprecationWarning)
        img = decode_image(
            torch.frombuffer(bytearray(data), dtype=torch.uint8),
            mode=ImageReadMode.RGB,
            apply_exif_orientation=True,
        )
    if img.ndim == 4:  # animated GIF: first frame
        img = img[0]
    if img.dtype != torch.uint8:  # 16-bit PNG
        img = F.to_dtype(img, torch.uint8, scale=True)
    return img


def _decode_pil(data: bytes) -> torch.Tensor:
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16/32-bit grey
            a = np.asarray(im, dtype=np.float64)
            top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
            a = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
            a = np.repeat(a[..., None], 3, axis=2)
        else:
            a = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous()


def load_image(path: Path) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor (3, H, W), EXIF orientation applied.

    torchvision decodes JPEG/PNG/WebP/GIF (grey, palette, alpha and 16-bit converted to 8-bit
    RGB); Pillow handles what it cannot (BMP, TIFF, ...). Raises :class:`DataError` naming the
    file if it cannot be read or decoded by either.
    """
    return decode_image_bytes(_read(Path(path)), path)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e.strerror or e}") from None


def decode_image_bytes(data: bytes, path: Path | str = "<bytes>") -> torch.Tensor:
    """:func:`load_image` on the file's bytes; ``path`` only names the file in errors."""
    try:
        return _decode_torchvision(data)
    except (RuntimeError, ValueError):
        pass
    try:
        return _decode_pil(data)
    except Exception as e:  # Pillow raises many types for broken files
        raise DataError(f"cannot decode image {path}: {type(e).__name__}: {e}") from None


def _shrink(img: torch.Tensor, short_side: int) -> torch.Tensor:
    """Downscale so the shorter side is ``short_side``; smaller images are kept as they are."""
    h, w = img.shape[-2:]
    if min(h, w) <= short_side:
        return img
    return F.resize(img, short_side, antialias=True)


class DecodedCache:
    """Decoded, downscaled uint8 images on disk, keyed by the file's content and the kept size.

    An entry is ``<sha256 of the file bytes>-<short side>.npy``: an edited image gets a new key
    (never a stale entry), a copy of an image shares its entry, and another run, fold or model on
    the same photos reads ~100 KB of pixels instead of decoding a full-size photo again. Reading
    and hashing the bytes costs far less than decoding them. Entries are written atomically; an
    unreadable entry is decoded again and replaced.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def entry(self, data: bytes, short_side: int) -> Path:
        digest = hashlib.sha256(data).hexdigest()
        return self.root / digest[:2] / f"{digest}-{short_side}.npy"

    def load(self, path: Path, short_side: int) -> torch.Tensor:
        data = _read(path)
        entry = self.entry(data, short_side)
        try:
            pixels = np.load(entry, allow_pickle=False)
            if pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[0] == 3:
                return torch.from_numpy(pixels)
        except (OSError, ValueError, EOFError):
            pass  # no entry yet, or a damaged one: decode and (re)write it
        img = _shrink(decode_image_bytes(data, path), short_side)
        try:
            with atomic_write(entry, "wb") as f:  # workers writing one entry at once each rename a whole file
                np.save(f, img.numpy(), allow_pickle=False)
        except OSError:  # a read-only or full disk costs speed, not the run
            pass
        return img


def _memory_budget() -> int:
    """Bytes of decoded images to keep in memory: a quarter of the machine's RAM."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


class ImageDataset(Dataset):
    """Labelled images: ``(transform(image), label)``, images decoded by :func:`load_image`.

    A transform that returns ``(image, params)`` (the per-image half of
    :class:`~resnexus.data.TrainAugment`) gives items ``(image, label, params)``.

    With ``cache_size`` each image is decoded once and kept as uint8, downscaled so its shorter
    side is ``cache_size`` (never enlarged): in memory (up to a quarter of the RAM) and, with
    ``cache_dir``, on disk across runs (:class:`DecodedCache`). Pick ``cache_size`` >= the size the
    transform resizes to. The memory cache lives in the process that reads: with DataLoader
    workers use ``persistent_workers=True`` to keep it.
    """

    def __init__(
        self,
        samples: Samples,
        transform: Callable[[torch.Tensor], Any],
        cache_size: int | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        if cache_size is not None and cache_size < 1:
            raise ValueError(f"cache_size must be positive or None, got {cache_size}")
        self.samples = samples
        self.transform = transform
        self.cache_size = cache_size
        self.disk_cache = DecodedCache(cache_dir) if cache_dir is not None and cache_size is not None else None
        self._cache: dict[int, torch.Tensor] = {}
        self._cached_bytes = 0
        self._budget = _memory_budget()

    @property
    def class_names(self) -> list[str]:
        return self.samples.class_names

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, i: int) -> torch.Tensor:
        """The untransformed uint8 image ``i`` (from the caches when enabled)."""
        if self.cache_size is None:
            return load_image(self.samples.paths[i])
        img = self._cache.get(i)
        if img is None:
            path = self.samples.paths[i]
            if self.disk_cache is not None:
                img = self.disk_cache.load(path, self.cache_size)
            else:
                img = _shrink(load_image(path), self.cache_size)
            if self._cached_bytes + img.numel() <= self._budget:
                self._cache[i] = img
                self._cached_bytes += img.numel()
        return img

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, ...]:
        """Image ``key`` transformed; ``(index, seed)`` (from a training sampler) seeds the random
        augmentation, so it does not depend on which process or worker loads the image."""
        if isinstance(key, tuple):
            i, seed = key
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                out = self.transform(self.image(i))
        else:
            i, out = key, self.transform(self.image(key))
        if isinstance(out, tuple):
            return out[0], self.samples.labels[i], out[1]
        return out, self.samples.labels[i]


class UnlabeledDataset(Dataset):
    """Images to predict: ``(transform(image), index)`` so results map back to ``paths``."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.paths = [Path(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_image(self.paths[i])), i
