"""The Keras path's random crop: one affine resampling per image (engine/keras_fit.py), computed
with ``grid_sample`` on the torch backend, equal to Keras' own ``affine_transform``."""

from __future__ import annotations

import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from resnexus.engine.keras_fit import affine_transform_torch, zoom_and_shift_transforms  # noqa: E402


def photos(n: int = 4, size: int = 24, seed: int = 0) -> np.ndarray:
    """Smooth random images (bilinear sampling of smooth images differs little between methods)."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (n, 6, 6, 3)).astype(np.float32)
    return np.asarray(keras.ops.image.resize(small, (size, size), interpolation="bilinear"), np.float32)


def test_the_identity_and_a_whole_pixel_shift_are_exact():
    x = photos()
    identity = np.tile(np.array([1, 0, 0, 0, 1, 0, 0, 0], np.float32), (len(x), 1))
    np.testing.assert_allclose(affine_transform_torch(x, identity), x, atol=1e-3)
    shift = identity.copy()
    shift[:, 2] = -3.0  # out(x) = in(x - 3): the picture moves 3 pixels right
    np.testing.assert_allclose(affine_transform_torch(x, shift)[:, :, 3:], x[:, :, :-3], atol=1e-3)
    # reflecting at the edge: the first columns mirror the first ones of the input (d c b a | a b c d)
    np.testing.assert_allclose(affine_transform_torch(x, shift)[:, :, :3], x[:, :, 2::-1], atol=1e-3)


def test_grid_sample_matches_keras_affine_transform():
    x = photos(n=6, size=32)
    transforms = zoom_and_shift_transforms(len(x), 32, 32, (0.35, 1.0), np.random.default_rng(3))
    ours = affine_transform_torch(x, transforms)
    theirs = np.asarray(
        keras.ops.image.affine_transform(x, transforms, interpolation="bilinear", fill_mode="reflect"), np.float32
    )
    assert ours.shape == theirs.shape == x.shape
    difference = np.abs(ours - theirs)
    assert difference.mean() < 0.05, difference.mean()  # of 255
    assert np.percentile(difference, 99) < 0.5, np.percentile(difference, 99)


def test_windows_are_drawn_from_the_scale_and_stay_within_the_reach():
    n, size, scale = 4000, 100, (0.25, 0.81)
    t = zoom_and_shift_transforms(n, size, size, scale, np.random.default_rng(0))
    side = t[:, 0]
    assert np.all(t[:, 4] == side) and np.all(t[:, [1, 3, 6, 7]] == 0)
    assert side.min() >= math.sqrt(scale[0]) and side.max() <= math.sqrt(scale[1])
    assert abs(side.mean() - (0.5 + 0.9) / 2) < 0.01  # uniform on [0.5, 0.9]
    centre = (size - 1) / 2
    shift = (centre - t[:, 2]) / side - centre  # a2 = c - side * (c + shift)
    reach = (1 - math.sqrt(scale[0])) / 2 * size
    assert np.abs(shift).max() <= reach + 1e-3 and np.abs(shift).max() > 0.95 * reach
    again = zoom_and_shift_transforms(n, size, size, scale, np.random.default_rng(0))
    np.testing.assert_array_equal(t, again)
