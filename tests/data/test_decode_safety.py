"""Decoding untrusted bytes: every broken file is one clean error naming it, never a crash of the
process (torchvision's decoders segfaulted on a PNG with less pixel data than its header declares)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from resnexus.cli import main
from resnexus.data import DataError, ImageFileError, decode_image_bytes, load_image
from tests.data.images import broken_images, encode, make_tree, pixels, short_png

# what each broken file is called (check-data's names for the problems)
EXPECTED = {name: "corrupt" if name == "cut.webp" else "truncated" for name in broken_images() if "." in name}
EXPECTED |= {"lying_size.gif": "too-large", "lying_size.jpg": "too-large", "empty.png": "zero-byte"}
EXPECTED |= {"text.jpg": "not-an-image"}
for name in ("short_grey_48.png", "short_grey_alpha_48.png", "short_palette_48.png", "short_grey16_48.png"):
    EXPECTED[name] = "corrupt"  # zlib data that are not a whole scanline: Pillow says "unrecognized data stream"


def test_broken_files_are_clean_errors_in_a_process_that_survives(tmp_path):
    """In a subprocess, so a segfault fails this test instead of killing pytest."""
    for name, data in broken_images().items():
        (tmp_path / name).write_bytes(data)
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from resnexus.data import ImageFileError, load_image
        for path in sorted(Path(sys.argv[1]).iterdir()):
            try:
                load_image(path)
                print(path.name, "decoded", flush=True)
            except ImageFileError as error:
                assert str(error).startswith(f"cannot decode image {path}: "), error
                print(path.name, error.problem, flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"the decoding process died ({done.returncode}): {done.stdout}{done.stderr}"
    found = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert found == EXPECTED
    assert "Warning" not in done.stderr  # no DecompressionBombWarning for the lying headers


def _torchvision(data: bytes) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as F

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    return F.to_dtype(img, torch.uint8, scale=True) if img.dtype != torch.uint8 else img


def _png16(values: np.ndarray) -> bytes:
    """A 16-bit greyscale PNG of ``values`` (Pillow writes 16-bit grey through mode I;16)."""
    return encode(Image.fromarray(values.astype(np.uint16)), "PNG")


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "RGBA", "P", "1", "I;16", "JPEG", "JPEG-L", "WEBP", "GIF"])
def test_pillow_decodes_valid_images_to_torchvisions_pixels(mode):
    """The decoder changed from torchvision to Pillow: the pixels did not (measured for every format)."""
    photo = Image.fromarray(pixels(19, 13, seed=3))
    if mode == "I;16":
        data = _png16(np.random.default_rng(0).integers(0, 65536, (13, 19)))
    elif mode.startswith("JPEG"):
        data = encode(photo.convert("L") if mode == "JPEG-L" else photo, "JPEG", quality=90)
    elif mode in ("WEBP", "GIF"):
        data = encode(photo if mode == "WEBP" else photo.convert("P"), mode)
    else:
        rgba = photo.copy()
        rgba.putalpha(Image.fromarray(pixels(19, 13, seed=4)[..., 0]))
        data = encode((rgba if "A" in mode else photo).convert(mode), "PNG")
    got = decode_image_bytes(data, f"image.{mode}")
    assert got.dtype == torch.uint8 and got.shape == (3, 13, 19) and got.is_contiguous()
    assert torch.equal(got, _torchvision(data))


def test_exif_orientation_and_first_gif_frame_are_kept(tmp_path):
    photo = Image.fromarray(pixels(12, 10, seed=1))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = decode_image_bytes(encode(photo, "PNG", exif=exif))
    assert rotated.shape == (3, 12, 10)
    assert torch.equal(
        rotated, torch.from_numpy(np.array(photo.transpose(Image.Transpose.ROTATE_270))).permute(2, 0, 1)
    )
    frames = [photo.convert("P"), photo.rotate(180).convert("P")]
    animated = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert torch.equal(decode_image_bytes(animated), decode_image_bytes(encode(frames[0], "GIF")))


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", "the file is empty (0 bytes)"),
        (b"hello, not an image", "not an image file (first bytes: b'hello, not a')"),
        (short_png(20000, 20000), "400 MP, over the 100 MP limit: too large to decode safely (a decompression bomb?)"),
    ],
    ids=["empty", "text", "bomb"],
)
def test_a_decode_error_names_the_file(tmp_path, data, message):
    path = tmp_path / "holiday.jpg"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would fail here
        with pytest.raises(ImageFileError) as raised:
            load_image(path)
    assert str(raised.value) == f"cannot decode image {path}: {message}"
    assert isinstance(raised.value, DataError) and "BytesIO" not in str(raised.value)


def test_check_data_prints_no_decompression_bomb_warning(tmp_path, capsys):
    """A 90 MP header is over Pillow's warning limit (89 MP): the finding says it, Pillow must not."""
    root = make_tree(tmp_path / "data", {"a": ["1.png", "2.png"], "b": ["1.png", "2.png"]})
    (root / "a" / "huge.png").write_bytes(short_png(10000, 9000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["check-data", str(root), "--quiet"]) == 1
    assert [w.message for w in caught if issubclass(w.category, Image.DecompressionBombWarning)] == []
    out = capsys.readouterr().out
    assert f"{root / 'a' / 'huge.png'}: cannot be decoded" in out
