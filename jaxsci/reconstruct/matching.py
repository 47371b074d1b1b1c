"""Row matching near a solution by Gauss-Newton steps on a linearised fingerprint.

Close to the target (within ~0.1 A) the fingerprint is nearly linear in the positions,
``f(x + d) ~ f(x) + J d``. For a matching ``P`` (target row ``i`` <- atom ``P[i]``) the
best step is then a linear least-squares solve, and the residual left over scores ``P``.
When several atoms have almost the same environment (the symmetry-equivalent atoms of a
rattled octahedron or icosahedron), the Hungarian matching of rows is no better than a
guess among them, and every such guess is a self-consistent wrong fixed point of the
alternating (ICP-like) polish. Here ``P`` is instead improved by exchanging atoms between
pairs of similar target rows as long as the linearised residual falls, then the
positions take the Gauss-Newton step and the model is linearised again. A few trials from
randomly tie-broken Hungarian matchings find a matching consistent with the geometry,
which the nonlinear matched descent then finishes.

Measured on the rattled Pt19 octahedron (0.05 A rattle) from the ideal octahedron, 8 trials
of 4 Gauss-Newton steps: 5 of 8 end below a fingerprint error of 1e-3 after the matched
descent (2.6e-5 to 1.1e-4), where the alternating matching stalls at ~5e-3.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from scipy.optimize import linear_sum_assignment


def similar_pairs(t: np.ndarray, species_idx: np.ndarray, k: int) -> np.ndarray:
    """``[P, 2]`` pairs ``(i, j)``, ``i < j``, of same-species rows of ``t [N, F]`` where
    ``j`` is among the ``k`` rows nearest ``i`` or ``i`` among those nearest ``j``."""
    n = len(t)
    d = np.sum((t[:, None, :] - t[None, :, :]) ** 2, axis=-1)
    same = species_idx[:, None] == species_idx[None, :]
    d = np.where(same & ~np.eye(n, dtype=bool), d, np.inf)
    near = np.zeros((n, n), bool)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    near[np.repeat(np.arange(n), order.shape[1]), order.ravel()] = True
    near &= np.isfinite(d)
    near |= near.T
    i, j = np.nonzero(np.triu(near, 1))
    return np.stack([i, j], axis=1)


class _Linear:
    """Linear model of the scaled fingerprint at ``x``: ``f0 [N, F]``, ridge-regularised
    pseudo-inverse of the Jacobian, and the residual of a matching."""

    def __init__(self, f0: np.ndarray, jac: np.ndarray, ridge: float):
        n, nf = f0.shape
        self.f0 = f0
        self.jac = jac.reshape(n * nf, -1)
        jtj = self.jac.T @ self.jac
        lam = ridge * np.trace(jtj) / jtj.shape[0]
        self.pinv = np.linalg.solve(jtj + lam * np.eye(jtj.shape[0]), self.jac.T)

    def step(self, perm: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
        """Residual norm after the least-squares step for ``perm``, and the step ``[3N]``."""
        goal = np.empty_like(t)
        goal[perm] = t  # goal[a]: the target row matched to atom a
        d = self.pinv @ (goal - self.f0).ravel()
        pred = self.f0.ravel() + self.jac @ d
        return float(np.linalg.norm(pred - goal.ravel())), d


def _swap_descent(
    perm: np.ndarray, t: np.ndarray, model: _Linear, pairs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exchange the atoms of pairs of target rows while the linearised residual falls;
    returns the matching and its least-squares step ``[3N]``."""
    best, step = model.step(perm, t)
    improved = True
    while improved:
        improved = False
        for i, j in pairs:
            trial = perm.copy()
            trial[i], trial[j] = perm[j], perm[i]
            r, d = model.step(trial, t)
            if r < best * (1.0 - 1e-9):
                perm, best, step, improved = trial, r, d, True
    return perm, step


def gauss_newton_matchings(
    x: np.ndarray,
    t: np.ndarray,
    species_idx: np.ndarray,
    features_and_jacobian: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    *,
    trials: int = 8,
    steps: int = 4,
    neighbours: int = 6,
    ridge: float = 1e-3,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Candidate ``(positions [N, 3], perm [N])`` pairs for the matched polish, one per
    trial, computed lazily (the caller may stop early).

    ``x [N, 3]``: positions near the target (Angstrom); ``t [N, F]``: the scaled target;
    ``features_and_jacobian(x)`` returns the scaled features ``[N, F]`` and their Jacobian
    ``[N, F, 3N]`` at ``x``. Each of ``trials`` runs ``steps`` Gauss-Newton steps from a
    Hungarian matching with random tie-breaking, improving the matching by pair
    exchanges among each row's ``neighbours`` most similar rows before every step.
    """
    x = np.asarray(x, np.float64)
    species_idx = np.asarray(species_idx)
    n = len(x)
    pairs = similar_pairs(t, species_idx, neighbours)
    base = _Linear(*features_and_jacobian(x), ridge)
    cost = np.sum((base.f0[None, :, :] - t[:, None, :]) ** 2, axis=-1)  # [row, atom]
    same = species_idx[:, None] == species_idx[None, :]
    spread = float(np.std(cost[same]))  # scale of the random tie-breaking
    cost = np.where(same, cost, 1e30)
    for _ in range(trials):
        _, perm = linear_sum_assignment(cost + rng.uniform(0.0, 1.0, cost.shape) * spread)
        y, model = x, base
        for s in range(steps):
            perm, d = _swap_descent(perm, t, model, pairs)
            y = y + d.reshape(n, 3)
            if s + 1 < steps:
                model = _Linear(*features_and_jacobian(y), ridge)
        yield y, perm
