"""Decoding, transforms and the Datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from resnexus.data import (
    AugmentConfig,
    DataError,
    ImageDataset,
    UnlabeledDataset,
    eval_transform,
    load_image,
    scan_folder,
    train_transform,
)

from .images import make_tree, pixels, write_image

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _check(img: torch.Tensor, h: int = 10, w: int = 12) -> None:
    assert img.dtype == torch.uint8 and tuple(img.shape) == (3, h, w)


def test_rgb_png_is_exact(tmp_path):
    img = load_image(write_image(tmp_path / "a.png"))
    _check(img)
    assert torch.equal(img, torch.from_numpy(pixels()).permute(2, 0, 1))


def test_grey_palette_rgba(tmp_path):
    grey = pixels()[..., 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    img = load_image(tmp_path / "grey.png")
    _check(img)
    assert all(torch.equal(img[c], torch.from_numpy(grey)) for c in range(3))

    pal = Image.fromarray(pixels()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "pal.png")
    img = load_image(tmp_path / "pal.png")
    _check(img)
    assert torch.equal(img, torch.from_numpy(np.array(pal.convert("RGB"))).permute(2, 0, 1))

    rgba = np.concatenate([pixels(), np.full((10, 12, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    img = load_image(tmp_path / "rgba.png")
    _check(img)
    assert torch.equal(img, torch.from_numpy(pixels()).permute(2, 0, 1))


def test_16bit_png(tmp_path):
    a = (np.arange(120, dtype=np.uint16).reshape(10, 12) * 550).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "deep.png")
    img = load_image(tmp_path / "deep.png")
    _check(img)
    expected = torch.from_numpy((a / 257.0).astype(np.float32))
    assert (img[1].float() - expected).abs().max() <= 1.0


def test_exif_rotated_jpeg(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(pixels()).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    _check(load_image(tmp_path / "rot.jpg"), h=12, w=10)


@pytest.mark.parametrize("suffix", [".bmp", ".tiff", ".gif", ".webp", ".jpeg"])
def test_other_formats(tmp_path, suffix):
    img = load_image(write_image(tmp_path / f"x{suffix}"))
    _check(img)
    if suffix in (".bmp", ".tiff"):  # lossless, decoded by the Pillow fallback
        assert torch.equal(img, torch.from_numpy(pixels()).permute(2, 0, 1))


def test_corrupt_and_missing_files_named(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"this is not an image")
    with pytest.raises(DataError, match="bad.png"):
        load_image(tmp_path / "bad.png")
    data = write_image(tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:40])
    with pytest.raises(DataError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(DataError, match="gone.png"):
        load_image(tmp_path / "gone.png")


def test_train_transform_shape_and_dtype():
    torch.manual_seed(0)
    img = torch.from_numpy(pixels()).permute(2, 0, 1).contiguous()
    t = train_transform(16, MEAN, STD, AugmentConfig(vflip=0.5, rotation=15.0, random_erasing=1.0))
    out = t(img)
    assert out.dtype == torch.float32 and tuple(out.shape) == (3, 16, 16)
    off = AugmentConfig(hflip=0, color_jitter=0, random_erasing=0, random_resized_crop_scale=(1.0, 1.0))
    assert train_transform(16, MEAN, STD, off)(img).shape == (3, 16, 16)


def test_eval_transform_deterministic():
    img = torch.from_numpy(pixels(width=20, height=10)).permute(2, 0, 1).contiguous()
    t = eval_transform(8, MEAN, STD)
    a, b = t(img), t(img)
    assert a.dtype == torch.float32 and tuple(a.shape) == (3, 8, 8) and torch.equal(a, b)
    assert eval_transform(32, MEAN, STD, crop_fraction=1.0)(img).shape == (3, 32, 32)
    # normalised: a mid-grey image maps to (0.5 - mean) / std
    grey = torch.full((3, 12, 12), 128, dtype=torch.uint8)
    out = eval_transform(8, MEAN, STD)(grey)
    expected = (128 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(out[:, 4, 4], expected, atol=1e-5)


def test_image_dataset_cache_matches_uncached(tmp_path):
    make_tree(tmp_path, {"a": ["1.png", "2.jpg"], "b": ["3.png"]})
    s = scan_folder(tmp_path)
    t = eval_transform(8, MEAN, STD)
    plain, cached = ImageDataset(s, t), ImageDataset(s, t, cache_size=64)
    assert len(plain) == len(cached) == 3
    for i in range(3):
        x, y = plain[i]
        cx, cy = cached[i]
        assert y == cy == s.labels[i] and torch.equal(x, cx)
    for p in s.paths:  # served from memory now
        p.unlink()
    x, _ = cached[0]
    assert torch.equal(x, plain.transform(cached.image(0)))
    with pytest.raises(DataError):
        plain[0]


def test_cache_shrinks_large_images(tmp_path):
    make_tree(tmp_path, {"a": ["1.png"]})
    ds = ImageDataset(scan_folder(tmp_path), eval_transform(4, MEAN, STD), cache_size=5)
    assert ds.image(0).shape == (3, 5, 6) and ds.image(0).dtype == torch.uint8
    assert ds[0][0].shape == (3, 4, 4)


def test_unlabeled_dataset(tmp_path):
    paths = [write_image(tmp_path / "a.png"), write_image(tmp_path / "b.jpg", width=20)]
    ds = UnlabeledDataset(paths, eval_transform(8, MEAN, STD))
    assert len(ds) == 2
    x, i = ds[1]
    assert i == 1 and x.shape == (3, 8, 8)
