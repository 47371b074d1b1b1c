"""Anderson acceleration at the edges users reach: a zero inner step, meta-gradients at
convergence, Flax NNX and flax.serialization, optax.inject_hyperparams around it, and
complex params in the moving average (each case was a bug found by a probe)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from anderson_steps import descend

from jaxsci.optim import anderson, moving_average

A = jnp.linspace(0.01, 1.0, 20)
C = jnp.linspace(-1.0, 1.0, 20)


def quadratic(p):
    return 0.5 * jnp.sum(A * (p - C) ** 2)


def run(tx, n, scales):
    """``n`` steps on the quadratic from zero; returns the final loss and state."""
    p, s, _ = descend(tx, quadratic, jnp.zeros(20), n, scales)
    return float(quadratic(p)), s


@pytest.mark.parametrize("zero_at", [3, 8])
def test_a_zero_inner_step_does_not_freeze_the_iterate(zero_at):
    """One all-zero gradient (an all-padding batch, lr 0 in a warm restart, a step skipped
    by apply_if_finite) made the next extrapolation cancel the inner step to rounding; it
    was accepted and every later pair was rounding noise: the loss stayed at 4.6e-2 for 300
    steps while the counters showed an accelerated step each time."""
    scales = jnp.ones(200).at[zero_at].set(0.0)
    plain, _ = run(optax.sgd(1.0), 200, scales)
    loss, state = run(anderson(optax.sgd(1.0)), 200, scales)
    assert plain > 1e-5  # plain gradient descent is far from done (condition 100)
    assert loss < 1e-10, loss
    assert int(state.anderson_state.n_accelerated) < 200


def test_a_learning_rate_of_zero_at_warm_restarts_does_not_freeze_the_iterate():
    sched = optax.sgdr_schedule(
        [dict(init_value=0.0, peak_value=1.0, warmup_steps=2, decay_steps=10, end_value=0.5)] * 20
    )
    loss, _ = run(anderson(optax.sgd(sched)), 120, jnp.ones(120))
    plain, _ = run(optax.sgd(sched), 120, jnp.ones(120))
    assert loss < 1e-3 * plain, (loss, plain)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_sixteen_bit_params_are_still_accelerated(dtype):
    """The no-step bar is capped at 1e-3 of the inner step: 1000 eps is ~1 in 16 bits."""
    f = lambda p: quadratic(p.astype(jnp.float32))  # noqa: E731
    p, s, _ = descend(anderson(optax.sgd(1.0)), f, jnp.zeros(20, dtype), 60)
    plain = run(optax.sgd(1.0), 60, jnp.ones(60))[0]
    assert p.dtype == dtype
    assert int(s.anderson_state.n_accelerated) >= 20
    assert float(f(p)) < 0.1 * plain


@pytest.mark.parametrize("history", ["orthogonal", "window"])
def test_meta_gradient_through_a_converged_run_is_finite(history):
    """jax.grad through the update: at convergence a norm vanishes, and sqrt's derivative
    at 0 (inf, times a masked 0) made the meta-gradient NaN."""

    def final_loss(lr):
        tx = anderson(optax.sgd(lr), history=history)
        return quadratic(descend(tx, quadratic, jnp.zeros(20), 40)[0])

    assert float(final_loss(0.5)) < 1e-10  # converged: the case that gave NaN
    assert np.isfinite(float(jax.grad(final_loss)(0.5)))


@pytest.mark.parametrize("history", ["orthogonal", "window"])
@pytest.mark.parametrize("with_value", [True, False])
def test_meta_gradient_from_the_optimum_is_finite(history, with_value):
    """Every norm 0 from the first step: the trust-region ratio a / max(||d||, tiny) has the
    derivative -a / tiny^2 = 0 / 0 in float32, and the window's Gram matrix is singular."""
    unit = lambda p: 0.5 * jnp.sum((p - C) ** 2)  # noqa: E731

    def final_loss(lr):
        tx = anderson(optax.sgd(lr), history=history)
        return unit(descend(tx, unit, C, 5, with_value=with_value)[0])

    assert float(jax.grad(final_loss)(0.5)) == 0.0


def test_meta_gradient_of_a_short_run_matches_finite_differences():
    def final_loss(lr):
        return quadratic(descend(anderson(optax.sgd(lr)), quadratic, jnp.zeros(20), 6)[0])

    h = 1e-2
    fd = (final_loss(0.5 + h) - final_loss(0.5 - h)) / (2 * h)
    np.testing.assert_allclose(float(jax.grad(final_loss)(0.5)), float(fd), rtol=2e-2)


def test_flax_nnx_optimizer_runs_and_matches_plain_arrays():
    """nnx.Optimizer initialises with Param-wrapped leaves and updates with plain arrays;
    the structure check refused the first update."""
    nnx = pytest.importorskip("flax.nnx")
    x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, anderson(optax.sgd(0.1)), wrt=nnx.Param)
    params = nnx.as_pure(nnx.state(model, nnx.Param))  # the same start, as plain arrays
    graphdef = nnx.graphdef(model)
    loss_of = lambda p: jnp.mean(nnx.merge(graphdef, p)(x) ** 2)  # noqa: E731
    tx = anderson(optax.sgd(0.1))
    state = tx.init(params)
    for _ in range(12):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
        opt.update(model, grads, value=loss)
        v, g = jax.value_and_grad(loss_of)(params)
        u, state = tx.update(g, state, params, value=v)
        params = optax.apply_updates(params, u)
    got = nnx.as_pure(nnx.state(model, nnx.Param))
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert int(state.anderson_state.n_accelerated) > 0


def test_flax_serialization_round_trip_continues_bit_for_bit():
    serialization = pytest.importorskip("flax.serialization")
    tx = anderson(optax.adam(0.1))
    f = lambda p: jnp.sum((p["w"] - 1.0) ** 2)  # noqa: E731

    @jax.jit
    def step(p, s):
        v, g = jax.value_and_grad(f)(p)
        u, s = tx.update(g, s, p, value=v)
        return optax.apply_updates(p, u), s

    p = {"w": jnp.arange(3.0)}
    state = tx.init(p)
    for _ in range(7):
        p, state = step(p, state)
    restored = serialization.from_bytes(tx.init({"w": jnp.zeros(3)}), serialization.to_bytes(state))
    p1, p2 = p, p
    for _ in range(5):
        p1, state = step(p1, state)
        p2, restored = step(p2, restored)
    np.testing.assert_array_equal(p1["w"], p2["w"])
    assert int(state.anderson_state.n_accelerated) > 0


def test_inject_hyperparams_around_anderson_names_every_traced_option_at_once():
    tx = optax.inject_hyperparams(anderson)(optax.sgd(0.1), memory=5)
    p = {"w": jnp.zeros(3)}
    with pytest.raises(ValueError, match="traced") as err:
        jax.jit(tx.update)(p, tx.init(p), p)
    for name in ("memory", "regularization", "beta_max", "max_backoff", "loss_margin"):
        assert name in str(err.value)


def test_moving_average_refuses_complex_params():
    """vdot cast complex leaves to real: identical updates 1j * ones read as noise."""
    with pytest.raises(ValueError, match="real floating point"):
        moving_average(10).init({"w": jnp.ones(3, jnp.complex64)})
