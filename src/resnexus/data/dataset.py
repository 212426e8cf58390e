"""Decoding images and the torch Datasets the training engine and prediction use."""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate
from torchvision.transforms.v2 import functional as F

from ..files import atomic_write
from .check import MAX_PIXELS  # a header claiming more is refused before its pixels are allocated
from .scan import DataError, Samples

# the modes Pillow gives 16-bit and 32-bit greyscale images
_WIDE_GREY = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class ImageFileError(DataError):
    """An image file that cannot be decoded; ``problem`` says why, in check-data's words
    (``zero-byte``, ``not-an-image``, ``too-large``, ``truncated`` or ``corrupt``)."""

    def __init__(self, path: Path | str, problem: str, detail: str) -> None:
        super().__init__(f"cannot decode image {path}: {detail}")
        self.path, self.problem, self.detail = path, problem, detail


def _decode_pil(data: bytes, path: Path | str, max_pixels: int) -> torch.Tensor:
    """Pillow decodes every format: it raises on truncated or lying files where torchvision's
    decoders segfault (PNG), hang or allocate what the header claims (GIF, JPEG)."""
    from PIL import Image, ImageOps

    with warnings.catch_warnings():  # Pillow warns above 89 MP; ours is the limit that counts
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            width, height = im.size
            if width * height > max_pixels:
                raise Image.DecompressionBombError(f"({width * height} pixels)")
            im.seek(0)  # an animation's first frame
            im = ImageOps.exif_transpose(im)
            if im.mode in _WIDE_GREY:
                grey = _wide_grey_to_uint8(im)
                planes = [grey, grey, grey]
            else:  # planes from Pillow: 7x faster than a torch HWC -> CHW copy on 2 cores
                planes = [np.asarray(band) for band in (im if im.mode == "RGB" else im.convert("RGB")).split()]
    return torch.from_numpy(np.stack(planes))


def _wide_grey_to_uint8(im: Any) -> np.ndarray:
    """A 16-bit grey image's high byte (what torchvision gives), a 32-bit one scaled to 0..255."""
    a = np.asarray(im)
    if a.dtype.itemsize == 2:  # I;16 and its byte orders
        return (a.astype(np.uint16) >> 8).astype(np.uint8)
    a = a.astype(np.float64)  # 32-bit integer or float: full scale is 65535 when used, else 255
    top = 65535.0 if a.max() > 255 else 255.0
    return np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)


def load_image(path: Path, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor (3, H, W), EXIF orientation applied.

    Any format Pillow reads; grey, palette, alpha and 16-bit are converted to 8-bit RGB, an
    animation gives its first frame. Raises :class:`ImageFileError` (a :class:`DataError`) naming
    the file if it cannot be read or decoded, or holds more than ``max_pixels`` pixels.
    """
    return decode_image_bytes(_read(Path(path)), path, max_pixels)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ImageFileError(path, "unreadable", f"cannot read the file: {e.strerror or e}") from None


def decode_image_bytes(data: bytes, path: Path | str = "<bytes>", max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """:func:`load_image` on the file's bytes; ``path`` only names the file in errors.

    Never lets the bytes reach a decoder that can crash the process: every failure is an
    :class:`ImageFileError` whose ``problem`` is check-data's name for it.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageFileError(path, "zero-byte", "the file is empty (0 bytes)")
    try:
        return _decode_pil(data, path, max_pixels)
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)) / 1e6:.0f} MP" if found else "more pixels than Pillow allows"
        detail = f"{size}, over the {max_pixels / 1e6:.0f} MP limit: too large to decode safely (a decompression bomb?)"
        raise ImageFileError(path, "too-large", detail) from None
    except UnidentifiedImageError:
        raise ImageFileError(path, "not-an-image", f"not an image file (first bytes: {data[:12]!r})") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... for broken files
        kind = "truncated" if "truncated" in str(e).lower() else "corrupt"
        raise ImageFileError(path, kind, f"{type(e).__name__}: {e}") from None


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
    workers use ``persistent_workers=True`` to keep it. With ``skip_bad_images`` an image that
    cannot be decoded is a :class:`BadImage` item (batch with :func:`collate_readable`).
    """

    def __init__(
        self,
        samples: Samples,
        transform: Callable[[torch.Tensor], Any],
        cache_size: int | None = None,
        cache_dir: str | Path | None = None,
        skip_bad_images: bool = False,
    ) -> None:
        if cache_size is not None and cache_size < 1:
            raise ValueError(f"cache_size must be positive or None, got {cache_size}")
        self.samples = samples
        self.transform = transform
        self.skip_bad_images = skip_bad_images
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
        i = key[0] if isinstance(key, tuple) else key
        try:
            image = self.image(i)
        except ImageFileError as error:
            if not self.skip_bad_images:
                raise
            return BadImage(i, error)
        if isinstance(key, tuple):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(key[1])
                out = self.transform(image)
        else:
            out = self.transform(image)
        if isinstance(out, tuple):
            return out[0], self.samples.labels[i], out[1]
        return out, self.samples.labels[i]


class UnlabeledDataset(Dataset):
    """Images to predict: ``(transform(image), index)`` so results map back to ``paths``.

    With ``skip_bad_images`` an image that cannot be decoded is a :class:`BadImage` item instead of
    an error (batch with :func:`collate_readable`).
    """

    def __init__(
        self, paths: Sequence[Path], transform: Callable[[torch.Tensor], torch.Tensor], skip_bad_images: bool = False
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.transform = transform
        self.skip_bad_images = skip_bad_images

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | BadImage:
        try:
            image = load_image(self.paths[i])
        except ImageFileError as error:
            if not self.skip_bad_images:
                raise
            return BadImage(i, error)
        return self.transform(image), i


@dataclass(frozen=True)
class BadImage:
    """A dataset item that could not be decoded (``skip_bad_images``): its index and the error."""

    index: int
    error: ImageFileError


def collate_readable(items: list[Any]) -> tuple[Any, list[BadImage]]:
    """A DataLoader ``collate_fn`` for datasets with ``skip_bad_images``: the default batch of the
    readable items (None when there are none) and the :class:`BadImage` items left out."""
    bad = [item for item in items if isinstance(item, BadImage)]
    good = [item for item in items if not isinstance(item, BadImage)]
    return (default_collate(good) if good else None), bad
