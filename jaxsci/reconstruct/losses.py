"""Order-independent fingerprint losses and the short-range repulsion.

Pure, jit/vmap/grad-able functions. Fingerprint losses compare the fingerprint of
trial positions with a target.

All take the fingerprint ``features [N, F]`` of the trial positions and target
arrays prepared once on the host (so one compiled solver serves every target of a
shape).

- ``"sorted"``: per-atom fingerprints compared as a set, by sorting every feature
  column (within each species) of both and taking the mean squared difference,
  each feature scaled by the spread of its target column. Zero exactly when every
  column holds the same multiset of values; independent of atom order.
- ``"pooled"``: L1 between pooled fingerprints (``pool(F, ops)``), the seed
  paper's structure-level fingerprint, scaled entry-wise by the target.

Internal: a stage of :func:`jaxsci.reconstruct.reconstruct`, not public API (empty
``__all__``); its names may change with the solver. Tests import them from this module.
``experiments/reconstruct_pt/labels.py`` (a study of the solver's labelings) uses
:func:`feature_scales` from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsci.descriptors import pool
from jaxsci.geometry.displacement import minimum_image

__all__ = []

Array = jax.Array


def feature_scales(target: np.ndarray) -> np.ndarray:
    """Per-feature scale ``[F]``: standard deviation of the target column over atoms,
    floored at 1e-2 of its mean magnitude (so constant columns still count) and at 1e-8 of
    the largest one. An all-zero target (every atom farther than ``r_cut`` from the others)
    has no magnitude to scale by: ones (its 1e-38 floor was flushed to 0 in float32, and
    0/0 made the search's loss NaN)."""
    t = np.asarray(target, dtype=np.float64)
    mag = np.abs(t).mean(0)
    if not mag.max() > 0:
        return np.ones_like(mag)
    floor = np.maximum(1e-2 * mag, 1e-8 * float(mag.max()))
    return np.maximum(t.std(0), floor)


def feature_etas(descriptor: Any) -> np.ndarray:
    """Effective Gaussian width ``[F]`` (1/A^2) of every ACSF feature, in the layout of
    ``descriptor`` (per neighbour species ``[G1, G2..., G3...]``, then per species pair
    ``[G4..., G5...]``): eta for G2, 3 eta for G4 (three squared distances), 2 eta for
    G5, 0 for G1/G3. Small values are smooth, long-range features."""
    cfg = descriptor.config
    radial = [0.0] + [float(e) for e, _ in cfg.g2] + [0.0] * len(cfg.g3)
    angular = [3.0 * float(p[0]) for p in cfg.g4] + [2.0 * float(p[0]) for p in cfg.g5]
    etas = radial * cfg.n_species + angular * cfg.n_pairs
    assert len(etas) == cfg.n_features
    return np.asarray(etas)


def species_groups(species_idx: np.ndarray) -> list[np.ndarray]:
    """Static index arrays of the atoms of each species present (ascending index)."""
    species_idx = np.asarray(species_idx)
    return [np.flatnonzero(species_idx == s) for s in np.unique(species_idx)]


def sort_by_species(features: Array, groups: Sequence[np.ndarray]) -> Array:
    """Sort every column of ``features [N, F]`` within each species group."""
    if len(groups) == 1:
        return jnp.sort(features, axis=0)
    return jnp.concatenate([jnp.sort(features[g], axis=0) for g in groups], axis=0)


def sorted_loss(
    features: Array,
    target_sorted: Array,
    scale: Array,
    groups: Sequence[np.ndarray],
    norm: str = "l1",
    weights: Array | None = None,
) -> Array:
    """Mean difference of sorted, scaled feature columns (dimensionless).

    ``features [N, F]``; ``target_sorted [N, F]`` is ``sort_by_species(target) / scale``.
    ``norm``: ``"l1"`` (pseudo-Huber with a 1e-3 knee, smooth at zero) or ``"l2"``.
    ``weights``: optional ``[F]`` column weights (default all 1).
    """
    d = sort_by_species(features / scale, groups) - target_sorted
    if norm == "l2":
        e = d * d
    else:
        e = jnp.sqrt(d * d + 1e-6) - 1e-3
    if weights is not None:
        e = e * weights
    return jnp.mean(e)


def ot_loss(
    features: Array,
    target_scaled: Array,
    scale: Array,
    species_idx: np.ndarray,
    eps: Array,
    iters: int = 30,
) -> Array:
    """Entropic optimal-transport set loss between the rows of ``features / scale`` and
    ``target_scaled`` (both ``[N, F]``; dimensionless).

    The cost of pairing trial row i with target row j is their mean squared scaled
    difference (pairs of different species cost 1e3); the plan ``P`` (uniform marginals,
    log-domain Sinkhorn, temperature ``eps``) is held fixed in the gradient (envelope
    theorem), and the loss is ``sum(P * C)``. Unlike sorted columns it keeps every row's
    features together; it is not zero at the solution for ``eps > 0`` (a small bias).
    """
    a = features / scale
    n = a.shape[0]
    cost = jnp.mean((a[:, None, :] - target_scaled[None, :, :]) ** 2, axis=-1)
    same = np.asarray(species_idx)[:, None] == np.asarray(species_idx)[None, :]
    cost = cost + 1e3 * (1.0 - jnp.asarray(same, cost.dtype))
    c = jax.lax.stop_gradient(cost) / eps
    logm = -jnp.log(float(n))

    def body(carry, _):
        f, g = carry
        f = -jax.nn.logsumexp(g[None, :] - c + logm, axis=1)
        g = -jax.nn.logsumexp(f[:, None] - c + logm, axis=0)
        return (f, g), None

    z = jnp.zeros(n, cost.dtype)
    (f, g), _ = jax.lax.scan(body, (z, z), None, length=iters)
    plan = jnp.exp(f[:, None] + g[None, :] - c + 2.0 * logm)
    return jnp.sum(jax.lax.stop_gradient(plan) * cost)


def per_atom_sorted_error(
    features: Array, target_sorted: Array, scale: Array, groups: Sequence[np.ndarray]
) -> Array:
    """Per-atom mismatch ``[N]`` under the sorted comparison: each atom's value in a
    column is compared with the target value of the same rank (within its species)."""
    err = jnp.zeros(features.shape[0], features.dtype)
    offset = 0
    for g in groups:
        f = features[g] / scale
        rank = jnp.argsort(jnp.argsort(f, axis=0), axis=0)
        ref = jnp.take_along_axis(target_sorted[offset : offset + len(g)], rank, axis=0)
        err = err.at[g].set(jnp.sum((f - ref) ** 2, axis=1))
        offset += len(g)
    return err


def pooled_scale(target: np.ndarray) -> np.ndarray:
    """Entry-wise scale of a pooled target: ``|target|`` plus 1e-3 of its mean magnitude."""
    t = np.abs(np.asarray(target, dtype=np.float64))
    return t + 1e-3 * max(float(t.mean()), 1e-30)


def pooled_loss(features: Array, target: Array, scale: Array, ops: Sequence[str]) -> Array:
    """Mean scaled L1 difference between ``pool(features, ops)`` and a pooled ``target``."""
    return jnp.mean(jnp.abs(pool(features, ops=tuple(ops)) - target) / scale)


def morse(r: Array, r0: Array, a: float = 1.5) -> Array:
    """Morse pair energy (depth 1, minimum at ``r0`` Angstrom, width ``1/a``)."""
    e = jnp.exp(-a * (r - r0))
    return e * e - 2.0 * e


def min_image(d: Array, cell: np.ndarray | None) -> Array:
    """Minimum-image displacement vectors ``d [..., 3]`` (Angstrom) for a fully periodic
    ``cell`` (rows), else ``d``; in ``d``'s dtype.

    Exact in skewed cells too (:func:`jaxsci.geometry.minimum_image`: the cell is reduced
    on the host, then the rounded guess is compared with the few images that can beat it;
    orthorhombic cells need only the guess).
    """
    if cell is None:
        return d
    return minimum_image(cell, dtype=d.dtype)(d)


def repulsion(positions: Array, min_distance: Array, cell: np.ndarray | None = None) -> Array:
    """Short-range pair repulsion ``sum_{i<j} relu(d_ij - r_ij)^2 / N`` (Angstrom^2).

    ``min_distance [N, N]`` (Angstrom) is the distance below which a pair is pushed apart;
    the term is zero for any structure whose atoms are not closer than that.
    """
    n = positions.shape[0]
    d = min_image(positions[:, None, :] - positions[None, :, :], cell)
    off = 1.0 - jnp.eye(n, dtype=positions.dtype)
    r = jnp.sqrt(jnp.sum(d * d, -1) + (1.0 - off))
    gap = jax.nn.relu(min_distance - r) * off
    return 0.5 * jnp.sum(gap * gap) / n


def tether(positions: Array, bond: Array, stretch: float | Array = 1.3) -> Array:
    """Keeps a free cluster in one piece without fixing its shape:
    ``sum_i relu(min_j (d_ij - stretch b_ij))^2 / N`` (Angstrom^2).

    ``bond [N, N]`` (Angstrom) holds the bond lengths (e.g. sums of covalent radii); an
    atom is penalised only when its *nearest* neighbour is farther than ``stretch`` bond
    lengths, so rods, plates and compact clusters are all free of it, while an atom that
    drifts off (its fingerprint gradient vanishes beyond the cutoff) is pulled back.
    """
    n = positions.shape[0]
    if n < 2:
        return jnp.zeros((), positions.dtype)
    d = positions[:, None, :] - positions[None, :, :]
    eye = jnp.eye(n, dtype=positions.dtype)
    r = jnp.sqrt(jnp.sum(d * d, -1) + eye)
    gap = jax.nn.relu(jnp.min(r - stretch * bond + 1e6 * eye, axis=1))
    return jnp.sum(gap * gap) / n
