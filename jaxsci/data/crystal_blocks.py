"""Random crystal specimens for multislice simulation, built with ase.

:func:`crystal_block` cuts a rectangular box ``[0, Lx) x [0, Ly) x [0, thickness)`` (Å)
out of a perfect bulk crystal from :data:`MATERIALS`, with a zone axis ``[uvw]`` along
``+z`` (the beam direction), a rotation about ``z`` and a random translation of the
lattice; :func:`slice_block` bins its atoms into ``n_slices`` slabs along ``z`` as padded
arrays (atomic number ``Z = 0`` marks padding) for jit-compiled potential/multislice code.

The box is meant to be used as a periodic cell in x-y (as multislice FFTs do), but its
sides are in general not lattice periods (arbitrary rotation, arbitrary Lx, Ly): the
periodic images do not join up, so along the cell edges ``x = 0 | Lx`` and ``y = 0 | Ly``
there are *seams*, where atoms across the boundary may sit too close or too far apart
(a planar defect in the periodic specimen, up to one interatomic distance wide). Make the
box a few Å larger than the probed area and keep the probes away from the edges if the
seams matter. Likewise ``z = 0`` and ``z = thickness`` cut through the lattice wherever
they fall (no surface relaxation, no terminating layer chosen).

Everything is deterministic given the ``numpy.random.Generator``; the draws are, in order:
the zone axis (only when ``zone_axis=None``), the in-plane rotation (only when
``rotation=None``), the lattice translation (3 uniforms, always).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import NamedTuple

import jax
import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.spacegroup import crystal

__all__ = [
    "LATTICE_CONSTANTS",
    "MATERIALS",
    "ZONE_AXES",
    "CrystalBlock",
    "SlicedBlock",
    "bulk_density",
    "crystal_block",
    "material_cell",
    "slice_block",
    "zone_axis_rotation",
]

LATTICE_CONSTANTS: dict[str, float] = {  # cubic lattice constants (Å)
    "Pt": 3.92,  # fcc
    "Si": 5.431,  # diamond
    "GaAs": 5.653,  # zincblende
    "MgO": 4.212,  # rocksalt
    "W": 3.165,  # bcc
    "SrTiO3": 3.905,  # cubic perovskite, Pm-3m (221)
}
MATERIALS: tuple[str, ...] = tuple(LATTICE_CONSTANTS)
ZONE_AXES: tuple[tuple[int, int, int], ...] = ((0, 0, 1), (0, 1, 1), (1, 1, 1))  # random choices


def material_cell(material: str) -> Atoms:
    """Conventional (cubic) unit cell of ``material`` as ``ase.Atoms`` (cell in Å)."""
    if material not in LATTICE_CONSTANTS:
        raise ValueError(f"unknown material {material!r}; known: {', '.join(MATERIALS)}")
    a = LATTICE_CONSTANTS[material]
    if material == "SrTiO3":
        return crystal(
            ["Sr", "Ti", "O"],
            basis=[(0.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, 0.5, 0.0)],
            spacegroup=221,
            cellpar=[a, a, a, 90, 90, 90],
        )
    structure = {"Pt": "fcc", "Si": "diamond", "GaAs": "zincblende", "MgO": "rocksalt", "W": "bcc"}
    return bulk(material, structure[material], a=a, cubic=True)


def bulk_density(material: str) -> float:
    """Number density of the bulk crystal (atoms per Å³)."""
    cell = material_cell(material)
    return len(cell) / abs(cell.get_volume())


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=("positions", "numbers"),
    meta_fields=("material", "zone_axis", "rotation", "extent", "thickness"),
)
@dataclass(frozen=True, eq=False)  # identity: array fields do not compare
class CrystalBlock:
    """A box of crystal, ``[0, Lx) x [0, Ly) x [0, thickness)`` Å, beam along ``+z``.

    A pytree: ``positions`` and ``numbers`` are its leaves; the rest is static (hashable,
    part of the tree structure), so ``n_atoms`` and ``volume`` stay Python numbers under
    ``jit``.

    Attributes:
      positions: ``[N, 3]`` Cartesian ``(x, y, z)`` in Å, sorted by ``z`` (read-only).
      numbers: ``[N]`` atomic numbers (read-only).
      material: name in :data:`MATERIALS`.
      zone_axis: ``(u, v, w)``, lattice direction ``u a1 + v a2 + w a3`` of the conventional
        cell that points along ``+z``.
      rotation: in-plane rotation about ``z`` (radians, in ``[0, 2 pi)`` when drawn).
      extent: ``(Ly, Lx)`` in Å (image convention: rows are y).
      thickness: extent along z (Å).
    """

    positions: np.ndarray
    numbers: np.ndarray
    material: str
    zone_axis: tuple[int, int, int]
    rotation: float
    extent: tuple[float, float]
    thickness: float

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def volume(self) -> float:
        """Box volume ``Lx * Ly * thickness`` (Å³)."""
        return float(self.extent[0] * self.extent[1] * self.thickness)


class SlicedBlock(NamedTuple):
    """Atoms binned into slabs along z, zero-padded to ``M`` atoms per slab.

    positions: ``[n_slices, M, 2]`` float32 ``(x, y)`` in Å (0 in padding rows);
    numbers: ``[n_slices, M]`` int32 atomic numbers, ``0`` in padding rows.
    """

    positions: np.ndarray
    numbers: np.ndarray


def zone_axis_rotation(cell: np.ndarray, zone_axis: Sequence[int]) -> np.ndarray:
    """Proper rotation ``R`` (``[3, 3]``) taking the lattice direction ``zone_axis`` to ``+z``.

    Rows of ``R`` are the new x, y, z axes in the crystal frame: ``z`` along
    ``zone_axis @ cell``, ``x`` along the component perpendicular to it of whichever cell
    vector is least parallel to it (ties: first one), ``y = z cross x``. For cubic cells:
    ``[001] -> x = [100]``, ``[011] -> x = [100]``, ``[111] -> x ∥ [2 -1 -1]``.
    Apply as ``positions @ R.T``.
    """
    cell = np.asarray(cell, dtype=float)
    d = np.asarray(zone_axis, dtype=float) @ cell
    ez = d / np.linalg.norm(d)
    unit = cell / np.linalg.norm(cell, axis=1, keepdims=True)
    ref = cell[int(np.argmin(np.round(np.abs(unit @ ez), 9)))]  # rounded: ties -> first
    ex = ref - (ref @ ez) * ez
    ex /= np.linalg.norm(ex)
    ey = np.cross(ez, ex)
    return np.stack([ex, ey, ez])


def _check_zone_axis(zone_axis: object) -> tuple[int, int, int]:
    try:
        axis = tuple(zone_axis)  # type: ignore[arg-type]
    except TypeError:
        axis = ()
    if len(axis) != 3 or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in axis):
        raise ValueError(f"zone_axis must be three integers (u, v, w), got {zone_axis!r}")
    if not any(axis):
        raise ValueError("zone_axis must not be (0, 0, 0)")
    return (int(axis[0]), int(axis[1]), int(axis[2]))


def crystal_block(
    material: str,
    *,
    extent: tuple[float, float],
    thickness: float,
    zone_axis: Sequence[int] | None = (0, 0, 1),
    rotation: float | None = None,
    rng: np.random.Generator,
    min_distance: float | None = None,
) -> CrystalBlock:
    """Cut a box of ``material`` with ``zone_axis`` along z (see the module docstring).

    Args:
      material: a name in :data:`MATERIALS`.
      extent: ``(Ly, Lx)`` box size in Å (both > 0).
      thickness: box size along z in Å (> 0).
      zone_axis: integer ``(u, v, w)`` direction of the conventional cell put along ``+z``;
        ``None`` draws one of :data:`ZONE_AXES` uniformly.
      rotation: rotation about z (radians) applied after the alignment; ``None`` draws it
        uniformly in ``[0, 2 pi)``.
      rng: the source of all randomness (zone axis, rotation, lattice translation).
      min_distance: if given (Å), the seams are merged for use as a periodic x-y cell: an
        atom closer than this, across a seam (minimum image in x and y), to an atom before
        it in the returned order is dropped; pairs inside the box are never dropped. Pick
        it below the material's shortest bond (e.g. 1.5 Å for all of :data:`MATERIALS`):
        seam pairs closer than a bond are the defect merged. ``None`` keeps every atom.

    Returns:
      :class:`CrystalBlock` with every atom of the rotated, translated lattice whose
      position lies in ``[0, Lx) x [0, Ly) x [0, thickness)``. Its expected number of atoms
      (over the random translation) is exactly ``bulk_density * Lx * Ly * thickness``
      (less the seam atoms that ``min_distance`` drops).
    """
    cell_atoms = material_cell(material)
    try:
        ly, lx = (float(v) for v in extent)
    except (TypeError, ValueError):
        raise ValueError(f"extent must be (Ly, Lx) in Angstrom, got {extent!r}") from None
    thickness = float(thickness)
    if not (ly > 0 and lx > 0 and np.isfinite(ly) and np.isfinite(lx)):
        raise ValueError(f"extent must be positive and finite, got {extent!r}")
    if not (thickness > 0 and np.isfinite(thickness)):
        raise ValueError(f"thickness must be positive and finite, got {thickness!r}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")

    if zone_axis is None:
        axis = ZONE_AXES[int(rng.integers(len(ZONE_AXES)))]
    else:
        axis = _check_zone_axis(zone_axis)
    angle = float(rng.uniform(0.0, 2.0 * np.pi)) if rotation is None else float(rotation)
    if not np.isfinite(angle):
        raise ValueError(f"rotation must be finite, got {rotation!r}")
    shift_frac = rng.random(3)

    cell = np.asarray(cell_atoms.cell, dtype=float)  # rows a1, a2, a3 (Å)
    basis = cell_atoms.get_positions()  # [n_basis, 3] (Å)
    c, s = np.cos(angle), np.sin(angle)
    r_plane = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    rot = r_plane @ zone_axis_rotation(cell, axis)  # crystal frame -> box frame
    shift = shift_frac @ cell  # random lattice translation (crystal frame)

    # Box corners in fractional coordinates of the crystal frame -> integer cell range.
    corners = np.array([[x, y, z] for x in (0, lx) for y in (0, ly) for z in (0, thickness)])
    frac = (corners @ rot - shift) @ np.linalg.inv(cell)  # (R^T p - shift) in cell coords
    basis_frac = basis @ np.linalg.inv(cell)
    lo = np.floor(frac.min(axis=0) - basis_frac.max(axis=0)).astype(int) - 1
    hi = np.ceil(frac.max(axis=0) - basis_frac.min(axis=0)).astype(int) + 1

    upper = np.array([lx, ly, thickness])
    js = np.arange(lo[1], hi[1] + 1)
    ks = np.arange(lo[2], hi[2] + 1)
    jk = np.stack(np.meshgrid(js, ks, indexing="ij"), axis=-1).reshape(-1, 2)
    keep_pos, keep_num = [], []
    numbers = cell_atoms.get_atomic_numbers()
    for i in range(lo[0], hi[0] + 1):  # one plane of cells at a time: bounded memory
        ijk = np.concatenate([np.full((len(jk), 1), i), jk], axis=1)
        origins = ijk @ cell + shift  # [n_cells, 3]
        pos = (origins[:, None, :] + basis[None, :, :]) @ rot.T  # [n_cells, n_basis, 3]
        inside = np.all((pos >= 0.0) & (pos < upper), axis=-1)
        keep_pos.append(pos[inside])
        keep_num.append(np.broadcast_to(numbers, inside.shape)[inside])
    positions = np.concatenate(keep_pos, axis=0)
    nums = np.concatenate(keep_num, axis=0).astype(np.int32)
    order = np.lexsort((positions[:, 0], positions[:, 1], positions[:, 2]))
    positions, nums = positions[order], nums[order]
    if min_distance is not None:
        keep = _seam_keep(positions, (lx, ly), float(min_distance))
        positions, nums = positions[keep], nums[keep]
    positions.setflags(write=False)
    nums.setflags(write=False)
    return CrystalBlock(
        positions=positions,
        numbers=nums,
        material=material,
        zone_axis=axis,
        rotation=angle,
        extent=(ly, lx),
        thickness=thickness,
    )


def _seam_keep(positions: np.ndarray, extent_xy: tuple[float, float], d: float) -> np.ndarray:
    """Mask of atoms to keep: drop each atom within ``d`` (x-y minimum image, plain z) of an
    earlier kept one *across a seam* (the pair's minimum image wraps). Only atoms within
    ``d`` of an x or y face can pair across a seam, so only those are compared; pairs
    inside the box are the crystal's own and never dropped."""
    if not (np.isfinite(d) and d > 0):
        raise ValueError(f"min_distance must be positive and finite (Angstrom), got {d!r}")
    box = np.asarray(extent_xy)
    xy = positions[:, :2]
    near = np.flatnonzero(np.any((xy < d) | (xy >= box - d), axis=1))
    keep = np.ones(len(positions), bool)
    for a, i in enumerate(near):
        if not keep[i]:
            continue
        j = near[a + 1 :]
        j = j[keep[j]]
        delta = positions[j] - positions[i]
        wrap = np.round(delta[:, :2] / box)
        delta[:, :2] -= box * wrap
        crosses = np.any(wrap != 0, axis=1)  # a pair inside the box is the crystal's own
        keep[j[crosses & (np.einsum("ij,ij->i", delta, delta) < d * d)]] = False
    return keep


def slice_block(block: CrystalBlock, n_slices: int, *, max_atoms: int | None = None) -> SlicedBlock:
    """Bin the atoms of ``block`` into ``n_slices`` slabs of thickness ``thickness / n_slices``.

    Atom ``n`` goes to slab ``floor(z_n / dz)`` (exactly one slab each). Rows beyond a
    slab's atoms are padding: ``Z = 0`` and position ``(0, 0)``.

    Args:
      block: from :func:`crystal_block`.
      n_slices: number of slabs, >= 1.
      max_atoms: padded size ``M`` of each slab; ``None`` uses the fullest slab's count.
        ``ValueError`` (naming the size needed) if a slab holds more.

    Returns:
      :class:`SlicedBlock` ``(positions [n_slices, M, 2] float32 (x, y) Å,
      numbers [n_slices, M] int32)``.
    """
    if not isinstance(n_slices, Integral) or isinstance(n_slices, bool) or n_slices < 1:
        raise ValueError(f"n_slices must be an int >= 1, got {n_slices!r}")
    n_slices = int(n_slices)
    z = block.positions[:, 2]
    idx = np.clip(np.floor(z * (n_slices / block.thickness)).astype(np.int64), 0, n_slices - 1)
    counts = np.bincount(idx, minlength=n_slices)
    needed = int(counts.max(initial=0))
    if max_atoms is None:
        m = needed
    else:
        if not isinstance(max_atoms, Integral) or isinstance(max_atoms, bool) or max_atoms < 0:
            raise ValueError(f"max_atoms must be an int >= 0 or None, got {max_atoms!r}")
        m = int(max_atoms)
        if needed > m:
            raise ValueError(
                f"a slice holds {needed} atoms but max_atoms={m}: need max_atoms >= {needed}"
            )
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(order)) - starts[sorted_idx]  # position within its slab
    positions = np.zeros((n_slices, m, 2), dtype=np.float32)
    numbers = np.zeros((n_slices, m), dtype=np.int32)
    positions[sorted_idx, rank] = block.positions[order, :2]
    numbers[sorted_idx, rank] = block.numbers[order]
    return SlicedBlock(positions=positions, numbers=numbers)
