"""Simulation cells: validation, perpendicular widths and periodic image shifts (host
side; the widths also of traced cells).

All lengths are in Angstrom; a cell is a [3, 3] array whose rows are the lattice vectors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "complete_nonperiodic",
    "image_multipliers",
    "image_shifts",
    "lattice_shifts",
    "perpendicular_widths",
    "validate_cell",
    "wrap_positions",
]


def validate_cell(cell: object, pbc: object = (True, True, True)) -> np.ndarray:
    """Return ``cell`` as a float64 [3, 3] array, raising ``ValueError`` when it is unusable.

    A cell must be 3x3, finite, and its periodic lattice vectors must be linearly independent
    (non-zero volume); non-periodic rows may be zero and are then completed orthogonally.
    """
    arr = np.asarray(cell, dtype=np.float64)
    if arr.shape != (3, 3):
        raise ValueError(f"cell must be a 3x3 matrix of lattice vectors, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("cell contains NaN or inf")
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    zero = [i for i in range(3) if pbc[i] and not np.any(arr[i])]
    if zero:  # completing it would invent a 1 A period (ase's default cell is all zeros)
        raise ValueError(
            f"cell has zero lattice vector(s) {zero} along periodic axes: give the cell "
            "(e.g. Atoms(cell=...)) or make those axes non-periodic"
        )
    arr = _complete_cell(arr)
    if not np.any(pbc):
        return arr
    vol = abs(np.linalg.det(arr))
    scale = np.prod(np.linalg.norm(arr, axis=1))
    if scale == 0.0 or vol <= 1e-10 * scale:
        raise ValueError(f"cell is singular (volume {vol:.3g} A^3): lattice vectors are dependent")
    return arr


def _complete_cell(cell: np.ndarray) -> np.ndarray:
    """Replace zero lattice vectors by unit vectors orthogonal to the others (as ase does)."""
    cell = cell.copy()
    missing = [i for i in range(3) if not np.any(cell[i])]
    if not missing or len(missing) == 3:
        if len(missing) == 3:
            return np.eye(3)
        return cell
    present = [i for i in range(3) if i not in missing]
    if len(present) == 2:
        n = np.cross(cell[present[0]], cell[present[1]])
        norm = np.linalg.norm(n)
        cell[missing[0]] = n / norm if norm > 0 else np.eye(3)[missing[0]]
    else:
        v = cell[present[0]] / np.linalg.norm(cell[present[0]])
        trial = np.eye(3)[np.argmin(np.abs(v))]
        u1 = np.cross(v, trial)
        u1 /= np.linalg.norm(u1)
        u2 = np.cross(v, u1)
        cell[missing[0]], cell[missing[1]] = u1, u2
    return cell


def perpendicular_widths(cell: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
    """Distances [3] (Angstrom) between opposite faces of the cell (plane spacing per axis).

    A host array gives a float64 NumPy result (ValueError for a singular cell, e.g. ase's
    slab with a zero vacuum row: complete it with :func:`complete_nonperiodic` first); a JAX
    array (traced too) a JAX one."""
    xp = jnp if isinstance(cell, jax.Array) else np
    cell = cell if xp is jnp else np.asarray(cell, dtype=np.float64)
    if xp is np and cell.shape == (3, 3) and np.linalg.det(cell) == 0.0:
        raise ValueError(
            "perpendicular_widths: the cell is singular (a zero row?); complete its "
            "non-periodic rows with complete_nonperiodic(cell, pbc) first"
        )
    faces = xp.stack([xp.cross(cell[(i + 1) % 3], cell[(i + 2) % 3]) for i in range(3)])
    vol = xp.abs(xp.linalg.det(cell))
    return vol / xp.linalg.norm(faces, axis=1)


def image_multipliers(
    cell: np.ndarray, r_cut: float, pbc: object = (True, True, True)
) -> np.ndarray:
    """Number of periodic copies [3] (int) per axis that reach ``r_cut``: ceil(r_cut / width)
    (``cell`` [3, 3] lattice vectors as rows and ``r_cut`` in Angstrom).

    Exact for atoms inside the cell (fractional coordinates in [0, 1)); zero for non-periodic
    axes, whose rows may be zero (ase's slabs). Same rule as DScribe's system extension.
    """
    check_r_cut(r_cut, "image_multipliers")
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    validate_cell(cell, pbc)  # a nearly flat cell asked for ~1e9 images per axis
    widths = perpendicular_widths(complete_nonperiodic(np.asarray(cell, np.float64), pbc))
    n = np.where(pbc, np.ceil(r_cut / widths), 0)
    if np.any(n > _MAX_IMAGES):  # (2n + 1)^3 images: a near-singular cell, not a crystal
        axis = int(np.argmax(n))
        raise ValueError(
            f"image_multipliers: the cell is {widths[axis]:.3g} A thin along axis {axis}: "
            f"{n[axis]:.3g} images per side would reach r_cut = {r_cut} A; the cell is nearly "
            "singular (check its lattice vectors)"
        )
    return n.astype(np.int64)


_MAX_IMAGES = 1000  # periodic copies per side and axis beyond which a cell is refused


def check_r_cut(r_cut: object, where: str) -> None:
    """``ValueError`` unless a concrete ``r_cut`` is a finite number > 0 (Angstrom); traced
    values pass. NaN gave no images (an empty list), inf an int64-min count, and a negative
    cutoff was squared into a positive one."""
    if isinstance(r_cut, jax.core.Tracer):
        return
    ok = isinstance(r_cut, int | float | np.integer | np.floating) and not isinstance(
        r_cut, bool | np.bool_
    )
    if not (ok and np.isfinite(r_cut) and r_cut > 0):
        raise ValueError(f"{where}: r_cut must be a finite number > 0 (Angstrom), got {r_cut!r}")


def image_shifts(cell: np.ndarray, r_cut: float, pbc: object = (True, True, True)) -> np.ndarray:
    """Integer lattice shifts [M, 3] of all periodic images within reach of ``r_cut``
    (Angstrom) in ``cell`` [3, 3] (rows, Angstrom), (0, 0, 0) first."""
    return lattice_shifts(image_multipliers(cell, r_cut, pbc))


def lattice_shifts(multipliers: object) -> np.ndarray:
    """Integer lattice shifts [M, 3] for ``multipliers`` [3] periodic copies on each side of
    each axis (e.g. :func:`image_multipliers`), (0, 0, 0) first."""
    axes = [np.concatenate([np.arange(0, k + 1), np.arange(-k, 0)]) for k in multipliers]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid.astype(np.int32)


def wrap_positions(
    positions: np.ndarray, cell: np.ndarray, pbc: object = (True, True, True)
) -> np.ndarray:
    """Wrap positions [N, 3] (Angstrom) into ``cell`` [3, 3] (rows, Angstrom) along periodic
    axes; returns [N, 3] Angstrom (host side, float64; the non-periodic rows may be zero,
    as in ase's slabs)."""
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    cell = complete_nonperiodic(np.asarray(cell, np.float64), pbc)
    frac = np.linalg.solve(cell.T, np.asarray(positions, np.float64).T).T
    frac = np.where(pbc, frac - np.floor(frac), frac)
    # floating point can leave exactly 1.0 after the subtraction
    frac = np.where(pbc & (frac >= 1.0), 0.0, frac)
    return frac @ cell


def complete_nonperiodic(
    cell: np.ndarray | jax.Array, pbc: object = (True, True, True)
) -> np.ndarray | jax.Array:
    """``cell`` [3, 3] (Angstrom) with every non-periodic row replaced by a unit vector
    orthogonal to the periodic rows and to each other (traceable; a host array gives NumPy).

    A non-periodic row carries no physics (no image lies along it), but it is often zero
    (ase's slabs) or a vacuum length; this completion makes the fractional coordinate along
    it the distance (Angstrom) along the plane's normal, and the perpendicular widths of the
    periodic axes the in-plane ones. All rows non-periodic give the identity.
    """
    xp = jnp if isinstance(cell, jax.Array) else np
    cell = cell if xp is jnp else np.asarray(cell, dtype=np.float64)
    pbc = tuple(bool(p) for p in np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)))
    periodic = [i for i in range(3) if pbc[i]]
    unit = lambda v: v / xp.linalg.norm(v)
    if len(periodic) == 3:
        return cell
    if not periodic:
        return xp.eye(3, dtype=cell.dtype)
    rows = [cell[i] for i in range(3)]
    if len(periodic) == 2:
        rows[pbc.index(False)] = unit(xp.cross(cell[periodic[0]], cell[periodic[1]]))
    else:  # a wire: two orthonormal vectors around its axis
        v = unit(cell[periodic[0]])
        trial = xp.eye(3, dtype=cell.dtype)[xp.argmin(xp.abs(v))]
        u1 = unit(xp.cross(v, trial))
        missing = [i for i in range(3) if not pbc[i]]
        rows[missing[0]], rows[missing[1]] = u1, xp.cross(v, u1)
    return xp.stack(rows)
