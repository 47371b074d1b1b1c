"""Neighbour slots per atom of a periodic search, sized on the host and grown on overflow.

A periodic search keeps K neighbour slots per atom (the nearest within r_cut; a start
costs about ``N x K^2`` per step, see :mod:`jaxsci.reconstruct.chunks`). Its positions
are not known in advance, so K starts from :func:`jaxsci.geometry.neighbor_capacity`'s
estimate from the cell's mean density, which is too small for a slab or cluster in a cell
with vacuum: 24 slots for a 4-atom Cu(111) slab in a 5.1 x 4.4 x 30 A cell at r_cut 8 A,
whose atoms have 36 neighbours, so that the search's features missed neighbours and could
not match the target even from the exact answer. As in jax-md's neighbour lists, the host
sizes K (:func:`initial_capacity`: at least what ``initial_positions`` need), the compiled
search runs with it, and the host checks the structures it keeps
(:func:`most_neighbors`) and answers an overflow with a larger K (:func:`grown`) and a
recompilation. K never exceeds every atom of every image (:func:`all_slots`), so it
grows a few times at most.

Internal: a stage of :func:`jaxsci.reconstruct.reconstruct`, not public API (empty
``__all__``); its names may change with the solver. Tests import them from this module.
"""

from __future__ import annotations

import numpy as np

from jaxsci.geometry import image_shifts, max_neighbor_count, neighbor_capacity, wrap_positions

__all__ = []

#: Slots for ``count`` neighbours: ``MULTIPLIER x count + EXTRA``, rounded up to 8 (as
#: :func:`jaxsci.geometry.neighbor_capacity`).
MULTIPLIER = 1.2
EXTRA = 8


def slots_for(count: int) -> int:
    """Neighbour slots for structures with ``count`` neighbours per atom at most."""
    return int(np.ceil((MULTIPLIER * count + EXTRA) / 8.0) * 8)


def all_slots(n_atoms: int, cell: np.ndarray, r_cut: float) -> int:
    """Slots of every atom of every periodic image that reaches ``r_cut`` (the most any
    atom can have; a capacity this large prunes nothing)."""
    return n_atoms * len(image_shifts(np.asarray(cell, np.float64), r_cut))


def most_neighbors(structures: np.ndarray, cell: np.ndarray, r_cut: float) -> int:
    """Largest number of neighbours within ``r_cut`` (periodic images included) of any atom
    of any of ``structures [k, n, 3]`` (Angstrom, anywhere: wrapped here); 0 for k = 0."""
    cell = np.asarray(cell, np.float64)
    shifts = image_shifts(cell, r_cut)
    return max(
        (
            max_neighbor_count(wrap_positions(x, cell), cell, shifts, r_cut)
            for x in np.asarray(structures, np.float64)
        ),
        default=0,
    )


def initial_capacity(
    n_atoms: int, cell: np.ndarray, r_cut: float, guesses: np.ndarray | None = None
) -> int:
    """A search's first capacity: the density estimate
    (:func:`jaxsci.geometry.neighbor_capacity`), raised to :func:`slots_for` the most
    crowded atom of ``guesses [k, n, 3]`` (its initial positions) when they need more,
    and at most :func:`all_slots`."""
    k = neighbor_capacity(n_atoms, cell, r_cut)
    if guesses is not None and len(guesses):
        need = slots_for(most_neighbors(guesses, cell, r_cut))
        if need > k:
            k = max(k, min(need, all_slots(n_atoms, cell, r_cut)))
    return k


def grown(capacity: int, count: int, n_atoms: int, cell: np.ndarray, r_cut: float) -> int:
    """The capacity after a kept structure turned out to have ``count`` neighbours per atom
    at most: unchanged when they fit, else :func:`slots_for` ``count``, at most
    :func:`all_slots`."""
    if count <= capacity:
        return capacity
    return max(capacity, min(slots_for(count), all_slots(n_atoms, cell, r_cut)))
