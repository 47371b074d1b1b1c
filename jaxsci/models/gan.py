"""Conditional GANs for small square images: DC-CGAN and W-CGAN (WGAN-GP critic).

Images are ``[B, S, S, C]`` on [-1, 1] (tanh output) with ``S`` a power of two >= 8
(8 for scikit-learn digits, 32 for their upscaled copies); labels are int ``[B]``.

* :class:`CondGenerator` -- ``(z [B, latent_dim], labels [B]) -> images``: a dense
  projection of ``[z, onehot(label)]`` to a 4 x 4 map, then 2x up-sampling blocks
  (sub-pixel convolution: 3 x 3 conv to 4x channels + depth-to-space, the equivalent of a
  stride-2 transposed convolution) up to ``S x S``; one block for 8 x 8, three for 32.
* :class:`CondDiscriminator` -- ``(images, labels) -> [B]`` scores: the label enters as
  one-hot channel maps concatenated to the image, then stride-2 convolutions with leaky
  ReLU down to 2 x 2, and a dense read-out plus a projection term ``<embed(label), h>``.
  With ``layer_norm=True`` it is the WGAN-GP critic (per-sample normalisation, as the
  gradient penalty requires; no batch statistics).

:func:`dc_cgan` and :func:`w_cgan` return a :class:`CGAN`: the generator, the
discriminator/critic and the adversarial objective that goes with them (non-saturating
BCE for DC-CGAN; Wasserstein loss with gradient penalty and ``n_critic`` critic updates
per generator update for W-CGAN). Training lives in :mod:`jaxsci.train.gan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsci._checks import is_int_at_least

__all__ = [
    "CGAN",
    "CondDiscriminator",
    "CondGenerator",
    "PatchConv",
    "check_labels",
    "dc_cgan",
    "w_cgan",
]


def _n_halvings(image_size: int) -> int:
    k = int(round(math.log2(image_size))) if image_size > 0 else -1
    if image_size < 8 or 2**k != image_size:
        raise ValueError(f"image_size must be a power of two >= 8, got {image_size}")
    return k


def _check_ints(owner: str, **values: object) -> None:
    """ValueError naming the first of ``values`` (``name=value``) that is not an int >= 1."""
    for name, value in values.items():
        if not is_int_at_least(value, 1):
            raise ValueError(f"{owner}: {name} must be an int >= 1, got {value!r}")


def _check_batch(owner: str, first: str, x: jax.Array, labels: jax.Array, ndim: int) -> None:
    """ValueError unless ``x`` has ``ndim`` dims and ``labels`` is ``[B]`` with its batch."""
    if x.ndim != ndim:
        raise ValueError(f"{owner}: {first} must have {ndim} dimensions, got shape {x.shape}")
    if jnp.ndim(labels) != 1 or jnp.shape(labels)[0] != x.shape[0]:
        raise ValueError(
            f"{owner}: labels must be [B] with B = {first}.shape[0] = {x.shape[0]}, got shape "
            f"{jnp.shape(labels)}"
        )


def check_labels(labels: jax.Array, n_labels: int) -> None:
    """ValueError unless concrete ``labels`` are integers in ``0 .. n_labels - 1`` (one_hot
    silently gives zeros beyond them, the label embedding NaN). Traced labels pass."""
    if isinstance(labels, jax.core.Tracer):
        return
    arr = np.asarray(labels)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= n_labels):
        raise ValueError(f"labels must lie in 0..{n_labels - 1}, got {arr.min()}..{arr.max()}")


class PatchConv(nn.Module):
    """2-D convolution as patch extraction + dense layer: ``[B, H, W, C] -> [B, H/s, W/s, F]``.

    Same function class as ``nn.Conv`` with SAME padding, but written so that ``jax.vmap``
    over *parameters* (one model per label) becomes a batched matrix product; XLA's CPU
    backend runs a vmapped ``nn.Conv`` as a grouped convolution, which is orders of
    magnitude slower.
    """

    features: int
    kernel: int = 3
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(self.features)(_patches(x, self.kernel, self.stride))


def _patches(x: jax.Array, k: int, s: int) -> jax.Array:
    """SAME-padded ``k x k`` patches at stride ``s``: ``[B, H, W, C] -> [B, H/s, W/s, k*k*C]``.

    Built from ``k*k`` strided slices (no gather, no convolution), cheap forward and back.
    """
    _, h, w, _ = x.shape
    out_h, out_w = -(-h // s), -(-w // s)
    pad_h = max((out_h - 1) * s + k - h, 0)
    pad_w = max((out_w - 1) * s + k - w, 0)
    x = jnp.pad(
        x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    )
    cols = [
        x[:, i : i + (out_h - 1) * s + 1 : s, j : j + (out_w - 1) * s + 1 : s, :]
        for i in range(k)
        for j in range(k)
    ]
    return jnp.concatenate(cols, axis=-1)


def _depth_to_space(x: jax.Array, r: int = 2) -> jax.Array:
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, r, r, c // (r * r))
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * r, w * r, c // (r * r))


class CondGenerator(nn.Module):
    """Label-conditioned generator ``(z [B, latent_dim], labels [B]) -> [B, S, S, channels]``.

    Attributes:
      image_size: output side S (power of two >= 8).
      n_labels: number of classes (labels are 0..n_labels-1).
      features: channels of the last two hidden maps; earlier maps double per up-sampling
        (S = 32: 4f, 2f, f, f).
      channels: output channels (1 for grey digits).
    """

    image_size: int = 8
    n_labels: int = 10
    features: int = 64
    channels: int = 1

    def __post_init__(self) -> None:
        _check_ints(
            "CondGenerator",
            image_size=self.image_size,
            n_labels=self.n_labels,
            features=self.features,
            channels=self.channels,
        )
        super().__post_init__()

    @nn.compact
    def __call__(self, z: jax.Array, labels: jax.Array) -> jax.Array:
        _check_batch("CondGenerator", "z", z, labels, 2)
        check_labels(labels, self.n_labels)
        n_up = _n_halvings(self.image_size) - 2  # from 4 x 4
        width = self.features * 2 ** max(n_up - 1, 0)
        y = jax.nn.one_hot(labels, self.n_labels, dtype=z.dtype)
        h = jnp.concatenate([z, y], axis=-1)
        h = nn.relu(nn.Dense(4 * 4 * width)(h)).reshape(z.shape[0], 4, 4, width)
        for i in range(n_up):
            width = self.features * 2 ** max(n_up - 2 - i, 0)
            h = nn.relu(_depth_to_space(PatchConv(4 * width, 3)(h)))
        return jnp.tanh(PatchConv(self.channels, 3)(h))


class CondDiscriminator(nn.Module):
    """Label-conditioned discriminator / critic ``(images [B, S, S, C], labels [B]) -> [B]``.

    Attributes:
      n_labels: number of classes.
      features: channels after the first stride-2 convolution (doubling after each).
      layer_norm: layer-normalise the channels of every pixel of each hidden map (the
        WGAN-GP critic: no coupling across the batch, unlike batch norm, so the per-sample
        gradient penalty holds); ``False`` for the DC-CGAN discriminator.
    """

    n_labels: int = 10
    features: int = 64
    layer_norm: bool = False

    def __post_init__(self) -> None:
        _check_ints("CondDiscriminator", n_labels=self.n_labels, features=self.features)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[1] != x.shape[2]:
            raise ValueError(f"images must be [B, S, S, C] (square), got {x.shape}")
        _check_batch("CondDiscriminator", "images", x, labels, 4)
        check_labels(labels, self.n_labels)
        n_down = _n_halvings(x.shape[1]) - 1  # down to 2 x 2
        y = jax.nn.one_hot(labels, self.n_labels, dtype=x.dtype)
        maps = jnp.broadcast_to(y[:, None, None, :], (*x.shape[:3], self.n_labels))
        h = jnp.concatenate([x, maps], axis=-1)
        for i in range(n_down):
            h = PatchConv(self.features * 2**i, 4, 2)(h)
            if self.layer_norm:
                h = nn.LayerNorm()(h)
            h = nn.leaky_relu(h, 0.2)
        h = h.reshape(h.shape[0], -1)
        proj = jnp.sum(nn.Embed(self.n_labels, h.shape[-1])(labels) * h, axis=-1)
        return nn.Dense(1)(h)[:, 0] + proj


@dataclass(frozen=True)
class CGAN:
    """A conditional GAN: modules plus the adversarial objective they are trained with.

    Attributes:
      generator: a :class:`CondGenerator`.
      discriminator: a :class:`CondDiscriminator` (the critic for ``loss="wgan-gp"``).
      loss: ``"dcgan"`` (non-saturating BCE) or ``"wgan-gp"``.
      latent_dim: size of the generator's noise input z ~ N(0, I).
      n_critic: discriminator/critic updates per generator update.
      gp_weight: gradient-penalty weight (WGAN-GP's lambda; unused for ``"dcgan"``).
    """

    generator: CondGenerator
    discriminator: CondDiscriminator
    loss: Literal["dcgan", "wgan-gp"]
    latent_dim: int = 32
    n_critic: int = 1
    gp_weight: float = 10.0

    def __post_init__(self) -> None:
        if self.loss not in ("dcgan", "wgan-gp"):
            raise ValueError(f"loss must be 'dcgan' or 'wgan-gp', got {self.loss!r}")
        _check_ints("CGAN", n_critic=self.n_critic, latent_dim=self.latent_dim)
        if self.generator.n_labels != self.discriminator.n_labels:
            raise ValueError("generator and discriminator disagree on n_labels")
        if not self.gp_weight >= 0:
            raise ValueError(f"CGAN: gp_weight must be >= 0, got {self.gp_weight!r}")
        _n_halvings(self.generator.image_size)  # a power of two >= 8, checked now

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(S, S, C)`` of one generated image."""
        g = self.generator
        return (g.image_size, g.image_size, g.channels)

    @property
    def n_labels(self) -> int:
        return self.generator.n_labels


def dc_cgan(
    image_size: int = 8,
    n_labels: int = 10,
    *,
    latent_dim: int = 32,
    g_features: int = 64,
    d_features: int = 64,
    channels: int = 1,
) -> CGAN:
    """DC-CGAN: conv generator, conv discriminator without normalisation, BCE loss."""
    return CGAN(
        CondGenerator(image_size, n_labels, g_features, channels),
        CondDiscriminator(n_labels, d_features, layer_norm=False),
        loss="dcgan",
        latent_dim=latent_dim,
        n_critic=1,
    )


def w_cgan(
    image_size: int = 8,
    n_labels: int = 10,
    *,
    latent_dim: int = 32,
    g_features: int = 64,
    d_features: int = 64,
    channels: int = 1,
    n_critic: int = 5,
    gp_weight: float = 10.0,
) -> CGAN:
    """W-CGAN: conv generator, layer-normalised critic, Wasserstein loss + gradient penalty."""
    return CGAN(
        CondGenerator(image_size, n_labels, g_features, channels),
        CondDiscriminator(n_labels, d_features, layer_norm=True),
        loss="wgan-gp",
        latent_dim=latent_dim,
        n_critic=n_critic,
        gp_weight=gp_weight,
    )
