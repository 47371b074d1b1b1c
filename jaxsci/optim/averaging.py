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

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsci.optim import _tree
from jaxsci.optim._anderson_checks import check_tree

__all__ = ["MovingAverageState", "aadl_statistic", "averaged_params", "moving_average", "step_rsd"]


def step_rsd(steps: jax.Array) -> jax.Array:
    """Relative standard deviation of a window of steps ``[w, n]`` (rows: consecutive steps)."""
    steps = _window("step_rsd", "steps", steps)
    mean = jnp.mean(steps, axis=0)
    var = jnp.mean(jnp.sum((steps - mean) ** 2, axis=1))
    return jnp.sqrt(var) / jnp.maximum(jnp.linalg.norm(mean), jnp.finfo(steps.dtype).tiny)


def _window(fn: str, name: str, rows: Any) -> jax.Array:
    """``rows`` as a real floating ``[w >= 2, n]`` array (integers cast to the default
    float dtype); ``ValueError`` otherwise."""
    rows = jnp.asarray(rows)
    if rows.ndim != 2 or rows.shape[0] < 2:
        raise ValueError(f"{fn}: {name} must have shape [w >= 2, n], got {list(rows.shape)}")
    if jnp.issubdtype(rows.dtype, jnp.integer) or rows.dtype == jnp.bool_:
        rows = rows.astype(jnp.result_type(float))
    if not jnp.issubdtype(rows.dtype, jnp.floating):
        raise ValueError(f"{fn}: {name} must be real, got {rows.dtype}")
    return rows


def aadl_statistic(iterates: jax.Array) -> jax.Array:
    """AADL's switch, ``max_j std_k(x_kj) / max_j |mean_k(x_kj)|``, for ``[w, n]`` iterates.

    Kept for comparison: it depends on the size of the parameters, not of their noise.
    """
    iterates = _window("aadl_statistic", "iterates", iterates)
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


class MovingAverageState(NamedTuple):
    """State of :func:`moving_average`: EMAs of the updates, their norms and the iterates."""

    count: jax.Array  # int32: updates seen
    mean_step: Any  # EMA of the updates (pytree like params)
    mean_norm: jax.Array  # EMA of ||update|| (accumulation dtype)
    average: Any  # EMA of the params seen by update (pytree like params)
    decay: jax.Array  # the EMAs' decay, 1 - 2 / (window + 1)
    noisy: jax.Array  # bool: the updates are noise-dominated (the average is the better point)


def moving_average(
    window: int = 10, threshold: float | None = None
) -> optax.GradientTransformationExtraArgs:
    """Track the adaptive moving average of the iterates, for evaluation (AADL's average,
    without stepping to it). Updates pass through unchanged.

    It keeps the EMA (span ``window``) of the params it sees and tests whether the updates
    it receives are noise-dominated; :func:`averaged_params` then gives the parameters to
    evaluate: the average (the newest params folded in) while the test holds, the params
    otherwise (a drifting trajectory's average lags behind it). Put it *first* in an
    ``optax.chain`` so that it tests the gradients, e.g.
    ``optax.chain(moving_average(10), anderson(optax.adam(lr)))``: the steps of momentum
    or Adam are smoothed gradients, in which the noise hides (measured: on the minibatch
    MLP and CNN the test on their steps never fired, on the gradients it did).

    The test is the rsd test of the module doc on the updates' *directions*: with
    ``a = ||EMA(u)|| / EMA(||u||)`` (1 for updates that agree, ``~1 / sqrt(window)`` for
    pure noise), ``rsd_dir = sqrt(1 / a^2 - 1)`` is the rsd of updates of equal length, and
    the average is used while ``rsd_dir > threshold`` (default ``sqrt(window / 2)``: the
    noise accumulated over a window exceeds the drift over it; ``0``: always, once a window
    of updates is seen). Updates that agree in direction but shrink (geometric convergence)
    read as noise to the plain rsd; not to this one.

    Why not step to the average: a jump moves the iterate back by the average's lag and the
    noise returns within a window (measured: 7.7% *worse* final loss than SGD on a minibatch
    MLP, where the average itself was 7.9% better; RESULTS.md, #5).

    ``window`` and ``threshold`` may be concrete 0-d NumPy / JAX numbers, and traced ones
    too (``optax.inject_hyperparams(moving_average)(window=10)`` under ``jit``; a traced
    value cannot be checked).
    """
    window, threshold = _concrete(window), _concrete(threshold)
    if not _traced(window) and (
        not isinstance(window, int) or isinstance(window, bool) or window < 2
    ):
        raise ValueError(f"moving_average: window must be an integer >= 2, got {window!r}")
    if _traced(window) and not jnp.issubdtype(window.dtype, jnp.integer):
        raise ValueError(f"moving_average: window must be an integer >= 2, got {window!r}")
    if threshold is not None and not _traced(threshold):
        real = isinstance(threshold, int | float) and not isinstance(threshold, bool)
        if not real or not threshold >= 0 or not math.isfinite(threshold):
            raise ValueError(
                f"moving_average: threshold must be a finite number >= 0 or None, got {threshold!r}"
            )
    if _traced(window) or _traced(threshold):  # inject_hyperparams under jit
        decay = 1.0 - 2.0 / (window + 1.0)
        thr = jnp.sqrt(window / 2.0) if threshold is None else threshold
        align_max = 1.0 / jnp.sqrt(1.0 + thr * thr)
    else:
        thr = default_threshold(window) if threshold is None else float(threshold)
        align_max = 1.0 / math.sqrt(1.0 + thr * thr)  # a below this: rsd_dir above thr
        decay = ema_decay(window)

    def init_fn(params: Any) -> MovingAverageState:
        params = _tree.as_arrays(params)  # Python-number leaves too
        for leaf in jax.tree_util.tree_leaves(params):  # complex: vdot would drop Im
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise ValueError(
                    f"moving_average: params must be real floating point, got {leaf.dtype}"
                )
        zeros = jax.tree_util.tree_map(_tree.zeros_like, params)  # sharded like the params
        dt = _tree.acc_dtype()
        return MovingAverageState(
            count=jnp.zeros((), jnp.int32),
            mean_step=zeros,
            mean_norm=jnp.zeros((), dt),
            average=zeros,
            decay=jnp.asarray(decay, dt),
            noisy=jnp.asarray(False),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("moving_average: update needs params (it averages iterates)")
        params = _tree.as_arrays(params)
        check_tree("updates", updates, params, owner="moving_average")
        # this step's decay for both EMAs (a window injected by inject_hyperparams may change
        # between steps; the average's decay was the one fixed at init)
        state = state._replace(decay=jnp.asarray(decay, state.decay.dtype))
        mean = jax.tree_util.tree_map(
            lambda m, u: (decay * m + (1.0 - decay) * u).astype(m.dtype), state.mean_step, updates
        )
        norm = jnp.sqrt(_tree.vdot(updates, updates)).astype(state.mean_norm.dtype)
        mean_norm = decay * state.mean_norm + (1.0 - decay) * norm
        # (both EMAs start at 0 with the same decay: their bias corrections cancel in a)
        tiny = jnp.finfo(mean_norm.dtype).tiny
        align = jnp.sqrt(_tree.vdot(mean, mean)).astype(mean_norm.dtype) / jnp.maximum(
            mean_norm, tiny
        )
        n = state.count + 1
        # threshold 0: always (updates that agree exactly have align 1, not below it)
        noisy = ((align < align_max) | (thr == 0.0)) & (n >= window)
        new = state._replace(count=n, mean_step=mean, mean_norm=mean_norm, noisy=noisy)
        return updates, new._replace(average=_fold(state, params))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _traced(v: object) -> bool:
    return isinstance(v, jax.core.Tracer)


def _concrete(v: object) -> object:
    """A concrete 0-d NumPy / JAX number as the Python scalar it holds (what
    ``optax.inject_hyperparams`` passes at ``init``); other values unchanged."""
    if isinstance(v, jax.Array | np.ndarray | np.generic) and not _traced(v) and np.ndim(v) == 0:
        return np.asarray(v).item()
    return v


def _lead(flag: jax.Array, leaf: jax.Array) -> jax.Array:
    """``flag`` (one per problem of a state batched by ``vmap``: the leading axes of
    ``leaf``) shaped to broadcast over ``leaf``; a scalar ``flag`` unchanged."""
    if jnp.ndim(flag) == 0:
        return flag
    return jnp.reshape(flag, jnp.shape(flag) + (1,) * (leaf.ndim - jnp.ndim(flag)))


def _fold(state: MovingAverageState, params: Any) -> Any:
    """The EMA of the iterates with ``params`` as the newest (the first one starts it)."""
    first = state.count == 0
    d = state.decay

    def one(a, x):
        f, dd = _lead(first, a), _lead(d, a)
        return jnp.where(f, x, dd * a + (1.0 - dd) * x).astype(a.dtype)

    return jax.tree_util.tree_map(one, state.average, params)


def averaged_params(opt_state: Any, params: Any, *, always: bool = False) -> Any:
    """The parameters to evaluate: the moving average of :func:`moving_average` (``params``
    folded in as the newest iterate) while its updates are noise-dominated, else
    ``params``. ``always=True``: the average regardless of the test. ``opt_state`` is the
    whole optimizer state (the :class:`MovingAverageState` is found in it); jittable.

    A state batched by ``vmap`` (independent runs) works inside ``jax.vmap`` and outside
    it, with ``params`` batched alike (each run its own test). Flax NNX states and params
    (``nnx.Optimizer``'s ``opt_state``) are unwrapped: the result holds plain arrays."""
    opt_state, params = _tree.as_arrays(opt_state), _tree.as_arrays(params)
    found = [
        s
        for s in jax.tree_util.tree_leaves(
            opt_state, is_leaf=lambda s: isinstance(s, MovingAverageState)
        )
        if isinstance(s, MovingAverageState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"averaged_params: opt_state must hold one moving_average state, found {len(found)}"
        )
    state = found[0]
    ts, rs = jax.tree_util.tree_structure(params), jax.tree_util.tree_structure(state.average)
    if ts != rs:
        raise ValueError(
            f"averaged_params: params pytree structure {ts} does not match the moving "
            f"average's {rs}"
        )
    runs = tuple(jnp.shape(state.noisy))  # leading axes of a state batched by vmap
    leaves = jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(state.average)
    for p, a in zip(*leaves, strict=True):
        if jnp.shape(p) != a.shape:
            hint = (
                f" (the state is batched over {list(runs)} runs: pass the params batched "
                "alike, or call jax.vmap(averaged_params))"
                if runs
                else ""
            )
            raise ValueError(
                f"averaged_params: params leaf shape {jnp.shape(p)} does not match the "
                f"moving average's {a.shape}{hint}"
            )
    use = jnp.asarray(True) if always else state.noisy
    return jax.tree_util.tree_map(
        lambda a, p: jnp.where(_lead(use, a), a, p).astype(jax.dtypes.canonicalize_dtype(p.dtype)),
        _fold(state, params),
        params,
    )
