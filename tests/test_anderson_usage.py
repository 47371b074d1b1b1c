"""Anderson and the moving average where an optax user meets them: NumPy float64 params with
x64 off, mixed precision in ``lax.scan``, vmapped and Flax NNX states in
``averaged_params``, checkpoints across layouts, misused arguments (each case was a bug)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from anderson_steps import descend

from jaxsci.optim import (
    ScaleByAndersonState,
    aadl_statistic,
    anderson,
    averaged_params,
    moving_average,
    scale_by_anderson,
    step_rsd,
)

D = jnp.logspace(0, -2, 20)
T = jnp.linspace(-1.0, 1.0, 20)


def quad(p):
    return 0.5 * jnp.sum(D * (jnp.asarray(p["w"]) - T) ** 2)


def leaves(*trees):
    return [jax.tree_util.tree_leaves(t) for t in trees]


def eager_steps(tx, p, n, step=None):
    """``n`` eager steps of ``tx`` on ``quad`` from ``p``; returns params and state."""
    s = tx.init(p)
    for _ in range(n):
        v, g = jax.value_and_grad(quad)(p)
        u, s = (step or tx.update)(g, s, p, value=v)
        p = optax.apply_updates(p, u)
    return p, s


@pytest.mark.parametrize("layout", ["tree", "flat"])
def test_numpy_float64_params_with_x64_off_run_as_float32(layout):
    """np.zeros gives float64; with x64 off JAX computes in float32 and apply_updates
    returns float32 arrays. init recorded float64, so the second update (and a jitted
    first one) raised 'state was initialised for float64'."""
    assert not jax.config.jax_enable_x64
    p64 = {"w": np.zeros(20), "b": np.zeros((2, 2))}  # float64 NumPy
    p32 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), p64)
    for tx in (
        anderson(optax.sgd(1.0), 3, layout=layout),
        optax.chain(optax.sgd(1.0), scale_by_anderson(3, layout=layout)),
    ):
        got, _ = eager_steps(tx, p64, 6)
        want, _ = eager_steps(tx, p32, 6)
        for a, b in zip(*leaves(got, want), strict=True):
            assert a.dtype == jnp.float32
            np.testing.assert_array_equal(a, b)
        s = tx.init(p64)  # jitted: the NumPy params are float32 tracers from the start
        jax.jit(tx.update)(jax.grad(quad)(p64), s, p64, value=1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "float64 is not available" truncations
            tx.init(p64)
    # an abstract target saying float64 inits the state float32 arrays update with
    tx = anderson(optax.sgd(1.0), 3, layout=layout)
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, np.float64), p64)
    s = tx.init(abstract)
    u, s = jax.jit(tx.update)(jax.grad(quad)(p32), s, p32, value=quad(p32))
    assert int(s.anderson_state.count) == 1
    # the moving average too (its averaged params were a float64 cast)
    ma = moving_average(3)
    s = ma.init(p64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, s = ma.update(jax.grad(quad)(p64), s, p64)
        assert averaged_params(s, p64, always=True)["w"].dtype == jnp.float32


@pytest.mark.parametrize(
    "kwargs",
    [{"layout": "tree"}, {"layout": "flat"}, {"layout": "tree", "history": "window"}, {}],
)
def test_mixed_precision_state_keeps_its_dtypes_in_a_scan(kwargs):
    """bfloat16 params, float32 gradients: per leaf, u_prev and rollback became float32
    after one update (a scan carry error; an eager loop retraced each new dtype)."""
    f = lambda p: 0.5 * jnp.sum((p["w"].astype(jnp.float32) - T[:8]) ** 2)  # noqa: E731
    p0 = {"w": jnp.zeros(8, jnp.bfloat16), "b": jnp.zeros(2, jnp.bfloat16)}
    tx = anderson(optax.sgd(0.5), 3, **kwargs)

    def body(carry, _):
        p, s = carry
        v, g = jax.value_and_grad(f)(p)
        g = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), g)
        u, s = tx.update(g, s, p, value=v)
        return (optax.apply_updates(p, u), s), v

    s0 = tx.init(p0)
    (p, s), losses = jax.lax.scan(body, (p0, s0), None, 12)
    for a, b in zip(jax.tree_util.tree_leaves(s0), jax.tree_util.tree_leaves(s), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
    assert p["w"].dtype == jnp.bfloat16
    assert float(losses[-1]) < 0.1 * float(losses[0])


def _vmapped_moving_average_runs():
    """Three independent runs of moving_average(3) batched by vmap: run 1 noisy."""
    tx = moving_average(3)

    def train(noise):
        p = {"w": jnp.zeros(3), "b": jnp.zeros((2, 2))}
        s = tx.init(p)
        for k in range(6):
            step = 0.1 + noise * (-1.0) ** k
            u = jax.tree_util.tree_map(lambda x, step=step: jnp.full_like(x, step), p)
            u, s = tx.update(u, s, p)
            p = optax.apply_updates(p, u)
        return p, s

    return jax.vmap(train)(jnp.array([0.0, 5.0, 0.0]))


def test_averaged_params_of_a_vmapped_state_outside_vmap_is_each_runs_own():
    """The runs' flags [3] broadcast against the last axis of the [3, n] leaves: a smooth
    run got the noisy run's average in its second entry."""
    ps, ss = _vmapped_moving_average_runs()
    assert ss.noisy.tolist() == [False, True, False]
    one = lambda i, t: jax.tree_util.tree_map(lambda x: x[i], t)  # noqa: E731
    for always in (False, True):
        per_run = [averaged_params(one(i, ss), one(i, ps), always=always) for i in range(3)]
        want = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *per_run)
        for got in (
            averaged_params(ss, ps, always=always),
            jax.vmap(lambda s, p, always=always: averaged_params(s, p, always=always))(ss, ps),
        ):
            for a, b in zip(*leaves(got, want), strict=True):
                np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="batched over"):
        averaged_params(ss, one(0, ps))  # unbatched params of a batched state


def test_averaged_params_takes_a_flax_nnx_optimizer_state():
    """nnx.Optimizer keeps its state in OptArray wrappers; anderson and moving_average
    unwrapped NNX values, averaged_params raised a pytree structure error."""
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
    tx = optax.chain(moving_average(3), anderson(optax.sgd(0.1)))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    for _ in range(5):
        loss, g = nnx.value_and_grad(lambda m: jnp.mean((m(x) - 1.0) ** 2))(model)
        opt.update(model, g, value=loss)
    params = nnx.state(model, nnx.Param)
    pure_state, pure_params = nnx.as_pure(opt.opt_state), nnx.as_pure(params)
    want = averaged_params(pure_state, pure_params, always=True)
    for p in (params, pure_params):
        got = averaged_params(opt.opt_state, p, always=True)
        for a, b in zip(*leaves(got, want), strict=True):
            np.testing.assert_array_equal(a, b)
    nnx.update(model, averaged_params(opt.opt_state, params))  # evaluate at it


def test_a_state_of_the_other_layout_is_refused_with_the_reason():
    """layout='auto' is flat on accelerators and per-leaf on CPU: a checkpoint's arrays
    paired with a spec from the other backend gave a zip() error or a raw TypeError."""
    p = {"w": jnp.zeros(4), "b": jnp.zeros((2, 2))}
    flat, tree = anderson(optax.sgd(0.1), 3, layout="flat"), anderson(optax.sgd(0.1), 3)
    sf, st = flat.init(p), tree.init(p)
    mixed = (
        sf._replace(anderson_state=sf.anderson_state._replace(spec=st.anderson_state.spec)),
        st._replace(anderson_state=st.anderson_state._replace(spec=sf.anderson_state.spec)),
    )
    for state in mixed:
        for update in (tree.update, jax.jit(tree.update)):
            with pytest.raises(ValueError, match="layout="):
                update(p, state, p, value=1.0)
    for state in (sf, st):  # either layout's own state updates, whichever tx is used
        _, s = jax.jit(tree.update)(p, state, p, value=1.0)
        assert int(s.anderson_state.count) == 1
    assert "portable" in scale_by_anderson.__doc__


@pytest.mark.parametrize(
    "value", [(1.0, {"acc": 2.0}), "1.0", [1.0], np.array(["a"]), True, jnp.asarray(1.0 + 2.0j)]
)
def test_value_that_is_not_a_scalar_loss_gets_the_library_message(value):
    """A (loss, aux) tuple or a string gave a raw JAX TypeError from jnp.asarray."""
    tx = anderson(optax.sgd(0.1))
    p = {"w": jnp.zeros(3)}
    with pytest.raises(ValueError, match="value must be a real scalar loss"):
        tx.update(p, tx.init(p), p, value=value)


def test_moving_average_takes_array_windows_and_checks_its_arguments():
    """inject_hyperparams passes window as a 0-d array (it raised 'must be an integer');
    a string threshold was float()-ed; a mismatched update gave a broadcasting error."""
    p = {"w": jnp.zeros(3)}
    updates = [{"w": jnp.full(3, 0.1) * (-1.0) ** k + 0.01} for k in range(8)]

    def run(tx, update=None):
        s = tx.init(p)
        for u in updates:
            _, s = (update or tx.update)(u, s, p)
        return s

    want = run(moving_average(4))
    assert bool(want.noisy)
    for window in (np.int64(4), jnp.int32(4)):
        got = run(moving_average(window))
        np.testing.assert_array_equal(got.average["w"], want.average["w"])
        assert bool(got.noisy)
    injected = optax.inject_hyperparams(moving_average)(window=4)
    for update in (injected.update, jax.jit(injected.update)):
        got = run(injected, update).inner_state
        np.testing.assert_allclose(got.average["w"], want.average["w"], rtol=1e-6)
        assert bool(got.noisy) and int(got.count) == len(updates)
    for bad in ("2", True, float("nan"), -1.0):
        with pytest.raises(ValueError, match="threshold"):
            moving_average(10, bad)
    for bad in (1, 4.0, np.float32(4.0), "4", True):
        with pytest.raises(ValueError, match="window"):
            moving_average(bad)
    ma = moving_average(3)
    with pytest.raises(ValueError, match=r"moving_average: updates leaf shape \(2,\)"):
        ma.update({"w": jnp.ones(2)}, ma.init(p), p)


def test_window_statistics_take_integer_steps_and_check_their_shape():
    steps = np.array([[1, 2], [3, 4], [5, 7]])
    np.testing.assert_allclose(step_rsd(steps), step_rsd(steps.astype(np.float32)), rtol=1e-6)
    np.testing.assert_allclose(
        aadl_statistic(steps), aadl_statistic(steps.astype(np.float32)), rtol=1e-6
    )
    for bad in (np.ones(3), np.ones((2, 2, 2)), np.ones((1, 3))):
        with pytest.raises(ValueError, match=r"\[w >= 2, n\]"):
            aadl_statistic(bad)
        with pytest.raises(ValueError, match=r"\[w >= 2, n\]"):
            step_rsd(bad)


def test_counters_and_gradient_accumulation_are_documented_as_they_behave():
    """n_rejected also counts rolled-back stretched steps (it can exceed n_accelerated);
    MultiSteps belongs outside anderson: inside, its zero mini-steps give no secant pairs."""
    p0 = {"w": jnp.zeros(20)}

    _, outer, _ = descend(optax.MultiSteps(anderson(optax.sgd(1.0)), 2), quad, p0, 80)
    _, inner, _ = descend(anderson(optax.MultiSteps(optax.sgd(1.0), 2)), quad, p0, 80)
    assert int(outer.inner_opt_state.anderson_state.n_accelerated) > 0
    a = inner.anderson_state
    assert int(a.n_accelerated) == 0 < int(a.n_rejected)
    assert "n_rejected" in ScaleByAndersonState.__doc__
    assert "exceed ``n_accelerated``" in ScaleByAndersonState.__doc__
    assert "optax.MultiSteps(anderson(inner), k)" in anderson.__doc__


def test_an_injected_window_changed_mid_run_sets_both_averages_decay():
    """s28 review: after the window changed, the step EMA took the new decay and the
    average of the iterates kept the decay fixed at init."""
    from jaxsci.optim import moving_average

    tx = optax.inject_hyperparams(moving_average)(window=4)
    p = {"w": jnp.zeros(3)}
    s = tx.init(p)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    for k in range(3):
        p = {"w": p["w"] + 1.0}
        _, s = step({"w": jnp.full(3, 1.0 + k)}, s, p)
    s.hyperparams["window"] = jnp.asarray(100)
    before = s.inner_state.average["w"]
    p = {"w": p["w"] + 1.0}
    _, s = step({"w": jnp.ones(3)}, s, p)
    d = 1.0 - 2.0 / 101.0
    assert float(s.inner_state.decay) == pytest.approx(d)
    np.testing.assert_allclose(s.inner_state.average["w"], d * before + (1 - d) * p["w"], rtol=1e-6)


def test_the_moving_average_is_the_ema_of_the_iterates_started_at_the_first():
    """average_k = d average_{k-1} + (1 - d) x_k with average_1 = x_1 (a NumPy oracle); a
    constant iterate is its own average (an EMA seeded at zero shrank it by 1 - d^k)."""
    tx = moving_average(3, threshold=0.0)
    xs = [np.array([1.0, 2.0]), np.array([3.0, -1.0]), np.array([0.5, 0.5]), np.array([2.0, 0.0])]
    state = tx.init(jnp.asarray(xs[0]))
    d = float(state.decay)
    assert 0.0 < d < 1.0
    want = None
    for x in xs:
        _, state = tx.update(jnp.zeros(2), state, jnp.asarray(x))
        want = x if want is None else d * want + (1.0 - d) * x
        np.testing.assert_allclose(state.average, want, rtol=1e-6)
    newest = np.array([-1.0, 1.0])  # averaged_params folds the params it is given in
    got = averaged_params(state, jnp.asarray(newest), always=True)
    np.testing.assert_allclose(got, d * want + (1.0 - d) * newest, rtol=1e-6)
    p = jnp.array([1.0, 2.0])
    state = tx.init(p)
    for _ in range(3):
        _, state = tx.update(jnp.zeros(2), state, p)
        np.testing.assert_allclose(averaged_params(state, p, always=True), p, rtol=1e-6)
