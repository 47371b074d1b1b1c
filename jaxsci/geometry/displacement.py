"""Displacements between atoms in free space and in periodic cells (pure JAX).

Convention (as in jax-md): ``displacement(Ra, Rb) = Ra - Rb`` (Angstrom), broadcasting over
leading dimensions.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxsci.geometry.cell import validate_cell

Array = jnp.ndarray
DisplacementFn = Callable[[Array, Array], Array]

_NEIGHBOUR_SHIFTS = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=np.float64)


def free_displacement(ra: Array, rb: Array) -> Array:
    """Displacement ``ra - rb`` [..., 3] in free space (clusters, molecules)."""
    return ra - rb


def periodic_displacement(cell: Array, pbc: object = (True, True, True)) -> DisplacementFn:
    """Minimum-image displacement for an orthorhombic or triclinic cell [3, 3] (rows = vectors).

    The returned function gives the shortest ``ra - rb + n @ cell`` over integer ``n`` on
    periodic axes: fractional differences are rounded, then the 27 neighbouring images of
    that guess are compared, which makes it exact for skewed triclinic cells too whenever the
    true minimum is shorter than half the smallest perpendicular width. Beyond that a single
    image is not enough; use :func:`jaxsci.geometry.image_shifts` / the neighbor lists.
    A concrete ``cell`` is validated (ValueError: not 3x3, NaN, singular periodic vectors).
    """
    if not isinstance(cell, jax.core.Tracer):  # shape, finiteness, volume; zero
        # non-periodic rows (a slab's vacuum axis) completed, as ACSF does (else NaN)
        dtype = jnp.asarray(cell).dtype
        cell = jnp.asarray(validate_cell(np.asarray(cell), pbc), dtype=dtype)
    cell = jnp.asarray(cell)
    inv = jnp.linalg.inv(cell)
    pbc_mask = jnp.asarray(np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)))
    shifts = jnp.asarray(_NEIGHBOUR_SHIFTS, dtype=cell.dtype) * pbc_mask

    def displacement(ra: Array, rb: Array) -> Array:
        dr = ra - rb
        frac = dr @ inv
        frac = frac - jnp.where(pbc_mask, jnp.round(frac), 0.0)
        cand = (frac[..., None, :] + shifts) @ cell  # [..., 27, 3]
        best = jnp.argmin(jnp.sum(cand * cand, axis=-1), axis=-1)
        return jnp.take_along_axis(cand, best[..., None, None], axis=-2)[..., 0, :]

    return displacement


def safe_norm(dr: Array, axis: int = -1) -> Array:
    """Euclidean norm whose gradient is 0 (not NaN) at dr = 0 (double-where trick)."""
    r2 = jnp.sum(dr * dr, axis=axis)
    pos = r2 > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, r2, 1.0)), 0.0)
