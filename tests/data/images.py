"""Tiny generated image files for the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def pixels(width: int = 12, height: int = 10, seed: int = 0) -> np.ndarray:
    """A reproducible random RGB array (height, width, 3)."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_image(path: Path, width: int = 12, height: int = 10, seed: int = 0, **save_kwargs) -> Path:
    """Write a small RGB image; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels(width, height, seed)).save(path, **save_kwargs)
    return path


def make_tree(root: Path, layout: dict[str, list[str]]) -> Path:
    """Class folders under ``root``: ``{class: [relative file names]}``, tiny PNG/JPEG files."""
    for i, (cls, names) in enumerate(layout.items()):
        for j, name in enumerate(names):
            write_image(root / cls / name, seed=i * 1000 + j)
    return root


def encode(image: Image.Image, fmt: str, **save_kwargs) -> bytes:
    """``image`` saved to bytes in ``fmt`` (PNG, JPEG, WEBP, GIF...)."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_kwargs)
    return buffer.getvalue()


# PNG colour types by name: (bit depth, colour type)
PNG_KINDS = {"rgb": (8, 2), "grey": (8, 0), "grey_alpha": (8, 4), "rgba": (8, 6), "palette": (8, 3), "rgb16": (16, 2)}
PNG_KINDS["grey16"] = (16, 0)


def short_png(width: int, height: int, kind: str = "rgb", pixel_bytes: int = 100, seed: int = 0) -> bytes:
    """A PNG with valid chunks whose IDAT holds only ``pixel_bytes`` bytes of pixel data, far less than
    its header declares: torchvision's libpng decoder segfaults on it ("Not enough image data")."""
    import struct
    import zlib

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    depth, colour = PNG_KINDS[kind]
    raw = np.random.default_rng(seed).integers(0, 256, pixel_bytes, dtype=np.uint8).tobytes()
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    palette = chunk(b"PLTE", bytes(range(256)) * 3) if colour == 3 else b""
    return b"\x89PNG\r\n\x1a\n" + header + palette + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def lying_size(data: bytes, width: int, height: int) -> bytes:
    """A JPEG or GIF whose header claims ``width`` x ``height`` over its real, smaller pixel data."""
    import struct

    if data[:3] == b"GIF":  # the logical screen size
        return data[:6] + struct.pack("<HH", width, height) + data[10:]
    sof = data.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def broken_images(seed: int = 0) -> dict[str, bytes]:
    """Files a decoder must refuse cleanly, by name (the suffix says the format).

    Short PNGs of every colour type (the crash of issue item 5), truncated PNG/JPEG/WebP/GIF,
    headers lying about the size (a GIF claiming 60000 x 60000 hangs torchvision's decoder, a JPEG
    claiming 65000 x 65000 makes it allocate 12 GB), an empty file and text.
    """
    photo = Image.fromarray(pixels(40, 30, seed))
    jpeg, gif = encode(photo, "JPEG"), encode(photo.convert("P"), "GIF")
    cases = {f"short_{kind}_48.png": short_png(48, 48, kind, 100, seed) for kind in PNG_KINDS}
    cases |= {f"short_{kind}_8.png": short_png(8, 8, kind, 1, seed) for kind in ("grey", "palette", "grey16")}
    for fmt, data in (("png", encode(photo, "PNG")), ("jpg", jpeg), ("webp", encode(photo, "WEBP")), ("gif", gif)):
        cases[f"cut.{fmt}"] = data[: len(data) // 2]
    cases["lying_size.gif"] = lying_size(gif, 60000, 60000)
    cases["lying_size.jpg"] = lying_size(jpeg, 65000, 65000)
    cases["empty.png"] = b""
    cases["text.jpg"] = b"not an image at all\n"
    return cases
