"""A fresh Keras model's initial weights: every layer draws its own, and the seed fixes them.

One initializer instance shared by every layer gave each layer of a shape the same kernel
(``layer1_0_conv2`` equal to ``layer1_0_conv1``) and a different model in every process.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from resnexus import keras as rk  # noqa: E402  (needs Keras)

# one small build of every Keras family: (name, create_model keyword arguments)
FAMILIES = {
    "resnet": ("resnet20_cifar", {"layers": (2, 1, 1)}),
    "resnet_v2": ("resnet50v2", {"depths": (2, 1, 1, 1), "input_shape": (32, 32, 3)}),
    "res2net": ("res2net50_26w_4s", {"layers": (2, 1, 1, 1), "input_shape": (32, 32, 3)}),
    "densenet": ("densenet_bc_100_12", {"block_config": (2, 2)}),
    "fractalnet": ("fractalnet20", {"channels": (8, 8, 16, 16, 16)}),
    "lenet": ("lenet", {"img_size": 32, "input_shape": (32, 32, 3)}),
}


def _build(family: str, seed: int | None = None) -> keras.Model:
    name, kwargs = FAMILIES[family]
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return rk.create_model(name, num_classes=5, **kwargs)


def _kernels(model: keras.Model) -> dict[str, np.ndarray]:
    return {w.path: keras.ops.convert_to_numpy(w) for w in model.weights if w.path.endswith("/kernel")}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_no_two_kernels_of_a_fresh_model_are_equal(family: str) -> None:
    kernels = _kernels(_build(family, seed=0))
    assert len(kernels) >= 5
    first_with: dict[bytes, str] = {}
    for path, kernel in kernels.items():
        assert kernel.tobytes() not in first_with, f"{path} starts equal to {first_with[kernel.tobytes()]}"
        first_with[kernel.tobytes()] = path


@pytest.mark.parametrize("family", ["resnet", "densenet", "lenet"])
def test_the_seed_fixes_the_initial_weights(family: str) -> None:
    first, again, other = (_build(family, seed=s).get_weights() for s in (3, 3, 4))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    random = [i for i, w in enumerate(first) if w.ndim > 1]  # kernels (BatchNorm starts at constants)
    assert random and not any(np.array_equal(first[i], other[i]) for i in random)


def test_initial_kernels_follow_the_pytorch_scheme() -> None:
    """Conv kernels: He normal on fan-out (std sqrt(2 / fan_out)); the classifier: uniform +-1/sqrt(fan_in)."""
    keras.utils.set_random_seed(0)
    model = rk.create_model("resnet20_cifar", num_classes=10)
    kernels = _kernels(model)
    convs = {p: k for p, k in kernels.items() if k.ndim == 4}
    assert len(convs) == 19
    for path, kernel in convs.items():
        kh, kw, _, out = kernel.shape
        expected = math.sqrt(2.0 / (kh * kw * out))
        assert abs(kernel.std() / expected - 1) < 0.1, path  # 432 to 9216 numbers: within 3 sd (3.4 %) of the smallest
        assert abs(kernel.mean()) < 0.1 * expected, path
    fc = kernels["fc/kernel"]
    bound = 1 / math.sqrt(fc.shape[0])
    assert np.abs(fc).max() <= bound and np.abs(fc).max() > 0.9 * bound
    assert abs(fc.std() / (bound / math.sqrt(3)) - 1) < 0.15


@pytest.mark.parametrize("bad", [-3, -1, True])
def test_a_bad_class_count_is_refused_naming_it(bad) -> None:
    """A negative count used to build the pooled-features model without a word; 0 still does, on purpose."""
    with pytest.raises(ValueError, match=rf"invalid num_classes {bad!r}: expected a whole number >= 1 \(0: no"):
        rk.create_model("resnet20_cifar", num_classes=bad)
    assert rk.create_model("resnet20_cifar", num_classes=0).output_shape == (None, 64)
