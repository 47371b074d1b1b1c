"""Smooth radial cutoff functions fc(r) (r in Angstrom): 1 at r = 0, 0 for r >= r_cut."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

__all__ = ["cosine_cutoff", "polynomial_cutoff"]

Array = jnp.ndarray


def cosine_cutoff(r: Array, r_cut: float) -> Array:
    """Behler's cosine cutoff 0.5 (cos(pi r / r_cut) + 1) (DScribe's choice); C1 at r_cut.

    ``r``: distances, any shape (Angstrom); ``r_cut`` Angstrom. Returns the factor, same
    shape as ``r``: 1 at r = 0, 0 from ``r_cut`` on."""
    x = jnp.minimum(r / r_cut, 1.0)
    return 0.5 * (jnp.cos(jnp.pi * x) + 1.0)


def polynomial_cutoff(r: Array, r_cut: float) -> Array:
    """Polynomial cutoff 1 - 10 x^3 + 15 x^4 - 6 x^5, x = r / r_cut; C2 at r_cut (n2p2 'poly2').

    ``r``: distances, any shape (Angstrom); ``r_cut`` Angstrom. Returns the factor, same
    shape as ``r``: 1 at r = 0, 0 from ``r_cut`` on."""
    x = jnp.minimum(r / r_cut, 1.0)
    x3 = x * x * x
    return 1.0 + x3 * (-10.0 + x * (15.0 - 6.0 * x))


CUTOFFS: dict[str, Callable[[Array, float], Array]] = {
    "cosine": cosine_cutoff,
    "polynomial": polynomial_cutoff,
}
