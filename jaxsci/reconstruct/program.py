"""The compiled search of :func:`jaxsci.reconstruct.reconstruct`: one round of every start.

:func:`compile_search` builds, for one static :class:`Spec`, the jitted and vmapped round
(optimizer steps on the search loss, basin-hopping acceptance, kicks of the worst-matching
atoms, restarts), the batched features and the random compact starts. Everything here is
a pure function of arrays; the host loop in :mod:`jaxsci.reconstruct.solver` drives it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsci.reconstruct.losses import (
    min_image,
    morse,
    ot_loss,
    per_atom_sorted_error,
    pooled_loss,
    repulsion,
    sorted_loss,
    tether,
)
from jaxsci.reconstruct.polish import fingerprint_fn

__all__ = ["default_optimizer"]

Array = jax.Array

#: Free clusters: an atom whose nearest neighbour is farther than this many bond lengths
#: (sums of covalent radii) is pulled back (:func:`jaxsci.reconstruct.losses.tether`).
TETHER_STRETCH = 1.3


@functools.cache
def default_optimizer(steps_per_round: int) -> optax.GradientTransformation:
    """Search optimizer: L-BFGS (memory 10) with unit step and no line search.

    Chosen by measurement (see benchmarks/RESULTS.md): from 0.6 A perturbations of an
    EMT-relaxed Pt20 it brings more starts back near the solution than Adam (lr 0.05,
    cosine decay) on the sorted L1 loss, at one gradient per step (a line search under
    ``vmap`` cost ~15x more per step on CPU). Steps are clipped to 0.5 A per atom and the
    state is reset at every round. ``steps_per_round`` is accepted so that schedules can
    depend on it.
    """
    del steps_per_round
    return optax.lbfgs(learning_rate=1.0, memory_size=10, linesearch=None)


def value_and_grad_fn(f, state):
    """``x -> ((value, aux), grad)`` for ``f(x) -> (value, aux)``; reuses a line search's
    stored value and gradient when the optimizer state has them (then ``aux`` costs one
    more evaluation of ``f``)."""
    if optax.tree_utils.tree_get(state, "value") is None:
        return jax.value_and_grad(f, has_aux=True)
    vg = optax.value_and_grad_from_state(lambda x: f(x)[0])

    def stored(x):
        value, grad = vg(x, state=state)
        return (value, f(x)[1]), grad

    return stored


def clip_per_atom(update: Array, max_step: Array) -> Array:
    """Scale each atom's displacement down to at most ``max_step`` (Angstrom)."""
    norm = jnp.linalg.norm(update, axis=-1, keepdims=True)
    return update * jnp.minimum(1.0, max_step / jnp.maximum(norm, 1e-12))


class Spec(NamedTuple):
    """Static, hashable description of one compiled solver."""

    descriptor: Any
    n_atoms: int
    groups: tuple[tuple[int, ...], ...]
    cell: tuple[float, ...] | None
    loss: str
    pool_ops: tuple[str, ...]
    optimizer: Any
    n_starts: int
    steps_per_round: int
    n_kick: int
    polish_steps: int
    n_polish: int
    norm: str
    compact_steps: int
    n_sites: int
    ot_weight: float
    coarse: bool
    temperature: float
    #: periodic only: neighbour slots per atom (see :mod:`jaxsci.reconstruct.capacity`);
    #: None for free clusters (and the density estimate for a periodic cell).
    capacity: int | None = None


@functools.lru_cache(maxsize=64)
def compile_search(spec: Spec, species_key: tuple[int, ...]):
    """Build the jitted round, features and starts functions for one static spec."""
    species_idx = np.asarray(species_key, np.int32)
    groups = [np.asarray(g) for g in spec.groups]
    cell = None if spec.cell is None else np.asarray(spec.cell).reshape(3, 3)
    fp = fingerprint_fn(spec.descriptor, species_idx, cell, spec.capacity)
    opt = spec.optimizer
    n = spec.n_atoms

    def search_loss(x, aux, col_w=None):
        """Search loss at ``x`` and the features it compared (aux output)."""
        feats = fp(x)
        if spec.loss == "sorted":
            val = sorted_loss(feats, aux["t_sorted"], aux["scale"], groups, spec.norm, col_w)
            if spec.ot_weight > 0:
                val = val + spec.ot_weight * ot_loss(
                    feats, aux["t_scaled"], aux["scale"], species_idx, aux["ot_eps"]
                )
        else:
            val = pooled_loss(feats, aux["t_pooled"], aux["pscale"], spec.pool_ops)
        rep = repulsion(x, aux["dmin"], cell)
        if cell is None:
            rep = rep + tether(x, aux["r0"], TETHER_STRETCH)
        return val + aux["w_rep"] * rep, feats

    def optimize(x, aux, steps, age):
        """``steps`` optimizer steps from ``x``: the loss history [steps], and the lowest
        point visited (the end point included), its loss and its features [n, F].

        The scan evaluates ``steps + 1`` points and discards the last update, so the end
        point's loss and features come from the same program as the steps' (one copy of
        the descriptor's forward pass in the compiled round, not three: its compilation
        is most of a first call's)."""

        def body(carry, step):
            x, st, low_x, low_val, low_feats = carry
            col_w = None
            if spec.coarse:
                # Coarse-to-fine continuation: a start's first ``coarse_rounds`` rounds weight
                # feature f by exp(-eta_f L^2), L shrinking linearly from ``coarse_length``
                # to 0, so the smooth long-range features fix the shape before the sharp ones.
                # The end point is scored unweighted, comparable with other rounds.
                frac = (age * steps + step) / jnp.maximum(aux["coarse_steps"], 1.0)
                ell = aux["coarse_length"] * jnp.maximum(0.0, 1.0 - frac)
                col_w = jnp.exp(-aux["etas"] * jnp.where(step == steps, 0.0, ell * ell))
            f = functools.partial(search_loss, aux=aux, col_w=col_w)
            (val, feats), g = value_and_grad_fn(f, st)(x)
            upd, st = opt.update(g, st, x, value=val, grad=g, value_fn=lambda y: f(y)[0])
            x_new = x + clip_per_atom(upd, aux["max_step"])
            x_new = jnp.where(jnp.all(jnp.isfinite(x_new)), x_new, x)
            # The lowest point visited, the first (e.g. a guess) and the last included.
            # Under the continuation the weighted losses are not comparable across steps:
            # the end point only (its weights are all 1 by then).
            last = step == steps
            if spec.coarse:
                lower = last
            else:  # NaN never is lower; the end point wins a tie
                lower = (val < low_val) | (last & (val <= low_val))
            low_x = jnp.where(lower, x, low_x)
            low_feats = jnp.where(lower, feats, low_feats)
            low_val = jnp.where(lower, val, low_val)
            return (x_new, st, low_x, low_val, low_feats), val

        feats0 = jnp.zeros((n, spec.descriptor.n_features), x.dtype)
        init = (x, opt.init(x), x, jnp.asarray(jnp.inf, x.dtype), feats0)
        steps_axis = jnp.arange(steps + 1, dtype=jnp.float32)
        (_, _, low_x, low_val, low_feats), hist = jax.lax.scan(body, init, steps_axis)
        return hist[:steps], low_x, low_val, low_feats

    def per_atom_error(feats, aux):
        if spec.loss == "sorted":
            return per_atom_sorted_error(feats, aux["t_sorted"], aux["scale"], groups)
        return jnp.zeros(n, feats.dtype)

    def one_round(x, best_x, best_loss, best_err, stale, age, fresh, force, key, aux):
        """One round for one start; returns the state for the next round, the loss
        history, and the round's lowest point with its loss and features.

        ``best_err [n]`` is the per-atom error of ``best_x`` (which atoms are kicked). The
        start begins again from ``fresh`` after ``patience`` stale rounds, or now when
        ``force`` (a crossover child takes its place)."""
        # The round's outcome is the lowest point it visited: L-BFGS without a line search
        # can leave a minimum it reached (measured: from the exact Pt13, loss 9e-14, it
        # ended a 30-step round at 1.1).
        hist, x, val, feats = optimize(x, aux, spec.steps_per_round, age)
        improved = val < best_loss
        k_kick, k_who, k_jit = jax.random.split(key, 3)  # the stream of temperature 0
        if spec.temperature > 0:
            # Metropolis acceptance at a temperature relative to the current loss.
            u = jax.random.uniform(jax.random.fold_in(key, 1), (), x.dtype)
            worse = (val - best_loss) / (spec.temperature * best_loss + 1e-30)
            accept = improved | (u < jnp.exp(-jnp.where(improved, 0.0, worse)))
        else:
            accept = improved
        best_x = jnp.where(accept, x, best_x)
        best_loss = jnp.where(accept, val, best_loss)
        err = jnp.where(accept, per_atom_error(feats, aux), best_err)
        stale = jnp.where(improved, 0, stale + 1)
        # Kick: the n_kick worst-matching atoms (with a random tie-break) move up to
        # kick_size; every atom jitters a little.
        noise = jax.random.uniform(k_who, (n,), x.dtype) * (jnp.max(err) + 1e-12) * 0.5
        worst = jax.lax.top_k(err + noise, spec.n_kick)[1]
        direction = jax.random.normal(k_kick, (spec.n_kick, 3), x.dtype)
        step = aux["kick_size"] * direction / jnp.sqrt(3.0)
        if spec.n_sites > 0:
            # Directed moves: each of the worst atoms in turn goes to the best of n_sites
            # candidate sites at bond length from a random atom (one batched evaluation).
            def f0(y):
                return search_loss(y, aux)[0]

            def relocate(i, carry):
                y, k = carry
                k, ka, kd = jax.random.split(k, 3)
                w = worst[i]
                anchor = jax.random.randint(ka, (spec.n_sites,), 0, n)
                d = jax.random.normal(kd, (spec.n_sites, 3), x.dtype)
                d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
                sites = y[anchor] + aux["r0"][w, anchor][:, None] * d
                trials = jax.vmap(lambda p: y.at[w].set(p))(sites)
                vals = jax.vmap(f0)(trials)
                return trials[jnp.argmin(vals)], k

            kicked, _ = jax.lax.fori_loop(0, spec.n_kick, relocate, (best_x, k_kick))
        else:
            kicked = best_x.at[worst].add(step)
        kicked = kicked + 0.05 * aux["kick_size"] * jax.random.normal(k_jit, (n, 3), x.dtype)
        restart = (stale >= aux["patience"]) | force
        x_next = jnp.where(restart, fresh, kicked)
        best_loss = jnp.where(restart, jnp.inf, best_loss)
        best_x = jnp.where(restart, fresh, best_x)
        best_err = jnp.where(restart, 0.0, err)  # a fresh start's is set by its first round
        stale = jnp.where(restart, 0, stale)
        age = jnp.where(restart, 0, age + 1)
        return x_next, best_x, best_loss, best_err, stale, age, hist, x, val, feats

    in_axes = (0, 0, 0, 0, 0, 0, 0, 0, 0, None)
    out_axes = (0, 0, 0, 0, 0, 0, 1, 0, 0, 0)
    round_fn = jax.jit(jax.vmap(one_round, in_axes=in_axes, out_axes=out_axes))

    def features(x):
        return fp(x)

    features_fn = jax.jit(jax.vmap(features))

    def compact_one(key, aux):
        """A random start relaxed in a Morse pair potential with minima at the bond lengths."""
        if cell is None:
            k1, k2 = jax.random.split(key)
            d = jax.random.normal(k1, (n, 3))
            d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
            x = d * aux["radius"] * jax.random.uniform(k2, (n, 1)) ** (1.0 / 3.0)
        else:
            x = jax.random.uniform(key, (n, 3)) @ jnp.asarray(cell, jnp.float32)
        off = 1.0 - jnp.eye(n, dtype=jnp.float32)

        def energy(x):
            d = min_image(x[:, None, :] - x[None, :, :], cell)
            r = jnp.sqrt(jnp.sum(d * d, -1) + (1.0 - off))
            return 0.5 * jnp.sum(morse(r, aux["r0"]) * off)

        cp = optax.adam(optax.cosine_decay_schedule(0.1, max(spec.compact_steps, 1), alpha=0.05))
        g = jax.grad(energy)

        def body(carry, _):
            x, st = carry
            upd, st = cp.update(g(x), st, x)
            return (x + clip_per_atom(upd, 0.3), st), None

        (x, _), _ = jax.lax.scan(body, (x, cp.init(x)), None, length=spec.compact_steps)
        return x

    starts_fn = jax.jit(jax.vmap(compact_one, in_axes=(0, None)))
    return round_fn, features_fn, starts_fn


def batched(features_fn: Callable, cands: np.ndarray, batch: int) -> np.ndarray:
    """Features ``[k, n, F]`` of candidates ``[k, n, 3]``, ``batch`` at a time (the
    compiled batch size; the last batch is padded)."""
    pad = -len(cands) % batch
    padded = np.concatenate([cands, np.repeat(cands[:1], pad, 0)])
    feats = [
        np.asarray(features_fn(jnp.asarray(padded[i : i + batch], jnp.float32)))
        for i in range(0, len(padded), batch)
    ]
    return np.concatenate(feats)[: len(cands)]


def initial_state(x: Array, n_starts: int) -> tuple[Array, ...]:
    """Search state of starts ``x [n_starts, n, 3]``: positions, best positions, best
    loss, per-atom error of the best [n_starts, n], rounds without improvement, age."""
    n = x.shape[1]
    state = (
        x,
        x,
        jnp.full((n_starts,), jnp.inf, jnp.float32),
        jnp.zeros((n_starts, n), jnp.float32),
        jnp.zeros((n_starts,), jnp.int32),
        jnp.zeros((n_starts,), jnp.int32),
    )
    return shard(state, n_starts)


def shard(x, n_starts):
    n_dev = jax.device_count()
    if n_dev <= 1 or n_starts % n_dev:
        return x
    mesh = jax.make_mesh((n_dev,), ("starts",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("starts"))
    return jax.tree.map(lambda a: jax.device_put(a, sharding), x)
