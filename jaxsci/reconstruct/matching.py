"""Row matching near a solution by Gauss-Newton steps on a linearised fingerprint.

Close to the target (within ~0.1 A) the fingerprint is nearly linear in the positions,
``f(x + d) ~ f(x) + J d``. For a matching ``P`` (target row ``i`` <- atom ``P[i]``) the
best step is then a linear least-squares solve, and the residual left over scores ``P``.
When several atoms have almost the same environment (the symmetry-equivalent atoms of a
rattled octahedron or icosahedron), the Hungarian matching of rows is no better than a
guess among them, and every such guess is a self-consistent wrong fixed point of the
alternating (ICP-like) polish. Here ``P`` is instead improved by exchanging atoms between
pairs of similar target rows as long as the linearised residual falls, then the
positions take the Gauss-Newton step and the model is linearised again. A few trials, from
Frank-Wolfe matchings on the relaxed linearised residual and from randomly tie-broken
Hungarian matchings in turn, find a matching consistent with the geometry, which the
nonlinear matched descent then finishes.

Measured on the rattled Pt19 octahedron (0.05 A rattle) from the ideal octahedron, 8 trials
of 4 Gauss-Newton steps: 5 of 8 end below a fingerprint error of 1e-3 after the matched
descent (2.6e-5 to 1.1e-4), where the alternating matching stalls at ~5e-3.

Internal: a stage of :func:`jaxsci.reconstruct.reconstruct`, not public API (empty
``__all__``); its names may change with the solver. Tests import them from this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = []


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

    def residual(self, v: np.ndarray) -> np.ndarray:
        """``A v`` for the residual map ``A = I - J J^+`` (``v`` flat ``[N F]``): what is
        left of a change ``v`` of the rows after the least-squares step, without forming
        the ``[N F, N F]`` matrix."""
        return v - self.jac @ (self.pinv @ v)

    def residual_transpose(self, w: np.ndarray) -> np.ndarray:
        """``A^T w`` (``w`` flat ``[N F]``)."""
        return w - self.pinv.T @ (self.jac.T @ w)

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


def frank_wolfe_matching(
    x0: np.ndarray,
    t: np.ndarray,
    model: _Linear,
    allowed: np.ndarray,
    iters: int = 60,
) -> np.ndarray:
    """Matching ``perm [N]`` (target row i <- atom ``perm[i]``) of low linearised residual,
    by Frank-Wolfe on its relaxation over doubly stochastic matrices (the FAQ method of
    Vogelstein et al. 2015 for quadratic assignment).

    The squared residual after the least-squares step, ``||A vec(X t - f0)||^2``, is
    quadratic in the assignment ``X [atom, row]``; each iteration solves the linear
    assignment of its gradient (Hungarian), then moves ``X`` towards it by the exact line
    search, from ``x0 [N, N]`` (doubly stochastic, zero where ``allowed [N, N]``, the
    same-species mask, is False); the result is the permutation nearest the last ``X``.
    Pair exchanges alone stall in this landscape: at 0.08 A from an EMT-relaxed Pt35
    icosahedral cut, where 11 of 35 Hungarian rows were wrong, they ended with 18 wrong.
    """
    n = len(t)
    x = np.asarray(x0, np.float64)
    for _ in range(iters):
        av = model.residual((x @ t - model.f0).ravel())
        grad = 2.0 * model.residual_transpose(av).reshape(n, -1) @ t.T
        _, cols = linear_sum_assignment(np.where(allowed, grad, 1e30))
        d = -x
        d[np.arange(n), cols] += 1.0
        au = model.residual((d @ t).ravel())
        curv, slope = float(au @ au), 2.0 * float(au @ av)
        if curv > 1e-300:
            step = min(max(-slope / (2.0 * curv), 0.0), 1.0)
        else:
            step = 1.0 if slope < 0 else 0.0
        if step <= 1e-9:
            break
        x = x + step * d
    _, cols = linear_sum_assignment(np.where(allowed, -x, 1e30))  # atom a <- row cols[a]
    perm = np.empty(n, dtype=np.int64)
    perm[cols] = np.arange(n)
    return perm


def _random_doubly_stochastic(
    allowed: np.ndarray, rng: np.random.Generator, iters: int = 50
) -> np.ndarray:
    """A random doubly stochastic ``[N, N]`` matrix, zero where ``allowed`` is False
    (Sinkhorn scaling of ``exp(U(0, 1))``)."""
    m = np.exp(rng.uniform(0.0, 1.0, allowed.shape)) * allowed
    for _ in range(iters):
        m /= m.sum(1, keepdims=True)
        m /= m.sum(0, keepdims=True)
    return m


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
    ``[N, F, 3N]`` at ``x``. Each of ``trials`` runs ``steps`` Gauss-Newton steps,
    improving the matching by pair exchanges among each row's ``neighbours`` most similar
    rows before every step, from one of two kinds of matching, taken in turn:

    - :func:`frank_wolfe_matching` on the linearised residual, started halfway between the
      Hungarian matching of the rows and a random doubly stochastic matrix. Measured at
      0.08 A from an EMT-relaxed Pt35 icosahedral cut (11 of 35 Hungarian rows wrong, the
      polish stalled at 2.5e-3 with the other kind alone): 6 of 6 such matchings descend
      to 2.9e-4-4.1e-4 (0.013-0.018 A).
    - the Hungarian matching with random tie-breaking: for the near-identical rows of a
      nearly symmetric cluster from its ideal shape (the rattled Pt19 octahedron above),
      where the linearised residual barely tells matchings apart.
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
    _, hungarian = linear_sum_assignment(cost)
    nearest = np.zeros((n, n))
    nearest[hungarian, np.arange(n)] = 1.0  # [atom, row]
    for trial in range(trials):
        if trial % 2 == 0:
            start = 0.5 * nearest + 0.5 * _random_doubly_stochastic(same, rng)
            perm = frank_wolfe_matching(start, t, base, same)
        else:
            noise = rng.uniform(0.0, 1.0, cost.shape) * spread
            _, perm = linear_sum_assignment(cost + noise)
        y, model = x, base
        for s in range(steps):
            perm, d = _swap_descent(perm, t, model, pairs)
            y = y + d.reshape(n, 3)
            if s + 1 < steps:
                model = _Linear(*features_and_jacobian(y), ridge)
        yield y, perm
