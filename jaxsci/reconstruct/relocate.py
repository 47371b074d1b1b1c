"""Single-atom relocations of a near miss: every atom moved to every free hollow site.

A search can end 0.4-0.6 A from the target with all atoms but one or two within ~0.4 A
of their sites and those one or two 1.7-1.9 A away (measured on held-out EMT-relaxed
clusters: a random Pt20 and an icosahedral Pt25 cut). No descent moves an atom that far
through its neighbours, and no row matching finds the labels from there; moving the
misplaced atom to the free site does: the polish then reaches 8e-4 and 3e-5. The free
site is not known, so every atom is moved to every hollow site (a point at bond length
from three mutually bonded atoms, clear of all others), and the moves are ranked by the
search loss.

Internal: a stage of :func:`jaxsci.reconstruct.reconstruct`, not public API (empty
``__all__``); its names may change with the solver. Tests import them from this module.
"""

from __future__ import annotations

import numpy as np

__all__ = []

#: Hollow sites: three atoms are mutually bonded when closer than this many bond lengths.
BONDED = 1.35
#: A site (and a moved atom) keeps at least this many bond lengths from every other atom.
CLEARANCE = 0.8
#: Sites closer than this many bond lengths to an earlier one are merged into it.
MERGE = 0.2


def hollow_sites(positions: np.ndarray, bond: float) -> np.ndarray:
    """Hollow sites ``[S, 3]`` (Angstrom) of ``positions [N, 3]``: both points at ``bond``
    (Angstrom) from the three atoms of each mutually bonded triple, on either side of
    their plane, that lie at least ``CLEARANCE * bond`` from every atom (near-duplicates
    merged)."""
    x = np.asarray(positions, np.float64)
    n = len(x)
    if n < 3:
        return np.zeros((0, 3))
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    adj = (d < BONDED * bond) & ~np.eye(n, dtype=bool)
    i, j, k = np.nonzero(adj[:, :, None] & adj[:, None, :] & adj[None, :, :])
    keep = (i < j) & (j < k)
    i, j, k = i[keep], j[keep], k[keep]
    if len(i) == 0:
        return np.zeros((0, 3))
    a, ab, ac = x[i], x[j] - x[i], x[k] - x[i]
    normal = np.cross(ab, ac)
    area = np.linalg.norm(normal, axis=1)
    ok = area > 1e-6 * bond * bond
    a, ab, ac, normal, area = a[ok], ab[ok], ac[ok], normal[ok], area[ok]
    normal /= area[:, None]
    # Circumcentre a + u ab + v ac: equidistant from the three atoms, in their plane.
    bb, bc, cc = (np.sum(p * q, 1) for p, q in ((ab, ab), (ab, ac), (ac, ac)))
    det = bb * cc - bc * bc
    u = 0.5 * (bb * cc - cc * bc) / det
    v = 0.5 * (cc * bb - bb * bc) / det
    centre = a + u[:, None] * ab + v[:, None] * ac
    height2 = bond * bond - np.sum((centre - a) ** 2, 1)
    up = height2 > 0
    h = np.sqrt(height2[up])[:, None]
    sites = np.concatenate([centre[up] + h * normal[up], centre[up] - h * normal[up]])
    if len(sites) == 0:
        return sites
    clear = np.linalg.norm(sites[:, None] - x[None], axis=-1).min(1) >= CLEARANCE * bond
    sites = sites[clear]
    kept: list[np.ndarray] = []
    for s in sites:
        if not kept or np.min(np.linalg.norm(np.asarray(kept) - s, axis=1)) >= MERGE * bond:
            kept.append(s)
    return np.asarray(kept).reshape(-1, 3)


def relocations(
    positions: np.ndarray, bond: float, rng: np.random.Generator, max_moves: int
) -> np.ndarray:
    """Copies ``[M, N, 3]`` of ``positions [N, 3]`` with one atom moved to a hollow site
    (:func:`hollow_sites`; every atom to every site), at most ``max_moves`` of them (a
    random subset beyond that, drawn from ``rng``)."""
    x = np.asarray(positions, np.float64)
    sites = hollow_sites(x, bond)
    moves = [(a, s) for a in range(len(x)) for s in range(len(sites))]
    if len(moves) > max_moves:
        moves = [moves[m] for m in np.sort(rng.choice(len(moves), max_moves, replace=False))]
    out = np.repeat(x[None], len(moves), axis=0)
    for m, (a, s) in enumerate(moves):
        out[m, a] = sites[s]
    return out
