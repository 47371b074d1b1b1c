"""Displacements between atoms in free space and in periodic cells (pure JAX).

Convention (as in jax-md): ``displacement(Ra, Rb) = Ra - Rb`` (Angstrom), broadcasting over
leading dimensions.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxsci.geometry.cell import (
    _complete_cell,
    complete_nonperiodic,
    perpendicular_widths,
    validate_cell,
)

__all__ = ["free_displacement", "minimum_image", "periodic_displacement", "safe_norm"]

Array = jnp.ndarray
DisplacementFn = Callable[[Array, Array], Array]
MinimumImageFn = Callable[[Array], Array]

_NEIGHBOUR_SHIFTS = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=np.float64)


def free_displacement(ra: Array, rb: Array) -> Array:
    """Displacement ``ra - rb`` [..., 3] in free space (clusters, molecules)."""
    return ra - rb


def _reduce_basis(cell: np.ndarray, periodic: list[int]) -> np.ndarray:
    """Shorten the periodic rows of ``cell`` [3, 3] by integer combinations of each other
    (greedy pairwise/triple reduction; same lattice, rows nearly orthogonal). Host side."""
    b = cell.copy()
    for _ in range(100):
        changed = False
        for i in periodic:
            others = [j for j in periodic if j != i]
            for coef in itertools.product((-1, 0, 1), repeat=len(others)):
                if not any(coef):
                    continue
                u = np.asarray(coef, np.float64) @ b[others]
                m = np.round(b[i] @ u / (u @ u))
                if m != 0 and np.sum((b[i] - m * u) ** 2) < (1.0 - 1e-12) * np.sum(b[i] ** 2):
                    b[i] = b[i] - m * u
                    changed = True
        if not changed:
            return b
    return b


@functools.lru_cache(maxsize=64)
def _mic_tables(cell_key: bytes, pbc_key: tuple[bool, bool, bool]) -> tuple[np.ndarray, ...]:
    """Host tables of the exact minimum image for a validated float64 cell (as bytes).

    Returns ``basis`` [3, 3] (periodic rows lattice-reduced, the others an orthonormal
    completion, so rounding the periodic fractional coordinates only shifts by lattice
    vectors), its inverse and ``shifts`` [K, 3] (Angstrom): the lattice
    vectors ``n @ basis`` that can beat the rounded guess for some fractional part in
    [-1/2, 1/2]^3 (``n G n < sum_i |(G n)_i|``, ``G = basis basis^T``), zero first. The
    shortest of ``guess + shifts`` is then the exact minimum image of any vector.
    """
    cell = np.frombuffer(cell_key, dtype=np.float64).reshape(3, 3)
    pbc = np.asarray(pbc_key, dtype=bool)
    periodic = [i for i in range(3) if pbc[i]]
    basis = _reduce_basis(cell, periodic)
    basis[~pbc] = 0.0
    basis = _complete_cell(basis)  # non-periodic rows: orthonormal to the periodic span
    gram = basis @ basis.T
    corners = np.array(list(itertools.product((-0.5, 0.5), repeat=3))) * pbc
    reach = np.max(np.linalg.norm(corners @ basis, axis=1))  # longest rounded guess
    bound = np.where(pbc, np.floor(0.5 + reach / perpendicular_widths(basis)), 0).astype(int)
    box = itertools.product(*[range(-k, k + 1) for k in bound])
    keep = [np.zeros(3)]
    for n in map(np.asarray, box):
        gn = gram @ n
        if np.any(n) and n @ gn < np.sum(np.abs(gn[pbc])) - 1e-9 * (n @ gn):
            keep.append(n.astype(np.float64))
    shifts = np.stack(keep) @ basis
    return basis, np.linalg.inv(basis), shifts


def minimum_image(
    cell: Array, pbc: object = (True, True, True), dtype: object = None
) -> MinimumImageFn:
    """Minimum-image function ``dr [..., 3] -> dr + n @ cell`` (Angstrom), the shortest over
    integer ``n`` on periodic axes; pure, jittable and differentiable in ``dr``.

    A concrete ``cell`` (rows = lattice vectors) is validated (ValueError: not 3x3, NaN,
    singular periodic vectors) and reduced on the host, which makes the result exact for any
    vector in any (skewed) cell at the cost of a few candidate images (one for orthorhombic
    cells). A traced ``cell`` compares the 27 neighbouring images of the rounded guess: exact
    whenever the minimum is shorter than half the smallest perpendicular width; its
    non-periodic rows may be zero there too (completed as by :func:`complete_nonperiodic`).
    ``dtype``: of the constants (default: that of ``jnp.asarray(cell)``).
    """
    pbc_arr = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if isinstance(cell, jax.core.Tracer):
        # a zero non-periodic row (ase's slabs) would make the cell singular: complete it
        cell = complete_nonperiodic(jnp.asarray(cell, dtype), pbc_arr)
        inv = jnp.linalg.inv(cell)
        pbc_mask = jnp.asarray(pbc_arr)
        grid = jnp.asarray(_NEIGHBOUR_SHIFTS, dtype=cell.dtype) * pbc_mask

        def traced(dr: Array) -> Array:
            frac = dr @ inv
            frac = frac - jnp.where(pbc_mask, jnp.round(frac), 0.0)
            cand = (frac[..., None, :] + grid) @ cell  # [..., 27, 3]
            best = jnp.argmin(jnp.sum(cand * cand, axis=-1), axis=-1)
            return jnp.take_along_axis(cand, best[..., None, None], axis=-2)[..., 0, :]

        return traced

    dtype = jnp.asarray(cell).dtype if dtype is None else dtype
    host = validate_cell(np.asarray(cell), pbc_arr)
    if not pbc_arr.any():
        return lambda dr: dr
    basis_np, inv_np, shifts_np = _mic_tables(host.tobytes(), tuple(bool(p) for p in pbc_arr))
    basis = jnp.asarray(basis_np, dtype)
    inv = jnp.asarray(inv_np, dtype)
    mask = jnp.asarray(pbc_arr)
    shifts = jnp.asarray(shifts_np, dtype)
    sq = jnp.sum(shifts * shifts, axis=-1)

    def exact(dr: Array) -> Array:
        frac = dr @ inv
        guess = dr - jnp.where(mask, jnp.round(frac), 0.0) @ basis
        if shifts.shape[0] == 1:  # orthorhombic-like: the rounded guess is the answer
            return guess
        # |guess + s|^2 - |guess|^2 per candidate, without a [..., K, 3] temporary
        best = jnp.argmin(2.0 * guess @ shifts.T + sq, axis=-1)
        return guess + shifts[best]

    return exact


def periodic_displacement(cell: Array, pbc: object = (True, True, True)) -> DisplacementFn:
    """Minimum-image displacement for an orthorhombic or triclinic cell [3, 3] (rows = vectors).

    The returned function gives the shortest ``ra - rb + n @ cell`` over integer ``n`` on
    periodic axes (see :func:`minimum_image`: exact for a concrete cell, however skewed; for a
    traced cell exact whenever the minimum is shorter than half the smallest perpendicular
    width). A concrete ``cell`` is validated (ValueError: not 3x3, NaN, singular periodic
    vectors); zero non-periodic rows (a slab's vacuum axis) are completed, as ACSF does.
    """
    mic = minimum_image(cell, pbc)

    def displacement(ra: Array, rb: Array) -> Array:
        return mic(ra - rb)

    return displacement


def safe_norm(dr: Array, axis: int = -1) -> Array:
    """Euclidean norm whose gradient is 0 (not NaN) at dr = 0 (double-where trick)."""
    r2 = jnp.sum(dr * dr, axis=axis)
    pos = r2 > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, r2, 1.0)), 0.0)
