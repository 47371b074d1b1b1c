"""Periodic BCC lattices with their coordination shells, built on the host (NumPy).

Sites of an ``L x L x L`` supercell of the conventional cubic cell (two sites per cell,
``2 L^3`` in all), lattice constant ``a = 1``. A site's neighbours in shell ``s`` are the
sites at the ``s``-th smallest distance in the infinite crystal (``sqrt(3)/2, 1, sqrt(2),
sqrt(11)/2, sqrt(3), 2, ...`` in units of ``a``; coordinations 8, 6, 12, 24, 8, 6, ...),
found by integer offsets on the half-lattice grid, so every neighbour table is exact.
A supercell too small for the shells asked (a shell that would see one site twice, or the
site itself) raises ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import numpy as np

__all__ = ["Lattice", "bcc_lattice"]


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=("positions", "cell", "neighbors", "shell"),
    meta_fields=("coordination", "distances"),
)
@dataclasses.dataclass(frozen=True, eq=False)  # identity: array fields do not compare
class Lattice:
    """A periodic lattice and its neighbour shells.

    A pytree: the four arrays are its leaves, ``coordination`` and ``distances`` static
    (hashable tuples, part of the tree structure), so it passes through ``jit``,
    ``tree.map`` and ``device_put``; another lattice of the same size compiles nothing new.

    Attributes:
      positions: ``[n_sites, 3]`` site positions in units of the lattice constant.
      cell: ``[3, 3]`` periodic cell (rows are cell vectors), units of the lattice constant.
      neighbors: ``[n_sites, z]`` int32 site indices of every site's neighbours, shell by
        shell (``z`` = sum of the shells' coordinations).
      shell: ``[z]`` int32 shell index (0-based) of each column of ``neighbors``.
      coordination: neighbours per site in each shell.
      distances: distance of each shell, units of the lattice constant.
    """

    positions: np.ndarray
    cell: np.ndarray
    neighbors: np.ndarray
    shell: np.ndarray
    coordination: tuple[int, ...]
    distances: tuple[float, ...]

    @property
    def n_sites(self) -> int:
        return int(self.positions.shape[0])

    @property
    def n_shells(self) -> int:
        return len(self.coordination)

    def shell_neighbors(self, s: int) -> np.ndarray:
        """``[n_sites, coordination[s]]`` neighbours of every site in shell ``s`` (a copy;
        also under ``jit``: the columns come from the static ``coordination``)."""
        if not 0 <= s < self.n_shells:
            raise ValueError(f"shell {s} out of range: the lattice has {self.n_shells} shells")
        start = sum(self.coordination[:s])  # columns are shell by shell
        return self.neighbors[:, np.arange(start, start + self.coordination[s])]


def _bcc_shells(n_shells: int) -> list[tuple[int, list[tuple[int, int, int]]]]:
    """The first ``n_shells`` BCC shells as (squared length in (a/2)^2, offsets in a/2)."""
    reach = 2 * int(np.ceil(np.sqrt(n_shells + 1))) + 2  # enough for the shells asked
    shells: dict[int, list[tuple[int, int, int]]] = {}
    for d in itertools.product(range(-reach, reach + 1), repeat=3):
        if d == (0, 0, 0) or len({v % 2 for v in d}) != 1:  # BCC: all even or all odd
            continue
        shells.setdefault(sum(v * v for v in d), []).append(d)
    return [(k, shells[k]) for k in sorted(shells)[:n_shells]]


def bcc_lattice(n_cells: int, n_shells: int = 6) -> Lattice:
    """BCC supercell of ``n_cells^3`` conventional cubic cells (``2 n_cells^3`` sites) with
    the neighbour tables of its first ``n_shells`` shells (lattice constant 1)."""
    if isinstance(n_cells, bool) or not isinstance(n_cells, int | np.integer) or n_cells < 1:
        raise ValueError(f"bcc_lattice: n_cells must be a positive int, got {n_cells!r}")
    if isinstance(n_shells, bool) or not isinstance(n_shells, int | np.integer) or n_shells < 1:
        raise ValueError(f"bcc_lattice: n_shells must be a positive int, got {n_shells!r}")
    m = 2 * int(n_cells)  # half-lattice grid points per axis
    grid = np.array(
        [p for p in itertools.product(range(m), repeat=3) if len({v % 2 for v in p}) == 1]
    )
    index = -np.ones((m, m, m), np.int64)
    index[grid[:, 0], grid[:, 1], grid[:, 2]] = np.arange(len(grid))
    columns, shell_ids, coordination, distances = [], [], [], []
    for s, (sq, offsets) in enumerate(_bcc_shells(int(n_shells))):
        off = np.array(offsets)
        nb = (grid[:, None, :] + off[None, :, :]) % m  # [n, z_s, 3]
        nbr = index[nb[..., 0], nb[..., 1], nb[..., 2]]
        self_hit = np.any(nbr == np.arange(len(grid))[:, None])
        repeated = any(len(np.unique(row)) != len(row) for row in nbr[:1])  # same for all sites
        if self_hit or repeated:
            raise ValueError(
                f"bcc_lattice: n_cells={n_cells} is too small for {n_shells} shells: shell "
                f"{s + 1} (distance {np.sqrt(sq) / 2:.3f} a) would see a site twice; use "
                "more cells or fewer shells"
            )
        columns.append(nbr)
        shell_ids += [s] * len(offsets)
        coordination.append(len(offsets))
        distances.append(float(np.sqrt(sq) / 2))
    neighbors = np.concatenate(columns, axis=1).astype(np.int32)
    # Two shells cannot share a site once each shell sees distinct sites: their offsets
    # differ by less than a box length (a shared site would need a whole box between them).
    assert len(np.unique(neighbors[0])) == neighbors.shape[1]
    return Lattice(
        positions=grid / 2.0,
        cell=np.eye(3) * n_cells,
        neighbors=neighbors,
        shell=np.asarray(shell_ids, np.int32),
        coordination=tuple(coordination),
        distances=tuple(distances),
    )
