"""Structure comparison metrics: fingerprint error, best-match RMSD, sorted pair distances.

Host-side (numpy/scipy) functions for judging a reconstructed or generated
structure against a reference. Positions are in Angstrom, shaped ``[n_atoms, 3]``;
they may also be given as ``ase.Atoms`` (anything with ``get_positions``), whose
atomic numbers are then used as species when none are given.

- :func:`fingerprint_error`: relative error between two per-atom fingerprints
  compared as a set (rows matched by the Hungarian algorithm), or between two
  pooled fingerprints.
- :func:`align` / :func:`structure_rmsd`: smallest RMSD over rotations,
  reflections (optional) and permutations of atoms of the same species (all
  permutations up to 7 atoms; else Kabsch + Hungarian from many starting orientations,
  ranked by the assignment cost they start from).
- :func:`sorted_pair_distances` / :func:`pair_distance_difference`: the sorted
  pair-distance fingerprint used for uniqueness and novelty checks.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import Counter
from typing import Any, NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from scipy.spatial.transform import Rotation

__all__ = [
    "Alignment",
    "align",
    "fingerprint_error",
    "match_rows",
    "pair_distance_difference",
    "sorted_distance_difference",
    "sorted_pair_distances",
    "structure_rmsd",
]


def _positions_and_species(x: Any, species: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(x, "get_positions"):
        pos = np.asarray(x.get_positions(), dtype=np.float64)
        if species is None:
            species = x.get_atomic_numbers()
    else:
        pos = np.asarray(x, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"{name}: positions must have shape [n_atoms, 3], got {pos.shape}")
    if pos.shape[0] == 0:
        raise ValueError(f"{name}: empty structure (no atoms)")
    if not np.all(np.isfinite(pos)):
        raise ValueError(f"{name}: positions contain NaN or inf")
    if species is None:
        spec = np.zeros(pos.shape[0], dtype=np.int64)
    else:
        spec = np.asarray(species)
        if spec.shape != (pos.shape[0],):
            raise ValueError(
                f"{name}: species must have one entry per atom ({pos.shape[0]}), got {spec.shape}"
            )
        if spec.dtype.kind in "US":  # chemical symbols compare as atomic numbers
            from ase.data import atomic_numbers

            if all(s in atomic_numbers for s in spec.tolist()):
                spec = np.array([atomic_numbers[s] for s in spec.tolist()], dtype=np.int64)
    return pos, spec


def match_rows(a: np.ndarray, b: np.ndarray, species: Any | None = None) -> np.ndarray:
    """Permutation ``perm`` minimising ``sum ||a[perm[i]] - b[i]||^2`` (Hungarian).

    ``a`` and ``b`` are ``[n, d]``; with ``species`` (``[n]``, shared by both
    sides) rows are only matched within the same species. Returns int ``[n]``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"match_rows: shapes differ or are not 2-D: {a.shape} vs {b.shape}")
    spec = np.zeros(len(a), np.int64) if species is None else np.asarray(species)
    if spec.shape != (len(a),):
        raise ValueError(f"match_rows: species must have shape ({len(a)},), got {spec.shape}")
    perm = np.empty(len(a), dtype=np.int64)
    for s in np.unique(spec):
        idx = np.flatnonzero(spec == s)
        cost = ((b[idx, None, :] - a[None, idx, :]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        perm[idx[rows]] = idx[cols]
    return perm


def fingerprint_error(fingerprint: Any, target: Any, species: Any | None = None) -> float:
    """Relative error ``||F - T|| / ||T||`` (Frobenius norm), dimensionless.

    Per-atom fingerprints (``[n_atoms, n_features]``) are compared as a set: the
    rows of ``fingerprint`` are first matched to the rows of ``target`` by the
    Hungarian algorithm (within each species when ``species`` is given), so atom
    order does not matter. Pooled fingerprints (1-D) are compared directly.
    """
    f = np.asarray(fingerprint, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if f.shape != t.shape:
        raise ValueError(f"fingerprint_error: shapes differ: {f.shape} vs {t.shape}")
    if f.size == 0:
        raise ValueError("fingerprint_error: empty fingerprint")
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(t))):
        raise ValueError("fingerprint_error: fingerprint contains NaN or inf")
    if f.ndim == 2:
        f = f[match_rows(f, t, species)]
    elif f.ndim != 1:
        raise ValueError(f"fingerprint_error: expected 1-D or 2-D arrays, got {f.ndim}-D")
    norm = np.linalg.norm(t)
    diff = np.linalg.norm(f - t)
    if norm == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return float(diff / norm)


class Alignment(NamedTuple):
    """Result of :func:`align`.

    ``positions[permutation] @ rotation.T + translation`` (the ``aligned``
    field) best overlays ``reference``; ``rotation`` is ``[3, 3]`` orthogonal
    (determinant -1 when a reflection was used); ``rmsd`` in Angstrom.
    """

    rmsd: float
    aligned: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    permutation: np.ndarray


def _kabsch(p: np.ndarray, q: np.ndarray, allow_reflection: bool) -> np.ndarray:
    """Orthogonal R minimising ||p @ R.T - q|| for centred p, q."""
    u, _, vt = np.linalg.svd(p.T @ q)
    if not allow_reflection and np.linalg.det(u @ vt) < 0:
        u[:, -1] *= -1
    return (u @ vt).T


_MIRROR = np.diag([1.0, 1.0, -1.0])

# Same-species assignments up to this many (7 atoms of one species, or 4 + 4 of two) are all
# tried, which makes the RMSD exact; above it the assignment search is heuristic.
_EXACT_ASSIGNMENTS = 5040


@functools.lru_cache(maxsize=8)
def _rotation_grid(n: int) -> np.ndarray:
    """``n`` evenly spread rotations ``[n, 3, 3]`` (super-Fibonacci spiral, Alexa 2022).

    Every rotation lies within about ``20.4 deg * (1000 / n) ** (1/3)`` of one of them, where
    ``n`` random rotations leave gaps half as wide again. Read-only (cached).
    """
    psi = 1.533751168755204288118041  # the real root of psi**4 = psi + 4
    s = np.arange(n) + 0.5
    r, big_r = np.sqrt(s / n), np.sqrt(1.0 - s / n)
    a, b = 2.0 * np.pi * s / np.sqrt(2.0), 2.0 * np.pi * s / psi
    quat = np.stack([r * np.sin(a), r * np.cos(a), big_r * np.sin(b), big_r * np.cos(b)], -1)
    mats = Rotation.from_quat(quat).as_matrix()
    mats.setflags(write=False)
    return mats


def _grid_spacing(n: int) -> float:
    """Covering radius (radians) of :func:`_rotation_grid` ``(n)``, measured: 20.4 deg at 1000."""
    return float(np.cbrt(45.0 / n))


def _principal_frames(p: np.ndarray, q: np.ndarray, allow_reflection: bool) -> np.ndarray:
    """Rotations taking the principal axes of ``p`` onto those of ``q`` (all sign/axis choices)."""
    mats = []
    _, vp = np.linalg.eigh(p.T @ p)
    _, vq = np.linalg.eigh(q.T @ q)
    for perm in ([0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]):
        for signs in np.ndindex(2, 2, 2):
            s = np.diag([1.0 if b == 0 else -1.0 for b in signs])
            r = vq @ s @ np.eye(3)[perm] @ vp.T
            if allow_reflection or np.linalg.det(r) > 0:
                mats.append(r)
    return np.asarray(mats)


def _nearest_scores(
    p: np.ndarray,
    q: np.ndarray,
    sp: np.ndarray,
    sq: np.ndarray,
    rots: np.ndarray,
    dual: bool = False,
) -> np.ndarray:
    """For each ``R`` in ``rots`` (``[k, 3, 3]``), ``sum_i min_j |R p_i - q_j|^2`` over atoms
    ``j`` of the species of ``i`` (a lower bound on the assignment cost), less the constant
    ``sum_i |p_i|^2``, in float32: a ranking of starting rotations, not an RMSD.

    With ``dual``, a tighter bound (the first step of the Hungarian method, a feasible dual):
    those row minima ``u_i`` plus the column minima ``min_i (c_ij - u_i)``. The row minima
    alone let many atoms share one nearest reference atom: on unrelated 8-10-atom structures
    they ranked the starts that lead to the minimum 40th-1200th of 4000, the dual bound
    0th-55th. As fast up to ~15 atoms, about three times slower at 30 and five at 55.
    """
    score = np.zeros(len(rots))
    for s in np.unique(sq):
        ps, qs = p[sp == s], q[sq == s]
        # |q_j|^2 - 2 q_j . x  as one product: [n_q, 4] @ [4, n_x]
        qa = np.concatenate([-2.0 * qs, (qs**2).sum(-1)[:, None]], 1).astype(np.float32)
        # Products of at most 2**18 multiply-adds, which OpenBLAS runs on one thread: these
        # thin ones gain nothing from threads, and on a busy machine threads made the whole
        # call two to three times slower.
        block = max(1, (1 << 18) // (9 * len(ps)))  # rotations at a time
        if dual:  # whole cost matrices, [n_q, n_p, block] of at most 2**16 entries
            block = max(1, (1 << 16) // (len(qs) * len(ps)))
        cols = max(1, (1 << 16) // len(qs))
        for lo in range(0, len(rots), block):
            r = rots[lo : lo + block]
            x = (ps @ r.transpose(2, 0, 1).reshape(3, -1)).reshape(-1, 3)  # row i * k + rot
            xa = np.ones((4, len(x)), np.float32)
            xa[:3] = x.T
            if dual:
                m = (qa @ xa).reshape(len(qs), len(ps), len(r))
                u = m.min(0)  # [i, rot]: the nearest reference atom of each atom
                v = np.subtract(m, u, out=m).min(1)  # [j, rot]: the least c_ij - u_i of each j
                score[lo : lo + len(r)] += u.sum(0) + v.sum(0)
                continue
            near = np.empty(len(x), np.float32)
            for c in range(0, len(x), cols):
                near[c : c + cols] = (qa @ xa[:, c : c + cols]).min(0)
            score[lo : lo + block] += near.reshape(len(ps), len(r)).sum(0)
    return score


def _assignments(
    p: np.ndarray, q: np.ndarray, groups: list[tuple[np.ndarray, np.ndarray]], rots: np.ndarray
) -> np.ndarray:
    """For each ``R`` in ``rots`` the same-species ``perm`` minimising
    ``sum_i |R p_perm(i) - q_i|^2`` (Hungarian), the objective of the search at a fixed
    rotation (``[k, n]``)."""
    perms = np.empty((len(rots), len(q)), dtype=np.int64)
    for ip, iq in groups:
        pp, qq = p[ip], q[iq]
        # |R p_i - q_j|^2 in full: without the constant |p_i|^2 + |q_j|^2 the minimum is the
        # same, but scipy's solver took three times as long on 55 atoms
        norms = (pp**2).sum(-1)[:, None] + (qq**2).sum(-1)
        for lo in range(0, len(rots), 256):  # cost matrices [256, n_p, n_q] at a time
            c = norms - 2.0 * (pp @ rots[lo : lo + 256].transpose(0, 2, 1)) @ qq.T
            cols = np.stack([linear_sum_assignment(ck)[1] for ck in c])  # row i -> column
            np.put_along_axis(perms[lo : lo + len(c)], iq[cols], ip[None, :], axis=1)
    return perms


def _distinct_best(rots: np.ndarray, score: np.ndarray, k: int, min_angle: float) -> np.ndarray:
    """Up to ``k`` rotations by increasing ``score``, each at least ``min_angle`` (radians) from
    those taken before it (a proper and an improper one are always distinct)."""
    # cos(angle between R_a and R_b) = (trace(R_a^T R_b) - 1) / 2, trace = flat_a . flat_b; the
    # determinants (+-1) enter with weight 6, which keeps proper and improper apart (|trace| <= 3)
    feat = np.concatenate([rots.reshape(len(rots), 9), 6.0 * np.linalg.det(rots)[:, None]], 1)
    limit = 2.0 * math.cos(min_angle) + 1.0 + 36.0
    free = np.ones(len(rots), dtype=bool)
    taken: list[int] = []
    for i in np.argsort(score, kind="stable"):
        if free[i]:
            taken.append(int(i))
            if len(taken) == k:
                break
            free[feat @ feat[i] > limit] = False
    return rots[taken]


def _all_assignments(groups: list[tuple[np.ndarray, np.ndarray]], limit: int) -> np.ndarray | None:
    """Every same-species assignment as ``perm`` rows (``[m, n]``), or None past ``limit``."""
    if math.prod(math.factorial(len(ip)) for ip, _ in groups) > limit:
        return None
    n = sum(len(ip) for ip, _ in groups)
    perms = np.zeros((1, n), dtype=np.int64)
    for ip, iq in groups:
        choices = ip[np.array(list(itertools.permutations(range(len(ip)))), dtype=np.int64)]
        perms = np.repeat(perms, len(choices), axis=0)
        perms[:, iq] = np.tile(choices, (len(perms) // len(choices), 1))
    return perms


def _best_of_all_assignments(
    p: np.ndarray, q: np.ndarray, perms: np.ndarray, allow_reflection: bool
) -> np.ndarray:
    """The assignment among ``perms`` with the smallest Kabsch RMSD (centred ``p``, ``q``).

    ``min_R |p[perm] R^T - q|^2 = |p|^2 + |q|^2 - 2 * sum(singular values of p[perm]^T q)``
    (the last one negated when a reflection is not allowed and the determinant is negative).
    """
    h = np.einsum("mia,ib->mab", p[perms], q)
    sv = np.linalg.svd(h, compute_uv=False)
    if not allow_reflection:
        sv[:, -1] *= np.where(np.linalg.det(h) < 0, -1.0, 1.0)
    total = sv.sum(-1)
    # near-ties (symmetric structures) are settled on the RMSD computed from the coordinates
    tie = 1e-9 * max(1.0, float((p**2).sum() + (q**2).sum()))
    close = perms[np.flatnonzero(total >= total.max() - tie)[:64]]
    return close[int(np.argmin([_rmsd(p, q, perm, allow_reflection)[0] for perm in close]))]


def _rmsd(
    p: np.ndarray, q: np.ndarray, perm: np.ndarray, allow_reflection: bool
) -> tuple[float, np.ndarray]:
    """Kabsch RMSD of centred ``p[perm]`` on ``q`` and its rotation."""
    rot = _kabsch(p[perm], q, allow_reflection)
    return float(np.sqrt(((p[perm] @ rot.T - q) ** 2).sum(-1).mean())), rot


def _kabsch_batch(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Proper rotations ``R[m]`` minimising ``||p[m] @ R[m].T - q||`` (``p`` ``[m, k, 3]``)."""
    u, _, vt = np.linalg.svd(np.einsum("mia,ib->mab", p, q))
    u[:, :, -1] *= np.where(np.linalg.det(u @ vt) < 0, -1.0, 1.0)[:, None]
    return (u @ vt).transpose(0, 2, 1)


def _anchor_rotations(
    p: np.ndarray,
    q: np.ndarray,
    sp: np.ndarray,
    sq: np.ndarray,
    allow_reflection: bool,
    tol: float,
    keep: int = 8,
    max_triples: int = 4000,
) -> np.ndarray:
    """Rotations (``[m, 3, 3]``) that map a triangle of ``p`` onto a distinctive one of ``q``.

    The anchor is the outermost atom ``a`` of ``q``, its nearest neighbour ``b`` and the
    neighbour ``c`` making the widest triangle with them. Every triple of ``p`` of the same
    species whose distances from the centre and side lengths match within ``tol``
    (Angstrom) gives a Kabsch rotation (centre plus three atoms, and its mirror image when
    reflections are allowed), and the ``keep`` rotations with the smallest nearest-atom
    distances (same species) seed the assignment loop. This finds the right frame of
    near-identical, near-spherical clusters, where principal axes are degenerate.
    """
    n = len(q)
    if n < 4:
        return np.zeros((0, 3, 3))
    rq, rp = np.linalg.norm(q, axis=1), np.linalg.norm(p, axis=1)
    dq, dp = cdist(q, q), cdist(p, p)
    a = int(np.argmax(rq))
    order = [int(i) for i in np.argsort(dq[a]) if i != a]
    b = order[0]
    near = [i for i in order[1:] if dq[a, i] < 1.5 * dq[a, b]] or order[1:2]
    area = [np.linalg.norm(np.cross(q[b] - q[a], q[i] - q[a])) for i in near]
    c = near[int(np.argmax(area))]

    ok = lambda target: (sp == sq[target]) & (np.abs(rp - rq[target]) < tol)  # noqa: E731
    ok_b, ok_c = ok(b), ok(c)
    triples, count = [], 0
    for i in np.flatnonzero(ok(a)):
        js = np.flatnonzero(ok_b & (np.abs(dp[i] - dq[a, b]) < tol))
        ks = np.flatnonzero(ok_c & (np.abs(dp[i] - dq[a, c]) < tol))
        jj, kk = np.nonzero(np.abs(dp[np.ix_(js, ks)] - dq[b, c]) < tol)
        t = np.stack([np.full(len(jj), i), js[jj], ks[kk]], 1)
        t = t[(t[:, 0] != t[:, 1]) & (t[:, 0] != t[:, 2]) & (t[:, 1] != t[:, 2])]
        triples.append(t)
        count += len(t)
        if count > max_triples:
            break
    if not count:
        return np.zeros((0, 3, 3))
    tri = p[np.concatenate(triples)[:max_triples]]  # [m, 3 atoms, 3]
    rots = _kabsch_batch(tri, q[[a, b, c]])
    if allow_reflection:
        rots = np.concatenate([rots, _kabsch_batch(tri @ _MIRROR, q[[a, b, c]]) @ _MIRROR])
    # Species-aware scores: species-blind ones tie on symmetric clusters (every
    # symmetry-equivalent frame scores alike), and the kept frames could all put the
    # minority atoms in the wrong place: 0.55-1.1 A instead of 0.04 A on relabelled Pt55.
    score = _nearest_scores(p, q, sp, sq, rots)
    return rots[np.argsort(score, kind="stable")[:keep]]


def align(
    positions: Any,
    reference: Any,
    species: Any | None = None,
    reference_species: Any | None = None,
    *,
    allow_reflection: bool = True,
    n_starts: int = 64,
    n_grid: int = 2000,
    n_random: int = 0,
    max_iter: int = 30,
    seed: int | None = 0,
) -> Alignment:
    """Best overlay of ``positions`` on ``reference`` (both ``[n_atoms, 3]``, Angstrom).

    Minimises the RMSD over rigid rotations (and reflections when ``allow_reflection``),
    translations, and permutations of atoms of the same species. With at most 5040 such
    permutations (up to 7 atoms; 4 + 4 of two species) all are tried and the result is
    the exact minimum. Otherwise the Hungarian assignment on squared distances and the
    Kabsch rotation are alternated until the assignment is stable, from rotations that
    map a triangle of atoms onto a distinctive triangle of the reference (a rotated,
    reflected or permuted copy ends there, with RMSD 0), then from the ``n_starts``
    best mutually distinct (about 16 deg apart at the default ``n_grid``) of ``n_grid``
    evenly spread rotations (as many reflections; ``seed`` turns the set), the
    principal-axis frames, looser triangle matches and ``n_random`` random rotations,
    ranked by a lower bound on the assignment cost (the sum of nearest-atom distances; up
    to 24 atoms the tighter dual bound of the Hungarian method). Up to about 45 atoms
    those and the few hundred best by that bound are assigned, and the ``n_starts``
    descents start from their distinct assignments, best Kabsch RMSD first. The best
    result is kept.

    Beyond 7 atoms this is the smallest RMSD found, an upper bound on the minimum. On
    unrelated random point sets of 8-11 atoms (one to three species, 3960 pairs with and
    without reflections) it was the brute-force minimum over all same-species permutations
    every time (ranked by nearest-atom distances alone, 3-5% of such pairs missed it, by
    up to 0.3 A). On Pt clusters of 13-150 atoms with Gaussian noise up to 0.6 A per
    coordinate (RMSD up to about 1 A), rotated and permuted, it was at or below the RMSD of
    the known atom correspondence in all 410 cases tried (71 above with the earlier random
    starts); at 0.8 A noise 3 of 60 came out above. Unrelated structures of 20 or more
    atoms can still miss the minimum: a much longer search (600 starts from 12000
    rotations) found a lower RMSD for 3 of 54 random pairs of 20-30 atoms (by 0.001-0.021
    A) and 4 of 10 pairs of 40 atoms (by 0.006-0.12 A); larger ``n_starts`` / ``n_grid``
    help.

    Species default to those of ``ase.Atoms`` inputs; a bare array next to an ``Atoms``
    takes its species atom for atom (so its atoms must come in the same species order, as
    :func:`jaxsci.reconstruct.reconstruct` returns them; else pass ``species``); two bare
    arrays are one species. ``seed`` is an integer >= 0 (deterministic for a given seed) or
    None (fresh randomness each call). Raises ``ValueError`` when atom counts or species
    compositions differ, or a search setting (``seed`` included) is out of range.
    """

    def numbers(x: Any) -> np.ndarray | None:
        return x.get_atomic_numbers() if hasattr(x, "get_atomic_numbers") else None

    for name, value, least in (
        ("n_starts", n_starts, 1),
        ("n_grid", n_grid, 0),
        ("n_random", n_random, 0),
        ("max_iter", max_iter, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"align: {name} must be an integer >= {least}, got {value!r}")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0
    ):  # checked up front: only a search past the matched triangles draws from it
        raise ValueError(
            f"align (and structure_rmsd): seed must be an integer >= 0 or None, got {seed!r}"
        )
    species = species if species is not None else numbers(positions)
    reference_species = reference_species if reference_species is not None else numbers(reference)
    # one side's species stand for both when the other side has none (an array)
    species = species if species is not None else reference_species
    reference_species = reference_species if reference_species is not None else species
    p, sp = _positions_and_species(positions, species, "positions")
    q, sq = _positions_and_species(reference, reference_species, "reference")
    if p.shape != q.shape:
        raise ValueError(f"align: atom counts differ: {len(p)} vs {len(q)}")
    if sorted(sp.tolist()) != sorted(sq.tolist()):
        count = lambda a: dict(sorted(Counter(a.tolist()).items()))  # noqa: E731
        raise ValueError(
            f"align: species compositions differ: {count(sp)} (positions) vs {count(sq)} "
            "(reference), species: count"
        )
    cp, cq = p.mean(0), q.mean(0)
    p0, q0 = p - cp, q - cq
    groups = [(np.flatnonzero(sp == s), np.flatnonzero(sq == s)) for s in np.unique(sq)]

    perms = _all_assignments(groups, _EXACT_ASSIGNMENTS)
    if perms is not None:
        perm = _best_of_all_assignments(p0, q0, perms, allow_reflection)
        rmsd, rot = _rmsd(p0, q0, perm, allow_reflection)
    else:
        rmsd, rot, perm = _search(
            p0, q0, sp, sq, groups, allow_reflection, n_starts, n_grid, n_random, max_iter, seed
        )
    translation = cq - cp @ rot.T
    aligned = p[perm] @ rot.T + translation
    return Alignment(rmsd, aligned, rot, translation, perm)


# The search ranks its starting rotations by a lower bound on the assignment cost (the dual
# one up to _DUAL_ATOMS atoms; past that it costs several times the nearest-atom bound).
# Where Hungarian assignments are cheap, the best few hundred of them (_RERANK_WORK /
# (n**2 + 400), about the cost of one assignment in hundredths of a microsecond; at most
# _RERANK_MAX * n_starts; none past ~45 atoms), plus the n_starts distinct ones, are assigned,
# and the descents start from their distinct assignments in order of Kabsch RMSD (the first
# step of the descent). On unrelated random sets of 5-11 atoms the nearest-atom ranking
# alone left the minimum's basin out of the 64 starts in 3-5% of pairs (92 of 2400 at 8-10
# atoms, 60 of 1800 at 5-7 with the exhaustive path off); this ranking missed none.
_RERANK_WORK = 150_000
_RERANK_MAX = 4
_DUAL_ATOMS = 24


def _search(
    p0: np.ndarray,
    q0: np.ndarray,
    sp: np.ndarray,
    sq: np.ndarray,
    groups: list[tuple[np.ndarray, np.ndarray]],
    allow_reflection: bool,
    n_starts: int,
    n_grid: int,
    n_random: int,
    max_iter: int,
    seed: int | None,
) -> tuple[float, np.ndarray, np.ndarray]:
    """The assignment search of :func:`align` on centred positions: (rmsd, rotation, perm)."""

    def assign(rot: np.ndarray) -> np.ndarray:
        pr = p0 @ rot.T
        perm = np.empty(len(q0), dtype=np.int64)
        for ip, iq in groups:
            rows, cols = linear_sum_assignment(cdist(q0[iq], pr[ip], "sqeuclidean"))
            perm[iq[rows]] = ip[cols]
        return perm

    best: list[tuple[float, np.ndarray, np.ndarray]] = []
    seen: set[bytes] = set()

    def descend(starts: Any) -> bool:
        """Alternate from each start; True once an exact overlay (RMSD < 1e-9) is found."""
        for rot in starts:
            perm = assign(rot)
            for _ in range(max_iter):
                rot = _kabsch(p0[perm], q0, allow_reflection)
                new = assign(rot)
                if np.array_equal(new, perm):
                    break
                perm = new
            key = perm.tobytes()
            if key in seen:
                continue
            seen.add(key)
            rmsd, rot = _rmsd(p0, q0, perm, allow_reflection)
            if not best or rmsd < best[0][0]:
                best[:] = [(rmsd, rot, perm)]
            if best[0][0] < 1e-9:
                return True
        return False

    # matched triangles first: they end the search at once on exact copies
    if not descend(_anchor_rotations(p0, q0, sp, sq, allow_reflection, 0.35)):
        rng = np.random.default_rng(seed)
        pool = [_principal_frames(p0, q0, allow_reflection)]
        pool.append(_anchor_rotations(p0, q0, sp, sq, allow_reflection, 0.7))
        turn = Rotation.random(random_state=rng).as_matrix()
        rand = Rotation.random(n_random, random_state=rng).as_matrix() if n_random else None
        for extra in (_rotation_grid(n_grid) @ turn if n_grid else None, rand):
            if extra is not None:
                pool += [extra, extra @ _MIRROR] if allow_reflection else [extra]
        rots = np.concatenate(pool)
        score = _nearest_scores(p0, q0, sp, sq, rots, dual=len(p0) <= _DUAL_ATOMS)
        spacing = _grid_spacing(n_grid) if n_grid else 0.0
        starts = _distinct_best(rots, score, n_starts, spacing)
        m = min(len(rots), _RERANK_WORK // (len(p0) ** 2 + 400), _RERANK_MAX * n_starts)
        if m > n_starts:
            cands = np.concatenate([starts, rots[np.argsort(score, kind="stable")[:m]]])
            perms = _assignments(p0, q0, groups, cands)
            # The descent from a rotation depends only on its assignment: one start for each,
            # ranked by its Kabsch RMSD (the first step of the descent).
            uniq, first = np.unique(perms, axis=0, return_index=True)
            h = np.einsum("mia,ib->mab", p0[uniq], q0)
            sv = np.linalg.svd(h, compute_uv=False)
            if not allow_reflection:
                sv[:, -1] *= np.where(np.linalg.det(h) < 0, -1.0, 1.0)
            starts = cands[first[np.argsort(-sv.sum(-1), kind="stable")[:n_starts]]]
        descend(starts)
    return best[0]


def structure_rmsd(
    positions: Any,
    reference: Any,
    species: Any | None = None,
    reference_species: Any | None = None,
    *,
    allow_reflection: bool = True,
    n_starts: int = 64,
    n_grid: int = 2000,
    n_random: int = 0,
    max_iter: int = 30,
    seed: int | None = 0,
) -> float:
    """Smallest RMSD (Angstrom) found between two structures; see :func:`align` for the
    search (exact up to 7 atoms and for copies; otherwise the best of its starts).

    ``positions`` and ``reference``: [N, 3] Angstrom (or ``ase.Atoms``); ``species`` and
    ``reference_species``: [N] symbols or atomic numbers, atoms matched only within a
    species (``None``: one species)."""
    return align(
        positions,
        reference,
        species,
        reference_species,
        allow_reflection=allow_reflection,
        n_starts=n_starts,
        n_grid=n_grid,
        n_random=n_random,
        max_iter=max_iter,
        seed=seed,
    ).rmsd


def sorted_pair_distances(positions: Any) -> np.ndarray:
    """All ``n (n - 1) / 2`` interatomic distances (Angstrom), sorted ascending: positions
    [n, 3] Angstrom (or ``ase.Atoms``) -> [n (n - 1) / 2].

    A rotation-, translation-, reflection- and permutation-invariant
    fingerprint of a finite cluster (species are ignored).
    """
    p, _ = _positions_and_species(positions, None, "positions")
    i, j = np.triu_indices(len(p), k=1)
    return np.sort(np.linalg.norm(p[i] - p[j], axis=-1))


def pair_distance_difference(a: Any, b: Any) -> float:
    """Mean absolute difference (Angstrom) of the sorted pair distances of two clusters.

    ``a`` and ``b`` are positions ``[n, 3]``, ``ase.Atoms`` or precomputed
    :func:`sorted_pair_distances`. Any 1-D input is read as sorted pair distances, never
    as one atom's position: a single position ``[x, y, z]`` whose values happen to be
    finite, >= 0 and ascending (e.g. ``[0, 1, 2]``) is indistinguishable from the three
    distances of a triangle and is compared as such; pass one atom as ``[[x, y, z]]``. Only
    1-D input that cannot be sorted pair distances (a length other than ``n (n - 1) / 2``,
    negative, non-finite or unsorted values) is refused, with a ``ValueError``. Structures
    with different atom counts are different: the result is ``inf``. One atom each gives
    ``0.0``.
    """
    da = _sorted_distances(a, "a") if _is_1d(a) else sorted_pair_distances(a)
    db = _sorted_distances(b, "b") if _is_1d(b) else sorted_pair_distances(b)
    return sorted_distance_difference(da, db)


def sorted_distance_difference(da: np.ndarray, db: np.ndarray) -> float:
    """:func:`pair_distance_difference` of two outputs of :func:`sorted_pair_distances`,
    unchecked (for loops over many pairs of fingerprints already computed)."""
    if da.shape != db.shape:
        return math.inf
    if da.size == 0:
        return 0.0
    return float(np.abs(da - db).mean())


def _sorted_distances(x: Any, name: str) -> np.ndarray:
    """A 1-D argument as the output of :func:`sorted_pair_distances`, checked: its length is
    ``n (n - 1) / 2`` for some atom count ``n`` and its values are finite, >= 0 and sorted.
    Only what cannot be pair distances is refused: a position ``[x, y, z]`` that is finite,
    >= 0 and ascending passes as the three distances of a triangle (it cannot be told apart)."""
    d = np.asarray(x, dtype=np.float64)
    n = int(round((1.0 + math.sqrt(1.0 + 8.0 * d.size)) / 2.0))
    if n * (n - 1) // 2 != d.size:
        raise ValueError(
            f"pair_distance_difference: 1-D {name} must be sorted pair distances of n atoms "
            f"(length n (n - 1) / 2), got length {d.size}; pass positions as [n, 3]"
        )
    if not np.all(np.isfinite(d)) or np.any(d < 0) or np.any(np.diff(d) < 0):
        raise ValueError(
            f"pair_distance_difference: 1-D {name} must be finite, non-negative and sorted "
            "ascending (the output of sorted_pair_distances); pass positions as [n, 3]"
        )
    return d


def _is_1d(x: Any) -> bool:
    return not hasattr(x, "get_positions") and np.ndim(x) == 1
