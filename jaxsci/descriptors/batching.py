"""Padding structures of different sizes into fixed, bucketed shapes (host side)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

__all__ = ["Batch", "bucket_size"]

#: padded sizes; a jitted function compiles once per bucket, not once per atom count.
BUCKETS = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512)
# (steps of at most 1/7 of the size: the O(N^3) cluster path pays for every padded atom)


def bucket_size(n_atoms: int) -> int:
    """Smallest bucket >= n_atoms (multiples of 128 beyond the table)."""
    for b in BUCKETS:
        if n_atoms <= b:
            return b
    return int(np.ceil(n_atoms / 128) * 128)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["positions", "species", "mask", "cells", "n_atoms"],
    meta_fields=["pbc", "images"],
)
@dataclasses.dataclass(frozen=True, eq=False)  # identity: array fields do not compare
class Batch:
    """Padded structures. positions [B, N, 3] (Angstrom), species [B, N] int32 indices,
    mask [B, N] bool (False = padding), cells [B, 3, 3] or None (free clusters),
    n_atoms [B] true sizes, pbc: the periodic directions shared by every structure (pass it
    on: ``acsf.batch_fn(b.positions, b.species, b.mask, b.cells, b.pbc)``), images: the
    periodic copies per axis that its cells need to reach r_cut (set by ``ACSF.batch``;
    pass ``images=b.images`` when the cells are traced, under jit). A pytree (its arrays
    the leaves, ``pbc`` and ``images`` static): it passes through ``jit`` and ``tree.map``.
    Being static, ``images`` is part of the structure: batches whose cells need different
    image counts compile separately and cannot meet in one ``tree.map``."""

    positions: np.ndarray
    species: np.ndarray
    mask: np.ndarray
    cells: np.ndarray | None
    n_atoms: np.ndarray
    pbc: tuple[bool, bool, bool] = (False, False, False)
    images: tuple[int, int, int] | None = None


def pad_structures(prepared: list, size: int | None = None) -> Batch:
    """Stack (positions, species, cell|None, pbc) tuples, padding to ``size`` or its bucket."""
    if not prepared:
        raise ValueError("no structures to batch")
    n_atoms = np.array([len(p[0]) for p in prepared])
    if size is None:
        size = bucket_size(int(n_atoms.max()))
    if n_atoms.max() > size:
        raise ValueError(f"size {size} is smaller than the largest structure ({n_atoms.max()})")
    has_cell = [p[2] is not None for p in prepared]
    if any(has_cell) and not all(has_cell):
        raise ValueError("cannot batch periodic and free structures together")
    pbcs = {tuple(bool(x) for x in p[3]) for p in prepared}
    if len(pbcs) > 1:
        raise ValueError(f"cannot batch structures with different pbc together: {sorted(pbcs)}")
    b = len(prepared)
    pos = np.zeros((b, size, 3))
    spec = np.zeros((b, size), dtype=np.int32)
    mask = np.zeros((b, size), dtype=bool)
    for i, p in enumerate(prepared):
        n = len(p[0])
        pos[i, :n] = p[0]
        # park padding atoms far apart and far away so they never look like neighbours
        pos[i, n:] = 1e4 * (1.0 + np.arange(size - n))[:, None]
        spec[i, :n] = p[1]
        mask[i, :n] = True
    cells = np.stack([p[2] for p in prepared]) if all(has_cell) else None
    return Batch(pos, spec, mask, cells, n_atoms, pbcs.pop())
