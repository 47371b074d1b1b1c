"""scikit-learn's handwritten digits (shipped with the package, no download) as GAN data.

Images come as ``[N, H, W, 1]`` float32 on [-1, 1] (the range of a tanh output);
sklearn's native scale is 0..16 on 8 x 8 pixels. ``to_digits_scale`` and
``from_digits_scale`` convert between the two; ``upscale`` / ``downscale`` give the
heavier 32 x 32 variant and bring generated images back to 8 x 8 (block average).
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from jaxsci._checks import is_int_at_least

__all__ = [
    "DigitsSplit",
    "downscale",
    "from_digits_scale",
    "load_digits_split",
    "to_digits_scale",
    "upscale",
]

DIGITS_MAX = 16.0  # sklearn digits pixel values are integers 0..16


class DigitsSplit(NamedTuple):
    """Stratified train / held-out split; images ``[N, S, S, 1]`` on [-1, 1], labels ``[N]``."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def from_digits_scale(images: np.ndarray) -> np.ndarray:
    """0..16 (sklearn scale) -> [-1, 1], float32, same shape."""
    return (np.asarray(images, np.float32) / (DIGITS_MAX / 2.0) - 1.0).astype(np.float32)


def to_digits_scale(images: np.ndarray) -> np.ndarray:
    """[-1, 1] -> 0..16 (sklearn scale), clipped to that range, float32, same shape."""
    x = (np.asarray(images, np.float32) + 1.0) * (DIGITS_MAX / 2.0)
    return np.clip(x, 0.0, DIGITS_MAX).astype(np.float32)


def _check_size(fn: str, size: object) -> int:
    """``size`` as a positive int; ValueError otherwise (bools and floats too)."""
    if not is_int_at_least(size, 1):
        raise ValueError(f"{fn}: size must be a positive integer (pixels), got {size!r}")
    return int(size)


def _check_images(fn: str, images: np.ndarray) -> np.ndarray:
    """``images`` as float32 ``[N, S, S, C]`` with S >= 1; ValueError otherwise."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[1] < 1:
        raise ValueError(
            f"{fn}: images must be [N, S, S, C] (square, S >= 1), got shape {images.shape}"
        )
    return images


def upscale(images: np.ndarray, size: int, method: str = "nearest") -> np.ndarray:
    """``[N, s, s, C]`` -> ``[N, size, size, C]`` with ``size = k * s`` (pixels, k >= 1).

    ``"nearest"`` replicates each pixel into a k x k block, so :func:`downscale` inverts it
    exactly (generated 32 x 32 images are scored on the same 8 x 8 grid as the data);
    ``"bilinear"`` gives smoother copies (``jax.image.resize``). ValueError for images that
    are not ``[N, s, s, C]``, a size that is not a positive multiple of s, or another method.
    """
    if method not in ("nearest", "bilinear"):
        raise ValueError(f"method must be 'nearest' or 'bilinear', got {method!r}")
    size = _check_size("upscale", size)
    images = _check_images("upscale", images)
    s = images.shape[1]
    if size % s:
        raise ValueError(f"upscale: size {size} is not a multiple of the image size {s}")
    k = size // s
    if method == "nearest":
        return np.repeat(np.repeat(images, k, axis=1), k, axis=2)
    import jax

    shape = (images.shape[0], size, size, images.shape[3])
    return np.asarray(jax.image.resize(images, shape, "bilinear"), np.float32)


def downscale(images: np.ndarray, size: int = 8) -> np.ndarray:
    """``[N, S, S, C]`` -> ``[N, size, size, C]`` by averaging S/size x S/size blocks (pixels).

    ValueError for images that are not ``[N, S, S, C]`` or a size that is not a positive
    divisor of S.
    """
    size = _check_size("downscale", size)
    images = _check_images("downscale", images)
    n, s, _, c = images.shape
    if s % size:
        raise ValueError(f"downscale: image size {s} is not a multiple of {size}")
    if s == size:
        return images
    f = s // size
    return images.reshape(n, size, f, size, f, c).mean(axis=(2, 4))


def check_split(where: str, test_fraction: object, seed: object) -> None:
    """ValueError, naming ``where`` and the argument, unless ``0 < test_fraction < 1`` and
    ``seed`` is an int in ``[0, 2**32)`` (scikit-learn's ``random_state`` range)."""
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, numbers.Real)
        or not 0.0 < test_fraction < 1.0
    ):
        raise ValueError(
            f"{where}: test_fraction must be a number in (0, 1), got {test_fraction!r}"
        )
    if not is_int_at_least(seed, 0) or seed >= 2**32:
        raise ValueError(f"{where}: seed must be an int in [0, 2**32), got {seed!r}")


def load_digits_split(
    *, image_size: int = 8, test_fraction: float = 0.25, seed: int = 0
) -> DigitsSplit:
    """Load sklearn digits, scale to [-1, 1] and split stratified by label.

    ``image_size`` 8 is native; a multiple of 8 (e.g. 32) gives upscaled copies
    (pixel replication, see :func:`upscale`). ValueError, naming the argument, unless
    ``image_size`` is a positive int multiple of 8, ``0 < test_fraction < 1`` and ``seed``
    is an int in ``[0, 2**32)`` (scikit-learn's ``random_state`` range).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not is_int_at_least(image_size, 8) or image_size % 8:
        raise ValueError(
            f"load_digits_split: image_size must be a positive int multiple of 8 (pixels), "
            f"got {image_size!r}"
        )
    check_split("load_digits_split", test_fraction, seed)
    image_size, seed = int(image_size), int(seed)
    d = load_digits()
    x = from_digits_scale(d.images)[..., None]
    y = d.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    return DigitsSplit(upscale(x_tr, image_size), y_tr, upscale(x_te, image_size), y_te)
