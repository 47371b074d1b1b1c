"""jaxsci.data.digits: upscale / downscale round trips and their input checks."""

import numpy as np
import pytest

from jaxsci.data.digits import downscale, load_digits_split, upscale


def _images(n: int = 3, s: int = 8) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (n, s, s, 1)).astype(np.float32)


def test_upscale_downscale_round_trip_and_block_average():
    x = _images()
    big = upscale(x, 32)
    assert big.shape == (3, 32, 32, 1)
    np.testing.assert_array_equal(big[:, 4:8, 0:4], np.broadcast_to(x[:, 1:2, 0:1], (3, 4, 4, 1)))
    np.testing.assert_allclose(downscale(big, 8), x, atol=1e-6)
    np.testing.assert_allclose(downscale(x, 4)[:, 0, 0], x[:, :2, :2].mean(axis=(1, 2)), atol=1e-6)
    assert downscale(x, 8).shape == x.shape and upscale(x, np.int64(16)).shape[1] == 16
    assert upscale(np.zeros((0, 8, 8, 1)), 16).shape == (0, 16, 16, 1)  # empty batch is fine


@pytest.mark.parametrize("size", [0, -8, 8.5, 16.0, True, "16", None])
def test_bad_sizes_raise_value_error(size):
    """size 0 returned empty images, -8 / 0 / 8.0 / None raised numpy's errors."""
    with pytest.raises(ValueError, match="size must be a positive integer"):
        upscale(_images(), size)
    with pytest.raises(ValueError, match="size must be a positive integer"):
        downscale(upscale(_images(), 32), size)


def test_sizes_that_do_not_divide_raise():
    with pytest.raises(ValueError, match="not a multiple of the image size 8"):
        upscale(_images(), 12)
    with pytest.raises(ValueError, match="not a multiple of the image size 32"):
        upscale(_images(s=32), 16)  # upscale does not shrink
    with pytest.raises(ValueError, match="image size 32 is not a multiple of 5"):
        downscale(_images(s=32), 5)
    with pytest.raises(ValueError, match="image size 8 is not a multiple of 16"):
        downscale(_images(), 16)  # downscale does not grow
    with pytest.raises(ValueError, match="method must be"):
        upscale(_images(), 16, method="cubic")


@pytest.mark.parametrize(
    "shape", [(8, 8), (3, 8, 8), (1, 3, 8, 8, 1), (3, 8, 4, 1), (3, 0, 0, 1)], ids=str
)
def test_images_of_wrong_rank_or_shape_raise(shape):
    """[N, s, s] (no channel) was silently accepted by upscale, a non-square image gave a
    [N, 16, 8] result; other shapes raised numpy's unpack / axis / modulo errors."""
    for fn, size in ((upscale, 16), (downscale, 8)):
        with pytest.raises(ValueError, match=r"images must be \[N, S, S, C\]"):
            fn(np.zeros(shape, np.float32), size)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 8.0}, "image_size must be a positive int multiple of 8"),
        ({"image_size": "8"}, "image_size"),
        ({"image_size": 12}, "image_size"),
        ({"image_size": 0}, "image_size"),
        ({"image_size": True}, "image_size"),
        ({"seed": -1}, "seed must be an int in"),
        ({"seed": 1.5}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"test_fraction": "0.25"}, "test_fraction must be a number in"),
        ({"test_fraction": float("nan")}, "test_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
    ],
)
def test_load_digits_split_names_the_bad_argument(kwargs, match):
    """image_size=8.0 blamed "upscale: size", image_size='8' raised a TypeError and seed=-1
    sklearn's InvalidParameterError."""
    with pytest.raises(ValueError, match=f"load_digits_split: {match}"):
        load_digits_split(**kwargs)


def test_load_digits_split_accepts_numpy_integers():
    a = load_digits_split(image_size=np.int64(16), seed=np.int64(1))
    b = load_digits_split(image_size=16, seed=1)
    assert a.train_images.shape[1:] == (16, 16, 1)
    np.testing.assert_array_equal(a.test_labels, b.test_labels)


def test_the_split_is_stratified_by_label():
    """Each label's share of the test split is test_fraction of its images (within one)."""
    for fraction in (0.25, 0.4):
        split = load_digits_split(test_fraction=fraction, seed=3)
        labels = np.concatenate([split.train_labels, split.test_labels])
        for k in range(10):
            total = int(np.sum(labels == k))
            assert abs(int(np.sum(split.test_labels == k)) - fraction * total) <= 1.0, (fraction, k)
