"""Ideal cluster motifs (``ase.cluster``) cut to any atom count, and the complete ones.

:func:`motif_positions`: icosahedra, Ino decahedra, octahedra and Wulff shapes of an fcc
metal are built large enough to hold ``n`` atoms and trimmed to the ``n`` atoms nearest a
randomly shifted centre; ``fcc_ball`` takes the ``n`` fcc sites nearest a random point. A
complete shell (13, 55, 147 atoms for the icosahedron) comes out whole.

:func:`complete_motifs`: every complete ``ase.cluster`` shape of exactly ``n`` atoms
(Mackay icosahedra, Ino and Marks decahedra of any elongation, truncated octahedra), which
a spherical cut does not produce (e.g. the flat 23-atom decahedron, the 38-atom truncated
octahedron comes out of both). Lengths in Angstrom.
"""

from __future__ import annotations

import functools
import math
import numbers

import numpy as np

from jaxsci._checks import is_int_at_least

__all__ = ["MOTIFS", "complete_motifs", "motif_cuts", "motif_positions"]

#: shapes :func:`motif_positions` builds.
MOTIFS = ("icosahedron", "decahedron", "octahedron", "wulff", "fcc_ball")


def trim(positions: np.ndarray, n: int, rng: np.random.Generator, d_nn: float) -> np.ndarray:
    """The ``n`` positions nearest a randomly shifted centroid (random tie-breaking),
    centred at 0; ``positions [M, 3]`` with ``M >= n``, ``d_nn`` sets the shift (0.1 d_nn)."""
    if len(positions) < n:
        raise ValueError(f"seed has {len(positions)} atoms, fewer than {n}")
    centre = positions.mean(0) + rng.normal(0.0, 0.1 * d_nn, 3)
    dist = np.linalg.norm(positions - centre, axis=1) + rng.uniform(0.0, 1e-3, len(positions))
    keep = np.argsort(dist, kind="stable")[:n]
    out = positions[keep]
    return out - out.mean(0)


@functools.lru_cache(maxsize=64)
def _whole(shape: str, n: int, a: float) -> np.ndarray:
    """The smallest complete motif of ``shape`` with at least ``n`` atoms (read-only)."""
    from ase.cluster import Decahedron, Icosahedron, Octahedron, wulff_construction

    if shape == "icosahedron":
        k = 1
        while 10 * k**3 / 3 - 5 * k**2 + 11 * k / 3 - 1 < n:  # atoms in a k-shell icosahedron
            k += 1
        pos = Icosahedron("Cu", k, latticeconstant=a).positions
    elif shape == "decahedron":
        p = 2
        while len(pos := Decahedron("Cu", p, p, 0, latticeconstant=a).positions) < n:
            p += 1
    elif shape == "octahedron":
        length = 3
        while len(pos := Octahedron("Cu", length, 0, latticeconstant=a).positions) < n:
            length += 1
    else:  # wulff
        surf = [(1, 0, 0), (1, 1, 1)]
        pos = wulff_construction(
            "Cu", surf, [1.0, 0.9], n, "fcc", rounding="above", latticeconstant=a
        ).positions
    out = np.asarray(pos, dtype=np.float64)
    out.flags.writeable = False
    return out


def _check_size(name: str, n: object, lattice_constant: object) -> None:
    """Refuse a non-integer or non-positive ``n`` and a non-finite or non-positive
    ``lattice_constant`` with one message naming the function and the value."""
    if not is_int_at_least(n, 1):
        raise ValueError(f"{name}: n must be an integer >= 1 (atoms), got {n!r}")
    if (
        not isinstance(lattice_constant, numbers.Real)
        or isinstance(lattice_constant, bool)
        or not (math.isfinite(lattice_constant) and lattice_constant > 0)
    ):
        raise ValueError(
            f"{name}: lattice_constant must be a finite number > 0 (Angstrom), "
            f"got {lattice_constant!r}"
        )


def motif_positions(
    shape: str, n: int, lattice_constant: float, rng: np.random.Generator
) -> np.ndarray:
    """Positions ``[n, 3]`` (Angstrom, centred) of an ``n``-atom cut of an ideal motif of an
    fcc metal with ``lattice_constant`` (Angstrom; nearest-neighbour distance
    ``lattice_constant / sqrt(2)``); ``shape`` is one of :data:`MOTIFS`. The element
    given to ``ase.cluster`` only names the atoms; complete motifs are cached."""
    if shape not in MOTIFS:
        raise ValueError(f"unknown motif {shape!r}: choose from {MOTIFS}")
    _check_size("motif_positions", n, lattice_constant)
    n, a = int(n), float(lattice_constant)
    if shape != "fcc_ball":
        return trim(_whole(shape, n, a), n, rng, a / np.sqrt(2.0))
    m = int(np.ceil((n * 1.5) ** (1.0 / 3.0) / 1.2)) + 2
    grid = np.stack(np.meshgrid(*[np.arange(-m, m + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    basis = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    lattice = (grid[:, None, :] + basis[None]).reshape(-1, 3) * a
    centre = rng.uniform(0.0, a, 3)
    dist = np.linalg.norm(lattice - centre, axis=1) + rng.uniform(0.0, 1e-3, len(lattice))
    pos = lattice[np.argsort(dist)[:n]]
    return pos - pos.mean(0)


def _decahedra(n: int, a: float) -> list[tuple[str, np.ndarray]]:
    from ase.cluster import Decahedron

    out = []
    count = lambda p, q, r: len(Decahedron("Cu", p, q, r, latticeconstant=a))
    p = 1
    while count(p, 1, 0) <= n:  # atom counts grow with p, q and r
        r = 0
        while count(p, 1, r) <= n:
            q = 1
            while len(atoms := Decahedron("Cu", p, q, r, latticeconstant=a)) <= n:
                if len(atoms) == n and (p > 1 or r > 0):  # p = 1, r = 0: a line of q atoms
                    out.append((f"decahedron({p},{q},{r})", atoms.positions))
                q += 1
            r += 1
        p += 1
    return out


def _octahedra(n: int, a: float) -> list[tuple[str, np.ndarray]]:
    from ase.cluster import Octahedron

    out = []
    length = 2
    # The most truncated octahedron of a length is its smallest; it grows with the length.
    while len(Octahedron("Cu", length, (length - 1) // 2, latticeconstant=a)) <= n:
        for cutoff in range((length - 1) // 2 + 1):
            pos = Octahedron("Cu", length, cutoff, latticeconstant=a).positions
            if len(pos) == n:
                out.append((f"octahedron({length},{cutoff})", pos))
        length += 1
    return out


@functools.lru_cache(maxsize=64)
def _complete(n: int, a: float) -> tuple[tuple[str, np.ndarray], ...]:
    from ase.cluster import Icosahedron

    found = []
    k = 1
    while (m := (10 * k**3 - 15 * k**2 + 11 * k - 3) // 3) <= n:  # atoms in k shells
        if m == n and k > 1:
            found.append((f"icosahedron({k})", Icosahedron("Cu", k, latticeconstant=a).positions))
        k += 1
    found += _decahedra(n, a) + _octahedra(n, a)
    out = []
    for name, pos in found:
        pos = np.asarray(pos, np.float64) - np.mean(pos, axis=0)
        pos.flags.writeable = False
        out.append((name, pos))
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _cuts(n: int, a: float, max_draws: int, patience: int) -> tuple[tuple[str, np.ndarray], ...]:
    rng = np.random.default_rng(n)  # a fixed stream: the result is a property of (n, a)
    iu = np.triu_indices(n, 1)
    out = []
    seen: set[bytes] = set()  # across shapes: an fcc ball can be an octahedron's cut
    for shape in MOTIFS:
        stale = 0
        for _ in range(max_draws):
            pos = motif_positions(shape, n, a, rng)
            d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)[iu]
            key = np.round(np.sort(d) / (0.01 * a)).astype(np.int32).tobytes()
            if key in seen:
                stale += 1
                if stale >= patience:
                    break
                continue
            seen.add(key)
            stale = 0
            pos.flags.writeable = False
            out.append((shape, pos))
    return tuple(out)


def motif_cuts(
    n: int, lattice_constant: float, max_draws: int = 4000, patience: int = 400
) -> list[tuple[str, np.ndarray]]:
    """The distinct ``n``-atom cuts :func:`motif_positions` makes, as ``(shape, [n, 3])``
    pairs (positions centred, read-only; Angstrom): for each shape of :data:`MOTIFS`,
    cuts are drawn from a fixed random stream until ``patience`` draws in a row bring
    nothing new (or ``max_draws``), keeping one of each set of sorted pair distances (to
    1% of ``lattice_constant``). Cuts about nearby centres often coincide, but ties at the
    cut's edge make many decahedral ones: 43-128 distinct cuts for 20-40 atoms. Cached."""
    _check_size("motif_cuts", n, lattice_constant)
    if not (is_int_at_least(max_draws, 1) and is_int_at_least(patience, 1)):
        raise ValueError(
            f"motif_cuts: max_draws and patience must be integers >= 1, got "
            f"{max_draws!r}, {patience!r}"
        )
    return list(_cuts(int(n), float(lattice_constant), int(max_draws), int(patience)))


def complete_motifs(n: int, lattice_constant: float) -> list[tuple[str, np.ndarray]]:
    """Every complete ``ase.cluster`` motif of exactly ``n`` atoms, as ``(name, [n, 3])``
    pairs (positions centred, read-only; Angstrom): Mackay icosahedra, Ino/Marks decahedra
    ``Decahedron(p, q, r)`` and truncated octahedra ``Octahedron(length, cutoff)`` of an fcc
    metal with ``lattice_constant``. Empty when no such shape has ``n`` atoms (e.g. 14).
    Enumerated once per ``(n, lattice_constant)``."""
    _check_size("complete_motifs", n, lattice_constant)
    return list(_complete(int(n), float(lattice_constant)))
