"""Float64 polish of a near-solution: host-side L-BFGS-B with alternating row matching.

Near the solution the float32, fixed-assignment polish stalls at a fingerprint error
of ~5e-3 (the sorted-column loss has gradient kinks at ties, and a Hungarian assignment
in scaled-feature space picks wrong rows and converges to a self-consistent wrong
point). This polish runs in float64 with scipy's L-BFGS-B (a real line search):

1. minimise the order-free sorted-column L2 loss (zero at the solution);
2. then alternate, ICP-like, a Hungarian matching of the *unscaled* rows (the metric's
   own matching) with minimisation of the row-matched scaled L2 loss under it, keeping
   the positions of lowest relative fingerprint error;
3. if that stalls above ``tol`` but below ``swap_below``, swap: a self-consistent wrong
   matching usually exchanges two atoms, whose target rows then carry the largest
   residuals; exchange the atoms of each pair among the ``swap_candidates`` worst rows,
   re-descend 2, keep the best, up to ``max_swaps`` times (from 0.1 A of EMT-relaxed
   Pt25-Pt40 this took 11 of 12 noisy starts below 1e-4-1e-3, against 3 of 12 without);
4. if that stalls too, try ``gauss_newton_trials`` matchings found by Gauss-Newton steps on
   the linearised fingerprint (:mod:`jaxsci.reconstruct.matching`: Frank-Wolfe on the
   relaxed matching, and randomly tie-broken Hungarian matchings for near-identical rows of
   symmetry-equivalent atoms, where no row matching is reliable), each finished by 2;
5. if that stalls too (a kink of the sorted loss or a self-consistent wrong
   matching, typically ~4e-3 at 0.05 A from the solution), hop: displace the best
   positions by Gaussian noise of 0.03-0.2 A, repeat 1-3 and keep the best (monotonic
   basin hopping at fine scale; measured on an EMT-relaxed Pt20, about one hop in five
   reaches ~2e-4).

Internal: a stage of :func:`jaxsci.reconstruct.reconstruct`, not public API (empty
``__all__``); its names may change with the solver. Tests import them from this module.
``experiments/reconstruct_pt/labels.py`` (a study of the solver's labelings) uses
:func:`matched_descent` from here.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import minimize

from jaxsci.geometry import neighbor_capacity
from jaxsci.metrics.structure import match_rows
from jaxsci.reconstruct.matching import gauss_newton_matchings

__all__ = []

Array = jax.Array


def relative_error(diff: float, size: float) -> float:
    """``diff / size`` (norms of the fingerprint difference and of the target); for an
    all-zero target (every atom beyond r_cut of the others) 0 when matched exactly, else
    inf (not diff / 1e-300 ~ 1e300), as :func:`jaxsci.metrics.fingerprint_error` says."""
    if size > 0:
        return float(diff / size)
    return 0.0 if diff == 0 else float("inf")


def fingerprint_fn(
    descriptor: Any,
    species_idx: np.ndarray,
    cell: np.ndarray | None,
    capacity: int | None = None,
):
    """Pure ``positions [N, 3] -> features [N, F]`` (``descriptor.fn`` wraps periodic
    positions into the cell itself).

    Periodic: each atom keeps ``capacity`` neighbour slots, the nearest within r_cut,
    instead of every atom of every image (for 8 Cu atoms in a 7.2 x 3.6 x 3.6 A cell at
    r_cut 6 A: 104 of 600 slots; 64 gradients took 14 s with all 600, 0.24 s with 96 and
    0.55 s with 128). ``None``: :func:`jaxsci.geometry.neighbor_capacity`'s estimate from
    the cell's mean density (a search's positions are not known in advance), too small
    for a slab or cluster in a cell with vacuum; :func:`reconstruct` sizes it from its
    initial positions and grows it when a structure it keeps has more neighbours
    (:mod:`jaxsci.reconstruct.capacity`). Features of positions with more
    neighbours than ``capacity`` miss the farthest ones, at the cutoff's edge. Free
    clusters (``cell`` None) ignore ``capacity``.
    """
    spec_arr = np.asarray(species_idx, np.int32)
    if cell is None:
        capacity = None
    elif capacity is None:
        capacity = neighbor_capacity(len(spec_arr), cell, descriptor.r_cut)

    def fp(x: Array) -> Array:
        return descriptor.fn(x, jnp.asarray(spec_arr), cell=cell, capacity=capacity)

    return fp


class _Programs(NamedTuple):
    """The polish's float64 programs for one (descriptor, species, cell); see
    :func:`_compiled`. ``xf`` is the flat ``[3N]`` positions."""

    losses: Callable  # (xf, perm, t_sorted, t_scaled, scale, w) -> ((value, features), grad)
    jac: Callable  # xf -> (features [N, F], Jacobian [N, F, 3N])
    n_features: int

    def feats(self, xf: Array) -> Array:
        """Features ``[N, F]`` at ``xf`` (from the loss program: one compilation fewer)."""
        n, zero = xf.shape[0] // 3, jnp.zeros((), xf.dtype)
        dummy = jnp.zeros((n, self.n_features), xf.dtype)
        ones = jnp.ones(self.n_features, xf.dtype)
        (_, feats), _ = self.losses(xf, jnp.arange(n, dtype=jnp.int32), dummy, dummy, ones, zero)
        return feats

    def sorted_vg(self, xf: Array, t_sorted: Array, scale: Array) -> tuple[Array, Array]:
        """Value and gradient of the sorted-column loss."""
        perm = jnp.arange(t_sorted.shape[0], dtype=jnp.int32)
        (value, _), grad = self.losses(xf, perm, t_sorted, t_sorted, scale, jnp.ones((), xf.dtype))
        return value, grad

    def matched_vg(
        self, xf: Array, perm: Array, t_scaled: Array, scale: Array
    ) -> tuple[Array, Array]:
        """Value and gradient of the row-matched loss (atom ``perm[i]`` against row i)."""
        zero = jnp.zeros((), xf.dtype)
        perm = jnp.asarray(perm, jnp.int32)
        (value, _), grad = self.losses(xf, perm, t_scaled, t_scaled, scale, zero)
        return value, grad

    def compile(self, n_atoms: int) -> None:
        """Compile both programs for ``n_atoms`` ahead of their first use (e.g. in a
        background thread while the search runs). Must be called inside
        ``jax.enable_x64(True)``."""
        f64 = jnp.float64
        xf = jax.ShapeDtypeStruct((3 * n_atoms,), f64)
        t = jax.ShapeDtypeStruct((n_atoms, self.n_features), f64)
        perm = jax.ShapeDtypeStruct((n_atoms,), jnp.int32)
        scale = jax.ShapeDtypeStruct((self.n_features,), f64)
        self.losses.lower(xf, perm, t, t, scale, jax.ShapeDtypeStruct((), f64)).compile()
        self.jac.lower(xf).compile()


@functools.lru_cache(maxsize=32)
def _compiled(
    descriptor: Any,
    species_key: tuple[int, ...],
    cell_key: tuple[float, ...] | None,
    capacity: int | None = None,
) -> _Programs:
    """Jitted float64 losses (value, features and gradient of the sorted and the matched
    loss in one program: each separate program cost a first call ~3 s of compilation at
    35 atoms) and the Jacobian of the features.

    Periodic: ``capacity`` neighbour slots per atom (see :func:`fingerprint_fn`).
    Must be called (and its functions used) inside ``jax.enable_x64(True)``.
    """
    species_idx = np.asarray(species_key, np.int32)
    cell = None if cell_key is None else np.asarray(cell_key).reshape(3, 3)
    fp = fingerprint_fn(descriptor, species_idx, cell, capacity)
    groups = [np.flatnonzero(species_idx == s) for s in np.unique(species_idx)]
    n = len(species_idx)

    def sort_cols(f):
        return jnp.concatenate([jnp.sort(f[g], axis=0) for g in groups], axis=0)

    def losses(xf, perm, t_sorted, t_scaled, scale, w_sorted):
        """``w_sorted`` (1 or 0) picks the sorted-column loss or the row-matched one (the
        other term is multiplied by 0)."""
        f = fp(xf.reshape(n, 3))
        scaled = f / scale
        d_sorted = sort_cols(scaled) - t_sorted
        d_matched = scaled[perm] - t_scaled
        sorted_l2 = jnp.mean(d_sorted * d_sorted)
        matched_l2 = jnp.mean(d_matched * d_matched)
        return w_sorted * sorted_l2 + (1.0 - w_sorted) * matched_l2, f

    @jax.jit
    def jac(xf):
        """Features [N, F] and their Jacobian [N, F, 3N] by central differences (the
        descriptor's custom VJP rules out forward mode; the 6N batched forward passes
        take 0.22 s against 0.75 s for ``jax.jacrev`` at N = 40, 21 features)."""
        h = 1e-5  # Angstrom; float64 truncation and rounding errors ~1e-10 relative
        steps = h * jnp.eye(3 * n, dtype=xf.dtype)
        shifted = jnp.concatenate([xf + steps, xf - steps])
        out = jax.vmap(lambda z: fp(z.reshape(n, 3)))(shifted)
        return fp(xf.reshape(n, 3)), jnp.moveaxis((out[: 3 * n] - out[3 * n :]) / (2 * h), 0, -1)

    vg = jax.jit(jax.value_and_grad(losses, has_aux=True))
    return _Programs(vg, jac, descriptor.n_features)


def _functions(
    descriptor: Any,
    species_idx: np.ndarray,
    cell: np.ndarray | None,
    capacity: int | None = None,
) -> _Programs:
    """:func:`_compiled` for ``species_idx [N]``, ``cell`` (``[3, 3]`` or None) and the
    periodic neighbour ``capacity``, keyed by their values (free clusters ignore
    ``capacity``). Must be called inside ``jax.enable_x64(True)``."""
    cell_key = None if cell is None else tuple(np.asarray(cell, np.float64).ravel().tolist())
    capacity = None if cell is None or capacity is None else int(capacity)
    return _compiled(descriptor, tuple(int(s) for s in species_idx), cell_key, capacity)


def precompile(
    descriptor: Any,
    species_idx: np.ndarray,
    cell: np.ndarray | None,
    capacity: int | None = None,
) -> None:
    """Compile the polish's programs for ``species_idx [N]``, ``cell`` and ``capacity``
    now, so that its first call does not (about 6 s at 35 atoms on the 2-core CPU);
    thread-safe."""
    with jax.enable_x64(True):
        _functions(descriptor, species_idx, cell, capacity).compile(len(species_idx))


def _lbfgsb(
    vg: Callable, x0: np.ndarray, max_iter: int, args: tuple, deadline: float | None = None
) -> np.ndarray:
    """SciPy L-BFGS-B on ``vg(x, *args) -> (value, grad)``; stops after the iteration that
    passes ``deadline`` (a ``time.perf_counter()`` value) and returns its point."""

    def fun(x):
        v, g = vg(jnp.asarray(x), *args)
        return float(v), np.asarray(g, np.float64)

    def callback(intermediate_result):  # SciPy stops the run on StopIteration
        if time.perf_counter() > deadline:
            raise StopIteration

    opts = {"maxiter": max_iter, "ftol": 1e-16, "gtol": 1e-12}
    stop = None if deadline is None else callback
    return minimize(fun, x0, jac=True, method="L-BFGS-B", options=opts, callback=stop).x


def matched_descent(
    positions: np.ndarray,
    target: np.ndarray,
    labels: np.ndarray,
    species_idx: np.ndarray,
    descriptor: Any,
    *,
    scale: np.ndarray,
    steps: int = 600,
    cell: np.ndarray | None = None,
    capacity: int | None = None,
) -> tuple[np.ndarray, float]:
    """One float64 L-BFGS-B descent of the row-matched loss with the labels held fixed.

    positions: [N, 3] start (Angstrom); target: [N, F]; labels: [N], the atom tied to each
    target row (``F(x)[labels]`` is compared with ``target``); ``scale [F]`` divides every
    feature. Returns the positions reached and their relative fingerprint error (rows
    re-matched by the Hungarian algorithm). The loss and optimizer of the polish's matched
    cycles, without the matching updates around them. ``capacity``: periodic neighbour
    slots per atom (:func:`fingerprint_fn`).
    """
    species_idx = np.asarray(species_idx, np.int32)
    t = np.asarray(target, np.float64)
    with jax.enable_x64(True):
        programs = _functions(descriptor, species_idx, cell, capacity)
        feats_fn, matched_vg = programs.feats, programs.matched_vg
        args = (jnp.asarray(labels), jnp.asarray(t / scale), jnp.asarray(scale, jnp.float64))
        x = _lbfgsb(matched_vg, np.ravel(np.asarray(positions, np.float64)), steps, args)
        f = np.asarray(feats_fn(jnp.asarray(x)), np.float64)
    perm = match_rows(f, t, species_idx)
    return x.reshape(-1, 3), relative_error(np.linalg.norm(f[perm] - t), np.linalg.norm(t))


def _worst_pairs(
    residual: np.ndarray, species_idx: np.ndarray, count: int
) -> list[tuple[int, int]]:
    """Pairs of same-species target rows among the ``count`` of largest ``residual [N]``
    (the rows' mismatch under the current matching), worst pairs first."""
    worst = np.argsort(-residual, kind="stable")[:count]
    pairs = [
        (int(i), int(k))
        for a, i in enumerate(worst)
        for k in worst[a + 1 :]
        if species_idx[i] == species_idx[k]
    ]
    return sorted(pairs, key=lambda ik: -(residual[ik[0]] + residual[ik[1]]))


def polish(
    positions: np.ndarray,
    target: np.ndarray,
    species_idx: np.ndarray,
    descriptor: Any,
    *,
    cell: np.ndarray | None = None,
    capacity: int | None = None,
    scale: np.ndarray,
    sorted_steps: int = 200,
    cycles: int = 8,
    steps_per_cycle: int = 100,
    tol: float = 0.0,
    hops: int = 8,
    seed: int = 0,
    deadline: float | None = None,
    max_swaps: int = 4,
    swap_candidates: int = 4,
    swap_below: float = 1e-2,
    gauss_newton_trials: int = 8,
) -> tuple[np.ndarray, float]:
    """Polish ``positions [N, 3]`` (Angstrom) towards ``target [N, F]`` in float64.

    ``scale [F]`` divides every feature in the losses. Returns the positions of lowest
    relative fingerprint error ``||F[perm] - T|| / ||T||`` seen (rows matched by the
    Hungarian algorithm) and that error; stops early once it is below ``tol``. A stall
    between ``tol`` and ``swap_below`` tries up to ``max_swaps`` exchanges of the atoms of
    two of the ``swap_candidates`` worst-matching rows, then ``gauss_newton_trials``
    Gauss-Newton matchings; ``hops`` random restarts around the best point (noise from
    ``seed``) follow a stalled descent. ``deadline`` (a ``time.perf_counter()`` value): no
    stage starts after it, and a running L-BFGS-B descent stops at its next iteration.
    ``capacity``: periodic neighbour slots per atom (:func:`fingerprint_fn`; None: the
    density estimate).
    """
    species_idx = np.asarray(species_idx, np.int32)
    t = np.asarray(target, np.float64)
    t_norm = max(float(np.linalg.norm(t)), 1e-300)
    with jax.enable_x64(True):
        programs = _functions(descriptor, species_idx, cell, capacity)
        feats_fn, sorted_vg, matched_vg = programs.feats, programs.sorted_vg, programs.matched_vg
        jac_fn = programs.jac
        sc = jnp.asarray(scale, jnp.float64)
        groups = [np.flatnonzero(species_idx == s) for s in np.unique(species_idx)]
        t_sorted = jnp.asarray(np.concatenate([np.sort(t[g] / scale, axis=0) for g in groups]))
        t_scaled = jnp.asarray(t / scale)

        def score(xf):
            f = np.asarray(feats_fn(jnp.asarray(xf)), np.float64)
            perm = match_rows(f, t, species_idx)
            return float(np.linalg.norm(f[perm] - t)) / t_norm, perm

        scale_np = np.asarray(scale, np.float64)

        def late():
            return deadline is not None and time.perf_counter() > deadline

        def matched(x, perm):
            args = (jnp.asarray(perm), t_scaled, sc)
            return _lbfgsb(matched_vg, x, steps_per_cycle, args, deadline)

        def descend(x, err, perm):
            best_x, best_err, best_perm = x, err, perm
            if sorted_steps > 0:
                x = _lbfgsb(sorted_vg, x, sorted_steps, (t_sorted, sc), deadline)
                err, perm = score(x)
                if err < best_err:
                    best_err, best_x, best_perm = err, x, perm
            for _ in range(cycles):
                if best_err < tol or late():
                    break
                x = matched(x, perm)
                err, new_perm = score(x)
                improved = err < best_err
                if improved:
                    best_err, best_x, best_perm = err, x, new_perm
                if np.array_equal(new_perm, perm) and not improved:
                    break
                perm = new_perm
            # Swap search: a stall above tol is most often two atoms matched to each
            # other's target rows (a self-consistent wrong matching); the two rows then
            # carry the largest residuals. Try exchanging the atoms of the worst rows.
            for _ in range(max_swaps):
                if not tol <= best_err < swap_below or late():
                    break
                f = np.asarray(feats_fn(jnp.asarray(best_x)), np.float64)
                residual = np.linalg.norm((f[best_perm] - t) / scale_np, axis=1)
                trial = []
                for i, k in _worst_pairs(residual, species_idx, swap_candidates):
                    p = best_perm.copy()
                    p[i], p[k] = p[k], p[i]
                    x = matched(best_x, p)
                    err, new_perm = score(x)
                    trial.append((err, x, new_perm))
                err, x, new_perm = min(trial, key=lambda e: e[0], default=(np.inf, None, None))
                if not err < best_err:
                    break
                best_err, best_x, best_perm = err, x, new_perm
            return best_x, best_err

        def features_and_jacobian(y):
            f, jac = jac_fn(jnp.asarray(y.ravel()))
            return np.asarray(f) / scale_np, np.asarray(jac) / scale_np[None, :, None]

        best_x = np.asarray(positions, np.float64).ravel()
        best_err, perm = score(best_x)
        if best_err >= tol:
            best_x, best_err = descend(best_x, best_err, perm)
        rng = np.random.default_rng(seed)
        if tol <= best_err < swap_below and gauss_newton_trials > 0 and not late():
            # Matchings found by Gauss-Newton steps on the linearised fingerprint (see
            # jaxsci.reconstruct.matching), each finished by the matched descent.
            candidates = gauss_newton_matchings(
                best_x.reshape(-1, 3),
                t / scale_np,
                species_idx,
                features_and_jacobian,
                rng,
                trials=gauss_newton_trials,
            )
            for y, p in candidates:  # lazily: each trial costs a few Jacobians
                x = matched(y.ravel(), p)
                err, _ = score(x)
                if err < best_err:
                    best_x, best_err = x, err
                if best_err < tol or late():
                    break
        amps = (0.03, 0.05, 0.1, 0.2)
        for h in range(hops):
            if best_err < tol or late():
                break
            x = best_x + amps[h % len(amps)] * rng.standard_normal(best_x.shape)
            err, perm = score(x)
            x, err = descend(x, err, perm)
            if err < best_err:
                best_x, best_err = x, err
    return best_x.reshape(-1, 3), best_err


def features64(
    structures: np.ndarray,
    descriptor: Any,
    species_idx: np.ndarray,
    cell: np.ndarray | None,
    capacity: int | None = None,
) -> np.ndarray:
    """Float64 features ``[k, n, F]`` of ``structures [k, n, 3]`` (Angstrom) from the
    polish's own program for ``capacity`` (compiled once per capacity)."""
    species_idx = np.asarray(species_idx, np.int32)
    with jax.enable_x64(True):
        feats = _functions(descriptor, species_idx, cell, capacity).feats
        out = [
            np.asarray(feats(jnp.asarray(np.ravel(x), jnp.float64)), np.float64)
            for x in np.asarray(structures, np.float64)
        ]
    return np.stack(out) if out else np.zeros((0, len(species_idx), descriptor.n_features))
