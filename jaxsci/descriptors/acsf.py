"""Atom-centred symmetry functions (Behler), DScribe-compatible and differentiable.

``ACSF(species, r_cut, g2_params, g3_params, g4_params, g5_params, periodic, cutoff)`` takes
DScribe 2.x's parameters with the same meaning and units (eta 1/A^2, Rs and r_cut in
Angstrom, kappa 1/A) and returns DScribe's feature layout (see ``acsf_kernel``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms
from ase.data import atomic_numbers as _ASE_Z
from ase.data import chemical_symbols as _ASE_SYMBOLS

from jaxsci.descriptors.acsf_cluster import acsf_cluster
from jaxsci.descriptors.acsf_kernel import (
    KernelConfig,
    acsf_from_slots,
    chunked_centres,
    validate_params,
)
from jaxsci.descriptors.batching import Batch, bucket_size, pad_structures
from jaxsci.descriptors.cutoff import CUTOFFS
from jaxsci.geometry.cell import (
    complete_nonperiodic,
    image_multipliers,
    image_shifts,
    lattice_shifts,
    perpendicular_widths,
    validate_cell,
    wrap_positions,
)
from jaxsci.geometry.neighbors import (
    NeighborList,
    cell_list_allocate,
    cell_list_usable,
    dense_slots,
    max_neighbor_count,
    neighbor_list_slots,
    prune_slots,
)

__all__ = ["ACSF"]

Array = jnp.ndarray
#: Symmetry-function parameters: rows of numbers (array-like), or None for none.
Params = Sequence[Sequence[float]] | np.ndarray | None

#: centres processed together; bounds the [chunk, K, K] triplet tensors of large systems.
CENTRE_CHUNK = 128
#: structures evaluated together by ``create`` on lists of free clusters.
STRUCTURE_CHUNK = 16
#: periodic systems with at least this many atoms (and cells wider than r_cut) use a cell list.
CELL_LIST_MIN_ATOMS = 128
#: free clusters above this size use a cell list instead of the dense O(N^2)-memory path.
LARGE_CLUSTER = 512
#: largest [chunk, K, K] triplet tensor of the per-triplet kernel (elements).
TRIPLET_BUDGET = 1 << 21


def _whole_numbers(a: np.ndarray) -> bool:
    """Every entry of ``a`` is an integer value (not a bool): usable as an index."""
    return a.size == 0 or (a.dtype != bool and bool(np.all(np.mod(a, 1) == 0)))


def _check_pbc_and_positions(positions: Array, pbc: object) -> None:
    """ValueError for a ``pbc`` that is not one or three bools, or for concrete positions
    with NaN or inf (padding rows too: a NaN anywhere poisons the masked sums of the
    others)."""
    if np.shape(pbc) not in ((), (3,)):
        raise ValueError(f"pbc must be a bool or 3 bools, got {pbc!r}")
    if not isinstance(positions, jax.core.Tracer) and not np.all(np.isfinite(positions)):
        raise ValueError("positions contain NaN or inf (pad with finite values)")


def _check_cell_given(periodic: bool, cell: object, pbc: object, name: str) -> None:
    """ValueError for a periodic descriptor called with periodic axes but no cell: the
    features would silently be those of a free cluster."""
    if periodic and cell is None and bool(np.any(np.asarray(pbc, dtype=bool))):
        raise ValueError(
            f"this ACSF is periodic and pbc={tuple(np.broadcast_to(pbc, (3,)).tolist())}, but "
            f"no {name} was given: pass {name} (Angstrom), or pbc=(False, False, False) for a "
            "free cluster"
        )


def _to_atomic_number(x) -> int:
    if isinstance(x, bool | np.bool_):
        raise ValueError(f"unknown chemical element {x!r}")
    if isinstance(x, str):
        if x not in _ASE_Z:
            raise ValueError(f"unknown chemical element {x!r}")
        return int(_ASE_Z[x])
    z = int(x)
    if z != x or not 0 < z < len(_ASE_SYMBOLS):
        raise ValueError(f"unknown atomic number {x!r}")
    return z


def _dense_features(positions, species, mask, cell, shifts, cfg: KernelConfig, capacity=None):
    """[N, F] features of one structure from dense (all-atoms x images) slots, and a bool
    scalar: an atom had more than ``capacity`` neighbours (the farthest were dropped).

    With ``capacity`` the image slots are pruned to the nearest ``capacity`` within r_cut;
    centres are processed in chunks small enough that the [chunk, K, K] triplet tensors
    stay within ``TRIPLET_BUDGET`` elements.
    """
    overflow = jnp.asarray(False)
    if cell is None:
        return acsf_cluster(positions, species, mask, cfg), overflow
    slots = dense_slots(positions, cell, shifts, mask)
    if capacity is not None and capacity < slots.disp.shape[1]:
        slots, overflow = prune_slots(slots, cfg.r_cut, capacity)
    nb_species = species[slots.index]
    k = slots.disp.shape[1]
    chunk = max(1, min(CENTRE_CHUNK, TRIPLET_BUDGET // (k * k)))
    out = chunked_centres(
        lambda d, s, v: acsf_from_slots(slots._replace(disp=d, valid=v), s, cfg),
        positions.shape[0],
        chunk,
        slots.disp,
        nb_species,
        slots.valid,
    )
    return jnp.where(mask[:, None], out, 0.0), overflow


def _check_distinct_sites(pos: np.ndarray, cell: np.ndarray | None, pbc: tuple) -> None:
    """ValueError when two atoms sit on one site (a pair at r = 0): identical positions,
    or, along periodic axes, positions one lattice vector apart (fractional coordinates
    equal modulo 1, to 1e-9). O(N log N)."""
    if len(pos) < 2:
        return
    key = pos
    if cell is not None:
        key = np.linalg.solve(cell.T, pos.T).T
        periodic = np.asarray(pbc)
        key[:, periodic] = np.round(key[:, periodic] % 1.0, 9) % 1.0
    srt = key[np.lexsort(key.T[::-1])]
    if np.any(np.all(srt[1:] == srt[:-1], axis=1)):
        where = "the same position" if cell is None else "the same site (modulo the cell)"
        raise ValueError(f"two atoms sit at {where}")


def _check_capacity(capacity) -> None:
    if capacity is not None and (
        isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1
    ):
        raise ValueError(f"capacity must be a positive integer or None, got {capacity!r}")


def _check_images(images, pbc) -> np.ndarray:
    """``images`` as an int64 [3] array (zero along non-periodic axes); ValueError unless it
    is three non-negative integers (or one, for every axis)."""
    arr = np.asarray(images)
    if arr.dtype.kind not in "iu" or arr.ndim > 1 or arr.size not in (1, 3) or np.any(arr < 0):
        raise ValueError(
            f"images must be three non-negative integers (periodic copies per axis, e.g. a "
            f"Batch's .images or jaxsci.geometry.image_multipliers), got {images!r}"
        )
    periodic = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    return np.where(periodic, np.broadcast_to(arr, (3,)), 0).astype(np.int64)


def _host_capacity(positions, cell, shifts, r_cut: float, mask=None) -> int:
    """Largest number of neighbours (images included) within r_cut, as slots
    (:func:`_slots`; :func:`jaxsci.geometry.max_neighbor_count`)."""
    return _slots(max_neighbor_count(positions, cell, shifts, r_cut, mask))


def _slots(most: int) -> int:
    """Neighbour slots for ``most`` neighbours: at least 1, rounded up to 8."""
    return int(np.ceil(max(1, most) / 8) * 8)


@functools.partial(jax.jit, static_argnames=("cfg", "capacity"))
def _dense_batched(positions, species, mask, cells, shifts, cfg: KernelConfig, capacity=None):
    """Features [B, N, F] and capacity-overflow flags [B] of padded periodic structures."""
    fn = lambda p, s, m, c: _dense_features(p, s, m, c, shifts, cfg, capacity)
    return jax.vmap(fn)(positions, species, mask, cells)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _free_batched(positions, species, mask, cfg: KernelConfig):
    fn = lambda p, s, m: _dense_features(p, s, m, None, None, cfg)[0]
    return jax.vmap(fn)(positions, species, mask)


def _cell_list_features(positions, species, cell, nbrs, cfg: KernelConfig):
    n = positions.shape[0]
    if n == 0:  # an empty list: no atoms, no rows (as ACSF.fn)
        return jnp.zeros((0, cfg.n_features), positions.dtype)
    slots = neighbor_list_slots(positions, cell, nbrs)
    nb_species = species[jnp.minimum(slots.index, n - 1)]
    return chunked_centres(
        lambda d, s, v: acsf_from_slots(slots._replace(disp=d, valid=v), s, cfg),
        n,
        CENTRE_CHUNK,
        slots.disp,
        nb_species,
        slots.valid,
    )


_cell_list_features_jit = jax.jit(_cell_list_features, static_argnames=("cfg",))


def _wrap(positions: Array, cells: np.ndarray, pbc: Sequence[bool]) -> Array:
    """Positions [B, N, 3] wrapped into their validated cells [B, 3, 3] (zero rows completed,
    see :func:`validate_cell`) along periodic axes (identity Jacobian almost everywhere:
    ``floor`` has zero derivative)."""
    periodic = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    full = np.asarray(cells, np.float64)
    inv = jnp.asarray(np.linalg.inv(full), positions.dtype)
    frac = jnp.einsum("bni,bij->bnj", positions, inv)
    frac = jnp.where(jnp.asarray(periodic), frac - jax.lax.stop_gradient(jnp.floor(frac)), frac)
    return jnp.einsum("bnj,bjk->bnk", frac, jnp.asarray(full, positions.dtype))


def _wrap_traced(positions: Array, cells: Array, pbc: Sequence[bool]) -> Array:
    """:func:`_wrap` for traced cells [B, 3, 3]: fractional coordinates of the cells with
    their non-periodic rows completed (:func:`jaxsci.geometry.complete_nonperiodic`)."""
    periodic = jnp.asarray(np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)))
    boxes = jax.vmap(lambda c: complete_nonperiodic(c, pbc))(cells)
    frac = jnp.einsum("bni,bij->bnj", positions, jnp.linalg.inv(boxes))
    frac = jnp.where(periodic, frac - jax.lax.stop_gradient(jnp.floor(frac)), frac)
    return jnp.einsum("bnj,bjk->bnk", frac, boxes)


def _too_few_images(cells: Array, pbc: Sequence[bool], r_cut: float, mult: np.ndarray) -> Array:
    """[B] bool: a (traced) cell [B, 3, 3] needs more than ``mult`` [3] periodic copies per
    axis to reach ``r_cut`` (its features would miss neighbours)."""
    periodic = jnp.asarray(np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)))
    boxes = jax.vmap(lambda c: complete_nonperiodic(c, pbc))(cells)
    need = jnp.ceil(r_cut / jax.vmap(perpendicular_widths)(boxes))
    return jnp.any(periodic & (need > jnp.asarray(mult)), axis=-1)


class ACSF:
    """Atom-centred symmetry functions G1..G5 with DScribe's parameters and output layout.

    Args:
        species: chemical symbols or atomic numbers of every element ever encountered.
        r_cut: cutoff radius (Angstrom), > 0.
        g2_params: [n, 2] rows (eta [1/A^2], Rs [A]).
        g3_params: [n] kappa values [1/A].
        g4_params, g5_params: [n, 3] rows (eta [1/A^2], zeta, lambda).
        periodic: respect ``atoms.pbc`` / a given cell (an atom's own images are neighbours).
        cutoff: "cosine" (DScribe) or "polynomial" (1 - 10x^3 + 15x^4 - 6x^5, x = r/r_cut).
    """

    def __init__(
        self,
        species: Sequence[str | int],
        r_cut: float,
        g2_params: Params = None,
        g3_params: Sequence[float] | np.ndarray | None = None,
        g4_params: Params = None,
        g5_params: Params = None,
        periodic: bool = False,
        cutoff: str = "cosine",
    ) -> None:
        if isinstance(species, str):  # "CO" would read as C and O, "Pt" as P and t
            raise ValueError(f"species must be a list of symbols or numbers, e.g. [{species!r}]")
        if species is None or len(species) == 0:
            raise ValueError("species must list at least one element")
        zs = sorted({_to_atomic_number(x) for x in species})
        if isinstance(r_cut, bool | np.bool_ | str):
            raise ValueError(f"r_cut must be a number, got {r_cut!r}")
        try:
            r_cut = float(r_cut)
        except (TypeError, ValueError) as err:
            raise ValueError(f"r_cut must be a number, got {r_cut!r}") from err
        if not np.isfinite(r_cut) or r_cut <= 0:
            raise ValueError(f"r_cut must be a positive finite number (Angstrom), got {r_cut}")
        if cutoff not in CUTOFFS:
            raise ValueError(f"cutoff must be one of {sorted(CUTOFFS)}, got {cutoff!r}")
        g2, g3, g4, g5 = validate_params(g2_params, g3_params, g4_params, g5_params)
        self.species_z: tuple[int, ...] = tuple(zs)
        self.species: tuple[str, ...] = tuple(_ASE_SYMBOLS[z] for z in zs)
        self.r_cut = r_cut
        self.periodic = bool(periodic)
        self.cutoff = cutoff
        self.g2_params = np.array(g2, dtype=np.float64).reshape(-1, 2)
        self.g3_params = np.array(g3, dtype=np.float64).reshape(-1)
        self.g4_params = np.array(g4, dtype=np.float64).reshape(-1, 3)
        self.g5_params = np.array(g5, dtype=np.float64).reshape(-1, 3)
        self.config = KernelConfig(r_cut, len(zs), g2, g3, g4, g5, cutoff)
        self._lookup = {z: i for i, z in enumerate(zs)}

    # ------------------------------------------------------------------ metadata
    @property
    def n_features(self) -> int:
        """Features per atom, equal to DScribe's ``get_number_of_features()``."""
        return self.config.n_features

    def get_number_of_features(self) -> int:
        """DScribe-compatible alias of :attr:`n_features`."""
        return self.n_features

    def __repr__(self) -> str:
        c = self.config
        return (
            f"ACSF(species={list(self.species)}, r_cut={self.r_cut}, n_g2={len(c.g2)}, "
            f"n_g3={len(c.g3)}, n_g4={len(c.g4)}, n_g5={len(c.g5)}, periodic={self.periodic}, "
            f"cutoff={self.cutoff!r}, n_features={self.n_features})"
        )

    def encode_species(self, symbols_or_numbers: Sequence[str | int]) -> np.ndarray:
        """Indices [N] int32 into :attr:`species_z`; ValueError names any unknown element."""
        arr = np.asarray(symbols_or_numbers)
        if arr.dtype.kind in "iu" and arr.ndim == 1:  # fast path: atomic numbers
            known = np.isin(arr, self.species_z)
            if known.all():
                return np.searchsorted(self.species_z, arr).astype(np.int32)
            symbols_or_numbers = [arr[~known][0]]  # reported by the loop below
        out = np.empty(len(symbols_or_numbers), dtype=np.int32)
        for i, x in enumerate(symbols_or_numbers):
            z = _to_atomic_number(x)
            if z not in self._lookup:
                raise ValueError(
                    f"element {_ASE_SYMBOLS[z]} (Z={z}) is not in this descriptor's species "
                    f"{list(self.species)}"
                )
            out[i] = self._lookup[z]
        return out

    # ------------------------------------------------------------------ pure functions
    def fn(
        self,
        positions: Array,
        species: Array,
        cell: Array | None = None,
        mask: Array | None = None,
        pbc: Sequence[bool] = (True, True, True),
        capacity: int | None = None,
        images: Sequence[int] | None = None,
        return_overflow: bool = False,
    ) -> Array | tuple[Array, Array]:
        """Pure ACSF [N, F] of one structure; jit-, grad- and vmap-able in ``positions``.

        positions: [N, 3] Angstrom; species: [N] int indices (see :meth:`encode_species`);
        cell: [3, 3] lattice vectors (rows, Angstrom), required when ``periodic`` and any
        ``pbc`` axis is True (a free cluster passes ``pbc=(False, False, False)``); mask: [N]
        bool, False for padding atoms (they contribute nothing and get zero rows). Periodic
        positions are wrapped into the cell first (in the graph: the gradient passes
        through unchanged), so atoms may lie anywhere. Free clusters are not centred
        (``create`` centres them): in float32 keep coordinates near the origin, since at
        1e4 Angstrom the distances lose ~1e-3 Angstrom to rounding.
        images: periodic copies per axis (static ints). The number of images is a shape,
        so a traced ``cell`` (an argument of a jitted function) needs it, e.g.
        ``tuple(jaxsci.geometry.image_multipliers(cell, r_cut, pbc))`` of the smallest cell
        to come; a concrete cell gets the exact count by default.
        capacity: periodic only: neighbour slots (atoms and images) kept per atom, the
        nearest within r_cut. Concrete positions get the exact count by default; traced
        ones keep every atom of every image (exact, but a [K, K] triplet table per atom
        with K = N x images: slow for small cells)
        (:func:`jaxsci.geometry.neighbor_capacity` gives a size).
        Overflow (jax-md's convention): with concrete positions and cell, a ``capacity`` or
        ``images`` below what the structure needs raises ValueError naming the size needed.
        Under jit that is impossible: the features then miss the farthest neighbours, and
        ``return_overflow=True`` returns ``(features, did_overflow)``, a bool scalar that
        the caller must check (then call again with a larger capacity / images).
        """
        positions = jnp.asarray(positions)
        if positions.ndim != 2 or positions.shape[1] != 3:
            raise ValueError(f"positions must have shape [N, 3], got {positions.shape}")
        species = jnp.asarray(species)
        if species.shape != positions.shape[:1]:
            raise ValueError(f"species must have shape [{positions.shape[0]}], got {species.shape}")
        self._check_species(species)
        _check_capacity(capacity)
        no_overflow = jnp.asarray(False)
        if positions.shape[0] == 0:  # no atoms, no rows
            out = jnp.zeros((0, self.n_features), positions.dtype)
            return (out, no_overflow) if return_overflow else out
        if mask is None:
            mask = jnp.ones(positions.shape[:1], dtype=bool)
        elif jnp.shape(mask) != positions.shape[:1]:
            raise ValueError(f"mask must have shape [{positions.shape[0]}], got {jnp.shape(mask)}")
        _check_pbc_and_positions(positions, pbc)
        _check_cell_given(self.periodic, cell, pbc, "cell")
        self._check_concrete_sites(positions, mask, cell, pbc)
        if not self.periodic or cell is None:
            out = _dense_features(positions, species, mask, None, None, self.config)[0]
            return (out, no_overflow) if return_overflow else out
        cells = cell[None] if isinstance(cell, jax.core.Tracer) else np.asarray(cell)[None]
        out, overflow = self._periodic(
            positions[None], species[None], jnp.asarray(mask)[None], cells, pbc, capacity, images
        )
        return (out[0], overflow[0]) if return_overflow else out[0]

    def _check_concrete_sites(self, positions: Array, mask: Array, cell: object, pbc) -> None:
        """Concrete inputs (as ``create`` checks its Atoms): a cell that is not a finite 3x3
        matrix, also where a free descriptor ignores it, and two real atoms on one site
        (their r = 0 pair was counted as a neighbour): free, identical positions; periodic,
        fractional coordinates equal modulo 1 to 1e-9 (a tolerance that scales with the
        cell: 1e-6 A in a 1000 A cell). O(N log N) on the host; traced inputs are not
        checked."""
        if cell is not None and not isinstance(cell, jax.core.Tracer):
            validate_cell(np.asarray(cell), (False, False, False))  # shape, finite
        if isinstance(positions, jax.core.Tracer) or isinstance(mask, jax.core.Tracer):
            return
        real = np.asarray(positions, np.float64)[np.asarray(mask, bool)]
        if self.periodic and cell is not None and not isinstance(cell, jax.core.Tracer):
            flags = tuple(bool(p) for p in np.broadcast_to(np.asarray(pbc, bool), (3,)))
            _check_distinct_sites(real, validate_cell(np.asarray(cell), flags), flags)
        else:
            _check_distinct_sites(real, None, (False, False, False))

    def _check_species(self, species: Array) -> None:
        """ValueError for a concrete species index outside ``[0, n_species)`` (such an atom
        would silently count as no species at all)."""
        if isinstance(species, jax.core.Tracer):
            return
        idx = np.asarray(species)
        n = len(self.species_z)
        if not _whole_numbers(idx):
            raise ValueError(
                "species must be integer indices into descriptor.species (see "
                f"encode_species), got {idx.ravel()[:5].tolist()}"
            )
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(
                f"species indices must lie in [0, {n}) (see encode_species), got "
                f"{sorted(set(idx[(idx < 0) | (idx >= n)].tolist()))[:5]}"
            )

    def _multipliers(self, cells: Sequence, pbc) -> tuple[np.ndarray, np.ndarray]:
        """Periodic copies [3] per axis that reach ``r_cut`` in every concrete cell, and the
        validated cells [B, 3, 3] (:func:`validate_cell`)."""
        mult = np.zeros(3, dtype=np.int64)
        full = []
        for cell in cells:
            c = validate_cell(np.asarray(cell), pbc)
            mult = np.maximum(mult, image_multipliers(c, self.r_cut, pbc))
            full.append(c)
        return mult, np.stack(full)

    def _periodic(self, positions, species, mask, cells, pbc, capacity, images):
        """Features [B, N, F] and overflow flags [B] of padded periodic structures (see
        :meth:`batch_fn`); concrete input is checked on the host (ValueError)."""
        pbc = tuple(bool(p) for p in np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)))
        given = None if images is None else _check_images(images, pbc)
        if isinstance(cells, jax.core.Tracer):
            if given is None:
                raise ValueError(
                    "the cells are traced (passed as an argument of a jitted function): the "
                    "number of periodic images is a shape, so pass images= (static copies "
                    "per axis: a Batch's .images, or jaxsci.geometry.image_multipliers(cell, "
                    "r_cut, pbc) of the smallest cell to come), or close over concrete cells"
                )
            mult = given
            positions = _wrap_traced(positions, cells, pbc)
            cells = jnp.asarray(cells, positions.dtype)
            short = _too_few_images(cells, pbc, self.r_cut, mult)
        else:
            mult, full = self._multipliers(list(np.asarray(cells)), pbc)
            if given is not None and np.any(given < mult):
                raise ValueError(
                    f"images={tuple(given.tolist())} periodic copies are fewer than these "
                    f"cells need to reach r_cut={self.r_cut}: {tuple(mult.tolist())}"
                )
            mult = mult if given is None else given
            positions = _wrap(positions, full, pbc)
            cells = jnp.asarray(cells, dtype=positions.dtype)
            short = jnp.zeros(positions.shape[:1], dtype=bool)
        shifts = lattice_shifts(mult)
        traced = isinstance(positions, jax.core.Tracer) or isinstance(mask, jax.core.Tracer)
        if not traced:  # concrete: the exact count, and no capacity below it
            m = np.asarray(mask, bool)
            most = max(
                max_neighbor_count(p, c, shifts, self.r_cut, k)
                for p, c, k in zip(np.asarray(positions), full, m, strict=True)
            )
            if capacity is None:
                capacity = _slots(most)
            elif capacity < most:
                raise ValueError(
                    f"capacity={capacity} neighbour slots are fewer than the {most} neighbours "
                    f"(periodic images included) within r_cut={self.r_cut} of the most "
                    f"crowded atom: pass capacity >= {most}, or None for the exact count"
                )
        out, overflow = _dense_batched(
            positions,
            jnp.asarray(species),
            jnp.asarray(mask),
            cells,
            jnp.asarray(shifts),
            self.config,
            capacity,
        )
        return out, overflow | short

    def batch_fn(
        self,
        positions: Array,
        species: Array,
        mask: Array,
        cells: Array | None = None,
        pbc: Sequence[bool] = (True, True, True),
        capacity: int | None = None,
        images: Sequence[int] | None = None,
        return_overflow: bool = False,
    ) -> Array | tuple[Array, Array]:
        """Batched ACSF [B, N, F] of padded structures [B, N, 3] (see :meth:`batch`).

        ``cells`` [B, 3, 3] (Angstrom) and ``pbc`` apply to every structure; pass a
        :class:`Batch`'s own ``cells``, ``pbc`` and ``images`` (a slab's batch has
        ``pbc=(True, True, False)``). ``capacity`` and ``images`` as in :meth:`fn`: under
        jit with the batch as an argument the cells are traced, so pass
        ``images=b.images``: ``jax.jit(lambda b: acsf.batch_fn(b.positions, b.species,
        b.mask, b.cells, b.pbc, images=b.images))``. Too small a capacity or images raises
        ValueError for concrete input; under jit, ``return_overflow=True`` returns
        ``(features, did_overflow)`` with a [B] bool flag per structure.
        """
        _check_capacity(capacity)
        positions = jnp.asarray(positions)
        if positions.ndim != 3 or positions.shape[2] != 3:
            raise ValueError(f"positions must have shape [B, N, 3], got {positions.shape}")
        for name, value in (("species", species), ("mask", mask)):
            if jnp.shape(value) != positions.shape[:2]:
                raise ValueError(
                    f"{name} must have shape [B, N] = {list(positions.shape[:2])}, got "
                    f"{list(jnp.shape(value))}"
                )
        _check_pbc_and_positions(positions, pbc)
        _check_cell_given(self.periodic, cells, pbc, "cells")
        self._check_species(species)
        if not self.periodic or cells is None:
            out = _free_batched(positions, jnp.asarray(species), jnp.asarray(mask), self.config)
            return (out, jnp.zeros(out.shape[:1], dtype=bool)) if return_overflow else out
        if not isinstance(cells, jax.core.Tracer):
            cells = np.asarray(cells)
        out, overflow = self._periodic(positions, species, mask, cells, pbc, capacity, images)
        return (out, overflow) if return_overflow else out

    def batch(self, structures: Sequence[Atoms], size: int | None = None) -> Batch:
        """Pad ``structures`` to a common bucketed size (no recompilation within a bucket);
        their ``pbc`` must agree (it travels in ``Batch.pbc``). A periodic batch also
        carries ``images``, the periodic copies per axis its cells need (for jit)."""
        prepared = [self._prepare(a) for a in structures]
        b = pad_structures(prepared, size)
        if b.cells is None:
            return b
        mult, _ = self._multipliers(list(b.cells), b.pbc)
        return dataclasses.replace(b, images=tuple(int(k) for k in mult))

    # ------------------------------------------------------------------ DScribe-style API
    def _prepare(self, atoms: Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple]:
        if not isinstance(atoms, Atoms):
            raise ValueError(f"expected ase.Atoms, got {type(atoms).__name__}")
        pos = np.asarray(atoms.get_positions(), dtype=np.float64)
        if not np.all(np.isfinite(pos)):
            raise ValueError("atomic positions contain NaN or inf")
        species = self.encode_species(atoms.get_atomic_numbers())
        pbc = tuple(bool(p) for p in atoms.get_pbc())
        if self.periodic and any(pbc):
            cell = validate_cell(np.asarray(atoms.get_cell()), pbc)
            _check_distinct_sites(pos, cell, pbc)
            pos = wrap_positions(pos, cell, pbc)
            return pos, species, cell, pbc
        _check_distinct_sites(pos, None, (False, False, False))
        # centred: the features are translation invariant, and float32 differences of
        # coordinates near 1000 A lose 3 digits (measured: 1.4e-4 relative error vs 6e-6)
        if len(pos):
            pos = pos - pos.mean(axis=0)
        return pos, species, None, (False, False, False)

    def create(
        self,
        system: Atoms | Sequence[Atoms],
        centers: Sequence[int] | Sequence[Sequence[int] | None] | None = None,
        n_jobs: int = 1,
        only_physical_cores: bool = False,
        verbose: bool = False,
    ) -> np.ndarray | list[np.ndarray]:
        """DScribe-compatible ``create``: [n_centers, F] for one Atoms, or for a list an array
        [n_systems, n_centers, F] when all have the same number of centres, else a list.

        Values are float64 numpy arrays computed in JAX's default float dtype (float32, or
        float64 under ``jax.enable_x64(True)``). ``n_jobs``, ``only_physical_cores`` and
        ``verbose`` are DScribe's and accepted so its calls run unchanged; they change
        nothing here (one compiled program per padded batch, not a process pool).
        """
        if not isinstance(n_jobs, int | np.integer) or n_jobs == 0 or n_jobs < -1:
            raise ValueError(f"n_jobs must be a positive integer or -1 (DScribe), got {n_jobs!r}")
        del only_physical_cores, verbose
        single = isinstance(system, Atoms)
        systems = [system] if single else list(system)
        if single:
            centers = [centers]
        elif centers is None:
            centers = [None] * len(systems)
        elif len(centers) != len(systems):
            raise ValueError("centers must give one index list per system")
        prepared = [self._prepare(a) for a in systems]
        outputs: list[np.ndarray | None] = [
            np.zeros((0, self.n_features)) if len(p[0]) == 0 else None for p in prepared
        ]  # an empty structure has no rows

        free = [i for i, p in enumerate(prepared) if p[2] is None and outputs[i] is None]
        for i in [i for i in free if len(prepared[i][0]) > LARGE_CLUSTER]:
            outputs[i] = np.asarray(self._large_cluster(*prepared[i][:2]))
        free = [i for i in free if outputs[i] is None]
        by_size: dict[int, list[int]] = {}
        for i in free:
            by_size.setdefault(bucket_size(len(prepared[i][0])), []).append(i)
        for size, idx in by_size.items():
            for start in range(0, len(idx), STRUCTURE_CHUNK):
                chunk = idx[start : start + STRUCTURE_CHUNK]
                b = pad_structures([prepared[i] for i in chunk], size)
                feats = np.asarray(
                    _free_batched(
                        jnp.asarray(b.positions),
                        jnp.asarray(b.species),
                        jnp.asarray(b.mask),
                        self.config,
                    )
                )
                for j, i in enumerate(chunk):
                    outputs[i] = feats[j, : b.n_atoms[j]]
        for i, (pos, species, cell, pbc) in enumerate(prepared):
            if cell is None or outputs[i] is not None:
                continue
            outputs[i] = np.asarray(self._periodic_single(pos, species, cell, pbc))

        result = []
        for out, cen in zip(outputs, centers, strict=True):
            out = np.asarray(out, dtype=np.float64)
            if cen is not None:
                cen = np.asarray(cen)
                inside = np.all(cen >= -len(out)) and np.all(cen < len(out))
                if cen.ndim != 1 or not _whole_numbers(cen) or not inside:
                    raise ValueError(
                        "centers must be a list of integer atom indices within the system "
                        f"(negative ones count from the end), got {cen.tolist()[:5]}"
                    )
                out = out[cen.astype(np.int64)]
            result.append(out)
        if single:
            return result[0]
        if len({r.shape for r in result}) == 1:
            return np.stack(result)
        return result

    def _large_cluster(self, pos, species):
        """Free cluster with many atoms: a cell list with no periodic axis (bins over the
        atoms' extent), so memory and time stay linear in N."""
        return self._cell_list_single(pos, species, np.eye(3), (False, False, False))

    def _cell_list_single(self, pos, species, cell, pbc):
        dtype = jnp.zeros(()).dtype
        p = jnp.asarray(pos, dtype=dtype)
        c = jnp.asarray(cell, dtype=dtype)
        nbrs = cell_list_allocate(p, c, self.r_cut, pbc)
        return _cell_list_features_jit(p, jnp.asarray(species), c, nbrs, self.config)

    def _periodic_single(self, pos, species, cell, pbc):
        """Features [N, F] of one structure in its validated ``cell``: a cell list for
        large ones whose periodic axes are at least r_cut wide (bulk, slabs and wires),
        else dense slots over every image within reach."""
        if len(pos) >= CELL_LIST_MIN_ATOMS and cell_list_usable(cell, self.r_cut, pbc):
            return self._cell_list_single(pos, species, cell, pbc)
        dtype = jnp.zeros(()).dtype
        shifts = image_shifts(cell, self.r_cut, pbc)
        capacity = _host_capacity(pos, cell, shifts, self.r_cut)
        p = jnp.asarray(pos, dtype=dtype)[None]
        c = jnp.asarray(cell, dtype=dtype)[None]
        mask = jnp.ones((1, len(pos)), dtype=bool)
        s = jnp.asarray(species)[None]
        return _dense_batched(p, s, mask, c, jnp.asarray(shifts), self.config, capacity)[0][0]

    # ------------------------------------------------------------------ large systems
    def neighbor_list(
        self,
        positions: np.ndarray,
        cell: np.ndarray,
        capacity_multiplier: float = 1.25,
        pbc: Sequence[bool] = (True, True, True),
    ) -> NeighborList:
        """Host side: allocate a cell-list neighbour list for a large system (positions
        [N, 3] and cell [3, 3] in Angstrom; ``pbc`` may be partial: slabs, wires; see
        :meth:`neighbor_fn`)."""
        return cell_list_allocate(positions, cell, self.r_cut, pbc, capacity_multiplier)

    def neighbor_fn(
        self, positions: Array, species: Array, cell: Array, nbrs: NeighborList
    ) -> Array:
        """Pure ACSF [N, F] from a cell-list neighbour list (memory linear in N); jitted,
        differentiable in positions and cell.

        positions: [N, 3] Angstrom; species: [N] int indices (:meth:`encode_species`);
        cell: [3, 3] Angstrom. The list has no skin: after atoms move, update it
        (:func:`jaxsci.geometry.cell_list_update`) before calling this, and check
        ``nbrs.did_overflow`` (then re-allocate); a stale list gives wrong features.
        """
        self._check_species(species)
        return _cell_list_features_jit(positions, species, cell, nbrs, self.config)
