"""Run one optimizer on one problem (jitted ``lax.scan``), tune baselines, summarise.

A deterministic run records the loss at every iterate (the ``value`` each step sees);
a minibatch run records the full training loss after every epoch. Wall time is the
median time of up to three calls of the compiled run after a warm-up call
(compilation excluded; one call when a run takes over 2 s). "Time to target" of a
deterministic run is measured the same way on a run of exactly the steps needed
(:func:`time_deterministic`); of a minibatch run, the run's time scaled by the
fraction of the epochs needed.
Gradient evaluations: one per step for first-order methods and Anderson (a rejected
extrapolation is a step, so safeguard passes are counted); for L-BFGS, the zoom line
search's evaluations (at least one per iteration).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.anderson.problems import Problem
from jaxsci.data import batch_indices
from jaxsci.optim import anderson, averaged_params, moving_average


@dataclass(frozen=True)
class Method:
    """An optimizer recipe: family name, hyper-parameters, and how it is called."""

    name: str
    family: str  # sgd | momentum | nesterov | adam | lbfgs | aa_sgd | aa_momentum | aa_adam
    lr: float = 0.0
    momentum: float = 0.0
    memory: int = 5
    average: bool = False

    def build(self, lr=None, momentum=None) -> optax.GradientTransformation:
        """The optimizer; ``lr``/``momentum`` may be traced (one compilation per family)."""
        f = self.family
        lr = self.lr if lr is None else lr
        momentum = self.momentum if momentum is None else momentum
        if f == "sgd":
            return optax.sgd(lr)
        if f == "nesterov":
            return optax.sgd(lr, momentum=momentum, nesterov=True)
        if f == "momentum":  # heavy ball: the inner optimizer of aa_momentum
            return optax.sgd(lr, momentum=momentum)
        if f == "adam":
            return optax.adam(lr)
        if f == "lbfgs":
            return optax.lbfgs()
        inner = {
            "aa_sgd": lambda: optax.sgd(lr),
            "aa_momentum": lambda: optax.sgd(lr, momentum=momentum),
            "aa_adam": lambda: optax.adam(lr),
        }[f]()
        return anderson(inner, self.memory, average=self.average)

    @property
    def structure(self) -> tuple:
        """What changes the compiled program (hyper-parameters do not)."""
        return (self.family, self.memory, self.average)

    @property
    def is_anderson(self) -> bool:
        return self.family.startswith("aa_")


# The Anderson state's step counters (``n_<name>``) that runs report, in this order.
AA_COUNTERS = ("accelerated", "rejected", "averaged", "stretched", "noisy")


def _aa_counts(state) -> dict:
    """Diagnostics of the Anderson state inside an optimizer state (or chain), if any."""
    if isinstance(state, tuple) and not hasattr(state, "_fields"):  # optax.chain
        return next((c for c in map(_aa_counts, state) if c), {})
    a = getattr(state, "anderson_state", None)
    if a is None:
        return {}
    return {k: int(getattr(a, f"n_{k}")) for k in AA_COUNTERS}


def _hyper(method: Method) -> tuple:
    return (jnp.asarray(method.lr, jnp.float32), jnp.asarray(method.momentum, jnp.float32))


def run_deterministic(problem: Problem, method: Method, key: jax.Array, steps: int) -> dict:
    """Full-batch run: loss at each iterate, gradient evaluations, wall time."""
    cache, cache_key = problem.compiled, ("det", steps, jax.config.jax_enable_x64, method.structure)
    if cache_key not in cache:
        cache[cache_key] = _det_program(problem, method, steps)
    run = cache[cache_key]
    p0 = problem.init(key)
    hyper = _hyper(method)
    jax.block_until_ready(run(p0, hyper))  # compile (first use) and warm up
    walls = []
    while len(walls) < 3 and sum(walls) < 2.0:  # median of up to 3 calls (short runs are noisy)
        t0 = time.perf_counter()
        (p, s), (vals, evals) = jax.block_until_ready(run(p0, hyper))
        walls.append(time.perf_counter() - t0)
    wall = float(np.median(walls))
    f = lambda p: problem.loss(p, problem.data)
    out = {
        "loss": np.asarray(vals, np.float64).tolist(),
        "evals": np.cumsum(np.asarray(evals)).tolist(),
        "wall": wall,
        "final_loss": float(f(p)),
        **_aa_counts(s),
    }
    if "rel_l2" in problem.extra:
        out["rel_l2"] = problem.extra["rel_l2"](p)
    return out


def step_loop(problem: Problem, method: Method) -> Callable[[Any, int], Any]:
    """``loop(p0, steps) -> (params, opt_state)``: exactly ``steps`` steps of ``method`` on a
    deterministic problem, in a compiled loop with a traced trip count (nothing recorded;
    compiled once per method structure, x64 mode and problem)."""
    cache, cache_key = problem.compiled, ("fori", jax.config.jax_enable_x64, method.structure)
    if cache_key not in cache:
        f = lambda p: problem.loss(p, problem.data)

        def program(p0, hyper, n):
            opt = method.build(*hyper)
            step = _det_step(method, opt, f)
            body = lambda i, carry: step(carry, None)[0]
            return jax.lax.fori_loop(0, n, body, (p0, opt.init(p0)))

        cache[cache_key] = jax.jit(program)
    run, hyper = cache[cache_key], _hyper(method)
    return lambda p0, steps: run(p0, hyper, jnp.asarray(steps, jnp.int32))


def time_deterministic(problem: Problem, method: Method, key: jax.Array, steps: int) -> float:
    """Seconds to take exactly ``steps`` steps (:func:`step_loop`; median of up to 7 calls
    after a warm-up call).

    Time to target is measured this way, not prorated from a longer run: after
    convergence a step can cost more or less than before (e.g. Anderson's
    re-orthogonalisation branch is taken more often once the differences are tiny).
    """
    loop, p0 = step_loop(problem, method), problem.init(key)
    jax.block_until_ready(loop(p0, steps))
    walls = []
    while len(walls) < 7 and sum(walls) < 1.0:  # short runs: more calls against noise
        t0 = time.perf_counter()
        jax.block_until_ready(loop(p0, steps))
        walls.append(time.perf_counter() - t0)
    return float(np.median(walls))


def _det_program(problem: Problem, method: Method, steps: int):
    f = lambda p: problem.loss(p, problem.data)

    def program(p0, hyper):
        opt = method.build(*hyper)
        return jax.lax.scan(_det_step(method, opt, f), (p0, opt.init(p0)), None, length=steps)

    return jax.jit(program)


def _det_step(method: Method, opt, f):

    if method.family == "lbfgs":
        vg = optax.value_and_grad_from_state(f)

        def step(carry, _):
            p, s = carry
            v, g = vg(p, state=s)
            u, s = opt.update(g, s, p, value=v, grad=g, value_fn=f)
            evals = jnp.maximum(optax.tree.get(s, "num_linesearch_steps"), 1)
            return (optax.apply_updates(p, u), s), (v, evals)

        return step
    use_value = method.is_anderson

    def step(carry, _):
        p, s = carry
        v, g = jax.value_and_grad(f)(p)
        u, s = opt.update(g, s, p, value=v) if use_value else opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), (v, jnp.ones((), jnp.int32))

    return step


# Span of the moving average that minibatch runs track alongside (jaxsci.optim.moving_average).
AVERAGE_WINDOW = 10


def run_minibatch(problem: Problem, method: Method, key: jax.Array, epochs: int) -> dict:
    """Minibatch run: full training loss after each epoch, wall time, and the final full
    training loss at the moving average of the iterates (``final_loss_average``) and at
    :func:`jaxsci.optim.averaged_params` (``final_loss_adaptive``: the average while its
    test holds). The average is tracked by ``moving_average`` chained first (it tests the
    gradients; it passes them on unchanged, so the steps are the method's own)."""
    data = problem.data
    n = data[0].shape[0]
    bs = problem.batch_size
    k_init, k_perm = jax.random.split(key)
    perms = jax.vmap(lambda k: batch_indices(k, n, bs))(jax.random.split(k_perm, epochs))
    full = lambda p: problem.loss(p, data)
    use_value = method.is_anderson or method.family == "lbfgs"

    def step(opt, carry, idx):
        p, s = carry
        batch = tuple(a[idx] for a in data)
        fb = lambda q: problem.loss(q, batch)
        v, g = jax.value_and_grad(fb)(p)
        if method.family == "lbfgs":
            u, s = opt.update(g, s, p, value=v, grad=g, value_fn=fb)
        elif use_value:
            u, s = opt.update(g, s, p, value=v)
        else:
            u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), v

    def program(p0, hyper, perms):
        opt = optax.chain(moving_average(AVERAGE_WINDOW), method.build(*hyper))

        def epoch(carry, perm):
            carry, _ = jax.lax.scan(lambda c, i: step(opt, c, i), carry, perm)
            return carry, full(carry[0])

        p, s, losses = _mb_run(p0, opt, epoch, perms, full)
        avg, adaptive = averaged_params(s, p, always=True), averaged_params(s, p)
        return p, s, losses, full(avg), full(adaptive), s[0].noisy

    cache, cache_key = problem.compiled, ("mb", epochs, jax.config.jax_enable_x64, method.structure)
    if cache_key not in cache:
        cache[cache_key] = jax.jit(program)
    run_j = cache[cache_key]
    p0 = problem.init(k_init)
    hyper = _hyper(method)
    jax.block_until_ready(run_j(p0, hyper, perms))
    t0 = time.perf_counter()
    p, s, losses, f_avg, f_adaptive, noisy = jax.block_until_ready(run_j(p0, hyper, perms))
    wall = time.perf_counter() - t0  # (includes the two extra full losses: negligible)
    return {
        "loss": np.asarray(losses, np.float64).tolist(),  # [epochs + 1], full train loss
        "wall": wall,
        "steps_per_epoch": int(perms.shape[1]),
        "final_loss": float(losses[-1]),
        "final_loss_average": float(f_avg),
        "final_loss_adaptive": float(f_adaptive),
        "average_on": bool(noisy),
        **_aa_counts(s),
    }


def _mb_run(p, opt, epoch, perms, full):
    f0 = full(p)
    (p, s), losses = jax.lax.scan(epoch, (p, opt.init(p)), perms)
    return p, s, jnp.concatenate([f0[None], losses])


def iters_to_target(loss: list[float], target: float) -> int | None:
    """First index whose loss is <= target (None if never)."""
    arr = np.asarray(loss)
    hit = np.nonzero(arr <= target)[0]
    return int(hit[0]) if hit.size else None


def tuning_grids(problem: Problem) -> dict[str, list[Method]]:
    """Grids for the baselines (tuned on seed 0)."""
    base, ab = problem.lr_sgd, problem.lr_adam
    convex = problem.f_star is not None
    lr_mult = [0.5, 1.0, 1.5, 1.9] if convex else [0.3, 1.0, 3.0]
    moms = [0.9, 0.95, 0.98, 0.99] if convex else [0.9, 0.99]
    return {
        "sgd": [Method("sgd", "sgd", lr=base * k) for k in lr_mult],
        "nesterov": [
            Method("nesterov", "nesterov", lr=base * k, momentum=m)
            for k in ([0.5, 1.0] if convex else [0.1, 0.3, 1.0])
            for m in moms
        ],
        "adam": [Method("adam", "adam", lr=ab * k) for k in (0.1, 0.3, 1.0, 3.0)],
        "lbfgs": [Method("lbfgs", "lbfgs")],
    }


def anderson_base(problem: Problem, family: str) -> str | None:
    """The baseline family whose tuned step an Anderson family takes (None: the 1/L step)."""
    if family == "aa_sgd":
        return None if problem.f_star is not None else "sgd"
    return {"aa_momentum": "nesterov", "aa_adam": "adam"}[family]


def anderson_methods(problem: Problem, tuned: dict[str, Method]) -> list[Method]:
    """Anderson on SGD (1/L or tuned SGD step), on momentum and Adam (their tuned steps)."""
    base = anderson_base(problem, "aa_sgd")
    lr = problem.lr_sgd if base is None else tuned[base].lr
    nes, adam = (
        tuned[anderson_base(problem, "aa_momentum")],
        tuned[anderson_base(problem, "aa_adam")],
    )
    out = [Method("aa_sgd_m5", "aa_sgd", lr=lr, memory=5)]
    if problem.deterministic:
        out += [Method(f"aa_sgd_m{m}", "aa_sgd", lr=lr, memory=m) for m in (10, 20)]
    out += [
        Method("aa_momentum_m5", "aa_momentum", lr=nes.lr, momentum=nes.momentum, memory=5),
        Method("aa_adam_m5", "aa_adam", lr=adam.lr, memory=5),
    ]
    if not problem.deterministic:
        out += [
            Method("aa_sgd_m5_avg", "aa_sgd", lr=lr, memory=5, average=True),
            Method("aa_adam_m5_avg", "aa_adam", lr=adam.lr, memory=5, average=True),
        ]
    return out
