"""Per-example importance scores and score-based data filtering.

Scores of how much each training example matters to feature learning, for filtering a
data set before (large-batch) training, as in Gahlot, Yin & Shankar (arXiv 2012.09272):

* :func:`per_example_loss`: the loss of each example, ``vmap`` over examples;
* :func:`el2n_scores`: EL2N, ``||softmax(logits) - one_hot(y)||_2`` (Paul et al. 2021),
  optionally averaged over an ensemble of parameters;
* :func:`grad_norm_scores`: GraNd, the norm of each example's gradient (``vmap(grad)``),
  in chunks of bounded memory;
* forgetting events (Toneva et al. 2019): :class:`ForgettingState`,
  :func:`forgetting_init`, :func:`forgetting_update`, :func:`forgetting_scores`;
* :func:`select`: the sorted indices of the examples to keep.

The scores are pure JAX (``jit`` / ``vmap`` compatible: shape checks are static).
:func:`select` runs on the host (NumPy): it checks the values (NaN) and returns a
NumPy index array. Higher scores mean harder / more important examples.

Example::

    scores = el2n_scores(model.apply, params, x, y, n_classes=10)   # [n]
    keep = select(scores, 0.8, drop="easiest")                       # [round(0.8 n)]
    x_kept, y_kept = x[keep], y[keep]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsci._checks import is_int_at_least
from jaxsci._keys import as_key

__all__ = [
    "DROP_MODES",
    "ForgettingState",
    "el2n_scores",
    "forgetting_init",
    "forgetting_scores",
    "forgetting_update",
    "grad_norm_scores",
    "n_keep",
    "per_example_loss",
    "select",
]

DROP_MODES = ("easiest", "hardest", "random")

PyTree = Any


def _as_array(value: Any) -> Any:
    """Arrays (NumPy, JAX, tracers) as they are; array-likes (a list of labels) as NumPy."""
    return value if isinstance(value, jax.Array | np.ndarray) else np.asarray(value)


def _check_xy(fn: str, x: Any, y: Any) -> int:
    """Number of examples ``n``; ValueError unless ``x [n, ...]`` and ``y [n, ...]`` agree."""
    xs, ys = jnp.shape(x), jnp.shape(y)
    if len(xs) < 1 or len(ys) < 1:
        raise ValueError(f"{fn}: x and y need a leading example axis, got {xs} and {ys}")
    if xs[0] != ys[0]:
        raise ValueError(f"{fn}: x has {xs[0]} examples but y has {ys[0]}")
    return int(xs[0])


def _check_positive_int(fn: str, name: str, value: Any) -> int:
    if not is_int_at_least(value, 1):
        raise ValueError(f"{fn}: {name} must be a positive integer, got {value!r}")
    return int(value)


def per_example_loss(
    loss_fn: Callable[[PyTree, jax.Array, jax.Array], jax.Array],
    params: PyTree,
    x: jax.Array,
    y: jax.Array,
) -> jax.Array:
    """``loss_fn(params, x_i, y_i) -> scalar`` on every example: ``x [n, ...], y [n] -> [n]``."""
    x, y = _as_array(x), _as_array(y)
    _check_xy("per_example_loss", x, y)
    losses = jax.vmap(loss_fn, in_axes=(None, 0, 0))(params, x, y)
    if losses.ndim != 1:
        raise ValueError(f"per_example_loss: loss_fn must return a scalar, got {losses.shape[1:]}")
    return losses


def el2n_scores(
    logits_fn: Callable[[PyTree, jax.Array], jax.Array],
    params: PyTree | Sequence[PyTree],
    x: jax.Array,
    y: jax.Array,
    n_classes: int,
    *,
    ensemble: bool = False,
) -> jax.Array:
    """EL2N: ``||softmax(logits_fn(params, x)) - one_hot(y)||_2`` per example, ``[n]``.

    ``logits_fn(params, x [n, ...]) -> [n, n_classes]`` (batched, e.g. ``model.apply``);
    ``y [n]`` integer labels in ``[0, n_classes)``, an array or an array-like such as a list
    (the range is checked when ``y`` is concrete, i.e. not traced under ``jit``: ``one_hot``
    would silently give an all-zero target). ``x`` and ``y`` may be array-likes in
    :func:`per_example_loss` and :func:`grad_norm_scores` too. With
    ``ensemble=True``, ``params`` is a non-empty list or tuple of parameter pytrees and the
    score is the mean of the members' norms (Paul et al.'s expectation over
    initialisations).
    """
    x, y = _as_array(x), _as_array(y)
    n = _check_xy("el2n_scores", x, y)
    n_classes = _check_positive_int("el2n_scores", "n_classes", n_classes)
    if jnp.ndim(y) != 1:
        raise ValueError(f"el2n_scores: y must be [n] integer labels, got shape {jnp.shape(y)}")
    if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
        raise ValueError(
            f"el2n_scores: y must be integer labels, got dtype {jnp.result_type(y)} "
            "(cast class indices with y.astype(int))"
        )
    if not isinstance(y, jax.core.Tracer) and n > 0:
        y_host = np.asarray(y)
        lo, hi = int(y_host.min()), int(y_host.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(
                f"el2n_scores: labels must lie in [0, {n_classes}) (n_classes = {n_classes}), "
                f"got min {lo}, max {hi}"
            )
    if ensemble and not isinstance(params, list | tuple):
        raise ValueError(
            "el2n_scores: ensemble=True needs params as a list or tuple of parameter pytrees, "
            f"got {type(params).__name__}"
        )
    members = list(params) if ensemble else [params]
    if not members:
        raise ValueError("el2n_scores: an ensemble needs at least one member")
    target = jax.nn.one_hot(y, n_classes)
    total = jnp.zeros((n,), jnp.float32)
    for member in members:
        logits = logits_fn(member, x)
        if logits.shape != (n, n_classes):
            raise ValueError(
                f"el2n_scores: logits_fn must return [{n}, {n_classes}], got {logits.shape}"
            )
        total = total + jnp.linalg.norm(jax.nn.softmax(logits, axis=-1) - target, axis=-1)
    return total / len(members)


def grad_norm_scores(
    loss_fn: Callable[[PyTree, jax.Array, jax.Array], jax.Array],
    params: PyTree,
    x: jax.Array,
    y: jax.Array,
    *,
    chunk_size: int = 256,
) -> jax.Array:
    """GraNd: ``||d loss_fn(params, x_i, y_i) / d params||_2`` per example, ``[n]``.

    The norm is over all parameter leaves together. Gradients are formed ``chunk_size``
    examples at a time (``lax.map`` over chunks of ``vmap(grad)``), so memory is bounded
    by ``chunk_size`` copies of the parameters, whatever ``n``. The last chunk is padded
    with copies of the last example, whose scores are discarded.
    """
    x, y = _as_array(x), _as_array(y)
    n = _check_xy("grad_norm_scores", x, y)
    chunk = min(_check_positive_int("grad_norm_scores", "chunk_size", chunk_size), max(n, 1))
    if n == 0:
        return jnp.zeros((0,), jnp.float32)

    def norm_one(xi: jax.Array, yi: jax.Array) -> jax.Array:
        g = jax.grad(loss_fn)(params, xi, yi)
        return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(g)))

    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n

    def chunked(a: jax.Array) -> jax.Array:
        a = jnp.asarray(a)
        a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a
        return a.reshape(n_chunks, chunk, *a.shape[1:])

    norms = jax.lax.map(lambda xy: jax.vmap(norm_one)(*xy), (chunked(x), chunked(y)))
    return norms.reshape(-1)[:n]


class ForgettingState(NamedTuple):
    """Forgetting-event tracker over ``n`` examples (Toneva et al. 2019).

    ``previous [n] bool``: correct at the last update; ``learned [n] bool``: correct at
    least once; ``forgets [n] int32``: correct -> incorrect transitions so far;
    ``n_updates``: int32 scalar, updates so far.
    """

    previous: jax.Array
    learned: jax.Array
    forgets: jax.Array
    n_updates: jax.Array


def forgetting_init(n: int) -> ForgettingState:
    """A tracker for ``n`` examples: nothing learned, no events, no updates."""
    if not is_int_at_least(n, 0):
        raise ValueError(f"forgetting_init: n must be a non-negative integer, got {n!r}")
    false = jnp.zeros((n,), bool)
    return ForgettingState(false, false, jnp.zeros((n,), jnp.int32), jnp.zeros((), jnp.int32))


def forgetting_update(state: ForgettingState, correct: jax.Array) -> ForgettingState:
    """Record one evaluation ``correct [n] bool`` (is each example classified correctly).

    ValueError for a wrong shape or a non-bool dtype (a float ``correct``, e.g. a
    probability, would otherwise be cast: any non-zero value counting as correct).
    """
    if jnp.shape(correct) != state.previous.shape:
        raise ValueError(
            f"forgetting_update: correct must have shape {state.previous.shape}, "
            f"got {jnp.shape(correct)}"
        )
    correct = jnp.asarray(correct)
    if correct.dtype != jnp.bool_:
        raise ValueError(
            f"forgetting_update: correct must be bool (e.g. argmax(logits) == y), "
            f"got dtype {correct.dtype}"
        )
    forgot = state.previous & ~correct
    return ForgettingState(
        previous=correct,
        learned=state.learned | correct,
        forgets=state.forgets + forgot.astype(jnp.int32),
        n_updates=state.n_updates + 1,
    )


def forgetting_scores(state: ForgettingState) -> jax.Array:
    """``[n]`` float32 forgetting counts; never-learned examples get the maximum score.

    After ``T`` updates no example can have more than ``T // 2`` forgetting events, so
    never-learned examples score ``T // 2 + 1``: above every learned one (Toneva et al.
    count them as infinitely forgettable; a finite value keeps JSON and plots simple).
    """
    never = jnp.asarray(state.n_updates // 2 + 1, jnp.float32)
    return jnp.where(state.learned, state.forgets.astype(jnp.float32), never)


def n_keep(n: int, keep_fraction: float) -> int:
    """Examples :func:`select` keeps: ``floor(keep_fraction * n + 1/2)`` (round half up), >= 1.

    ValueError unless ``0 < keep_fraction <= 1`` and ``n`` is an int ``>= 1``.
    """
    if isinstance(keep_fraction, bool) or not isinstance(keep_fraction, numbers.Real):
        raise ValueError(f"keep_fraction must be a number in (0, 1], got {keep_fraction!r}")
    if not (math.isfinite(keep_fraction) and 0.0 < keep_fraction <= 1.0):
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    if not is_int_at_least(n, 1):
        raise ValueError(f"n_keep: n must be an int >= 1 (at least one example), got {n!r}")
    return max(1, min(int(n), math.floor(keep_fraction * n + 0.5)))


def select(
    scores: Any,
    keep_fraction: float,
    *,
    drop: str = "easiest",
    key: jax.Array | int | None = None,
) -> np.ndarray:
    """Sorted indices ``[n_keep(n, keep_fraction)]`` (int64) of the examples to keep.

    ``drop``: ``"easiest"`` drops the lowest scores (the paper's filtering of examples least
    important to feature learning), ``"hardest"`` the highest, ``"random"`` a uniformly
    random subset (needs ``key``; the scores only give ``n``).

    Ties (e.g. the many examples with zero forgetting events): without ``key``, of equal
    scores the lower index is dropped first; with ``key`` (a ``jax.random`` key), a
    uniformly random subset of the tied examples at the cut is dropped (as Toneva et al.
    remove a random subset of the unforgettable examples). Only the order among equal
    scores depends on the key; one key gives nested kept sets across ``keep_fraction``.
    ``key`` takes the forms :func:`jaxsci.data.batches` takes: a PRNG key (typed or raw
    ``uint32`` data) or an int seed (``key=0`` is ``jax.random.key(0)``); see
    :func:`jaxsci._keys.as_key`.

    Scores may be any real floating (bfloat16 included) or integer dtype. Host-side
    (NumPy): ValueError for scores that are not ``[n]`` real numbers with ``n >= 1``, NaN
    scores, ``keep_fraction`` outside ``(0, 1]``, an unknown ``drop``, a bad ``key`` or
    ``"random"`` without a key. ``+-inf`` are allowed.
    """
    if drop not in DROP_MODES:
        raise ValueError(f"select: drop must be one of {DROP_MODES}, got {drop!r}")
    key = as_key(key, "select")
    s = np.asarray(scores)
    if s.dtype == np.bool_ or not (
        jnp.issubdtype(s.dtype, jnp.floating) or jnp.issubdtype(s.dtype, jnp.integer)
    ):  # jnp.issubdtype: NumPy's does not count bfloat16 as floating
        raise ValueError(f"select: scores must be real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if s.ndim != 1:
        raise ValueError(f"select: scores must be [n], got shape {s.shape}")
    n = s.shape[0]
    if n == 0:
        raise ValueError("select: need at least one score (example), got none")
    k = n_keep(n, keep_fraction)
    if np.isnan(s).any():
        raise ValueError(f"select: {int(np.isnan(s).sum())} NaN score(s)")
    if drop == "random":
        if key is None:
            raise ValueError('select: drop="random" needs a key')
        return np.sort(np.asarray(jax.random.permutation(key, n))[:k]).astype(np.int64)
    # a stable sort of the scores in a candidate order: ties keep the candidate order
    order = np.arange(n) if key is None else np.asarray(jax.random.permutation(key, n))
    if drop == "easiest":  # ascending: the first n - k go
        keep = order[np.argsort(s[order], kind="stable")][n - k :]
    else:  # hardest: descending
        keep = order[np.argsort(-s[order], kind="stable")][n - k :]
    return np.sort(keep).astype(np.int64)
