"""A plain multilayer perceptron (Flax linen)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax

from jaxsci._checks import is_int_at_least

__all__ = ["MLP"]


class MLP(nn.Module):
    """Dense layers of widths ``features`` with ``activation`` between them.

    ``[..., d_in] -> [..., features[-1]]``; the last layer is linear unless
    ``activate_final``. Default activation ELU (as in the CVAE of Fung et al. 2022).
    """

    features: Sequence[int]
    activation: Callable[[jax.Array], jax.Array] = nn.elu
    activate_final: bool = False

    def __post_init__(self) -> None:  # a tuple: hashable, as static jit arguments must be
        feats = tuple(self.features)
        if not feats or not all(is_int_at_least(w, 1) for w in feats):
            raise ValueError(f"MLP features must be a non-empty sequence of ints >= 1, got {feats}")
        object.__setattr__(self, "features", feats)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.features):
            x = nn.Dense(int(width), name=f"dense_{i}")(x)
            if i < len(self.features) - 1 or self.activate_final:
                x = self.activation(x)
        return x
