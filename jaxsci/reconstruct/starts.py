"""Motif starts for free clusters, screened against the target and handed out in order.

:class:`MotifQueue` holds every complete ``ase.cluster`` shape of the target's size
(:func:`jaxsci.geometry.motifs.complete_motifs`), then the distinct cuts of ideal motifs
(:func:`jaxsci.geometry.motifs.motif_cuts`) and, optionally, locally relaxed copies of the
most promising ones, ranked by their fingerprint error against the target. The search
takes motif starts from its front and gives back the ones it did not use (a start takes a
motif only when it begins again), so every candidate is tried once, the most promising
first, before the queue begins again.

Internal: a stage of :func:`jaxsci.reconstruct.reconstruct`, not public API (empty
``__all__``); its names may change with the solver. Tests import them from this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols, covalent_radii

from jaxsci.data.pt_clusters import EMT_FCC_ELEMENTS, lattice_constant, relax
from jaxsci.geometry.motifs import complete_motifs, motif_cuts

__all__ = []

#: Gaussian noise (Angstrom per coordinate) added to motif starts.
MOTIF_JITTER = 0.05

#: Uniform scalings of each candidate tried against the target: relaxed clusters are
#: contracted against the bulk lattice (EMT Pt cuts of 30-40 atoms by 1-3%), and the
#: ideal cut at the bulk lattice constant ranks the right one 9th-42nd among 52-98 cuts
#: by fingerprint error, at its best scaling 1st (benchmarks/RESULTS.md).
SCALES = (0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0, 1.01, 1.02)

#: Elements whose clusters :func:`emt_relax` relaxes (the fcc metals of ase's EMT).
EMT_ELEMENTS = frozenset(atomic_numbers[s] for s in EMT_FCC_ELEMENTS)
RELAX_SECONDS = 4.0  # wall-clock budget of MotifQueue.add_relaxed under a time limit


def emt_relax(positions: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """Positions ``[n, 3]`` (Angstrom, centred) of a free cluster relaxed as the data sets
    are (:func:`jaxsci.data.pt_clusters.relax`: EMT and FIRE, forces below 0.05 eV/A),
    here in at most 300 steps."""
    relaxed, _, _ = relax(Atoms(numbers=numbers, positions=positions), steps=300)
    return relaxed.positions - relaxed.positions.mean(0)


def motif_lattice_constant(z: np.ndarray) -> float:
    """fcc lattice constant (Angstrom) for motifs of atomic numbers ``z``: the element's
    reference one when it is a single fcc metal, else from the mean sum of covalent radii
    as the nearest-neighbour distance."""
    if len(set(int(a) for a in z)) == 1:
        try:  # the element's fcc reference state, if it has one
            return lattice_constant(chemical_symbols[int(z[0])])
        except ValueError:
            pass
    radii = np.array([covalent_radii[int(a)] for a in z])
    return float(np.sqrt(2.0) * 2.0 * np.mean(radii))


class MotifQueue:
    """Ideal motifs of ``n`` atoms in the order the search tries them.

    Args:
        z: ``[n]`` atomic numbers (species are shuffled over the sites of each candidate
            when there are several).
        score: maps candidates ``[k, n, 3]`` (Angstrom) to ``[k]`` errors against the
            target. Every candidate is taken at its best scaling among :data:`SCALES`;
            the cuts are ranked by that error (lowest first), after the complete shapes
            (which stay first, in their order).
        rng: numpy generator for the species shuffle, the rattles and the jitter.
    """

    def __init__(
        self,
        z: np.ndarray,
        score: Callable[[np.ndarray], np.ndarray],
        rng: np.random.Generator,
    ) -> None:
        n = len(z)
        self._z = np.asarray(z)
        self._score = score
        self._rng = rng
        a = motif_lattice_constant(z)
        mixed = len(set(int(v) for v in z)) > 1

        def placed(pos: np.ndarray) -> np.ndarray:
            return pos[rng.permutation(n)] if mixed else np.array(pos)

        complete = [placed(p) for _, p in complete_motifs(n, a)]
        cuts = [placed(p) for _, p in motif_cuts(n, a)]
        pos = np.stack(complete + cuts)
        errors = np.stack([np.asarray(score(f * pos), np.float64) for f in SCALES])
        best = np.argmin(errors, axis=0)
        pos = pos * np.asarray(SCALES)[best][:, None, None]
        errors = errors[best, np.arange(len(pos))]
        nc = self._n_complete = len(complete)
        order = np.concatenate([np.arange(nc), nc + np.argsort(errors[nc:], kind="stable")])
        #: candidates [n, 3] (Angstrom) and their errors, in ranked order (relaxed ones
        #: that :meth:`add_relaxed` appends are ranked in :meth:`peek`'s order only).
        self.candidates: list[np.ndarray] = list(pos[order])
        self.errors = errors[order]
        self._ranking = list(range(len(pos)))
        self._order: list[int] = list(self._ranking)

    def _ranked(self, indices) -> list[int]:
        """Complete shapes first (in their order), the rest by error."""
        first = [i for i in indices if i < self._n_complete]
        rest = sorted((i for i in indices if i >= self._n_complete), key=lambda i: self.errors[i])
        return first + rest

    def add_relaxed(
        self,
        relax: Callable[[np.ndarray, np.ndarray], np.ndarray],
        n_relax: int = 12,
        rattles: int = 2,
        seconds: float = RELAX_SECONDS,
    ) -> int:
        """Add locally relaxed copies of the ``n_relax`` best-ranked candidates, each
        rattled (0.1 A) ``rattles`` times and relaxed by ``relax`` (``(positions [n, 3],
        numbers [n]) -> positions``, e.g. :func:`emt_relax`), ranked with the others
        among those not used yet. A relaxed cluster can sit 0.6 A from its ideal cut, out
        of the ideal start's basin (EMT-relaxed icosahedral Pt cuts). No relaxation
        starts after ``seconds``; returns how many were added."""
        end = time.perf_counter() + seconds
        relaxed = []
        for k in self._ranking[:n_relax]:
            for _ in range(rattles):
                if time.perf_counter() > end:
                    break
                trial = self.candidates[k] + 0.1 * self._rng.standard_normal((len(self._z), 3))
                relaxed.append(np.asarray(relax(trial, self._z), np.float64))
        if not relaxed:
            return 0
        start = len(self.candidates)
        self.candidates += relaxed
        self.errors = np.concatenate([self.errors, np.asarray(self._score(np.stack(relaxed)))])
        new = list(range(start, len(self.candidates)))
        self._ranking = self._ranked(self._ranking + new)
        self._order = self._ranked(self._order + new)
        return len(new)

    def __len__(self) -> int:
        return len(self.candidates)

    def peek(self, count: int) -> tuple[np.ndarray, list[int]]:
        """The next ``count`` motifs ``[count, n, 3]`` with a little noise (at the ideal
        point the search loss's gradient vanishes by symmetry), and their indices for
        :meth:`used`. Once every candidate was used the ranked list begins again; when
        fewer are left than asked, the rest is filled from the front of the whole list."""
        everything = list(self._ranking)
        if count <= 0 or not everything:
            return np.zeros((0, len(self._z), 3)), []
        if not self._order:
            self._order = everything
        picked = self._order[:count]
        while len(picked) < count:
            rest = [i for i in everything if i not in picked] or everything
            picked = picked + rest[: count - len(picked)]
        out = np.stack([self.candidates[i] for i in picked])
        return out + MOTIF_JITTER * self._rng.standard_normal(out.shape), picked

    def used(self, indices: list[int]) -> None:
        """Remove motifs that starts began from; the others stay at the front in order."""
        gone = set(indices)
        self._order = [i for i in self._order if i not in gone]
