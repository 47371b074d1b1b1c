"""Neighbor lists (jax-md style): dense masks for small systems, a cell list for large ones.

Every list is expressed as per-atom *neighbour slots*: for atom ``i`` and slot ``n``, the
neighbour's index ``index[i, n]`` (``N`` marks an empty slot) and its integer lattice shift
``shift[i, n]`` so that the displacement is ``R[index] + shift @ cell - R[i]``. An atom's own
periodic images are neighbours (``index == i`` with a non-zero shift), as in DScribe.

* :func:`dense_slots` - every atom (times every periodic image) is a slot: O(N^2 M) memory,
  no capacity to overflow; right for clusters and small cells.
* :func:`prune_slots` - keep the ``capacity`` nearest slots within ``r_cut`` (top-k).
* :func:`cell_list_allocate` / :func:`cell_list_update` - a cell list for large systems,
  periodic along any of the axes (bulk, slabs, wires, free clusters). ``allocate`` runs on
  the host and sizes the buffers; ``update`` is pure and jittable and sets ``did_overflow``
  when a buffer was too small; the host checks the flag and answers by calling ``allocate``
  again. The same convention holds for a ``capacity`` of :func:`prune_slots` (its flag) and
  of ``ACSF.fn`` (``return_overflow=True``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsci._checks import is_int_at_least
from jaxsci.geometry.cell import (
    check_r_cut,
    complete_nonperiodic,
    image_multipliers,
    image_shifts,
    lattice_shifts,
    perpendicular_widths,
    validate_cell,
    wrap_positions,
)

__all__ = [
    "CellListSpec",
    "NeighborList",
    "Slots",
    "cell_list_allocate",
    "cell_list_spec",
    "cell_list_update",
    "cell_list_usable",
    "count_within",
    "dense_slots",
    "image_slots",
    "max_neighbor_count",
    "neighbor_capacity",
    "neighbor_list_slots",
    "prune_slots",
]

Array = jnp.ndarray

_OFFSETS = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=np.int32)


class Slots(NamedTuple):
    """Neighbour slots of each centre atom.

    disp: [C, K, 3] displacement neighbour - centre (Angstrom); index: [C, K] int32 neighbour
    atom index (``N`` for an empty slot); valid: [C, K] bool, slot holds a real neighbour
    candidate (it may still lie beyond ``r_cut``).
    """

    disp: Array
    index: Array
    valid: Array


def dense_slots(
    positions: Array,
    cell: Array | None = None,
    shifts: Array | None = None,
    mask: Array | None = None,
) -> Slots:
    """All atoms (and all their periodic images) as slots of every atom.

    positions: [N, 3]; cell: [3, 3] or None (free cluster); shifts: [M, 3] integer lattice
    shifts with (0, 0, 0) first (see :func:`image_shifts`; may be traced); mask: [N] bool for
    padding atoms. Returns slots with K = N * M; self (zero shift) and masked atoms are invalid.
    """
    n = positions.shape[0]
    if mask is None:
        mask = jnp.ones((n,), dtype=bool)
    diff = positions[None, :, :] - positions[:, None, :]  # [N, N, 3]  R_j - R_i
    eye = jnp.eye(n, dtype=bool)
    pair_ok = mask[:, None] & mask[None, :]
    if cell is None or shifts is None:
        valid = pair_ok & ~eye
        index = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (n, n))
        return Slots(diff, index, valid)
    m = shifts.shape[0]
    offs = jnp.asarray(shifts).astype(positions.dtype) @ cell  # [M, 3]
    disp = diff[:, None, :, :] + offs[None, :, None, :]  # [N, M, N, 3]
    self_pair = (jnp.arange(m) == 0)[None, :, None] & eye[:, None, :]
    valid = pair_ok[:, None, :] & ~self_pair
    index = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (n, m, n))
    return Slots(disp.reshape(n, m * n, 3), index.reshape(n, m * n), valid.reshape(n, m * n))


def count_within(slots: Slots, r_cut: float) -> Array:
    """Number of valid slots within ``r_cut`` (Angstrom) per centre: [C] int from slots
    of [C, K] neighbours."""
    check_r_cut(r_cut, "count_within")
    r2 = jnp.sum(slots.disp**2, axis=-1)
    return jnp.sum(slots.valid & (r2 <= r_cut * r_cut), axis=-1)


def max_neighbor_count(
    positions: np.ndarray,
    cell: np.ndarray,
    shifts: np.ndarray,
    r_cut: float,
    mask: np.ndarray | None = None,
) -> int:
    """Largest number of neighbours within ``r_cut`` (periodic images included) of any atom
    (host side, float64). positions: [N, 3] inside the cell (Angstrom); shifts: [M, 3]
    integer lattice shifts that reach r_cut (:func:`image_shifts`); mask: [N] bool, atoms
    that count. Atoms are assumed distinct (the zero-shift self pair is the one removed)."""
    check_r_cut(r_cut, "max_neighbor_count")
    pos = np.asarray(positions, dtype=np.float64)
    if mask is not None:
        pos = pos[np.asarray(mask, bool)]
    offs = np.asarray(shifts, dtype=np.float64) @ np.asarray(cell, dtype=np.float64)
    most = 0
    for start in range(0, len(pos), 256):  # [256, M, N, 3] at a time
        d = pos[None, None, :, :] + offs[None, :, None, :] - pos[start : start + 256, None, None]
        count = np.sum(np.sum(d * d, axis=-1) <= r_cut * r_cut, axis=(1, 2)) - 1  # minus self
        most = max(most, int(count.max()))
    return most


def neighbor_capacity(
    n_atoms: int,
    cell: np.ndarray,
    r_cut: float,
    multiplier: float = 1.2,
    extra: int = 8,
    *,
    positions: np.ndarray | None = None,
    pbc: object = (True, True, True),
) -> int:
    """Neighbour slots per atom (periodic images included) for :func:`prune_slots` /
    ``ACSF.fn(capacity=...)``: ``multiplier`` times a neighbour count plus ``extra``,
    rounded up to 8. ``cell``: [3, 3] Angstrom; ``r_cut`` Angstrom.

    With ``positions`` [n_atoms, 3] (Angstrom, host side) the count is the largest exact
    one of any atom (:func:`max_neighbor_count`), so the capacity is never too small for
    that structure (slabs, wires and vacuum-padded cells included; ``pbc`` gives the
    periodic axes). Without them (e.g. a search, where positions are not known in advance)
    the count is the mean for ``n_atoms`` filling a fully periodic ``cell`` uniformly
    (density x sphere volume): measured for 4-32 Cu atoms per cell at r_cut 6 A (mean 77):
    fcc 78 and the most crowded of 300 uniformly random placements at most 88-96 (counts
    rounded up to 8), against 104 from this formula. That estimate is too small for a slab
    or cluster in a cell with vacuum (the density is higher where the atoms are), so a
    partially periodic ``pbc`` needs ``positions``. Neighbours beyond a capacity are the
    farthest ones; ``ACSF.fn`` raises (concrete input) or flags (under jit) the overflow.
    """
    pbc = tuple(bool(p) for p in np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)))
    check_r_cut(r_cut, "neighbor_capacity")
    if not is_int_at_least(n_atoms, 1):
        raise ValueError(f"neighbor_capacity: n_atoms must be an int >= 1, got {n_atoms!r}")
    if not (np.isfinite(multiplier) and multiplier > 0) or not is_int_at_least(extra, 0):
        raise ValueError(
            f"neighbor_capacity: need multiplier > 0 and an int extra >= 0, got {multiplier!r}, "
            f"{extra!r}"
        )
    try:  # a clear error for a malformed or singular cell
        full = validate_cell(cell, pbc)
    except ValueError as err:
        raise ValueError(f"neighbor_capacity: {err}") from err
    if positions is not None:
        pos = np.asarray(positions, dtype=np.float64)
        if pos.shape != (n_atoms, 3):
            raise ValueError(
                f"neighbor_capacity: positions must be a finite [{n_atoms}, 3] array "
                f"(Angstrom), got shape {pos.shape}"
            )
        if not np.all(np.isfinite(pos)):
            raise ValueError("neighbor_capacity: positions contain NaN or inf")
        count = max_neighbor_count(
            wrap_positions(pos, full, pbc), full, image_shifts(full, r_cut, pbc), r_cut
        )
    else:
        if not all(pbc):
            raise ValueError(
                f"neighbor_capacity: a partially periodic cell (pbc={pbc}) has no bulk "
                "density to estimate from: pass positions= to count the neighbours"
            )
        volume = abs(float(np.linalg.det(np.asarray(cell, np.float64))))
        if volume <= 0 or not np.isfinite(volume):
            raise ValueError(f"neighbor_capacity: need a non-singular cell (got volume {volume})")
        count = n_atoms / volume * (4.0 / 3.0) * np.pi * r_cut**3
    return int(np.ceil((multiplier * count + extra) / 8.0) * 8)


def prune_slots(slots: Slots, r_cut: float, capacity: int) -> tuple[Slots, Array]:
    """Keep the ``capacity`` nearest slots within ``r_cut`` (Angstrom): slots [C, K] ->
    ([C, capacity] slots, overflowed flag: a bool scalar, True when a centre had more)."""
    if capacity >= slots.disp.shape[1]:
        return slots, jnp.asarray(False)
    r2 = jnp.sum(slots.disp**2, axis=-1)
    inside = slots.valid & (r2 <= r_cut * r_cut)
    score = jnp.where(inside, -r2, -jnp.inf)
    _, idx = jax.lax.top_k(score, capacity)
    take = lambda a: jnp.take_along_axis(a, idx if a.ndim == 2 else idx[..., None], axis=1)
    pruned = Slots(take(slots.disp), take(slots.index), take(inside))
    overflow = jnp.any(jnp.sum(inside, axis=-1) > capacity)
    return pruned, overflow


@dataclasses.dataclass(frozen=True)
class CellListSpec:
    """Static (host-chosen) sizes of a cell list; hashable so it can be a jit static argument."""

    r_cut: float
    n_bins: tuple[int, int, int]
    bin_capacity: int
    capacity: int
    pbc: tuple[bool, bool, bool]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)  # identity: array fields do not compare
class NeighborList:
    """Neighbour slots from a cell list.

    index: [N, K] int32 (``N`` = empty); shift: [N, K, 3] int32 lattice shifts;
    did_overflow: bool scalar, True when a bin or the per-atom capacity was too small (the
    list is then incomplete: reallocate on the host); spec: the static sizes.
    """

    index: Array
    shift: Array
    did_overflow: Array
    spec: CellListSpec = dataclasses.field(metadata=dict(static=True))


def cell_list_usable(cell: np.ndarray, r_cut: float, pbc: object = (True, True, True)) -> bool:
    """Whether a cell list can serve ``cell`` [3, 3] (Angstrom, validated): every periodic
    axis is at least ``r_cut`` wide (perpendicular, in-plane for slabs and wires; see
    :func:`jaxsci.geometry.complete_nonperiodic`). Non-periodic axes always can."""
    check_r_cut(r_cut, "cell_list_usable")
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    widths = perpendicular_widths(complete_nonperiodic(np.asarray(cell, np.float64), pbc))
    return bool(np.all(widths[pbc] >= r_cut))


def cell_list_spec(
    positions: np.ndarray,
    cell: np.ndarray,
    r_cut: float,
    pbc: object = (True, True, True),
    capacity_multiplier: float = 1.25,
) -> CellListSpec:
    """Choose bin counts and capacities on the host for ``positions`` [N, 3] (Angstrom) in
    ``cell`` [3, 3] (lattice vectors as rows, Angstrom), for ``r_cut`` (Angstrom).

    Bins are at least ``r_cut`` wide (perpendicular), so neighbours are within +-1 bin.
    Periodic axes are binned over the cell (wrapping around); non-periodic ones (slabs,
    wires, ``pbc`` all False for a free cluster) over the positions' extent, without wrap
    (their cell row is ignored, see :func:`jaxsci.geometry.complete_nonperiodic`).
    ``capacity_multiplier`` (>= 1) scales the measured bin and neighbour counts.
    Raises ValueError for a non-finite or non-positive ``r_cut``, a ``capacity_multiplier``
    below 1 or not finite, positions that are not [N, 3] or not finite, and when a periodic
    width is below ``r_cut`` (use :func:`dense_slots`). Zero atoms give the smallest spec
    (bin and neighbour capacity 1), whose list is empty.
    """
    if not np.isfinite(r_cut) or r_cut <= 0:
        raise ValueError(f"r_cut must be positive and finite, got {r_cut}")
    if not np.isfinite(capacity_multiplier) or capacity_multiplier < 1:
        raise ValueError(
            f"capacity_multiplier must be finite and >= 1 (it scales the measured bin and "
            f"neighbour counts; below 1 the fresh list would overflow), got {capacity_multiplier}"
        )
    pos = np.asarray(positions)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must be an [N, 3] array (Angstrom), got shape {pos.shape}")
    if not np.all(np.isfinite(pos)):
        bad = np.flatnonzero(~np.all(np.isfinite(pos), axis=1))
        raise ValueError(f"positions contain NaN or inf (atoms {bad[:10].tolist()})")
    pbc = tuple(bool(p) for p in np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)))
    cell = validate_cell(cell, pbc)
    box = complete_nonperiodic(cell, pbc)
    widths = perpendicular_widths(box)
    if not cell_list_usable(cell, r_cut, pbc):
        raise ValueError(
            f"periodic cell widths {np.round(widths[list(pbc)], 3).tolist()} A are below "
            f"r_cut={r_cut}: use dense_slots with image_shifts for such small cells"
        )
    # non-periodic axes: box rows are unit normals, so the fractional coordinate is Angstrom
    extent = np.ptp(pos @ np.linalg.inv(box), axis=0) if len(pos) else np.zeros(3)
    n_bins = tuple(
        int(max(1, np.floor((w if p else e) / r_cut)))
        for w, e, p in zip(widths, extent, pbc, strict=True)
    )
    if len(pos) == 0:  # nothing to measure: an empty list (index and shift [0, 1])
        return CellListSpec(float(r_cut), n_bins, 1, 1, pbc)
    spec0 = CellListSpec(float(r_cut), n_bins, 1, 1, pbc)
    bins = jax.jit(_bin_ids, static_argnames=("spec",))(
        jnp.asarray(positions), jnp.asarray(cell), spec0
    )[0]
    occupancy = np.bincount(np.asarray(bins), minlength=int(np.prod(n_bins)))
    bin_cap = int(np.ceil(occupancy.max() * capacity_multiplier)) + 1
    spec1 = CellListSpec(float(r_cut), n_bins, bin_cap, 27 * bin_cap, pbc)
    counts = _candidates(jnp.asarray(positions), jnp.asarray(cell), spec1)[3]
    capacity = int(np.ceil(int(counts.max()) * capacity_multiplier)) + 1
    return CellListSpec(float(r_cut), n_bins, bin_cap, min(capacity, 27 * bin_cap), pbc)


def cell_list_allocate(
    positions: np.ndarray,
    cell: np.ndarray,
    r_cut: float,
    pbc: object = (True, True, True),
    capacity_multiplier: float = 1.25,
) -> NeighborList:
    """Host side: size the buffers for ``positions`` [N, 3] (Angstrom) and build the first
    list; ValueError for bad input (see :func:`cell_list_spec`). Zero atoms give an empty
    list (``index`` and ``shift`` with N = 0 rows). ``pbc`` may be partial (slabs, wires)."""
    spec = cell_list_spec(positions, cell, r_cut, pbc, capacity_multiplier)
    full = validate_cell(cell, spec.pbc)  # zero rows of non-periodic axes completed
    nbrs = cell_list_update(jnp.asarray(positions), jnp.asarray(full), spec)
    if bool(nbrs.did_overflow):  # cannot happen with freshly measured sizes
        raise RuntimeError("cell list overflowed right after allocation")
    return nbrs


def _bin_ids(positions: Array, cell: Array, spec: CellListSpec) -> tuple[Array, Array, Array]:
    """Flat bin id [N], 3-d bin index [N, 3] and integer wrap offset [N, 3] of each atom.

    Periodic axes: ``n`` equal bins of the cell. Non-periodic axes: bins from the lowest
    atom, ``max(extent / n, r_cut)`` Angstrom wide, the last one open-ended (atoms that
    moved past the allocation's extent land in an edge bin; bins stay >= r_cut wide, so
    the +-1 bin search stays exact); no wrap.
    """
    periodic = jnp.asarray(spec.pbc)
    box = complete_nonperiodic(cell, spec.pbc)
    frac = positions @ jnp.linalg.inv(box)
    wrap = jnp.where(periodic, jnp.floor(frac), 0.0)
    frac = frac - wrap
    nb = jnp.asarray(spec.n_bins, dtype=jnp.int32)
    lo = jnp.min(frac, axis=0, initial=jnp.inf)
    hi = jnp.max(frac, axis=0, initial=-jnp.inf)
    size = jnp.maximum((hi - lo) / nb, spec.r_cut * (1.0 + 1e-6))
    scaled = jnp.where(periodic, frac * nb, (frac - lo) / size)
    b3 = jnp.clip(jnp.floor(scaled).astype(jnp.int32), 0, nb - 1)
    flat = (b3[:, 0] * spec.n_bins[1] + b3[:, 1]) * spec.n_bins[2] + b3[:, 2]
    return flat, b3, wrap.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("spec",))
def _candidates(positions: Array, cell: Array, spec: CellListSpec):
    """Candidates from the 27 neighbouring bins: (index, shift, inside, count, bin_overflow)."""
    n = positions.shape[0]
    n_bins_total = int(np.prod(spec.n_bins))
    flat, b3, wrap = _bin_ids(positions, cell, spec)
    order = jnp.argsort(flat, stable=True)
    sorted_bins = flat[order]
    first = jnp.searchsorted(sorted_bins, sorted_bins, side="left")
    rank = jnp.arange(n) - first
    table = jnp.full((n_bins_total, spec.bin_capacity), n, dtype=jnp.int32)
    table = table.at[sorted_bins, rank].set(order.astype(jnp.int32), mode="drop")
    bin_overflow = jnp.any(rank >= spec.bin_capacity)

    periodic = jnp.asarray(spec.pbc)
    nb = jnp.asarray(spec.n_bins, dtype=jnp.int32)
    nbr3 = b3[:, None, :] + jnp.asarray(_OFFSETS)[None]  # [N, 27, 3]
    cross = jnp.floor_divide(nbr3, nb)  # lattice wrap of the bin
    reach = jnp.all(periodic | (cross == 0), axis=-1)  # [N, 27]: no wrap on open axes
    cross = jnp.where(periodic, cross, 0)
    nbr3 = jnp.clip(nbr3 - cross * nb, 0, nb - 1)
    nbr_flat = (nbr3[..., 0] * spec.n_bins[1] + nbr3[..., 1]) * spec.n_bins[2] + nbr3[..., 2]
    cand = jnp.where(reach[..., None], table[nbr_flat], n)  # [N, 27, cap]
    cand = cand.reshape(n, 27 * spec.bin_capacity)  # (N may be 0)
    cand_cross = jnp.repeat(cross, spec.bin_capacity, axis=1)  # [N, 27 * cap, 3]
    safe = jnp.minimum(cand, n - 1)
    # shift such that R[j] + shift @ cell - R[i] is the image found in the neighbouring bin
    # (zero along non-periodic axes, so their cell rows never enter)
    shift = (cand_cross - wrap[safe] + wrap[:, None, :]).astype(jnp.int32)
    disp = positions[safe] + shift.astype(positions.dtype) @ cell - positions[:, None, :]
    r2 = jnp.sum(disp * disp, axis=-1)
    is_self = (cand == jnp.arange(n)[:, None]) & jnp.all(shift == 0, axis=-1)
    inside = (cand < n) & ~is_self & (r2 <= spec.r_cut**2)
    return cand, shift, inside, jnp.sum(inside, axis=-1), bin_overflow


@functools.partial(jax.jit, static_argnames=("spec",))
def cell_list_update(positions: Array, cell: Array, spec: CellListSpec) -> NeighborList:
    """Pure, jittable: rebuild the neighbour slots for new ``positions`` [N, 3] and ``cell``.

    ``spec`` must be static under jit (it is hashable). Check ``did_overflow`` on the host: it
    is also set when ``cell`` has shrunk so far that a bin of a periodic axis is narrower
    than ``r_cut``, and when ``positions`` or ``cell`` hold NaN or inf (the list is then
    meaningless; the host's reallocation raises ValueError for them). Along non-periodic
    axes the bins follow the atoms (no flag for moving ones, only for crowded bins).
    """
    n = positions.shape[0]
    cand, shift, inside, count, bin_overflow = _candidates(positions, cell, spec)
    k = spec.capacity
    slot = jnp.cumsum(inside, axis=1) - 1
    slot = jnp.where(inside & (slot < k), slot, k)
    rows = jnp.broadcast_to(jnp.arange(n)[:, None], slot.shape)
    index = jnp.full((n, k), n, dtype=jnp.int32).at[rows, slot].set(cand, mode="drop")
    shifts = jnp.zeros((n, k, 3), dtype=jnp.int32).at[rows, slot].set(shift, mode="drop")
    # Bins were sized on the host for the allocation's cell; a cell that has since shrunk
    # (e.g. under a barostat) can make a bin narrower than r_cut, and neighbours two bins
    # away are then missed: flag it as an overflow so the host reallocates.
    widths = perpendicular_widths(complete_nonperiodic(jnp.asarray(cell), spec.pbc))
    narrow = widths / jnp.asarray(spec.n_bins, widths.dtype) < spec.r_cut
    too_narrow = jnp.any(narrow & jnp.asarray(spec.pbc))
    finite = jnp.all(jnp.isfinite(positions)) & jnp.all(jnp.isfinite(cell))
    overflow = bin_overflow | jnp.any(count > k) | too_narrow | ~finite
    return NeighborList(index, shifts, overflow, spec)


def neighbor_list_slots(positions: Array, cell: Array, nbrs: NeighborList) -> Slots:
    """Slots [N, K] of a cell-list neighbour list (differentiable in positions and cell)."""
    n = positions.shape[0]
    safe = jnp.minimum(nbrs.index, n - 1)
    disp = positions[safe] + nbrs.shift.astype(positions.dtype) @ cell - positions[:, None, :]
    return Slots(disp, nbrs.index, nbrs.index < n)


def image_slots(
    positions: Array,
    cell: np.ndarray,
    r_cut: float,
    pbc: object = (True, True, True),
    mask: Array | None = None,
) -> Slots:
    """Dense slots over every periodic image within reach of ``r_cut`` (cell must be concrete).

    ``positions`` [N, 3] and ``cell`` [3, 3] (rows) in Angstrom, ``mask`` [N] bool; returns
    slots of [N, N x images] (displacements in Angstrom).

    The images reach ``r_cut`` from atoms inside the cell. Concrete positions outside it
    (unwrapped coordinates) get as many more images as they stray cells away; traced ones
    must lie inside the cell (wrap them first: :func:`jaxsci.geometry.wrap_positions`), or
    neighbours across the boundary are missed.
    """
    cell = np.asarray(cell, np.float64)
    mult = image_multipliers(cell, r_cut, pbc)
    if not isinstance(positions, jax.core.Tracer) and np.size(positions):
        frac = np.asarray(positions, np.float64) @ np.linalg.inv(complete_nonperiodic(cell, pbc))
        stray = np.floor(frac.max(0)) - np.floor(frac.min(0))  # cells between the extremes
        mult = mult + np.where(mult > 0, stray, 0).astype(mult.dtype)
    shifts = lattice_shifts(mult)
    return dense_slots(positions, jnp.asarray(cell, dtype=positions.dtype), shifts, mask)
