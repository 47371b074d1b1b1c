"""Scores for generated nanoparticles: validity, uniqueness, novelty, energy statistics.

Host-side NumPy/SciPy. Structures are ``ase.Atoms`` or positions ``[n_atoms, 3]``
(Angstrom). Defaults are for Pt (nearest-neighbour distance ``d_nn = 2.77`` A):

- valid: every interatomic distance > ``0.8 d_nn`` and the atoms form one connected
  cluster when bonded below ``1.2 d_nn``;
- unique / novel: two structures are "the same" when they have the same atom count and
  the mean absolute difference of their sorted pair distances is below ``tol`` (0.02 A);
  between two ``ase.Atoms`` they must also have the same composition, and the distances
  are sorted within each species pair (so homotops of an alloy differ; bare positions
  carry no species and are compared on all distances); a structure is unique if no
  earlier generated structure is the same, novel if no reference (training) structure
  is the same; a structure with non-finite positions is neither (as it is not valid);
- energies: Spearman rank correlation of obtained vs target, Wasserstein-1 distance
  between the obtained and the training energy distributions (eV/atom).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy.sparse.csgraph import connected_components
from scipy.stats import spearmanr, wasserstein_distance

from jaxsci.metrics.structure import (
    _kabsch,
    sorted_distance_difference,
    sorted_pair_distances,
)

__all__ = [
    "PT_NN_DISTANCE",
    "Validity",
    "check_validity",
    "energy_spearman",
    "energy_wasserstein",
    "kabsch_rmsd",
    "novelty_mask",
    "uniqueness_mask",
]

PT_NN_DISTANCE = 2.77  # Angstrom, bulk fcc Pt


class Validity(NamedTuple):
    """Per-structure validity: ``valid = min_distance > min_factor d_nn and n_components == 1``."""

    valid: bool
    min_distance: float  # Angstrom
    n_components: int


def _real(value: Any) -> float | None:
    """``value`` as a float when it is one real number: a Python, NumPy or JAX scalar or a
    0-d array of ints or floats; None otherwise (bools, strings, complex, arrays of
    another shape, tracers). Finiteness and range are the caller's to check."""
    if isinstance(value, bool | np.bool_ | str | bytes):
        return None
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:  # an int too large for a float
            return math.inf
    try:
        a = np.asarray(value)
    except Exception:  # e.g. a JAX tracer
        return None
    numeric = a.dtype.kind in "iuf" or (a.dtype.kind == "V" and "float" in a.dtype.name)
    return float(a) if a.shape == () and numeric else None  # kind "V": bfloat16 and kin


def _positions(x: Any) -> np.ndarray:
    pos = np.asarray(x.get_positions() if hasattr(x, "get_positions") else x, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape [n_atoms, 3], got {pos.shape}")
    return pos


def check_validity(
    structure: Any,
    *,
    d_nn: float = PT_NN_DISTANCE,
    min_factor: float = 0.8,
    bond_factor: float = 1.2,
) -> Validity:
    """Minimum distance and connectivity test of one cluster (see the module docstring).

    Non-finite positions make a structure invalid; one atom is valid (one component).
    ``d_nn``, ``min_factor`` and ``bond_factor`` are real scalars > 0 (Python, NumPy or JAX
    scalars, 0-d arrays; not bools).
    """
    factors = []
    for name, value in (("d_nn", d_nn), ("min_factor", min_factor), ("bond_factor", bond_factor)):
        x = _real(value)
        if x is None or not (math.isfinite(x) and x > 0):
            raise ValueError(f"check_validity: {name} must be a finite number > 0, got {value!r}")
        factors.append(x)
    d_nn, min_factor, bond_factor = factors
    pos = _positions(structure)
    n = len(pos)
    if n == 0:
        raise ValueError("empty structure (no atoms)")
    if not np.all(np.isfinite(pos)):
        return Validity(False, float("nan"), 0)
    if n == 1:
        return Validity(True, float("inf"), 1)
    d = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
    min_d = float(d[np.triu_indices(n, 1)].min())
    adjacency = (d < bond_factor * d_nn) & ~np.eye(n, dtype=bool)
    n_comp, _ = connected_components(adjacency, directed=False)
    return Validity(bool(min_d > min_factor * d_nn and n_comp == 1), min_d, int(n_comp))


class _Print(NamedTuple):
    """What "the same structure" compares: the composition (``((Z, count), ...)``, None
    for bare positions), all pair distances sorted, and the same sorted within blocks of
    species pairs (equal to ``plain`` for one species)."""

    composition: tuple[tuple[int, int], ...] | None
    plain: np.ndarray
    typed: np.ndarray


def _check_tol(tol: Any, name: str) -> float:
    """``tol`` as a float: any real scalar (see :func:`_real`) that is finite and >= 0."""
    x = _real(tol)
    if x is None or not (math.isfinite(x) and x >= 0):
        raise ValueError(f"{name}: tol must be a finite number >= 0 (Angstrom), got {tol!r}")
    return x


def _print(structure: Any) -> _Print | None:
    """The structure's print, or None for non-finite positions (it matches nothing)."""
    pos = _positions(structure)
    if not np.all(np.isfinite(pos)):
        return None
    plain = sorted_pair_distances(pos)
    if not hasattr(structure, "get_atomic_numbers"):
        return _Print(None, plain, plain)
    z = np.asarray(structure.get_atomic_numbers(), dtype=np.int64)
    kinds, counts = np.unique(z, return_counts=True)
    composition = tuple(zip(kinds.tolist(), counts.tolist(), strict=True))
    if len(kinds) <= 1:
        return _Print(composition, plain, plain)
    i, j = np.triu_indices(len(pos), k=1)
    d = np.linalg.norm(pos[i] - pos[j], axis=-1)
    lo, hi = np.minimum(z[i], z[j]), np.maximum(z[i], z[j])
    return _Print(composition, plain, d[np.lexsort((d, hi, lo))])


def _same(a: _Print, b: _Print, tol: float) -> bool:
    if a.composition is not None and b.composition is not None:
        return a.composition == b.composition and sorted_distance_difference(a.typed, b.typed) < tol
    return sorted_distance_difference(a.plain, b.plain) < tol


def uniqueness_mask(structures: Sequence[Any], *, tol: float = 0.02) -> np.ndarray:
    """``[n]`` bool: True where no earlier structure *kept as unique* matches (mean sorted
    pair-distance difference < tol A; for ``ase.Atoms`` the same composition and the
    distances sorted per species pair, so homotops differ). Greedy: each structure is
    compared with the kept ones only, so in a chain a~b~c with a !~ c, a and c are kept;
    the count of True is the number of distinct structures at resolution ``tol``. A
    structure with non-finite positions is False (not a structure to count)."""
    tol = _check_tol(tol, "uniqueness_mask")
    prints = [_print(s) for s in structures]
    mask = np.array([p is not None for p in prints], dtype=bool)
    for i in np.flatnonzero(mask):
        for j in range(i):
            if mask[j] and _same(prints[i], prints[j], tol):
                mask[i] = False
                break
    return mask


def novelty_mask(
    structures: Sequence[Any], reference: Sequence[Any], *, tol: float = 0.02
) -> np.ndarray:
    """``[n]`` bool: True where no reference structure matches (sorted pair distances < tol
    A; between two ``ase.Atoms`` also the same composition, distances per species pair).
    A structure with non-finite positions is False; such a reference matches nothing."""
    typed: dict[tuple, list[np.ndarray]] = {}  # composition -> per-species-pair prints
    plain: dict[int, list[np.ndarray]] = {}  # atom count -> plain prints of every reference
    bare: dict[int, list[np.ndarray]] = {}  # atom count -> plain prints without species
    tol = _check_tol(tol, "novelty_mask")
    for ref in (_print(r) for r in reference):
        if ref is None:  # a non-finite reference matches nothing
            continue
        plain.setdefault(len(ref.plain), []).append(ref.plain)
        if ref.composition is None:
            bare.setdefault(len(ref.plain), []).append(ref.plain)
        else:
            typed.setdefault(ref.composition, []).append(ref.typed)

    def closest(fp: np.ndarray, refs: list[np.ndarray] | None) -> float:
        if not refs:
            return np.inf
        return float(np.abs(np.asarray(refs) - fp[None, :]).mean(axis=1).min())

    out = np.ones(len(structures), dtype=bool)
    for i, fp in enumerate(_print(s) for s in structures):
        if fp is None:
            out[i] = False
            continue
        if fp.composition is None:
            best = closest(fp.plain, plain.get(len(fp.plain)))
        else:
            best = min(
                closest(fp.typed, typed.get(fp.composition)),
                closest(fp.plain, bare.get(len(fp.plain))),
            )
        out[i] = bool(best >= tol)
    return out


def energy_spearman(target: Any, obtained: Any) -> float:
    """Spearman rank correlation between target and obtained energies, two [n] arrays
    (eV/atom; any common unit).

    Pairs with a non-finite side (NaN, inf) are dropped; NaN when fewer than 3 pairs remain
    or one side is constant (no ranking to correlate)."""
    t, o = np.asarray(target, float), np.asarray(obtained, float)
    if t.shape != o.shape:
        raise ValueError(f"target and obtained shapes differ: {t.shape} vs {o.shape}")
    ok = np.isfinite(t) & np.isfinite(o)
    if ok.sum() < 3 or np.ptp(t[ok]) == 0 or np.ptp(o[ok]) == 0:
        return float("nan")
    return float(spearmanr(t[ok], o[ok]).statistic)


def energy_wasserstein(obtained: Any, reference: Any) -> float:
    """Wasserstein-1 distance (eV/atom) between two energy samples, [n] and [m] (eV/atom).

    Non-finite values (NaN, inf) are dropped; NaN when a sample has none left."""
    a, b = np.asarray(obtained, float), np.asarray(reference, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return float("nan")
    return float(wasserstein_distance(a, b))


def kabsch_rmsd(positions: Any, reference: Any) -> float:
    """RMSD (Angstrom) after the best rotation/translation, atoms in corresponding order:
    ``positions`` and ``reference`` [N, 3] Angstrom (or ``ase.Atoms``).

    For a structure and its own relaxed copy (relaxation keeps atom identity), no
    permutation search is needed; see :func:`jaxsci.metrics.structure_rmsd` otherwise.
    """
    p, q = _positions(positions), _positions(reference)
    if p.shape != q.shape:
        raise ValueError(f"kabsch_rmsd: shapes differ: {p.shape} vs {q.shape}")
    if len(p) == 0:
        raise ValueError("kabsch_rmsd: no atoms")
    for name, x in (("positions", p), ("reference", q)):
        if not np.all(np.isfinite(x)):
            raise ValueError(f"kabsch_rmsd: NaN or inf in {name}")
    p, q = p - p.mean(0), q - q.mean(0)
    rot = _kabsch(p, q, allow_reflection=False)
    return float(np.sqrt(((p @ rot.T - q) ** 2).sum(-1).mean()))
