"""Fully convolutional U-Net for image-to-image inverse problems (Flax linen).

:class:`UNet` maps ``[B, H, W, C] -> [B, H, W, out_channels]``, e.g. a stack of ``C``
convergent-beam electron diffraction (CBED) patterns, one per probe position, to the
projected electrostatic potential of the specimen (Laanait et al. 2019, "Exascale deep
learning for scientific inverse problems", CPU-size).

Layout, for ``features = (f_0, ..., f_{L-1})`` (``L`` levels):

* encoder: at level ``i`` two 3x3 convolutions to ``f_i`` channels, each followed by a
  normalisation (GroupNorm or per-pixel LayerNorm; never BatchNorm, so the model has no
  batch statistics and trains unchanged under a data-parallel step) and the activation;
  then, except at the coarsest level, down-sampling by 2 (2x2 average pool or a stride-2
  3x3 convolution). The coarsest map is ``[B, H / 2**(L-1), W / 2**(L-1), f_{L-1}]``.
* bottleneck: ``"conv"`` adds nothing beyond the coarsest conv block (a purely local,
  translation-equivariant network); ``"dense"`` adds a global path: a 1x1 conv to
  ``dense_channels``, flatten, one Dense layer of the same size, activation, reshape, a
  1x1 conv back to ``f_{L-1}``, added to the coarsest map (residual).
* decoder: per level, nearest-neighbour up-sampling by 2 and a 3x3 conv to ``f_i``,
  concatenation of the encoder skip, two 3x3 conv + norm + activation.
* read-out: a 1x1 convolution to ``out_channels``, linear (no activation).

Why a dense bottleneck: the map from diffraction space to real space is global (every
pixel of a CBED pattern depends on the whole illuminated area, every potential pixel on
every pattern), which a local conv net can only reach through its receptive field: about
``7.5 * 2**L - 10`` input pixels across for ``L`` levels with the 2x2 average pool (the
spans of the 3x3 convolutions and the pools, summed over the path through the coarsest
level). Measured (the extent of the gradient of one output pixel, ``norm="none"``), it is
20 pixels for two levels, 48 or 52 for three and 108 or 116 for four, depending on where
the output pixel sits on the pooling grid; the stride-2 convolution adds a few (21, 51 or
55, 115 or 123). GroupNorm's statistics, taken over the whole map, couple all pixels
beyond that, but only through a mean and a variance. The dense layer connects every
coarse pixel to every other in one step, at the price of tying the parameters to one
input size (its weight is ``[h w d, h w d]`` with ``h, w`` the coarsest map size and
``d = dense_channels``) and of breaking translation equivariance.

With ``padding="CIRCULAR"`` (periodic images, as a periodic specimen cell gives) and
``bottleneck="conv"`` the network is exactly equivariant under circular shifts of the input
by multiples of ``2**(L-1)`` pixels (up to float rounding): every convolution is circular,
the norms use per-sample statistics over the whole map, and pooling by 2 / nearest
up-sampling commute with shifts by even numbers of pixels at each level.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import gcd

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsci._checks import is_int_at_least

__all__ = ["BOTTLENECKS", "DOWNSAMPLES", "NORMS", "PADDINGS", "UNet"]

BOTTLENECKS = ("conv", "dense")
PADDINGS = ("CIRCULAR", "SAME")
DOWNSAMPLES = ("avg_pool", "strided_conv")
NORMS = ("group", "layer", "none")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


class UNet(nn.Module):
    """U-Net ``[B, H, W, C] -> [B, H, W, out_channels]`` (see the module docstring).

    ``H`` and ``W`` must be divisible by ``2**(len(features) - 1)``; with
    ``bottleneck="dense"`` the parameters are tied to the ``(H, W)`` used at ``init``.

    Attributes:
      features: channels per level, finest first, e.g. ``(16, 32, 64)``: three levels,
        two halvings. Non-empty, positive ints.
      out_channels: channels of the (linear) output, >= 1.
      bottleneck: ``"conv"`` (local, translation-equivariant) or ``"dense"`` (adds a global
        dense layer on the coarsest map).
      padding: ``"CIRCULAR"`` (periodic boundary) or ``"SAME"`` (zero padding) for all
        3x3 convolutions.
      downsample: ``"avg_pool"`` (2x2 average pool) or ``"strided_conv"`` (stride-2 3x3
        conv to the next level's channels).
      norm: ``"group"`` (GroupNorm over ``gcd(norm_groups, channels)`` groups), ``"layer"``
        (LayerNorm over the channels of each pixel) or ``"none"``.
      norm_groups: wanted number of GroupNorm groups (>= 1).
      dense_channels: channels of the coarsest map fed to the dense bottleneck (>= 1);
        the dense layer has ``(h * w * dense_channels)**2`` weights.
      activation: element-wise non-linearity after each norm (default SiLU).
    """

    features: Sequence[int] = (16, 32, 64)
    out_channels: int = 1
    bottleneck: str = "conv"
    padding: str = "CIRCULAR"
    downsample: str = "avg_pool"
    norm: str = "group"
    norm_groups: int = 8
    dense_channels: int = 4
    activation: Callable[[jax.Array], jax.Array] = nn.silu

    def __post_init__(self) -> None:  # a tuple: the model is a static (hashed) jit argument
        feats = tuple(self.features)
        if not feats or not all(is_int_at_least(f, 1) for f in feats):
            raise ValueError(f"features must be a non-empty sequence of ints >= 1, got {feats}")
        object.__setattr__(self, "features", tuple(int(f) for f in feats))
        if not is_int_at_least(self.out_channels, 1):
            raise ValueError(f"out_channels must be an int >= 1, got {self.out_channels!r}")
        if not is_int_at_least(self.norm_groups, 1):
            raise ValueError(f"norm_groups must be an int >= 1, got {self.norm_groups!r}")
        if not is_int_at_least(self.dense_channels, 1):
            raise ValueError(f"dense_channels must be an int >= 1, got {self.dense_channels!r}")
        _check_choice("bottleneck", self.bottleneck, BOTTLENECKS)
        _check_choice("padding", self.padding, PADDINGS)
        _check_choice("downsample", self.downsample, DOWNSAMPLES)
        _check_choice("norm", self.norm, NORMS)
        super().__post_init__()

    @property
    def factor(self) -> int:
        """Total down-sampling factor ``2**(len(features) - 1)``: H and W must be multiples."""
        return 2 ** (len(self.features) - 1)

    def _conv(self, h: jax.Array, features: int, kernel: int = 3, stride: int = 1) -> jax.Array:
        pad = self.padding if kernel > 1 else "VALID"
        return nn.Conv(features, (kernel, kernel), strides=stride, padding=pad)(h)

    def _norm_act(self, h: jax.Array) -> jax.Array:
        if self.norm == "group":
            h = nn.GroupNorm(num_groups=gcd(self.norm_groups, h.shape[-1]))(h)
        elif self.norm == "layer":
            h = nn.LayerNorm()(h)
        return self.activation(h)

    def _block(self, h: jax.Array, features: int) -> jax.Array:
        for _ in range(2):
            h = self._norm_act(self._conv(h, features))
        return h

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"UNet input must be [B, H, W, C], got shape {x.shape}")
        _, height, width, _ = x.shape
        if height % self.factor or width % self.factor or height == 0 or width == 0:
            raise ValueError(
                f"UNet with {len(self.features)} levels needs H and W divisible by "
                f"{self.factor} (2**(len(features) - 1)), got H={height}, W={width}"
            )
        levels = len(self.features)
        skips = []
        h = x
        for i, f in enumerate(self.features):
            h = self._block(h, f)
            if i < levels - 1:
                skips.append(h)
                if self.downsample == "avg_pool":
                    h = nn.avg_pool(h, (2, 2), strides=(2, 2))
                else:
                    h = self._norm_act(self._conv(h, self.features[i + 1], stride=2))
        if self.bottleneck == "dense":
            b, hc, wc, c = h.shape
            n = hc * wc * self.dense_channels
            # the kernel [hc, wc, dense_channels, n] keeps the coarsest map's shape, so
            # another input size (even one of as many pixels) is caught
            kernel = self.variables.get("params", {}).get("bottleneck", {}).get("kernel")
            if kernel is not None and kernel.shape[:2] != (hc, wc):
                raise ValueError(
                    f"UNet(bottleneck='dense') was initialised for inputs of H x W = "
                    f"{kernel.shape[0] * self.factor} x {kernel.shape[1] * self.factor}; got "
                    f"H={height}, W={width}"
                )
            z = nn.Conv(self.dense_channels, (1, 1))(h)
            dense = nn.DenseGeneral(n, axis=(-3, -2, -1), name="bottleneck")
            z = self.activation(dense(z))
            h = h + nn.Conv(c, (1, 1))(z.reshape(b, hc, wc, self.dense_channels))
        for i in reversed(range(levels - 1)):
            f = self.features[i]
            h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
            h = self._norm_act(self._conv(h, f))
            h = self._block(jnp.concatenate([h, skips[i]], axis=-1), f)
        return nn.Conv(self.out_channels, (1, 1))(h)
