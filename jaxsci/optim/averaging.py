"""Noise tests for iterate sequences: a scale-free relative standard deviation of steps.

AADL switches its moving average on when ``max(std) / max(mean)`` over a window of
*iterates* exceeds 0.1. The mean of the iterates is the size of the parameters, not of
their motion, so the statistic is ~1e-4 for any network and the switch never fires.
Here the statistic is the relative standard deviation of the *steps*
``u_k = x_{k+1} - x_k`` over a window of ``w`` steps::

    rsd = sqrt(mean_k ||u_k - u_bar||^2) / ||u_bar||,    u_bar = mean_k u_k

which does not change when the parameters or the learning rate are rescaled. A smooth
trajectory (steps that agree) gives rsd << 1; steps that are pure noise give
rsd ~ sqrt(w - 1) or more (a random walk has ||u_bar|| ~ sigma / sqrt(w); oscillation
about a minimum gives an even smaller mean). For steps ``mu + noise(sigma)``,
rsd^2 ~ sigma^2 / (mu^2 + sigma^2 / w), so the switch ``rsd > sqrt(w / 2)`` fires exactly
when ``sqrt(w) sigma > w mu``: the noise accumulated over one window exceeds the drift
over it, which is when the window average is closer to the target than the last iterate.
The optimizer state keeps exponential moving averages with span ``w`` (decay
``1 - 2 / (w + 1)``, the same variance of the mean as a window of ``w``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsci.optim import _tree


def step_rsd(steps: jax.Array) -> jax.Array:
    """Relative standard deviation of a window of steps ``[w, n]`` (rows: consecutive steps)."""
    steps = jnp.asarray(steps)
    if steps.ndim != 2 or steps.shape[0] < 2:
        raise ValueError(f"steps must have shape [w >= 2, n], got {steps.shape}")
    mean = jnp.mean(steps, axis=0)
    var = jnp.mean(jnp.sum((steps - mean) ** 2, axis=1))
    return jnp.sqrt(var) / jnp.maximum(jnp.linalg.norm(mean), jnp.finfo(steps.dtype).tiny)


def aadl_statistic(iterates: jax.Array) -> jax.Array:
    """AADL's switch, ``max_j std_k(x_kj) / max_j |mean_k(x_kj)|``, for ``[w, n]`` iterates.

    Kept for comparison: it depends on the size of the parameters, not of their noise.
    """
    iterates = jnp.asarray(iterates)
    return jnp.max(jnp.std(iterates, axis=0)) / jnp.max(jnp.abs(jnp.mean(iterates, axis=0)))


def default_threshold(window: int) -> float:
    """``sqrt(window / 2)``: drift over one window equals the noise accumulated over it."""
    return (float(window) / 2.0) ** 0.5


def ema_decay(window: int) -> float:
    """EMA decay with span ``window``: ``1 - 2 / (window + 1)``."""
    return 1.0 - 2.0 / (float(window) + 1.0)


def ema_update(mean: object, sq: jax.Array, step: object, decay: float) -> tuple[object, jax.Array]:
    """One exponential-moving-average update of the mean step (pytree) and of ``||step||^2``."""
    new_mean = jax.tree_util.tree_map(
        lambda m, u: (decay * m + (1.0 - decay) * u).astype(m.dtype), mean, step
    )
    new_sq = decay * sq + (1.0 - decay) * _tree.vdot(step, step).astype(sq.dtype)
    return new_mean, new_sq


def ema_rsd(mean: object, sq: jax.Array, n: jax.Array, decay: float) -> jax.Array:
    """Bias-corrected rsd from the EMA moments after ``n`` updates (inf-safe, 0 if n < 2)."""
    corr = 1.0 - decay ** n.astype(sq.dtype)
    m2 = _tree.vdot(mean, mean).astype(sq.dtype) / jnp.maximum(corr, 1e-30) ** 2
    s2 = sq / jnp.maximum(corr, 1e-30)
    var = jnp.maximum(s2 - m2, 0.0)
    rsd = jnp.sqrt(var) / jnp.sqrt(jnp.maximum(m2, jnp.finfo(sq.dtype).tiny))
    return jnp.where(n >= 2, rsd, jnp.zeros_like(rsd))
