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
    with pytest.raises(DataError, match=r"bad\.png"):
        load_image(tmp_path / "bad.png")
    data = write_image(tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:40])
    with pytest.raises(DataError, match=r"cut\.jpg"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(DataError, match=r"gone\.png"):
        load_image(tmp_path / "gone.png")


def test_train_transform_shape_and_dtype():
    torch.manual_seed(0)
    img = torch.from_numpy(pixels()).permute(2, 0, 1).contiguous()
    t = train_transform(16, MEAN, STD, AugmentConfig(vflip=0.5, rotation=15.0, random_erasing=1.0))
    out = t(img)
    assert out.dtype == torch.float32 and tuple(out.shape) == (3, 16, 16)
    off = AugmentConfig(hflip=0, color_jitter=0, random_erasing=0, random_resized_crop_scale=(1.0, 1.0))
    assert train_transform(16, MEAN, STD, off)(img).shape == (3, 16, 16)


def test_batch_colour_jitter_equals_torchvision_per_image():
    """The batched jitter is torchvision's brightness, contrast and saturation, image by image."""
    from torchvision.transforms.v2 import functional as TF

    t = train_transform(12, MEAN, STD, AugmentConfig(color_jitter=0.4, random_erasing=0.0))
    torch.manual_seed(1)
    crops, rows = zip(*(t.sample(torch.randint(0, 256, (3, 20, 18), dtype=torch.uint8)) for _ in range(5)))
    out = t.batch(torch.stack(crops), torch.stack(rows))
    for crop, row, got in zip(crops, rows, out):
        b, c, s = row[:3].tolist()
        assert len({b, c, s}) == 3 and all(0.6 <= f <= 1.4 for f in (b, c, s))  # drawn per image
        x = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(crop.float() / 255, b), c), s)
        expected = TF.normalize(x, list(MEAN), list(STD))
        assert torch.allclose(got, expected, atol=1e-5)
    assert crops[0].dtype == torch.uint8 and crops[0].shape == (3, 12, 12)


def test_random_erasing_fills_exactly_its_box_with_reproducible_noise():
    t = train_transform(16, MEAN, STD, AugmentConfig(color_jitter=0.0, random_erasing=1.0))
    torch.manual_seed(3)
    crop, row = t.sample(torch.full((3, 16, 16), 100, dtype=torch.uint8))
    assert row[t.ERASE] == 1.0
    top, left, h, w = (int(v) for v in row[t.TOP : t.NOISE_SEED])
    area = h * w / 256
    assert 0.02 - 1 / 16 <= area <= 0.33 + 1 / 16 and top + h <= 16 and left + w <= 16
    erased = t.batch(crop[None], row[None])[0]
    not_erased = row.clone()
    not_erased[t.ERASE] = 0.0
    plain = t.batch(crop[None], not_erased[None])[0]
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[top : top + h, left : left + w] = True
    assert torch.equal(erased[:, ~inside], plain[:, ~inside])  # untouched outside the box
    noise = erased[:, inside]
    assert not torch.isclose(noise, plain[:, inside]).any() and abs(noise.mean()) < 1.0 and 0.3 < noise.std() < 2.0
    assert torch.equal(t.batch(crop[None], row[None])[0], erased)  # the noise follows from the row's seed
    with pytest.raises(ValueError, match="parameter rows"):
        t.batch(crop[None])


def test_one_image_call_equals_its_batch_of_one():
    img = torch.from_numpy(pixels()).permute(2, 0, 1).contiguous()
    t = train_transform(8, MEAN, STD, AugmentConfig(random_erasing=0.5))
    torch.manual_seed(5)
    whole = t(img)
    torch.manual_seed(5)
    crop, row = t.sample(img)
    assert torch.equal(whole, t.batch(crop[None], row[None])[0])


def test_dataset_items_follow_the_sample_seed(tmp_path):
    make_tree(tmp_path, {"a": ["1.png", "2.jpg"], "b": ["3.png"]})
    t = train_transform(8, MEAN, STD, AugmentConfig(random_erasing=0.5))
    ds = ImageDataset(scan_folder(tmp_path), t.sample, cache_size=16)
    x1, y1, p1 = ds[(2, 1234)]
    x2, y2, p2 = ds[(2, 1234)]
    _, _, p3 = ds[(2, 99)]
    assert x1.dtype == torch.uint8 and y1 == y2 == 1 and torch.equal(x1, x2) and torch.equal(p1, p2)
    assert not torch.equal(p1, p3)


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


def test_disk_cache_is_keyed_by_content_and_size(tmp_path, monkeypatch):
    from resnexus.data import dataset as dataset_module

    data, cache_dir = tmp_path / "data", tmp_path / "cache"
    make_tree(data, {"a": ["1.png", "2.jpg"], "b": ["3.png"]})
    samples = scan_folder(data)
    t = eval_transform(4, MEAN, STD)
    first = ImageDataset(samples, t, cache_size=5, cache_dir=cache_dir)
    images = [first.image(i) for i in range(3)]
    entries = sorted(cache_dir.rglob("*.npy"))
    assert len(entries) == 3 and not list(cache_dir.rglob("*.tmp"))
    for path, img in zip(samples.paths, images):
        digest = __import__("hashlib").sha256(path.read_bytes()).hexdigest()
        entry = cache_dir / digest[:2] / f"{digest}-5.npy"
        assert torch.equal(torch.from_numpy(np.load(entry)), img)
        assert torch.equal(img, ImageDataset(samples, t, cache_size=5).image(samples.paths.index(path)))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(dataset_module, "decode_image_bytes", no_decoding)
    second = ImageDataset(samples, t, cache_size=5, cache_dir=cache_dir)  # a new run: served from disk
    assert all(torch.equal(second.image(i), images[i]) for i in range(3))
    monkeypatch.undo()

    # an edited file is a new entry, never the stale one; another size is another entry
    write_image(samples.paths[0], width=30, height=7)
    third = ImageDataset(samples, t, cache_size=5, cache_dir=cache_dir)
    assert third.image(0).shape == (3, 5, 21) and len(list(cache_dir.rglob("*.npy"))) == 4
    ImageDataset(samples, t, cache_size=6, cache_dir=cache_dir).image(1)
    assert len(list(cache_dir.rglob("*-6.npy"))) == 1


def test_damaged_disk_cache_entry_is_rewritten(tmp_path):
    make_tree(tmp_path / "data", {"a": ["1.png"], "b": ["2.png"]})
    samples = scan_folder(tmp_path / "data")
    t = eval_transform(4, MEAN, STD)
    good = ImageDataset(samples, t, cache_size=5, cache_dir=tmp_path / "cache").image(0)
    (entry,) = [e for e in (tmp_path / "cache").rglob("*.npy") if torch.equal(torch.from_numpy(np.load(e)), good)]
    entry.write_bytes(entry.read_bytes()[:20])
    again = ImageDataset(samples, t, cache_size=5, cache_dir=tmp_path / "cache").image(0)
    assert torch.equal(again, good) and torch.equal(torch.from_numpy(np.load(entry)), good)
    np.save(entry, np.zeros((5, 6), dtype=np.float32))  # readable, but not an image
    again = ImageDataset(samples, t, cache_size=5, cache_dir=tmp_path / "cache").image(0)
    assert torch.equal(again, good) and torch.equal(torch.from_numpy(np.load(entry)), good)


def test_unwritable_disk_cache_costs_speed_not_the_run(tmp_path, monkeypatch):
    from resnexus.data import dataset as dataset_module

    make_tree(tmp_path / "data", {"a": ["1.png"], "b": ["2.png"]})
    samples = scan_folder(tmp_path / "data")
    t = eval_transform(4, MEAN, STD)
    (tmp_path / "file").write_text("not a folder")
    blocked = ImageDataset(samples, t, cache_size=5, cache_dir=tmp_path / "file" / "cache")  # mkdir fails
    expected = ImageDataset(samples, t, cache_size=5).image(0)
    assert torch.equal(blocked.image(0), expected)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dataset_module.np, "save", full_disk)  # the entry's write fails half-way
    full = ImageDataset(samples, t, cache_size=5, cache_dir=tmp_path / "cache")
    assert torch.equal(full.image(0), expected)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # no entry, no temporary file


def test_memory_cache_stops_at_its_budget(tmp_path, monkeypatch):
    from resnexus.data import dataset as dataset_module

    make_tree(tmp_path, {"a": ["1.png", "2.jpg"], "b": ["3.png"]})
    monkeypatch.setattr(dataset_module, "_memory_budget", lambda: 2 * 3 * 5 * 6)  # two 5x6 images
    ds = ImageDataset(scan_folder(tmp_path), eval_transform(4, MEAN, STD), cache_size=5)
    images = [ds.image(i) for i in range(3)]
    assert sorted(ds._cache) == [0, 1] and ds._cached_bytes == 180
    assert torch.equal(ds.image(2), images[2])  # beyond the budget: decoded again, same pixels
