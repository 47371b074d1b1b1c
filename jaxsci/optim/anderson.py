"""Anderson acceleration of an optimizer's iterates, as optax transformations.

The inner optimizer defines a fixed-point map ``g(x) = x + u(x)`` (``u``: the update it
proposes at parameters ``x``). Type-II Anderson keeps the last ``m`` differences of
iterates ``s_k = x_{k+1} - x_k`` and of residuals ``y_k = u_{k+1} - u_k`` and moves to::

    gamma  = argmin || u_t - Y gamma ||        (Tikhonov-regularised)
    x_next = x_t + beta u_t - (S + beta Y) gamma

The mixing ``beta`` (the step along the residual the history does not explain) is by
default set every step to the Barzilai-Borwein ratio ``<s, -y> / ||y||^2`` of the newest
pair (``beta="auto"``), clipped to ``[1, beta_max]``.

Two ways of keeping the history (``history=``):

* ``"orthogonal"`` (default): each new pair is orthogonalised against the stored ones
  (``Y`` orthonormal, the same combination applied to ``S``), then the oldest is dropped.
  With full memory it is exactly textbook type-II AA (same span, same point); when the
  window is full it keeps *orthogonalised* directions, like truncated GCR/Orthomin(m),
  which for the symmetric Jacobians of gradient descent (``I - lr H``) behaves like the
  conjugate-residual method even for small ``m``. Textbook windowed AA forgets converged
  eigen-directions and re-excites them: on an ill-conditioned least-squares problem
  (column-scaled, condition 2.7e3, 1e-6 relative suboptimality) textbook AA(5) took
  1128-1268 iterations against tuned Nesterov's 465-559; the orthogonal history took
  173-180 (NumPy prototype, float64).
  Regularisation shrinks ``gamma`` by ``1 / (1 + regularization)`` (the Gram matrix of
  the orthonormal basis is the identity, so this *is* a ridge relative to its diagonal),
  and a new direction that is numerically dependent on the stored ones is not stored (its
  slot, the oldest row's when the window is full, is then left empty: the step never needs
  the old row, one history output less).
* ``"window"``: textbook windowed AA with the Gram matrix ``Y^T Y`` updated one row and
  column per step and a ridge ``regularization * mean(diag(Y^T Y))``.

Stability (the reason this module exists; textbook AA on top of Adam diverged):

* **Safeguard.** An extrapolated point must be a descent step for the inner
  optimizer (``<x_next - x_t, u_t> > 0``). When the loss is passed as the extra argument
  ``value`` (optax's convention: the loss *at the current params*), the extrapolation
  made at step ``t`` is judged at step ``t + 1`` when its loss arrives: it is accepted if
  ``f(x_next) <= max`` of the last ``safeguard_memory`` accepted losses (non-monotone, as
  AA's iterates are), otherwise it is **rolled back**: the update returned moves the
  parameters to the plain point ``x_t + u_t`` the inner optimizer had proposed, the
  gradient taken at the rejected point is discarded (``anderson`` also restores the inner
  optimizer's state), the history is reset, and acceleration pauses for a back-off that
  doubles with each consecutive rejection (so a noisy loss cannot waste many steps).
  A rejection costs exactly one gradient evaluation. With the loss check on, the
  extrapolation step is also held within a trust region relative to the inner step
  (``||x_next - x_t|| <= trust ||u_t||``, trust from 4, doubled per accepted
  extrapolation up to 1e8, quartered per rejection down to 1): a noisy loss cannot let a
  huge jump through. An extrapolation shorter than ``min(1000 eps, 1e-3)`` of the inner
  step (it cancels the inner step: a secant pair from a zero step, e.g. a learning rate of
  0) is not taken.
  **Without a loss** (deterministic mode), the residual stands in for it: an
  extrapolated point is rolled back the same way if its gradient norm (the ``grad`` that
  :func:`anderson` passes; else the inner step ``||u||``) exceeds 10x the smallest one at
  any accepted point (a guard against blow-ups, not a descent test), and the trust region
  applies too. Measured: unchanged iterations on least squares, logistic and softmax
  regression; extended Rosenbrock converges where it ended in NaN; ``anderson(adam)``
  converges on an ill-conditioned quadratic where, judged by Adam's step (~lr sqrt(n)
  whatever the point), it ended at f = +9795 (f* = -1.01).
* **Noise test** (``noise_test=True``, default; needs the loss as ``value`` and the
  gradient, which :func:`anderson` passes itself; :func:`scale_by_anderson` takes it as the
  extra argument ``grad``). A loss that is a deterministic function of the parameters
  changes between two iterates as the trapezoid rule on their gradients says,
  ``f_t - f_{t-1} = (<g_{t-1}, s> + <g_t, s>) / 2`` with ``s = x_t - x_{t-1}`` (exact on
  quadratics, third order otherwise). A minibatch loss does not: the batch changes, and
  ``<g_{t-1}, s>`` holds the squared gradient noise the step fitted. A pair *disagrees*
  when the mismatch exceeds 0.1 of the predicted change (``(|a| + |b|) / 2``; mismatches
  below 100 eps of the loss are roundoff). While most recent pairs disagree (an EMA over
  ``average_window`` pairs above one half, started as if two pairs had agreed, so one
  rough first step of a deterministic run holds nothing) no extrapolation is tried:
  Anderson steps aside and the inner optimizer runs alone (``state.n_noisy`` counts the
  steps held).
  Measured along AA(5)-SGD trajectories, |mismatch| / predicted: below 0.06 on 99% of the
  pairs of the study's full-batch problems (least squares, logistic regression, MLP, both
  PINNs), above 0.1 on 99% of the minibatch ones (MLP on diabetes, CNN on digits; median
  7.7 and 1.8). At default options the minibatch problems went from 1.06 / 1.85 / 1.17
  (MLP) and 2.47 / 1.08 / 0.92 (CNN) times the inner optimizer's final loss (SGD / heavy
  ball / Adam) to medians of 1.00-1.01 (heavy ball on the MLP 0.47, a chaotic inner), at
  most 1.04 on any seed; the deterministic iterations to target are unchanged except one
  of nine Rosenbrock runs (461 -> 468: its stretched steps bend along the valley, and one
  step was held) (RESULTS.md, #5).
* **Noise gate and moving average** (``average=True``, for minibatch training). The
  relative standard deviation of the steps (see :mod:`jaxsci.optim.averaging`) tells a
  drifting trajectory from a noise-dominated one, independently of the scale of the
  parameters. While it is noise-dominated, no extrapolation is tried (secants of noise
  are meaningless) and, if ``average`` is on, every ``average_window`` steps the
  parameters are replaced by the moving average of the recent iterates. The statistic is
  taken over the *inner* optimizer's steps (accelerated steps zig-zag and would read as
  noise). Minibatch mode (``average=True`` with the loss passed) also makes the loss check
  noise-aware: the (minibatch) loss of an extrapolated *or averaged* point must lie
  ``loss_margin`` standard deviations below the running mean of the recent accepted
  losses, else the point is rolled back exactly like a rejected extrapolation; the
  back-off grows x4 per consecutive rejection. A minibatch loss that is merely below the
  max of a few recent ones is noise, and accepting it let extrapolations that fit noise
  through (Adam 1.19x, heavy ball 4-20x worse than the inner optimizer at equal epochs).
* **Stretched steps** (``stretch=True``, deterministic mode). An extrapolation that is
  finite but not a descent step means the secant model points back up (negative curvature
  along the path: gradient descent walking a curved valley, where every new pair has
  ``<s, -y> < 0``). The history is reset as before, but instead of the plain step the
  inner step is taken stretched by a factor that doubles with each such step (up to
  ``beta_max``), judged by the loss (residual) check like an extrapolation, rolled back to
  the plain point with the factor reset to 1 when it fails. Measured on extended
  Rosenbrock (10-D, ``sgd(1 / (2 L))``): 128-487 iterations instead of 788-1352 (tuned
  Nesterov 279-327); the convex problems of the study unchanged.
* Non-finite extrapolations fall back to the plain step and reset the history.

Everything is pure jnp on pytrees with a leading history axis on every leaf, so sharded
parameters keep their sharding (history rows are sharded like the leaf) and the state
is a deterministic function of the inputs (identical on every data-parallel rank).
Leaves sharded over Explicit mesh axes (``jax.make_mesh``'s default) are never reshaped,
and a jitted ``init`` shards their history too (run under ``jax.set_mesh``, as JAX asks);
over Auto axes, a jitted ``init`` leaves the layout of its outputs to the compiler, as
for optax's own states: call ``init`` eagerly or give ``jit`` ``out_shardings``.
Inner products accumulate in float64 when x64 is on.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import flatten_util
from jax.sharding import NamedSharding

from jaxsci.optim import _anderson_history as _history
from jaxsci.optim import _tree, averaging
from jaxsci.optim._anderson_checks import check_args, check_tree, check_update, python_scalars
from jaxsci.optim._anderson_state import (
    BOOLS,
    INTS,
    ParamsSpec,
    ScaleByAndersonState,
    pack,
    ravel,
    register_flax_serialization,
)

__all__ = ["AndersonState", "ScaleByAndersonState", "anderson", "scale_by_anderson"]

PyTree = Any
_TRUST_INIT = 4.0  # first extrapolation may be 4x the inner step; x2 per accepted, /4 per rejected
_RESIDUAL_SLACK = math.log(10.0)  # no loss passed: an extrapolation may grow ||g|| 10x at most
_NOISE_RATIO = 0.1  # noise test: a pair disagrees when |mismatch| > 0.1 x predicted change
_NOISE_PRIOR = 2.0  # noise test: starts as if two pairs had agreed (one bad first step won't hold)
_NOISE_FLOOR = 100.0  # noise test: loss changes below 100 eps |f| are roundoff, not noise
_NO_STEP = 1e3  # an extrapolation shorter than 1000 eps x the inner step cancels it: no step
_NO_STEP_MAX = 1e-3  # ... or than 1e-3 of it (float16 / bfloat16 leaves, where 1000 eps ~ 1)
History = Literal["orthogonal", "window"]
Layout = Literal["auto", "flat", "tree"]


class AndersonState(NamedTuple):
    """State of :func:`anderson`: the inner optimizer's state and the Anderson state."""

    inner_state: optax.OptState
    anderson_state: ScaleByAndersonState


class _Verdict(NamedTuple):
    """What the delayed safeguard decided about the point proposed last step, and the
    loss (or residual) statistics after it."""

    reject: jax.Array
    accepted_pending: jax.Array
    res_min: jax.Array
    loss_hist: jax.Array
    loss_mean: jax.Array
    loss_var: jax.Array
    n_loss: jax.Array

    @classmethod
    def unchecked(cls, state: ScaleByAndersonState) -> _Verdict:
        """Nothing judged (no loss, no residual check): a pending point counts as accepted."""
        return cls(
            jnp.asarray(False),
            state.pending,
            state.res_min,
            state.loss_hist,
            state.loss_mean,
            state.loss_var,
            state.n_loss,
        )


def scale_by_anderson(
    memory: int = 5,
    *,
    regularization: float = 1e-10,
    beta: float | Literal["auto"] = "auto",
    beta_max: float = 30.0,
    frequency: int = 1,
    warmup: int = 0,
    safeguard: bool = True,
    safeguard_memory: int = 5,
    average: bool = False,
    average_window: int = 10,
    average_threshold: float | None = None,
    history: History = "orthogonal",
    max_backoff: int = 64,
    loss_margin: float = 2.0,
    stretch: bool = True,
    noise_test: bool = True,
    layout: Layout = "auto",
) -> optax.GradientTransformationExtraArgs:
    """Anderson-accelerate the iterates ``x + u`` of the updates ``u`` it receives.

    Use it as the *last* element of an ``optax.chain`` (its input must be the full step
    of the inner optimizer), or use :func:`anderson`, which also rolls the inner
    optimizer's state back on a rejected extrapolation. ``update`` needs ``params``;
    pass the loss at ``params`` as ``value=`` to enable the loss safeguard, and the
    gradient at ``params`` as ``grad=`` for the noise test.

    Args:
      memory: number ``m`` of stored difference pairs (>= 1).
      regularization: ridge relative to the Gram diagonal (>= 0).
      beta: relaxation (mixing) of the residual in the extrapolated point, i.e. the step,
        in units of the inner step, along the part of the inner update that the history
        does not explain. ``"auto"`` (default): each step the Barzilai-Borwein ratio
        ``<s, -y> / ||y||^2`` of the newest secant pair, clipped to ``[1, beta_max]``
        (for ``sgd(1 / L)``: the BB2 step over ``1 / L``, large where the curvature
        met is far below ``L``; 1 for a pair of non-positive curvature). Measured
        against a fixed 1.5 with ``sgd(1 / L)``, m = 5, 10, 20, 3 seeds: 1.6-2.5x fewer
        iterations on logistic and softmax regression, 1.1-2x on ridge with quadratic
        features, about equal on least squares; minibatch mode unchanged (RESULTS.md,
        #5). A float: fixed mixing (textbook AA: 1.0).
      beta_max: upper clip of the ``"auto"`` mixing (>= 1).
      frequency: extrapolate every ``frequency`` steps (history grows every step).
      warmup: plain steps before the first extrapolation.
      safeguard: descent check and delayed loss check (residual check when no loss is
        passed and ``average=False``) with rollback and back-off.
        ``safeguard=False`` with ``average=False``, ``beta=1.0`` and ``history="window"``
        is textbook type-II AA (the NumPy-reference test runs exactly that).
      safeguard_memory: the loss of an extrapolated point must not exceed the max of
        this many recent accepted losses (1: monotone).
      average: minibatch mode (the default options already step aside on minibatches,
        see ``noise_test``; this mode also tries moving averages): wait for a window of
        statistics, then, while the steps are noise-dominated, do not extrapolate and
        propose the moving average of the iterates every ``average_window`` steps; with
        the loss passed, extrapolated and averaged points must beat the running mean of
        the losses by ``loss_margin`` standard deviations (see module doc). Off by
        default, and not for deterministic problems: the running variance of a falling
        loss is its trend, so the bar lies below the next losses and every extrapolation
        is rolled back (measured: least squares and logistic regression, 26-33 of 26-33
        rejected; plain SGD speed). The moving average's gain on minibatches comes from
        *evaluating* it: chain :func:`jaxsci.optim.moving_average` in front and evaluate at
        :func:`jaxsci.optim.averaged_params` (measured on the study's minibatch MLP and
        CNN, default options: final loss 0.45-0.99x the inner optimizer's, medians).
      average_window: window (EMA span) of the noise tests and of the moving average.
      average_threshold: rsd above which steps count as noise-dominated; default
        ``sqrt(average_window / 2)`` (see :mod:`jaxsci.optim.averaging`).
      history: ``"orthogonal"`` (default) or ``"window"`` (textbook), see module doc.
      max_backoff: longest pause (steps) of acceleration after repeated rejections.
      loss_margin: with ``average=True`` and the loss passed, an extrapolated or averaged
        point is accepted only if its (minibatch) loss lies ``loss_margin`` standard
        deviations below the running mean of the recent accepted losses: evidence of
        improvement beyond the minibatch noise (``0``: beat the running mean).
      noise_test: hold extrapolations off while the loss changes disagree with the
        gradients (minibatch noise; module doc). Active when ``value`` and the gradient
        (``grad=``; :func:`anderson` passes it) reach ``update``, the safeguard is on and
        ``average=False``. With it, the default options are safe on minibatches (measured:
        medians within 1% of the inner optimizer, every seed within 4%) but give no gain
        there; ``average=True`` is the mode that tries to.
      stretch: when an extrapolation is finite but not a descent step (the history's
        secant model points back up, as along a curved valley), take the inner step
        stretched by a factor that doubles with each such step (capped at ``beta_max``),
        judged by the loss (or residual) check like an extrapolation and rolled back,
        factor reset to 1, when it fails: a line search along the inner step at one
        gradient a try. Deterministic mode only (``average=False``, safeguard on).
      layout: ``"flat"``: the state keeps one ``[n]`` vector and one ``[m, n]`` history
        per quantity (the pytree is raveled once per step: a few large kernels instead of
        a few per leaf); ``"tree"``: per-leaf buffers shaped like the params, each history
        row sharded like its leaf; ``"auto"`` (default): tree on CPU, when a leaf is
        sharded (``NamedSharding`` with a partitioned axis) at ``init`` or under a mesh with
        Explicit axes, flat otherwise. A jitted ``init`` over Auto axes cannot see the
        params' sharding, so on accelerators it picks flat (a replicated history): call
        ``init`` eagerly, or pass ``"tree"``. ``"flat"`` with leaves sharded over Explicit
        axes raises ``ValueError``. The layout shapes the state, so with ``"auto"`` a
        checkpoint restores only on the kind of backend that wrote it: for one portable
        across backends (trained on a GPU, resumed on CPU), pass ``layout="flat"`` or
        ``"tree"`` explicitly. ``update`` refuses a state whose arrays have the other
        layout (``ValueError``).

    Cost on small problems: an update is ~50 small kernels whatever the size, and XLA's CPU
    runtime charges a jitted call about 0.5 us per kernel, against ~0.1 us inside a loop.
    Measured on least squares with 105 weights (float64, the 2-core CPU, two sessions whose
    clocks differed ~2x): a step costs 2.1-2.8x Nesterov's in a ``lax.scan`` (5.5-6.0 us
    against 2.6; 10-13 against 4.8) and 2.5-4.3x from a Python loop of jitted steps (23-30
    us against 5.6; 40-71 against 17-30) (RESULTS.md, #5). For problems of a few thousand
    weights or fewer, run the steps inside ``lax.scan`` / ``fori_loop``. Next to a costly
    gradient the small kernels cost more: they run one after another between two gradients,
    at several microseconds each on CPU. A 2-D Burgers PINN (642 weights, a 10 ms step) took
    1.11x the SGD step with ``"tree"`` and 1.24x with ``"flat"`` (RESULTS.md, session 33).
    """
    options = python_scalars(
        memory=memory,
        regularization=regularization,
        beta=beta,
        beta_max=beta_max,
        frequency=frequency,
        warmup=warmup,
        safeguard=safeguard,
        safeguard_memory=safeguard_memory,
        average=average,
        average_window=average_window,
        average_threshold=average_threshold,
        max_backoff=max_backoff,
        loss_margin=loss_margin,
        stretch=stretch,
        noise_test=noise_test,
    )
    check_args(history=history, **options)
    memory, regularization, beta, beta_max, frequency, warmup = (
        options[k] for k in ("memory", "regularization", "beta", "beta_max", "frequency", "warmup")
    )
    safeguard, safeguard_memory, average = (
        options[k] for k in ("safeguard", "safeguard_memory", "average")
    )
    average_window, average_threshold, max_backoff, loss_margin, stretch, noise_test = (
        options[k]
        for k in (
            "average_window",
            "average_threshold",
            "max_backoff",
            "loss_margin",
            "stretch",
            "noise_test",
        )
    )
    if layout not in ("auto", "flat", "tree"):
        raise ValueError(f"anderson: layout must be 'auto', 'flat' or 'tree', got {layout!r}")
    m = int(memory)
    threshold = (
        averaging.default_threshold(average_window)
        if average_threshold is None
        else float(average_threshold)
    )
    decay = averaging.ema_decay(average_window)
    adaptive = beta == "auto"

    def use_flat(params: PyTree) -> bool:
        leaves = jax.tree_util.tree_leaves(params)
        if layout == "tree" or not leaves or len(leaves) == 1 and leaves[0].ndim <= 1:
            return False  # nothing to ravel, or a single vector: both layouts coincide
        if any(_tree.explicit_spec(x) is not None for x in leaves) or _tree.explicit_mesh():
            if layout == "flat":
                raise ValueError(
                    "anderson: layout='flat' ravels the params into one replicated vector, "
                    "which leaves sharded over Explicit mesh axes cannot be without a "
                    "gather; use layout='tree' (or 'auto'), which shards the history like "
                    "the params"
                )
            return False
        sharded = any(
            isinstance(getattr(x, "sharding", None), NamedSharding)
            and any(a is not None for a in x.sharding.spec)
            for x in leaves
            if not isinstance(x, jax.core.Tracer)
        )
        # auto: flat on accelerators (fewer kernels: H200, 1M params, m = 5, train step
        # 3.7x vs 5.8x the SGD step); per-leaf on CPU, where the leaves are already large
        # and, since the flat vector is built by slice writes (was a concatenate, 7x
        # slower), the two layouts are within noise of each other (RESULTS.md, #5).
        return layout == "flat" or (not sharded and jax.default_backend() != "cpu")

    def init_fn(params: PyTree) -> ScaleByAndersonState:
        register_flax_serialization()  # a no-op unless the caller loaded flax.serialization
        dt = _tree.acc_dtype()
        params = _tree.as_arrays(params)
        for leaf in jax.tree_util.tree_leaves(params):
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise ValueError(f"anderson: params must be floating point, got {leaf.dtype}")
        flat = use_flat(params)
        spec = ParamsSpec.of(params, flat)
        if flat:  # one [n] vector, one [m, n] history per quantity
            leaves = jax.tree_util.tree_leaves(params)
            n = sum(math.prod(leaf.shape) for leaf in leaves)
            dtype = jnp.result_type(*[jax.dtypes.canonicalize_dtype(x.dtype) for x in leaves])
            params = jax.ShapeDtypeStruct((n,), dtype)
        zeros = lambda: jax.tree_util.tree_map(_tree.zeros_like, params)
        hist = lambda: jax.tree_util.tree_map(lambda p: _tree.stacked_zeros(p, m), params)
        ints, floats = pack(
            dict.fromkeys(INTS + BOOLS, 0),
            {
                "trust": _TRUST_INIT,
                "ema_sq": 0.0,
                "loss_mean": 0.0,
                "loss_var": 0.0,
                "rsd": 0.0,
                "beta": 1.0 if adaptive else beta,
                "stretch": 1.0,
                "res_min": jnp.inf,
                "f_prev": 0.0,
                "gs_prev": 0.0,
                "noise_r": 0.0,
                "noise_p": _NOISE_PRIOR * (1.0 - decay),  # prior pairs that agreed
            },
            jnp.zeros((m,), bool),
            jnp.full((safeguard_memory,), -jnp.inf, dt),
            jnp.zeros((m,), dt),
            dt,
        )
        return ScaleByAndersonState(
            ints=ints,
            floats=floats,
            s_hist=hist(),
            y_hist=hist(),
            gram=jnp.zeros((m, m), dt),
            x_prev=zeros(),
            u_prev=zeros(),
            rollback=zeros(),
            ema_step=zeros() if average else (),
            ema_x=zeros() if average else (),
            spec=spec,
        )

    # The orthogonal history empties the head slot when no pair is stored (it never reads the
    # old head row: insert returns None for it); the window writes the old row back.
    empties_head = history == "orthogonal"
    insert = (_history.orthogonal if empties_head else _history.window)(m, regularization)

    def judge(state, value, grad, nu2, residual_check: bool) -> _Verdict:
        """Judge the point proposed last step, now that its loss ``value`` arrives: at most
        the max of the last ``safeguard_memory`` accepted losses (minibatch mode: also
        ``loss_margin`` standard deviations below their running mean).

        Without a loss (deterministic mode), the residual stands in for it: the
        gradient (``grad``, which :func:`anderson` passes; else the inner step) at an
        extrapolated point may be at most 10x the smallest one at any accepted point so
        far (a guard against blow-ups, not a descent test: AA's residuals are not
        monotone; against the smallest, so it cannot ratchet up). Not the inner step
        when the gradient is known: Adam's step is ~lr sqrt(n) however bad the point,
        and anderson(adam) without a loss diverged on a convex quadratic.
        """
        dt = _tree.acc_dtype()
        if residual_check:
            r2 = nu2 if grad is None else _tree.dots(grad, [grad])[0]
            v = 0.5 * jnp.log(jnp.maximum(r2, jnp.finfo(dt).tiny))
            ok = jnp.isfinite(v) & (v <= state.res_min + _RESIDUAL_SLACK)
        else:
            v = value.astype(dt)
            ref = jnp.max(state.loss_hist)  # -inf: no accepted loss yet
            ok = jnp.isfinite(v) & ((v <= ref) | (ref == -jnp.inf))
        if average:  # noise-aware: beat the running mean by loss_margin std devs
            bar = state.loss_mean - loss_margin * jnp.sqrt(state.loss_var)
            ok = ok & (v <= bar)
        reject = state.pending & ~ok
        accepted_pending = state.pending & ok
        res_min, loss_hist = state.res_min, state.loss_hist
        if residual_check:  # the losses stay empty; only the smallest residual is kept
            use_v = jnp.isfinite(v) & ~reject
            res_min = jnp.where(use_v, jnp.minimum(res_min, v), res_min)
        else:
            loss_hist = jnp.where(jnp.isfinite(v), jnp.roll(loss_hist, 1).at[0].set(v), loss_hist)
        # Running mean and variance of the losses at accepted points (span
        # average_window); in a trending phase the variance also holds the lag^2 of the
        # mean, so the bar then asks for more than the trend alone gives.
        # Only minibatch mode reads them: not computed otherwise (dead work).
        if average:
            use = jnp.isfinite(v) & ~reject
            first = state.n_loss == 0
            delta = v - state.loss_mean
            loss_mean = jnp.where(first, v, state.loss_mean + (1.0 - decay) * delta)
            loss_var = jnp.where(
                first, 0.0, decay * (state.loss_var + (1.0 - decay) * delta * delta)
            )
            loss_mean = jnp.where(use, loss_mean, state.loss_mean).astype(dt)
            loss_var = jnp.where(use, loss_var, state.loss_var).astype(dt)
            n_loss = state.n_loss + use.astype(jnp.int32)
        else:
            loss_mean, loss_var, n_loss = state.loss_mean, state.loss_var, state.n_loss
        return _Verdict(reject, accepted_pending, res_min, loss_hist, loss_mean, loss_var, n_loss)

    def noise_check(state, value, grad, s, u, d_raw, count):
        """The noise test (module doc) on the pair ending at this step.

        Does the loss change between the last two iterates as the trapezoid rule on their
        gradients predicts? Returns the loss, the test's two EMA weights, whether most
        recent pairs disagreed, and ``[<g, s>, <g, u>, <g, d_raw>]`` (one pass over the
        gradient; the last two give ``<g, step taken>``).
        """
        dt = _tree.acc_dtype()
        gd = _tree.dots(grad, [s, u, d_raw])
        f = value.astype(dt)
        a, b = state.gs_prev, gd[0]
        mismatch = (f - state.f_prev) - 0.5 * (a + b)
        loss_dt = value.dtype if jnp.issubdtype(value.dtype, jnp.floating) else dt
        floor = _NOISE_FLOOR * jnp.finfo(loss_dt).eps
        floor = floor * jnp.maximum(jnp.abs(f), jnp.abs(state.f_prev))
        r2 = jnp.maximum(mismatch * mismatch - floor * floor, 0.0)
        p2 = 0.25 * (jnp.abs(a) + jnp.abs(b)) ** 2
        # x_prev is the previous iterate unless the previous step was a rollback
        use = (count >= 1) & ~state.rejected & jnp.isfinite(r2) & jnp.isfinite(p2)
        z = (r2 > _NOISE_RATIO**2 * p2).astype(dt)  # this pair disagrees with its gradients
        noise_r = jnp.where(use, decay * state.noise_r + (1.0 - decay) * z, state.noise_r)
        noise_p = jnp.where(use, decay * state.noise_p + (1.0 - decay), state.noise_p)
        return f, noise_r, noise_p, noise_r > 0.5 * noise_p, gd

    def mixing(state, s, y, g0, pair_ok) -> jax.Array | float:
        """This step's mixing: ``beta``, or with ``beta="auto"`` the Barzilai-Borwein (BB2)
        ratio of the newest pair.

        ``<s, -y> / ||y||^2`` is the step, in units of the inner step, that the newest
        secant pair fits along the residual (``1 / (lr h)`` for gradient descent on
        curvature ``h``), clipped to ``[1, beta_max]``. Without a usable pair (none,
        non-finite) it is kept from the last step. Non-positive curvature (``<s, -y> <= 0``)
        gives the floor 1. (Stepping long there instead, ``beta_max``, sped up Rosenbrock
        and the full-batch MLP but let heavy ball on minibatches diverge: RESULTS.md, #5.)
        """
        if not adaptive:
            return beta
        yy = g0[0, 0]
        bb = -_tree.dots(y, [s])[0] / jnp.where(yy > 0, yy, 1.0)  # no 0/0 (nor its grad)
        b_ok = pair_ok & (yy > 0) & jnp.isfinite(bb)
        return jnp.where(b_ok, jnp.clip(bb, 1.0, beta_max), state.beta).astype(_tree.acc_dtype())

    def check_step(state, d, u, nu2, checked: bool):
        """Check the proposed step ``d`` and hold it within the trust region.

        Returns ``(d, d_ok, <d, u>, shrink)``: ``d`` scaled by ``shrink`` so that
        ``||d|| <= trust ||u||`` (when the point will be checked next step; ``shrink`` is
        ``None`` otherwise), and whether it is a finite descent step for the inner
        optimizer that moves at all (with the safeguard; finite only without it, ``<d, u>``
        then ``None``). A step shorter than ``min(1000 eps, 1e-3)`` of the inner step
        (``eps`` of the coarsest leaf dtype) is no step: a secant pair from a zero inner
        step (a learning rate of 0, an all-zero gradient, a step skipped by
        ``optax.apply_if_finite``) makes the extrapolation cancel the inner step to
        rounding, and accepting that froze the iterate for good (the next pairs were
        rounding noise). The checks come before the scaling (a positive factor: same
        sign of ``<d, u>``, same finiteness). With ``u`` finite, ``<d, u>`` is non-finite
        whenever ``d`` is (``inf * 0 = nan``), so it doubles as the finiteness test.
        """
        du = shrink = None
        if safeguard:
            dd = _tree.dots(d, [u, d])  # <d, u>, ||d||^2 (one pass)
            du, nd2 = dd[0], dd[1]
            dt = _tree.acc_dtype()
            eps = max(float(jnp.finfo(x.dtype).eps) for x in jax.tree_util.tree_leaves(d))
            ratio = min(_NO_STEP * eps, _NO_STEP_MAX)  # 16-bit leaves: at most 1e-3
            moves = nd2 > jnp.asarray(ratio**2, dt) * nu2
            d_ok = jnp.isfinite(du) & (du > 0) & jnp.isfinite(nd2) & moves
        else:
            d_ok = _tree.all_finite(d)
        if checked:  # extrapolations judged next step: trust region, adapted by the check
            # ||d|| = 0: nothing to shrink (and no a / tiny, whose derivative -a / tiny^2 is
            # 0 / 0 in float32: jax.grad through a step at the optimum was NaN)
            nd = _tree.safe_sqrt(nd2)
            pos = nd > 0
            ratio = state.trust * _tree.safe_sqrt(nu2) / jnp.where(pos, nd, 1.0)
            shrink = jnp.where(pos, jnp.minimum(1.0, ratio), 1.0)
            d = jax.tree_util.tree_map(lambda a: (a * shrink).astype(a.dtype), d)
        return d, d_ok, du, shrink

    def average_test(state, x, u):
        """Minibatch mode: the rsd of the recent inner steps (decided before this step),
        whether they are noise-dominated, and the moving average of the iterates with the
        plain point ``x + u`` included."""
        rsd = averaging.ema_rsd(state.ema_step, state.ema_sq, state.n_ema, decay)
        noisy = (rsd > threshold) & (state.n_ema >= average_window)
        x_next = jax.tree_util.tree_map(jnp.add, x, u)
        first = state.n_ema == 0
        ema_x = jax.tree_util.tree_map(
            lambda e, xn: jnp.where(first, xn, decay * e + (1.0 - decay) * xn).astype(e.dtype),
            state.ema_x,
            x_next,
        )
        return rsd, noisy, ema_x

    def average_stats(state, u, ema_x, reject):
        """Minibatch mode: the statistics of the inner optimizer's steps after this one, all
        kept unchanged by a rollback."""
        where = lambda c, a, b: jax.tree_util.tree_map(lambda p, q: jnp.where(c, p, q), a, b)
        ema_step, ema_sq = averaging.ema_update(state.ema_step, state.ema_sq, u, decay)
        ema_step = where(reject, state.ema_step, ema_step)
        ema_sq = jnp.where(reject, state.ema_sq, ema_sq)
        ema_x = where(reject, state.ema_x, ema_x)
        n_ema = jnp.where(reject, state.n_ema, state.n_ema + 1)
        return ema_step, ema_sq, ema_x, n_ema

    def update_fn(updates, state, params=None, *, value=None, grad=None, **extra_args):
        del extra_args  # optax convention: extra args of other transforms are ignored
        register_flax_serialization()  # flax.serialization may be loaded after init
        params, value = check_update(state, updates, params, grad, value)
        if not state.spec.shapes:  # no parameters: nothing to accelerate
            return updates, state
        unravel = None
        if state.spec.flat:
            unravel = flatten_util.ravel_pytree(params)[1]
            params = ravel(params)
            updates = ravel(updates, params.dtype)
            if grad is not None:
                grad = ravel(grad, params.dtype)
        dt = _tree.acc_dtype()
        where = lambda c, a, b: jax.tree_util.tree_map(lambda p, q: jnp.where(c, p, q), a, b)
        u, x = updates, params
        count = state.count

        # The new secant pair from the previous accepted point. One product for ||y||^2,
        # <y, u>, ||u||^2; ||u||^2 doubles as the finiteness test of u (NaN/inf make it
        # non-finite; so does an overflowing norm, treated alike).
        s = jax.tree_util.tree_map(jnp.subtract, x, state.x_prev)
        y = jax.tree_util.tree_map(jnp.subtract, u, state.u_prev)
        g0 = _tree.gram([y, u])
        nu2 = g0[1, 1]
        u_finite = jnp.isfinite(nu2)  # u_prev was finite when stored (has_prev)

        # 1. Delayed safeguard: the loss (else the residual) of the point proposed last
        #    step arrives now (see ``judge``).
        residual_check = value is None and safeguard and not average
        checked = (value is not None and safeguard) or residual_check
        if checked:
            verdict = judge(state, value, grad, nu2, residual_check)
        else:
            verdict = _Verdict.unchecked(state)
        reject, accepted_pending, res_min, loss_hist, loss_mean, loss_var, n_loss = verdict

        # 2. Store the pair: one history row written (O(n), in place when the state is
        #    donated), never a copy of the whole buffer.
        pair_ok = state.has_prev & u_finite & ~reject
        mix = mixing(state, s, y, g0, pair_ok)
        s_row, y_row, s_old, y_old, keep, gram, valid, head, comb, yu_new, yu_old = insert(
            state, s, y, u, pair_ok, g0, mix
        )
        # u_prev becomes u unless this step is a rollback (then the history is reset).
        yu_prev = jnp.where(reject, state.yu_prev, jnp.where(pair_ok, yu_new, yu_old))
        write = pair_ok & keep
        idx = state.head
        gram = jnp.where(pair_ok, gram, state.gram)
        if empties_head:  # the head slot is written (emptied) even without a pair
            valid = jnp.where(pair_ok, valid, state.valid & (jnp.arange(m) != idx))
        else:
            valid = jnp.where(pair_ok, valid, state.valid)
        head = jnp.where(pair_ok, head, state.head)

        # 3. The moving average's rsd test on the recent inner steps (decided before this
        # step; their statistics are updated in 4, after the choice).
        if average:
            rsd, noisy, ema_x = average_test(state, x, u)
        else:
            rsd, noisy = jnp.zeros((), dt), jnp.asarray(False)

        # 3b. Noise test (module doc, ``noise_check``) on the pair ending here.
        noise = noise_test and value is not None and grad is not None and checked and not average
        d_raw = _tree.lin(lambda a, c: jnp.asarray(mix, a.dtype) * a - c, u, comb)
        if noise:
            f, noise_r, noise_p, noisy, gd = noise_check(state, value, grad, s, u, d_raw, count)
        else:
            f, noise_r, noise_p = state.f_prev, state.noise_r, state.noise_p

        # 4. Extrapolate (scheduled, not noisy, not backing off) and safeguard it.
        phase = count - warmup
        scheduled = (phase >= 0) & (phase % frequency == 0) & (count >= state.next_try)
        if average:  # statistics first, then only while the drift dominates
            ready = state.n_ema >= average_window
            if checked:  # the loss statistics too (kept only when the loss is checked)
                ready = ready & (state.n_loss >= average_window)
            gate = ready & ~noisy
        else:
            gate = ~noisy
        try_acc = scheduled & gate & jnp.any(valid) & u_finite & ~reject

        d = _tree.lin(lambda a, c: jnp.where(try_acc, a, c), d_raw, u)
        if empties_head:  # the head slot is emptied when nothing is stored
            zero = lambda r: jax.tree_util.tree_map(lambda a: jnp.where(write, a, 0), r)
            s_wr, y_wr = zero(s_row), zero(y_row)
        else:
            s_wr = _tree.select(write, s_row, s_old)
            y_wr = _tree.select(write, y_row, y_old)
        d, d_ok, du, shrink = check_step(state, d, u, nu2, checked)
        accelerate = try_acc & d_ok
        average_now = (
            average
            & noisy
            & (phase >= 0)
            & (count % average_window == 0)
            & (count >= state.next_try)
            & ~accelerate
            & ~reject
        )
        if average:
            avg_step = jax.tree_util.tree_map(jnp.subtract, ema_x, x)
            out = where(accelerate, d, where(average_now, avg_step, u))
        else:
            out = where(accelerate, d, u)
        bad = try_acc & ~d_ok  # non-finite or non-descent extrapolation: reset history
        # Stretched steps (module doc): a finite extrapolation that is not a descent step
        # becomes the inner step x2, x4, ... (capped at beta_max), pending like an
        # extrapolation; a rejection rolls it back and resets the factor to 1.
        if stretch and checked and not average:
            stretched = try_acc & jnp.isfinite(du) & (du <= 0)  # the secant model points up
            stretch_next = jnp.where(
                reject,
                1.0,
                jnp.where(stretched, jnp.minimum(2.0 * state.stretch, beta_max), state.stretch),
            ).astype(dt)
            out = _tree.lin(lambda o, a: jnp.where(stretched, stretch_next * a, o), out, u)
        else:
            stretched = jnp.asarray(False)
            stretch_next = state.stretch
        if noise:  # <g, step taken> for the next step's pair (out is u, d or stretched u)
            g_out = jnp.where(accelerate, shrink * gd[2], gd[1])
            g_out = jnp.where(stretched, stretch_next * gd[1], g_out)
            held = noisy & scheduled & jnp.any(valid) & u_finite & ~reject
            n_noisy = state.n_noisy + held.astype(jnp.int32)
        else:
            g_out, n_noisy = state.gs_prev, state.n_noisy
        # Statistics of the inner optimizer's steps (not of the steps taken: accelerated
        # steps zig-zag and would read as noise, averaging jumps are not motion).
        if average:
            ema_step, ema_sq, ema_x, n_ema = average_stats(state, u, ema_x, reject)
        else:
            ema_step, ema_sq, ema_x, n_ema = (), state.ema_sq, (), state.n_ema

        # 5. A rejected extrapolation: go to the plain point, reset, back off.
        # Back-off x2 per consecutive rejection (x4 in minibatch mode, where a rejection
        # mostly says that the extrapolation is not distinguishable from noise).
        growth = 4 if average else 2
        penalty_rej = jnp.minimum(jnp.maximum(growth * state.penalty, 1), max_backoff)
        penalty = jnp.where(
            reject, penalty_rej, jnp.where(accepted_pending, state.penalty // 2, state.penalty)
        )
        reset = reject | bad
        # The one-row write: every read of the old ring buffer (the matrix products above)
        # feeds it, so XLA updates the donated buffer in place (no copy of m x n floats).
        s_h = _tree.hist_set(state.s_hist, idx, s_wr)
        y_h = _tree.hist_set(state.y_hist, idx, y_wr)
        ints, floats = pack(
            {
                "count": count + 1,
                "head": jnp.where(reset, 0, head),
                "next_try": jnp.where(reject, count + 1 + penalty_rej, state.next_try),
                "penalty": penalty,
                "n_ema": n_ema,
                "n_loss": jnp.where(reject, state.n_loss, n_loss) if average else state.n_loss,
                "n_accelerated": state.n_accelerated + accelerate.astype(jnp.int32),
                "n_rejected": state.n_rejected + reject.astype(jnp.int32),
                "n_averaged": state.n_averaged + average_now.astype(jnp.int32),
                "n_stretched": state.n_stretched + stretched.astype(jnp.int32),
                "n_noisy": n_noisy,
                "has_prev": jnp.where(reject, state.has_prev, u_finite),
                "pending": (accelerate | average_now | stretched) & checked,
                "rejected": reject,
            },
            {
                "trust": jnp.where(
                    reject,
                    jnp.maximum(state.trust / 4.0, 1.0),
                    jnp.where(accepted_pending, jnp.minimum(state.trust * 2.0, 1e8), state.trust),
                ),
                "ema_sq": ema_sq,
                "loss_mean": loss_mean,
                "loss_var": loss_var,
                "rsd": rsd,
                "beta": mix,
                "stretch": stretch_next,
                "res_min": res_min,
                "f_prev": f,
                "gs_prev": g_out,
                "noise_r": noise_r,
                "noise_p": noise_p,
            },
            jnp.where(reset, jnp.zeros_like(valid), valid),
            jnp.where(reject, state.loss_hist, loss_hist),
            yu_prev,
            dt,
        )
        # The state keeps its leaf dtypes (a scan carry, no retrace): float32 updates of
        # bfloat16 params (mixed precision) are stored as bfloat16, as the flat layout's
        # ravel does (a cast fused into the select).
        keep = lambda old, new: jax.tree_util.tree_map(  # noqa: E731
            lambda a, b: jnp.where(reject, a, b).astype(a.dtype), old, new
        )
        rb = state.rollback
        new_state = ScaleByAndersonState(
            ints=ints,
            floats=floats,
            s_hist=s_h,
            y_hist=y_h,
            gram=gram,
            x_prev=keep(state.x_prev, x),
            u_prev=keep(state.u_prev, u),
            rollback=jax.tree_util.tree_map(lambda r, a, o: (a - o).astype(r.dtype), rb, u, out),
            ema_step=ema_step,
            ema_x=ema_x,
            spec=state.spec,
        )
        new_updates = where(reject, state.rollback, out)
        if unravel is not None:
            new_updates = unravel(new_updates)
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def anderson(
    inner: optax.GradientTransformation,
    memory: int = 5,
    *,
    regularization: float = 1e-10,
    beta: float | Literal["auto"] = "auto",
    beta_max: float = 30.0,
    frequency: int = 1,
    warmup: int = 0,
    safeguard: bool = True,
    safeguard_memory: int = 5,
    average: bool = False,
    average_window: int = 10,
    average_threshold: float | None = None,
    history: History = "orthogonal",
    max_backoff: int = 64,
    loss_margin: float = 2.0,
    stretch: bool = True,
    noise_test: bool = True,
    layout: Layout = "auto",
) -> optax.GradientTransformationExtraArgs:
    """Anderson acceleration of the optimizer ``inner`` (e.g. ``optax.sgd(1 / L)``).

    Same options as :func:`scale_by_anderson`. On top of it, a rejected extrapolation
    also restores the inner optimizer's state (its moments never see the gradient taken
    at the rejected point), and hands the updates it receives, the gradient, to the noise
    test. Pass the loss as ``value=`` to ``update`` for the loss safeguard and the noise
    test; other extra arguments go to ``inner``.

    Transforms that change the gradient's size belong inside: ``anderson(optax.chain(
    optax.clip_by_global_norm(c), inner))``. In ``optax.chain(clip, anderson(inner))`` the
    updates it receives are clipped, the loss changes disagree with them, and the noise
    test holds acceleration off while the clip is active (``state.n_noisy`` counts those
    steps); there, also pass the gradient itself, ``update(grads, state, params,
    value=loss, grad=grads)`` (``optax.chain`` forwards it).

    In ``optax.partition`` / ``optax.multi_transform`` / ``optax.masked``, where Anderson
    sees only some of the parameters, ``value`` must be the loss *of that block* or be left
    out: the total loss also changes by the other blocks' steps, which the noise test reads
    as noise (measured: 58 of 60 deterministic steps held, plain SGD on the block), and the
    loss check would judge this block's extrapolations by the others' progress. Without
    ``value`` (residual check) or with ``noise_test=False`` it accelerates the block as if
    it were alone. Extra arguments are passed on by name and unknown ones ignored (optax's
    convention), so a misspelt ``value`` (``loss=``) silently runs without the loss check.

    With ``value`` left out, the residual check rolls back an extrapolation whose gradient
    norm exceeds 10x the *smallest* seen at an accepted point, so one unusually small
    gradient (e.g. a nearly empty batch) holds acceleration off for the rest of the run:
    pass the loss where there is one.

    Gradient accumulation goes outside: ``optax.MultiSteps(anderson(inner), k)`` takes one
    Anderson step per accumulated gradient (it forwards ``value`` of the last mini-step:
    pass the loss of the whole accumulated batch where the mini-batches differ).
    ``anderson(optax.MultiSteps(inner, k))`` takes the mini-steps' zero updates for inner
    steps, whose secant pairs hold no curvature (measured, ``k = 2`` on a quadratic, 80
    steps: no extrapolation against 39 outside; 52 stretched steps, 8 of them rolled back).
    """
    aa = scale_by_anderson(
        memory,
        regularization=regularization,
        beta=beta,
        beta_max=beta_max,
        frequency=frequency,
        warmup=warmup,
        safeguard=safeguard,
        safeguard_memory=safeguard_memory,
        average=average,
        average_window=average_window,
        average_threshold=average_threshold,
        history=history,
        max_backoff=max_backoff,
        loss_margin=loss_margin,
        stretch=stretch,
        noise_test=noise_test,
        layout=layout,
    )
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: PyTree) -> AndersonState:
        return AndersonState(inner_state=inner.init(params), anderson_state=aa.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("anderson: update needs params (Anderson mixes iterates)")
        check_tree("updates", updates, params)
        u, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        # The incoming updates are the gradient (the noise test compares the loss changes
        # with it); a grad passed by the caller takes precedence.
        aa_args = {"grad": updates, **extra_args}
        out, aa_state = aa.update(u, state.anderson_state, params, **aa_args)
        inner_state = jax.tree_util.tree_map(
            lambda old, new: jnp.where(aa_state.rejected, old, new), state.inner_state, inner_state
        )
        return out, AndersonState(inner_state=inner_state, anderson_state=aa_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
