"""Genetic operators for free clusters: a ranked, diverse population and cut-and-splice.

Deaven & Ho (PRL 75, 288, 1995): two parents, each centred and randomly rotated, are cut
by the plane z = 0; the child takes the atoms above the plane from one parent and the
lowest atoms of the other, species by species, so the composition is kept. Children are
relaxed by the search like any start. Host-side NumPy: a generation is a few
``[n_atoms, 3]`` arrays, negligible next to a search round.

Internal: a stage of :func:`jaxsci.reconstruct.reconstruct`, not public API (empty
``__all__``); its names may change with the solver. Tests import them from this module.
"""

from __future__ import annotations

import numpy as np

from jaxsci.metrics.structure import sorted_distance_difference, sorted_pair_distances

__all__ = []


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random rotation matrix ``[3, 3]`` (QR of a Gaussian matrix, det +1)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


class Population:
    """The ``size`` lowest-loss structures seen, no two alike.

    Two structures are alike when their sorted pair distances differ by less than
    ``min_distance`` (Angstrom, :func:`jaxsci.metrics.pair_distance_difference`); the lower
    loss is kept.
    """

    def __init__(self, size: int, min_distance: float = 0.02):
        self.size = size
        self.min_distance = min_distance
        self.x: list[np.ndarray] = []
        self.loss: list[float] = []
        self._sig: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.x)

    def add(self, x: np.ndarray, loss: float) -> bool:
        """Offer ``x [N, 3]`` with search ``loss``; returns whether it was kept."""
        if not np.isfinite(loss) or not np.all(np.isfinite(x)):
            return False
        if len(self.x) >= self.size and loss >= self.loss[-1]:
            return False
        sig = sorted_pair_distances(x)
        for i, s in enumerate(self._sig):
            if sorted_distance_difference(s, sig) < self.min_distance:
                if loss >= self.loss[i]:
                    return False
                del self.x[i], self.loss[i], self._sig[i]
                break
        i = int(np.searchsorted(np.asarray(self.loss), loss))
        self.x.insert(i, np.array(x, np.float64))
        self.loss.insert(i, float(loss))
        self._sig.insert(i, sig)
        del self.x[self.size :], self.loss[self.size :], self._sig[self.size :]
        return True

    def pick(self, rng: np.random.Generator) -> np.ndarray:
        """A parent, rank-weighted: member k drawn with probability ~ exp(-3 k / len)."""
        w = np.exp(-3.0 * np.arange(len(self.x)) / max(len(self.x), 1))
        return self.x[int(rng.choice(len(self.x), p=w / w.sum()))]


def cut_and_splice(
    a: np.ndarray, b: np.ndarray, species_idx: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Child ``[N, 3]`` of parents ``a, b [N, 3]`` (same species order ``species_idx [N]``).

    Both parents are centred and independently rotated at random; the child keeps the
    atoms of ``a`` above a random cut height near the middle and fills each species with
    the lowest atoms of ``b``. Atom order of the child follows ``species_idx``.
    """
    species_idx = np.asarray(species_idx)
    a = (a - a.mean(0)) @ _random_rotation(rng)
    b = (b - b.mean(0)) @ _random_rotation(rng)
    cut = np.quantile(a[:, 2], rng.uniform(0.3, 0.7))
    child = np.empty_like(a)
    for s in np.unique(species_idx):
        idx = np.flatnonzero(species_idx == s)
        top = a[idx][a[idx, 2] >= cut]
        rest = b[idx][np.argsort(b[idx, 2])[: len(idx) - len(top)]]
        child[idx] = np.concatenate([top, rest])[: len(idx)]
    return child


def twist(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mutation ``[N, 3]``: rotate the atoms above a random plane through the centre of
    ``a [N, 3]`` about the plane's normal by a random angle (radii from the centre kept)."""
    a = (a - a.mean(0)) @ _random_rotation(rng)
    up = a[:, 2] > 0
    phi = rng.uniform(0.2, 2 * np.pi - 0.2)
    c, s = np.cos(phi), np.sin(phi)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    a[up] = a[up] @ rot.T
    return a


def child(
    population: Population, species_idx: np.ndarray, rng: np.random.Generator, p_twist: float
) -> np.ndarray:
    """A new structure ``[N, 3]`` from ``population``: with probability ``p_twist`` a twist of
    one rank-weighted member, else the cut-and-splice of two."""
    if rng.uniform() < p_twist:
        return twist(population.pick(rng), rng)
    return cut_and_splice(population.pick(rng), population.pick(rng), species_idx, rng)
