"""Anderson acceleration (jaxsci.optim): NumPy reference, optax contract, safeguard, noise test."""

import contextlib
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from anderson_steps import descend

from jaxsci.optim import (
    aadl_statistic,
    anderson,
    averaged_params,
    moving_average,
    scale_by_anderson,
    step_rsd,
)


def numpy_anderson(x0, fixed_point_update, steps, m, reg, beta):
    """Plain textbook type-II Anderson on x -> x + u(x) (the oracle)."""
    x = np.array(x0, np.float64)
    xs, us, traj = [], [], [x.copy()]
    for _ in range(steps):
        u = fixed_point_update(x)
        xs.append(x.copy())
        us.append(u.copy())
        xs, us = xs[-(m + 1) :], us[-(m + 1) :]
        if len(xs) == 1:
            x = x + u
        else:
            dx = np.diff(np.array(xs), axis=0).T
            df = np.diff(np.array(us), axis=0).T
            if reg == 0:  # plain least squares, solved stably
                gamma = np.linalg.lstsq(df, u, rcond=None)[0]
            else:
                gram = df.T @ df
                lam = reg * np.trace(gram) / len(gram)
                gamma = np.linalg.solve(gram + lam * np.eye(len(gram)), df.T @ u)
            x = x + beta * u - (dx + beta * df) @ gamma
        traj.append(x.copy())
    return np.array(traj)


def linear_problem(n=12, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    h = q @ np.diag(np.logspace(0, -2, n)) @ q.T
    b = rng.normal(size=n)
    lr = 1.0
    return (lambda x: -lr * (h @ x - b)), h, b


def run_transform(opt, x0, update_np, steps, with_value=None):
    """Drive an optax transform on a dict pytree {'a': x[:k], 'b': x[k:]}; return iterates."""
    k = len(x0) // 3
    split = lambda x: {"a": x[:k], "b": x[k:].reshape(-1, 1)}
    join = lambda p: jnp.concatenate([p["a"], p["b"].reshape(-1)])
    params = split(jnp.asarray(x0))
    state = opt.init(params)

    @jax.jit
    def step(params, state, u):
        extra = {} if with_value is None else {"value": with_value(join(params))}
        upd, state = opt.update(split(u), state, params, **extra)
        return optax.apply_updates(params, upd), state

    traj = [np.asarray(join(params))]
    for _ in range(steps):
        u = jnp.asarray(update_np(np.asarray(join(params), np.float64)), jnp.float64)
        params, state = step(params, state, u)
        traj.append(np.asarray(join(params)))
    return np.array(traj), state


@pytest.mark.parametrize("m,beta", [(1, 1.0), (3, 1.0), (4, 0.7)])
def test_window_matches_numpy_reference_step_by_step(m, beta):
    upd, _, _ = linear_problem()
    x0 = np.zeros(12)
    ref = numpy_anderson(x0, upd, 25, m, reg=1e-9, beta=beta)
    with jax.enable_x64(True):
        opt = scale_by_anderson(
            m, history="window", regularization=1e-9, beta=beta, safeguard=False, average=False
        )
        got, state = run_transform(opt, x0, upd, 25)
    np.testing.assert_allclose(got, ref, rtol=1e-7, atol=1e-9)
    assert int(state.n_accelerated) == 24


def test_orthogonal_history_equals_textbook_with_full_memory():
    upd, _, _ = linear_problem(seed=1)
    x0 = np.ones(12)
    steps = 10  # memory never fills: the orthogonal basis spans the same secants
    ref = numpy_anderson(x0, upd, steps, 20, reg=0.0, beta=1.0)
    with jax.enable_x64(True):
        opt = scale_by_anderson(20, regularization=0.0, beta=1.0, safeguard=False, average=False)
        got, _ = run_transform(opt, x0, upd, steps)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-8)


def test_orthogonal_history_empties_the_head_slot_when_a_pair_is_not_stored():
    opt = scale_by_anderson(2, safeguard=False, average=False)
    x = jnp.zeros(6)
    state = opt.init(x)
    rng = np.random.default_rng(0)
    for _ in range(4):  # fills the window (2 rows)
        u = jnp.asarray(rng.normal(size=6), jnp.float32)
        _, state = opt.update(u, state, x)
        x = x + u
    assert int(jnp.sum(state.valid)) == 2
    head = int(state.head)  # the oldest row
    _, state = opt.update(u, state, x)  # same update again: y = 0, nothing to store
    assert int(jnp.sum(state.valid)) == 1 and not bool(state.valid[head])
    assert int(state.head) == head  # the next pair goes into the emptied slot
    np.testing.assert_array_equal(np.asarray(state.y_hist[head]), 0.0)


def test_orthogonal_history_beats_window_when_memory_is_full():
    upd, h, b = linear_problem(n=60, seed=2)
    xstar = np.linalg.solve(h, b)
    x0 = np.zeros(60)
    with jax.enable_x64(True):
        errs = {}
        for hist in ("orthogonal", "window"):
            opt = scale_by_anderson(3, history=hist, safeguard=False, average=False)
            traj, _ = run_transform(opt, x0, upd, 60)
            errs[hist] = np.linalg.norm(traj[-1] - xstar)
    assert errs["orthogonal"] < 1e-3 * np.linalg.norm(xstar)
    assert errs["orthogonal"] < errs["window"]


def quadratic(dtype=jnp.float32):
    d = jnp.logspace(0, -2, 20).astype(dtype)
    target = {"w": jnp.arange(20, dtype=dtype) / 20, "b": jnp.ones((2, 3), dtype)}

    def loss(p):
        return 0.5 * jnp.sum(d * (p["w"] - target["w"]) ** 2) + 0.5 * jnp.sum(
            (p["b"] - target["b"]) ** 2
        )

    params = {"w": jnp.zeros(20, dtype), "b": jnp.zeros((2, 3), dtype)}
    return loss, params


def train(opt, loss, params, steps, with_value=True):
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        v, g = jax.value_and_grad(loss)(params)
        extra = {"value": v} if with_value else {}
        upd, state = opt.update(g, state, params, **extra)
        return optax.apply_updates(params, upd), state, v

    for _ in range(steps):
        # each step finished before the next is dispatched: dozens of queued programs on 4
        # simulated devices sharing 2 cores can abort XLA's CPU runtime (seen once in a
        # fresh-clone make test, in test_sharded_params_match_single_device)
        params, state, _ = jax.block_until_ready(step(params, state))
    return params, state


def loss_curve(opt, loss, params, steps, with_value=True):
    """The loss at each of ``steps`` iterates of ``opt`` from ``params`` (one lax.scan)."""
    return np.asarray(descend(opt, loss, params, steps, with_value=with_value)[2])


@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_contract_jit_pytree_dtypes_shape_dtype_struct(x64, dtype):
    if dtype == "float64" and not x64:
        pytest.skip("float64 params need x64")
    with jax.enable_x64(x64):
        loss, params = quadratic(jnp.dtype(dtype))
        opt = anderson(optax.sgd(1.0), memory=5)
        abstract = jax.tree_util.tree_map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
        s_abs = opt.init(abstract)
        s_real = opt.init(params)
        assert jax.tree_util.tree_structure(s_abs) == jax.tree_util.tree_structure(s_real)
        final, state = train(opt, loss, params, 60)
        for a, b in zip(
            jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(params), strict=True
        ):
            assert a.dtype == b.dtype and a.shape == b.shape
        assert float(loss(final)) < 1e-6
        assert int(state.anderson_state.count) == 60
        assert int(state.anderson_state.n_accelerated) > 0
        # Plain gradient descent at the same step is far from converged.
        plain, _ = train(optax.sgd(1.0), loss, params, 60, with_value=False)
        assert float(loss(plain)) > 100 * float(loss(final))


def test_chain_with_clipping_and_schedule_last_element():
    loss, params = quadratic()
    sched = optax.linear_schedule(0.5, 1.0, 10)
    inner = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(sched))
    chained = optax.chain(inner, scale_by_anderson(5))
    wrapped = anderson(inner, 5)
    for opt in (chained, wrapped):
        final, state = train(opt, loss, params, 80)
        assert float(loss(final)) < 1e-6
    # Without extra args (no value): descent-checked extrapolation still converges.
    final, _ = train(chained, loss, params, 80, with_value=False)
    assert float(loss(final)) < 1e-6


def test_clipping_before_anderson_needs_the_gradient_passed():
    # chain(clip, anderson(sgd)): the updates anderson receives are clipped, so its noise
    # test reads the run as noise unless the gradient itself is passed as grad=
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(30, 10)) * np.logspace(0, 1.5, 10), jnp.float32)
    b = jnp.asarray(rng.normal(size=30), jnp.float32)

    def loss(p):
        return 0.5 * jnp.sum((a @ p - b) ** 2)

    lr = 1.0 / float(jnp.linalg.norm(a, 2) ** 2)
    clip = optax.clip_by_global_norm(1.0)  # active on every step here

    def run(opt, pass_grad):
        p, state = jnp.zeros(10), opt.init(jnp.zeros(10))

        @jax.jit
        def step(p, state):
            v, g = jax.value_and_grad(loss)(p)
            extra = {"grad": g} if pass_grad else {}
            u, state = opt.update(g, state, p, value=v, **extra)
            return optax.apply_updates(p, u), state

        for _ in range(100):
            p, state = step(p, state)
        return float(loss(p)), state

    plain, _ = run(optax.chain(clip, optax.sgd(lr)), False)
    held, state = run(optax.chain(clip, anderson(optax.sgd(lr), 5)), False)
    assert int(state[1].anderson_state.n_noisy) > 90 and held > 0.99 * plain
    for opt, pass_grad in (
        (optax.chain(clip, anderson(optax.sgd(lr), 5)), True),
        (anderson(optax.chain(clip, optax.sgd(lr)), 5), False),
    ):
        final, state = run(opt, pass_grad)
        aa = (state if hasattr(state, "anderson_state") else state[1]).anderson_state
        assert int(aa.n_noisy) == 0 and int(aa.n_accelerated) > 30
        assert final < 0.9 * plain


def test_safeguard_rolls_back_a_bad_extrapolation():
    loss, params = quadratic()
    inner = optax.sgd(0.5, momentum=0.5)
    opt = anderson(inner, 3, layout="tree")  # the test reads the state's pytrees
    state = opt.init(params)
    step_ = jax.jit(lambda g, s, p, v: opt.update(g, s, p, value=v))
    for _ in range(4):
        v, g = jax.value_and_grad(loss)(params)
        last_params, last_inner = params, state.inner_state
        upd, state = step_(g, state, params, v)
        params = optax.apply_updates(params, upd)
    assert bool(state.anderson_state.pending)  # last step extrapolated
    before = state
    # The plain point: the last step's params plus the inner optimizer's own update there.
    plain, _ = inner.update(g, last_inner, last_params)
    expected = optax.apply_updates(last_params, plain)
    # Report a loss far above the recent ones: the extrapolated point must be rejected.
    g = jax.grad(loss)(params)
    upd, state = step_(g, state, params, jnp.float32(1e6))
    back = optax.apply_updates(params, upd)
    a = state.anderson_state
    assert bool(a.rejected) and int(a.n_rejected) == 1 and not bool(a.pending)
    assert int(a.next_try) > int(a.count)  # acceleration pauses (back-off)
    assert not bool(jnp.any(a.valid))  # history reset
    trust = float(before.anderson_state.trust)  # the trust region is quartered (floor 1)
    assert float(a.trust) == pytest.approx(max(trust / 4.0, 1.0)) and trust / 4.0 >= 1.0
    for x, y in zip(
        jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(expected), strict=True
    ):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    # The inner (momentum) state did not see the gradient at the rejected point.
    for x, y in zip(
        jax.tree_util.tree_leaves(state.inner_state),
        jax.tree_util.tree_leaves(before.inner_state),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)
    # The plain point equals what the inner optimizer proposed before extrapolating:
    # x_prev + u_prev.
    plain = optax.apply_updates(before.anderson_state.x_prev, before.anderson_state.u_prev)
    for x, y in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(plain), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    # A good loss afterwards is accepted and training continues.
    v, g = jax.value_and_grad(loss)(back)
    upd, state = step_(g, state, back, v)
    assert not bool(state.anderson_state.rejected)


def test_anderson_on_adam_is_stable_on_rosenbrock():
    def rosen(p):
        x = p["x"]
        return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    params = {"x": jnp.full((6,), -1.0, jnp.float32)}
    base, _ = train(optax.adam(1e-2), rosen, params, 400, with_value=False)
    for mem in (5, 10):
        final, state = train(anderson(optax.adam(1e-2), mem), rosen, params, 400)
        assert np.isfinite(float(rosen(final)))
        assert float(rosen(final)) <= 1.05 * float(rosen(base))


def feed(opt, params, steps_list):
    state = opt.init(params)
    upd_fn = jax.jit(opt.update)
    for u in steps_list:
        upd, state = upd_fn(u, state, params)
        params = optax.apply_updates(params, upd)
    return state


def test_moving_average_switches_on_for_noise_and_off_for_smooth():
    n = 50
    rng = np.random.default_rng(0)
    params = {"w": jnp.full((n,), 100.0, jnp.float32)}  # large offset: AADL's test is blind
    noisy = [{"w": jnp.asarray(1e-3 * rng.normal(size=n), jnp.float32)} for _ in range(60)]
    direction = rng.normal(size=n)
    smooth = [{"w": jnp.asarray(1e-3 * 0.97**k * direction, jnp.float32)} for k in range(60)]
    for safeguard in (True, False):  # the noise gate does not depend on the safeguard
        opt = scale_by_anderson(5, average=True, average_window=10, safeguard=safeguard)
        s_early = feed(opt, params, noisy[:20])  # the noise test needs a window of steps
        s_noisy = feed(opt, params, noisy)
        s_smooth = feed(opt, params, smooth)
        assert int(s_noisy.n_averaged) > 0 and float(s_noisy.rsd) > np.sqrt(5)
        # Noise: (almost) no extrapolation once the test has seen a window of steps.
        assert int(s_noisy.n_accelerated) - int(s_early.n_accelerated) <= 4
        assert int(s_smooth.n_averaged) == 0 and float(s_smooth.rsd) < 0.5
    # The window statistics agree; AADL's max(std)/max(mean) never sees the noise.
    steps = np.stack([np.asarray(u["w"]) for u in noisy[-10:]])
    iterates = 100.0 + np.cumsum(steps, axis=0)
    assert float(step_rsd(steps)) > np.sqrt(5)
    assert float(aadl_statistic(iterates)) < 0.1
    # Scale-free: rescaling the steps leaves the statistic unchanged.
    np.testing.assert_allclose(step_rsd(1e3 * steps), step_rsd(steps), rtol=1e-5)


def test_moving_average_jumps_closer_to_the_minimum_of_noisy_sgd():
    # SGD on 0.5 ||x||^2 with gradient noise: iterates fluctuate about x* = 0.
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(120, 16)).astype(np.float32)
    opt = scale_by_anderson(3, average_window=8, average=True)
    x = {"w": jnp.full((16,), 3.0, jnp.float32)}
    state = opt.init(x)
    upd_fn = jax.jit(opt.update)
    at_avg, other = [], []
    for k in range(120):
        u = {"w": -0.3 * (x["w"] + jnp.asarray(noise[k]))}
        before = int(state.n_averaged)
        upd, state = upd_fn(u, state, x)
        x = optax.apply_updates(x, upd)
        if k >= 40:
            dist = float(jnp.linalg.norm(x["w"]))
            (at_avg if int(state.n_averaged) > before else other).append(dist)
    assert len(at_avg) >= 5
    # The average of a window of iterates sits much closer to x* than single iterates.
    assert np.mean(at_avg) < 0.75 * np.mean(other)


def _sgd_on_noisy_quadratic(opt, noise_scale, steps=150, seed=0):
    """SGD on 0.5 ||x - 1||^2 (16 weights, as a dict) with Gaussian gradient noise."""
    rng = np.random.default_rng(seed)
    noise = noise_scale * rng.normal(size=(steps, 16)).astype(np.float32)
    x = {"w": jnp.full((16,), 4.0, jnp.float32)}
    state = opt.init(x)

    @jax.jit
    def step(x, state, eps):
        g = {"w": x["w"] - 1.0 + eps}
        upd, state = opt.update(g, state, x, value=0.5 * jnp.sum((x["w"] - 1.0) ** 2))
        return optax.apply_updates(x, upd), state

    for k in range(steps):
        x, state = step(x, state, jnp.asarray(noise[k]))
    return x, state


def test_moving_average_is_evaluated_where_noise_dominates_and_never_changes_the_steps():
    """``averaged_params`` gives the EMA of the iterates while the rsd test holds (noisy SGD:
    the average sits closer to the minimum than the last iterate, on every seed) and the
    iterate itself on a smooth trajectory; the chained transform never changes a step."""
    tracked = optax.chain(moving_average(10), optax.sgd(0.3))  # it tests the gradients
    dist = lambda p: float(jnp.linalg.norm(p["w"] - 1.0))  # noqa: E731
    for seed in range(3):
        x, state = _sgd_on_noisy_quadratic(tracked, 1.0, seed=seed)
        x_plain, _ = _sgd_on_noisy_quadratic(optax.sgd(0.3), 1.0, seed=seed)
        np.testing.assert_array_equal(x["w"], x_plain["w"])  # same steps
        assert bool(state[0].noisy)
        avg = averaged_params(state, x)
        assert dist(avg) < 0.8 * dist(x)  # measured 0.66 on seed 0
    x, state = _sgd_on_noisy_quadratic(tracked, 0.0, steps=30)  # smooth: no average
    assert not bool(state[0].noisy)
    np.testing.assert_array_equal(jax.jit(averaged_params)(state, x)["w"], x["w"])
    # on top of Anderson (default options step aside on this noise), found in the chain
    x, state = _sgd_on_noisy_quadratic(optax.chain(moving_average(), anderson(optax.sgd(0.3))), 1)
    assert dist(averaged_params(state, x)) < dist(x)
    # with momentum the steps are smoothed; the gradients still show the noise
    x, state = _sgd_on_noisy_quadratic(optax.chain(moving_average(), optax.adam(0.1)), 1.0)
    assert bool(state[0].noisy) and dist(averaged_params(state, x)) < dist(x)
    with pytest.raises(ValueError, match="found 0"):
        averaged_params(optax.sgd(0.1).init(x), x)
    with pytest.raises(ValueError, match="window"):
        moving_average(1)
    with pytest.raises(ValueError, match="threshold"):
        moving_average(10, threshold=-1.0)


def test_moving_average_threshold_zero_is_always_once_a_window_is_seen():
    """``threshold=0`` means always: identical updates (alignment exactly 1) included."""
    ma = moving_average(4, threshold=0.0)
    x = {"w": jnp.ones(3)}
    state = ma.init(x)
    flags = []
    for _ in range(6):
        _, state = ma.update({"w": jnp.full(3, 0.1)}, state, x)
        flags.append(bool(state.noisy))
    assert flags == [False, False, False, True, True, True]
    _, state = moving_average(4).update({"w": jnp.full(3, 0.1)}, state, x)
    assert not bool(state.noisy)  # the default threshold: agreeing updates are not noise


def test_auto_mixing_is_the_clipped_bb_ratio_of_the_newest_pair():
    # Gradient descent on a diagonal quadratic: the mixing recorded after each step must be
    # <s, -y> / ||y||^2 of that step's secant pair (iterates and inner steps recomputed here
    # in NumPy), clipped to [1, beta_max]; curvatures 1e-3..1 with lr 1 make it vary.
    with jax.enable_x64(True):
        h = np.logspace(-3, 0, 30)
        x_star = np.linspace(-1.0, 1.0, 30)
        loss = lambda p: 0.5 * jnp.sum(jnp.asarray(h) * (p - x_star) ** 2)
        for beta_max in (30.0, 4.0):
            opt = scale_by_anderson(4, beta_max=beta_max, safeguard=False)
            update = jax.jit(opt.update)
            x = jnp.zeros(30)
            state = opt.init(x)
            xs, us, seen = [], [], []
            for _ in range(8):
                u = -jax.grad(loss)(x)
                upd, state = update(u, state, x)
                xs.append(np.asarray(x)), us.append(np.asarray(u))
                seen.append(float(state.beta))
                x = x + upd
            for k in range(1, 8):
                s, y = xs[k] - xs[k - 1], us[k] - us[k - 1]
                want = np.clip(-(s @ y) / (y @ y), 1.0, beta_max)
                np.testing.assert_allclose(seen[k], want, rtol=1e-10)
            assert max(seen[1:]) > 1.5  # it does adapt here (a fixed default was 1.5)
            assert min(seen[1:]) < beta_max  # and is not merely pinned at the clip


@pytest.mark.parametrize("kwargs", [{}, {"safeguard": False}, {"average": True}])
def test_auto_mixing_is_one_on_non_positive_curvature(kwargs):
    # Iterates and inner steps fed by hand (1-d, the loss falling): the first pair, s = 1,
    # y = -0.1 (steps shrinking: positive curvature), gives the BB ratio 10; the next,
    # s = 1, y = +0.1 (steps growing: negative curvature), a negative ratio: the floor 1,
    # not the previous value.
    opt = scale_by_anderson(3, **kwargs)
    update = jax.jit(lambda u, s, p, v: opt.update(u, s, p, value=v))
    state = opt.init({"w": jnp.zeros(1)})
    seen = []
    for x, u, v in ((0.0, 1.0, 3.0), (1.0, 0.9, 2.0), (2.0, 1.0, 1.0)):
        _, state = update({"w": jnp.array([u])}, state, {"w": jnp.array([x])}, jnp.array(v))
        seen.append(float(state.beta))
    np.testing.assert_allclose(seen[1:], [10.0, 1.0], rtol=1e-5)


def test_without_a_loss_the_residual_check_rolls_back_a_blow_up():
    loss, params = quadratic()
    opt = scale_by_anderson(3, layout="tree")
    update = jax.jit(opt.update)
    state, p = opt.init(params), params
    for _ in range(4):
        u = jax.tree_util.tree_map(lambda a: -0.5 * a, jax.grad(loss)(p))
        prev = (state, p, u)
        upd, state = update(u, state, p)
        p = optax.apply_updates(p, upd)
    assert bool(state.pending)  # the last step extrapolated, judged by the next residual
    # A residual 100x larger at the extrapolated point: rolled back to the plain point.
    u = jax.tree_util.tree_map(lambda a: -50.0 * a, jax.grad(loss)(p))
    upd, state = update(u, state, p)
    back = optax.apply_updates(p, upd)
    assert bool(state.rejected) and int(state.n_rejected) == 1
    plain = optax.apply_updates(prev[1], prev[2])
    for x, y in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(plain), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("memory", [5, 20])
def test_without_a_loss_rosenbrock_converges(memory):
    # Extended Rosenbrock (10-D), gradient descent at 1 / (2 L(x*)), no loss passed. Before
    # the residual check, memory 20 ended in NaN: an extrapolation far up the valley wall,
    # with nothing to reject it. Now it converges (measured 2850-3040 iterations).
    with jax.enable_x64(True):
        loss = lambda w: jnp.sum(100.0 * (w[1:] - w[:-1] ** 2) ** 2 + (1 - w[:-1]) ** 2)
        h_star = np.asarray(jax.hessian(loss)(jnp.ones(10)))
        lr = 1.0 / (2.0 * float(np.linalg.eigvalsh(h_star).max()))
        w0 = 0.1 * jax.random.normal(jax.random.PRNGKey(0), (10,))
        vals = loss_curve(anderson(optax.sgd(lr), memory), loss, w0, 5000, with_value=False)
    assert np.all(np.isfinite(vals))
    assert vals[-1] < 1e-8 * vals[0]


def test_stretch_walks_a_curved_valley_faster_than_reset_and_plain_steps():
    # Extended Rosenbrock (5 independent 2-D valleys) from (-1.2, 1), gradient descent at
    # 1 / (2 L(x*)): along the curved valley every secant pair has negative curvature, the
    # extrapolations are not descent steps, and resetting the history left Anderson at
    # gradient-descent speed (measured 1343 iterations to 1e-6 relative; tuned Nesterov
    # 279-327). Stretched inner steps, judged by the loss: 142.
    with jax.enable_x64(True):

        def loss(w):
            a, b = w[0::2], w[1::2]
            return jnp.sum(100.0 * (b - a**2) ** 2 + (1 - a) ** 2)

        h_star = np.asarray(jax.hessian(loss)(jnp.ones(10)))
        lr = 1.0 / (2.0 * float(np.linalg.eigvalsh(h_star).max()))
        w0 = jnp.tile(jnp.array([-1.2, 1.0]), 5)
        w0 = w0 + 0.05 * jax.random.normal(jax.random.PRNGKey(0), (10,))
        iters, stretched = {}, {}
        for flag in (True, False):
            opt = anderson(optax.sgd(lr), 5, stretch=flag)
            vals = loss_curve(opt, loss, w0, 1500)
            hit = np.nonzero(vals <= 1e-6 * vals[0])[0]
            iters[flag] = int(hit[0]) if len(hit) else 1500
            _, state = train(opt, loss, w0, 300)
            stretched[flag] = int(state.anderson_state.n_stretched)
    assert 3 * iters[True] <= iters[False], iters
    assert stretched[True] > 0 and stretched[False] == 0, stretched


def test_a_stretched_step_doubles_while_accepted_and_is_rolled_back_when_not():
    # 1-D, fed by hand: plain step 1.0 at x = 0, then 1.1 at x = 1 (the step grows:
    # negative curvature). The secant root lies behind (d = -11: not a descent step), so
    # the update is the inner step stretched x2. Accepted (lower loss) and met again: x4.
    # A loss above the recent ones then rolls it back to the plain point x + u.
    opt = scale_by_anderson(3)
    update = jax.jit(lambda u, s, p, v: opt.update(u, s, p, value=v))
    state = opt.init(jnp.zeros(1))
    out = []
    feed_ = ((0.0, 1.0, 3.0), (1.0, 1.1, 2.0), (3.2, 1.3, 1.5), (8.4, 1.0, 10.0))
    for x, u, v in feed_:
        upd, state = update(jnp.array([u]), state, jnp.array([x]), jnp.array(v))
        out.append((float(upd[0]), float(state.stretch), int(state.n_stretched)))
    np.testing.assert_allclose([o[0] for o in out[:3]], [1.0, 2.2, 5.2], rtol=1e-6)
    assert [o[1:] for o in out[:3]] == [(1.0, 0), (2.0, 1), (4.0, 2)]
    # Rejected: back from 8.4 to the plain point 3.2 + 1.3; factor 1, history reset.
    np.testing.assert_allclose(out[3][0], 3.2 + 1.3 - 8.4, rtol=1e-6)
    assert out[3][1:] == (1.0, 2) and bool(state.rejected) and not bool(jnp.any(state.valid))


def test_auto_mixing_takes_fewer_iterations_than_fixed_on_logistic_regression():
    # Logistic regression on scikit-learn's breast-cancer data, sgd(1 / L) with the global
    # bound L = lambda_max(X^T X / n) / 4, far above the curvature met near the solution:
    # the BB mixing lengthens the unexplained part of the step (measured: 52 vs 115
    # iterations to 1e-4 relative suboptimality, float32).
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    x = np.hstack([x, np.ones((len(x), 1))]).astype(np.float32)
    y = y.astype(np.float32)
    lr = 4.0 / float(np.linalg.eigvalsh(x.T @ x / len(x)).max())

    def loss(w):
        z = x @ w
        return jnp.mean(jax.nn.softplus(z) - y * z) + 1e-4 * jnp.sum(w**2)

    w0 = jnp.zeros(x.shape[1])
    curves = {
        beta: loss_curve(anderson(optax.sgd(lr), 5, beta=beta, stretch=False), loss, w0, 300)
        for beta in ("auto", 1.5)
    }
    f_ref = min(c.min() for c in curves.values())
    gap0 = curves["auto"][0] - f_ref
    iters = {b: int(np.argmax(c - f_ref < 1e-4 * gap0)) for b, c in curves.items()}
    assert all(c.min() - f_ref < 1e-4 * gap0 for c in curves.values()), iters
    assert 1.6 * iters["auto"] <= iters[1.5], iters


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"memory": 0}, "memory"),
        ({"memory": -3}, "memory"),
        ({"memory": 2.5}, "memory"),
        ({"regularization": -1e-3}, "regularization"),
        ({"beta": 0.0}, "beta"),
        ({"beta": "fast"}, "beta"),
        ({"beta_max": 0.5}, "beta_max"),
        ({"frequency": 0}, "frequency"),
        ({"history": "qr"}, "history"),
        ({"loss_margin": -1.0}, "loss_margin"),
        ({"warmup": -1}, "warmup"),
        ({"safeguard_memory": 0}, "safeguard_memory"),
        ({"safeguard_memory": True}, "safeguard_memory"),
        ({"max_backoff": True}, "max_backoff"),
        ({"max_backoff": 0}, "max_backoff must be an integer >= 1"),
        ({"average_window": 1}, "average_window"),
        ({"average_threshold": float("inf")}, "average_threshold"),
        ({"average_threshold": "2"}, "average_threshold"),
        ({"beta": True}, "beta"),
        ({"beta_max": None}, "beta_max"),
        ({"regularization": "1e-3"}, "regularization"),
        ({"safeguard": "no"}, "safeguard"),
        ({"average": "yes"}, "average"),
        ({"noise_test": 1}, "noise_test"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        scale_by_anderson(**kwargs)
    with pytest.raises(ValueError, match=match):
        anderson(optax.sgd(0.1), **kwargs)


def test_mismatched_pytrees_raise():
    loss, params = quadratic()
    opt = anderson(optax.sgd(0.1), 3)
    state = opt.init(params)
    g = jax.grad(loss)(params)
    with pytest.raises(ValueError, match="structure"):
        opt.update({"w": g["w"]}, state, params)
    with pytest.raises(ValueError, match="shape"):
        opt.update({"w": g["w"][:5], "b": g["b"]}, state, params)
    other = {"w": params["w"], "c": params["b"]}
    with pytest.raises(ValueError, match="structure"):
        opt.update(other, opt.init(other), params)
    with pytest.raises(ValueError, match="params"):
        opt.update(g, state)
    with pytest.raises(ValueError, match="scalar"):
        opt.update(g, state, params, value=jnp.ones(3))
    with pytest.raises(ValueError, match="grad pytree structure"):
        opt.update(g, state, params, value=1.0, grad={"w": g["w"]})
    with pytest.raises(ValueError, match="floating"):
        opt.init({"i": jnp.zeros(3, jnp.int32)})


def test_numpy_integer_arguments_are_accepted():
    opt = scale_by_anderson(np.int64(4), frequency=np.int32(2), safeguard_memory=np.int64(3))
    assert opt.init({"w": jnp.zeros(3)}).s_hist["w"].shape == (4, 3)


@pytest.mark.parametrize("frequency,warmup", [(2, 0), (3, 2), (1, 4)])
def test_frequency_and_warmup_schedule_the_extrapolations(frequency, warmup):
    """Textbook mode on a contraction (every proposal taken): extrapolations happen at
    exactly the steps k >= warmup with (k - warmup) % frequency == 0 and a stored pair."""
    a = np.diag(np.linspace(0.1, 0.9, 6))
    opt = scale_by_anderson(
        3, frequency=frequency, warmup=warmup, safeguard=False, beta=1.0, history="window"
    )
    x = {"w": jnp.ones(6, jnp.float64) if jax.config.jax_enable_x64 else jnp.ones(6)}
    state, done = opt.init(x), []
    for k in range(12):
        u = {"w": jnp.asarray(a, x["w"].dtype) @ x["w"] - x["w"]}  # fixed point of x -> A x
        before = int(state.n_accelerated)
        upd, state = opt.update(u, state, x)
        x = optax.apply_updates(x, upd)
        if int(state.n_accelerated) > before:
            done.append(k)
    assert done == [k for k in range(1, 12) if k >= warmup and (k - warmup) % frequency == 0]


@pytest.mark.multidevice
@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_sharded_params_match_single_device(axis_type):
    """Sharded params over an Auto (GSPMD) or an Explicit mesh axis (``jax.make_mesh``'s
    default; its leaves cannot be reshaped, and ``jit`` needs ``jax.set_mesh``) take the
    single-device steps, with the history sharded like the params, from an eager or a
    jitted ``init``."""
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    # Like CG, windowed AA amplifies rounding differences (here ~10x per step once the
    # memory is full), so sharded and single-device runs agree to rounding for the first
    # steps (float64) and in loss afterwards.
    with jax.enable_x64(True):
        mesh = jax.make_mesh((4,), ("d",), axis_types=(getattr(AxisType, axis_type),))
        rng = np.random.default_rng(0)
        a = jnp.asarray(rng.normal(size=(64, 32)) * np.logspace(0, -1.0, 32))
        a3 = a.reshape(64, 8, 4)
        b = jnp.asarray(rng.normal(size=64))

        def loss(p):  # no reshape of the sharded leaf (an Explicit-axis type error)
            return 0.5 * jnp.mean((jnp.einsum("kij,ij->k", a3, p["w"]) + p["c"] - b) ** 2)

        lr = 1.0 / (float(jnp.linalg.eigvalsh(a.T @ a / 64).max()) + 1.0)
        params = {"w": jnp.zeros((8, 4)), "c": jnp.zeros(())}
        opt = anderson(optax.sgd(lr), 5)
        single, s_state = train(opt, loss, params, 8)
        single40, _ = train(opt, loss, params, 40)
        w_sharding = NamedSharding(mesh, PartitionSpec("d", None))
        shard = {
            "w": jax.device_put(params["w"], w_sharding),
            "c": jax.device_put(params["c"], NamedSharding(mesh, PartitionSpec())),
        }
        hist_sharding = NamedSharding(mesh, PartitionSpec(None, "d"))
        with jax.set_mesh(mesh) if axis_type == "Explicit" else contextlib.nullcontext():
            s_hist = opt.init(shard).anderson_state.s_hist["w"]
            assert s_hist.sharding.is_equivalent_to(hist_sharding, 3)
            if axis_type == "Explicit":  # the type carries the sharding: jit knows it
                s_hist = jax.jit(opt.init)(shard).anderson_state.s_hist["w"]
                assert s_hist.sharding.is_equivalent_to(hist_sharding, 3)
                with pytest.raises(ValueError, match="layout='tree'"):
                    anderson(optax.sgd(lr), 5, layout="flat").init(shard)
            multi, m_state = train(opt, loss, shard, 8)
            multi40, _ = train(opt, loss, shard, 40)
        assert multi["w"].sharding.is_equivalent_to(w_sharding, 2)
        s_hist = m_state.anderson_state.s_hist["w"]
        assert s_hist.sharding.is_equivalent_to(hist_sharding, 3)
        np.testing.assert_allclose(multi["w"], single["w"], rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(multi["c"], single["c"], rtol=1e-7, atol=1e-9)
        n_acc = int(m_state.anderson_state.n_accelerated)
        assert n_acc == int(s_state.anderson_state.n_accelerated) > 0
        np.testing.assert_allclose(loss(multi40), loss(single40), rtol=1e-3)


@pytest.mark.multidevice
def test_vmapped_problems_over_an_explicit_mesh_and_a_state_sharded_otherwise():
    """vmap over problems with a leaf axis or the batch axis on an Explicit mesh axis (a
    batched leaf's type hides its batch axis; the orthogonal history's cond becomes a
    select): the single-device steps. A state initialised for other shardings: a clear
    error, not a sharding type error deep inside."""
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    a = jnp.arange(32.0).reshape(8, 4) / 32
    loss = lambda p: 0.5 * jnp.sum((p["w"] - a) ** 2) + jnp.sum((p["b"] - 1.0) ** 2)  # noqa: E731
    opt = anderson(optax.sgd(0.3), 3, layout="tree")
    params = {"w": jnp.zeros((8, 4)), "b": jnp.zeros((4,))}
    batch = jax.tree_util.tree_map(lambda x: jnp.stack([x, x + 1.0, x - 1.0, x * 2.0]), params)

    def run(p):
        return descend(opt, loss, p, 6)[:2]

    ref, ref_state = jax.jit(jax.vmap(run))(batch)
    assert int(jnp.sum(ref_state.anderson_state.n_accelerated)) > 0
    mesh = jax.make_mesh((4,), ("d",), axis_types=(AxisType.Explicit,))
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
    with jax.set_mesh(mesh):
        cases = {
            "leaf": (
                jax.vmap(run),
                {"w": put(batch["w"], PartitionSpec(None, "d")), "b": batch["b"]},
            ),
            "batch": (
                jax.vmap(run, spmd_axis_name="d"),
                jax.tree_util.tree_map(lambda x: put(x, PartitionSpec("d")), batch),
            ),
        }
        for name, (fn, inputs) in cases.items():
            out, _ = jax.jit(fn)(inputs)
            for k in params:
                np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=name)
        state = opt.init(params)  # replicated: initialised before the params were sharded
        sharded = {"w": put(params["w"], PartitionSpec("d", None)), "b": params["b"]}
        with pytest.raises(ValueError, match="init with the params as they are sharded"):
            jax.jit(lambda p, s: opt.update(p, s, p, value=1.0))(sharded, state)


def _probe_loss_check(average: bool, last_loss: float) -> bool:
    """Feed smooth steps with noisy losses until an extrapolation is pending; judge it."""
    rng = np.random.default_rng(0)
    n = 8
    direction = rng.normal(size=n)
    opt = scale_by_anderson(3, average=average, average_window=4)
    x = {"w": jnp.zeros((n,), jnp.float32)}
    state = opt.init(x)
    upd_fn = jax.jit(lambda u, s, x, v: opt.update(u, s, x, value=v))
    losses = [1.0, 1.2, 0.8, 1.1, 0.9, 1.15, 0.85, 1.05, 0.95, 1.1, 0.9, 1.0]  # sd ~0.13
    for k in range(40):
        u = {"w": jnp.asarray(1e-2 * 0.9**k * direction * (1 + 0.1 * rng.normal(size=n)))}
        if bool(state.pending):
            break
        out, state = upd_fn(u, state, x, jnp.float32(losses[k % len(losses)]))
        x = optax.apply_updates(x, out)
    assert bool(state.pending)
    _, state = upd_fn(u, state, x, jnp.float32(last_loss))
    return bool(state.rejected)


def test_minibatch_mode_asks_for_evidence_beyond_the_loss_noise():
    # 0.95 is below the max of the recent losses (the deterministic check accepts it) but
    # within one standard deviation of their mean: in minibatch mode it is noise, rejected.
    assert not _probe_loss_check(False, 0.95)
    assert _probe_loss_check(True, 0.95)
    assert not _probe_loss_check(True, 0.3)  # clear evidence of improvement: accepted


@pytest.mark.parametrize("average", [True, False])
@pytest.mark.parametrize("inner", ["sgd", "momentum", "adam"])
def test_on_minibatches_never_materially_worse_than_its_inner(inner, average):
    # Noisy linear regression, batch 8: Anderson vs its inner optimizer at equal steps
    # (full-data loss, 3 seeds), in minibatch mode and at default options (there the noise
    # test holds the extrapolations off).
    rng = np.random.default_rng(0)
    a = rng.normal(size=(256, 12)).astype(np.float32) * np.geomspace(1, 3, 12, dtype=np.float32)
    b = (a @ rng.normal(size=12) + 0.5 * rng.normal(size=256)).astype(np.float32)
    a, b = jnp.asarray(a), jnp.asarray(b)
    make = {
        "sgd": lambda: optax.sgd(3e-2),
        "momentum": lambda: optax.sgd(5e-3, momentum=0.9),
        "adam": lambda: optax.adam(3e-2),
    }[inner]
    full = lambda p: 0.5 * jnp.mean((a @ p["w"] - b) ** 2)

    def run(opt, seed):
        idx = jax.random.randint(jax.random.PRNGKey(seed), (240, 8), 0, 256)

        def step(carry, i):
            p, s = carry
            v, g = jax.value_and_grad(lambda q: 0.5 * jnp.mean((a[i] @ q["w"] - b[i]) ** 2))(p)
            u, s = opt.update(g, s, p, value=v)
            return (optax.apply_updates(p, u), s), None

        p0 = {"w": jnp.zeros((12,), jnp.float32)}
        (p, s), _ = jax.lax.scan(step, (p0, opt.init(p0)), idx)
        return float(full(p)), s

    inner_opt = optax.with_extra_args_support(make())
    for seed in range(3):
        base, _ = run(inner_opt, seed)
        acc, state = run(anderson(make(), 5, average=average), seed)
        assert np.isfinite(acc) and acc <= 1.05 * base, (seed, acc, base)
        if not average:
            assert int(state.anderson_state.n_noisy) >= 200  # of 239 steps with a history


def _fed_noise_test(rel_noise: float, abs_noise: float = 0.0, steps: int = 40):
    """scale_by_anderson on gradient descent on a quadratic (float32), fed exact gradients
    and losses with noise: ``rel_noise`` relative to the loss, ``abs_noise`` absolute
    (the initial loss is ~0.3). Returns the final state."""
    rng = np.random.default_rng(0)
    d = jnp.asarray(np.geomspace(1, 1e-2, 10), jnp.float32)
    x = {"w": jnp.asarray(rng.normal(size=10), jnp.float32)}
    opt = scale_by_anderson(5)
    state = opt.init(x)
    upd = jax.jit(lambda u, s, x, v, g: opt.update(u, s, x, value=v, grad=g))
    for _ in range(steps):
        g = {"w": d * x["w"]}
        f = 0.5 * float(jnp.sum(d * x["w"] ** 2))
        f = f * (1.0 + rel_noise * rng.normal()) + abs_noise * rng.normal()
        out, state = upd(jax.tree_util.tree_map(jnp.negative, g), state, x, jnp.float32(f), g)
        x = optax.apply_updates(x, out)
    return state


def test_noise_test_reads_loss_changes_against_the_gradients():
    # Exact losses: every change matches the trapezoid rule on the gradients, nothing held.
    exact = _fed_noise_test(0.0)
    assert int(exact.n_noisy) == 0 and int(exact.n_accelerated) > 20
    # float32 roundoff (a few eps of the loss) is below the floor: not noise either.
    assert int(_fed_noise_test(3e-7).n_noisy) == 0
    # Loss noise of 1e-3 (a minibatch loss's): once the changes fall below it, they no
    # longer follow the gradients and the extrapolations are held off.
    noisy = _fed_noise_test(0.0, 1e-3)
    assert int(noisy.n_noisy) > 20 and int(noisy.n_accelerated) < 15
    # Without the gradient (scale_by_anderson alone, no grad=) the test cannot run.
    assert int(_fed_noise_test_without_grad().n_noisy) == 0


def _fed_noise_test_without_grad():
    x = {"w": jnp.ones((4,), jnp.float32)}
    opt = scale_by_anderson(3)
    state = opt.init(x)
    for k in range(10):
        g = {"w": 0.5 * x["w"]}
        out, state = opt.update(
            jax.tree_util.tree_map(jnp.negative, g), state, x, value=1.0 + k % 2
        )
        x = optax.apply_updates(x, out)
    return state


@pytest.mark.parametrize("x64", [False, True])
def test_noise_test_is_silent_on_full_batch_problems(x64):
    # Deterministic problems: the same iterates with the noise test on and off (25 steps,
    # to a loss ~1e-12 of the first: past that, float64 iterates are rounding noise).
    with jax.enable_x64(x64):
        dtype = jnp.float64 if x64 else jnp.float32
        loss, params = quadratic(dtype)
        runs = {}
        for on in (True, False):
            final, state = train(anderson(optax.sgd(1.0), 5, noise_test=on), loss, params, 25)
            runs[on] = (final, state.anderson_state)
        assert int(runs[True][1].n_noisy) == 0
        assert int(runs[True][1].n_accelerated) == int(runs[False][1].n_accelerated) > 10
        for a, b in zip(*(jax.tree_util.tree_leaves(runs[k][0]) for k in runs), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("average", [False, True])
def test_flat_and_tree_layouts_take_the_same_steps(average):
    # float64: near convergence the float32 secants are rounding noise, and the adaptive
    # mixing read from them amplifies the layouts' different summation orders (3e-4 apart
    # after 60 steps, 1e-5 after 40); in float64 the two agree to 1e-13.
    with jax.enable_x64(True):
        loss, params = quadratic(jnp.float64)
        out = {}
        for layout in ("flat", "tree"):
            opt = anderson(optax.adam(0.05), 4, average=average, layout=layout)
            final, state = train(opt, loss, params, 60)
            a = state.anderson_state
            out[layout] = (final, int(a.n_accelerated), int(a.n_rejected), int(a.n_averaged))
    assert jax.tree_util.tree_leaves(out["flat"][1:]) == jax.tree_util.tree_leaves(out["tree"][1:])
    assert out["flat"][1] > 0
    for x, y in zip(*(jax.tree_util.tree_leaves(out[k][0]) for k in out), strict=True):
        assert x.dtype == y.dtype == jnp.float64
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)


def test_flat_layout_inits_from_shape_dtype_struct_and_keeps_leaf_dtypes():
    params = {"a": jnp.ones((3, 4), jnp.float32), "b": jnp.ones((2,), jnp.bfloat16)}
    spec = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    opt = anderson(optax.sgd(0.1), 3, layout="flat")
    state = opt.init(spec)
    assert state.anderson_state.s_hist.shape == (3, 14)  # one [m, n] history
    upd, state = jax.jit(opt.update)(params, state, params)
    for u, p in zip(jax.tree_util.tree_leaves(upd), jax.tree_util.tree_leaves(params), strict=True):
        assert u.shape == p.shape and u.dtype == p.dtype
    with pytest.raises(ValueError, match="layout"):
        anderson(optax.sgd(0.1), 3, layout="rows")


def test_without_a_loss_anderson_on_adam_does_not_blow_up():
    """No ``value`` passed (e.g. flax's TrainState.apply_gradients): the residual check must
    judge extrapolations by the gradient, not by Adam's step, whose norm is ~lr sqrt(n)
    however bad the point (it ended at f = +9795 here, f* = -1.01, before)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
        a = jnp.asarray((q * np.logspace(0, 3, 10)) @ q.T)
        b = jnp.asarray(rng.normal(size=10))
        f = lambda x: 0.5 * x @ a @ x - b @ x
        f_star = float(f(jnp.linalg.solve(a, b)))
        opt = anderson(optax.adam(1e-2), 5)

        x, s, _ = descend(opt, f, jnp.zeros(10), 1500, with_value=False)
        assert abs(float(f(x)) - f_star) < 1e-8 * abs(f_star)
        assert int(s.anderson_state.n_accelerated) > 0  # it did extrapolate


def test_named_state_fields_of_a_vmapped_state_read_one_value_per_problem():
    """vmap over independent problems batches the packed state; its named fields must give
    each problem's own counters, equal to solving that problem alone."""
    n, b = 5, 3
    mats = jnp.stack([jnp.eye(n) * (k + 1.0) for k in range(b)])
    opt = anderson(optax.sgd(0.1), 2)

    def solve(a):
        f = lambda x: 0.5 * x @ a @ x - jnp.sum(x)
        return descend(opt, f, jnp.zeros(n), 7)[1].anderson_state

    batched = jax.vmap(solve)(mats)
    alone = [solve(mats[k]) for k in range(b)]
    for name in ("count", "n_accelerated", "n_rejected", "pending", "valid", "loss_hist"):
        got = np.asarray(getattr(batched, name))
        want = np.stack([np.asarray(getattr(s, name)) for s in alone])
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    np.testing.assert_array_equal(np.asarray(batched.count), 7)


@pytest.mark.parametrize("layout", ["tree", "flat"])
def test_update_rejects_params_unlike_those_the_state_was_initialised_for(layout):
    """The flat layout's state is one vector of the params' total size: a pytree of the same
    size but another structure, leaf shapes or dtype must still be refused, not mixed in."""
    opt = anderson(optax.sgd(0.1), 3, layout=layout)
    params = {"a": jnp.ones(3), "b": jnp.ones(2)}
    state = opt.init(params)
    assert state.anderson_state.spec.flat == (layout == "flat")
    swapped = {"a": jnp.ones(2), "b": jnp.ones(3)}  # same size, leaf shapes swapped
    as_list = [jnp.ones(3), jnp.ones(2)]
    half = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
    update = jax.jit(opt.update)
    with pytest.raises(ValueError, match=r"leaf 0 is float32\[2\].*float32\[3\]"):
        update(swapped, state, swapped, value=1.0)
    with pytest.raises(ValueError, match="structure"):
        update(as_list, state, as_list, value=1.0)
    with pytest.raises(ValueError, match=r"bfloat16\[3\].*float32\[3\]"):
        update(half, state, half, value=1.0)
    upd, state = update(params, state, params, value=1.0)  # the right params still pass
    assert int(state.anderson_state.count) == 1


@pytest.mark.parametrize("layout", ["tree", "flat", "auto"])
def test_empty_params_pass_through(layout):
    opt = anderson(optax.adam(0.1), 3, layout=layout)
    state = opt.init({})
    upd, state = jax.jit(opt.update)({}, state, {}, value=1.0)
    assert upd == {}


@pytest.mark.parametrize("layout", ["tree", "flat"])
def test_python_number_leaves_take_the_steps_of_arrays(layout):
    """A Python float leaf is a float32 scalar parameter (optax's transforms take them;
    it raised AttributeError); a Python int leaf is refused like an integer array."""
    loss = lambda p: (p["a"] - 1.0) ** 2 + jnp.sum((p["b"] - 2.0) ** 2) * 0.1  # noqa: E731
    opt = anderson(optax.sgd(0.2), 3, layout=layout)
    runs = []
    for a0 in (3.0, jnp.float32(3.0)):
        p = {"a": a0, "b": jnp.zeros(2)}
        state = opt.init(p)
        for _ in range(8):
            v, g = jax.value_and_grad(loss)(p)
            upd, state = jax.jit(opt.update)(g, state, p, value=v)
            p = optax.apply_updates(p, upd)
        runs.append((p, int(state.anderson_state.n_accelerated)))
    assert runs[0][1] == runs[1][1] > 0
    np.testing.assert_array_equal(runs[0][0]["a"], runs[1][0]["a"])
    # eager update (not only traced), and the README's chain with the moving average
    chain = optax.chain(moving_average(3), anderson(optax.sgd(0.2), 3, layout=layout))
    p = {"a": 3.0, "b": jnp.zeros(2)}
    state = chain.init(p)
    v, g = jax.value_and_grad(loss)(p)
    upd, state = chain.update(g, state, p, value=v)
    assert float(upd["a"]) == pytest.approx(-0.2 * 4.0)
    with pytest.raises(ValueError, match="floating point"):
        opt.init({"a": 1, "b": jnp.zeros(2)})


def test_integer_loss_and_concrete_array_options_are_accepted():
    """An integer loss is a loss; options given as concrete 0-d arrays (what
    ``optax.inject_hyperparams`` passes at init) act as the numbers they hold; traced
    options are refused with a message naming the way out."""
    loss, params = quadratic()

    def run(opt, as_int):
        p, s = params, opt.init(params)
        for _ in range(6):
            v, g = jax.value_and_grad(loss)(p)
            v = jnp.round(v * 1e3).astype(jnp.int32) if as_int else jnp.round(v * 1e3)
            u, s = opt.update(g, s, p, value=v)
            p = optax.apply_updates(p, u)
        return p, s.anderson_state

    kw = {"beta_max": 10.0, "noise_test": False}  # the rounded loss is not smooth
    plain = run(anderson(optax.sgd(0.1), 3, **kw), as_int=False)
    as_int = run(anderson(optax.sgd(0.1), 3, **kw), as_int=True)
    kw_arrays = {"beta_max": jnp.float32(10.0), "noise_test": np.bool_(False)}
    arrays = run(anderson(optax.sgd(0.1), jnp.int32(3), **kw_arrays), as_int=False)
    assert int(plain[1].n_accelerated) > 0
    for other in (as_int, arrays):
        leaves = jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(other)
        for x, y in zip(*leaves, strict=True):
            np.testing.assert_array_equal(x, y)
    injected = optax.inject_hyperparams(anderson)(optax.sgd(0.1), memory=3)
    state = injected.init(params)
    with pytest.raises(ValueError, match="inject_hyperparams"):
        jax.jit(injected.update)(params, state, params, value=1.0)


def test_state_round_trips_through_an_orbax_checkpoint(tmp_path):
    from jaxsci.train import Checkpointer

    loss, params = quadratic()
    opt = anderson(optax.sgd(0.1), 3, layout="flat")
    state = opt.init(params)
    for _ in range(4):
        v, g = jax.value_and_grad(loss)(params)
        u, state = opt.update(g, state, params, value=v)
        params = optax.apply_updates(params, u)
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(4, state, force=True)
        restored = ckpt.restore(opt.init(params))
    assert restored.anderson_state.spec == state.anderson_state.spec
    leaves = jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)
    for x, y in zip(*leaves, strict=True):
        np.testing.assert_array_equal(x, y)


def test_anderson_takes_every_option_of_scale_by_anderson_with_the_same_default():
    """``anderson`` repeats ``scale_by_anderson``'s options (a readable signature, no
    ``**kwargs``): the two lists and their defaults must not drift apart."""
    outer = inspect.signature(anderson).parameters
    inner = inspect.signature(scale_by_anderson).parameters
    assert list(outer)[:2] == ["inner", "memory"]
    assert list(outer)[1:] == list(inner)
    for name, p in inner.items():
        assert outer[name].default == p.default, name
        assert outer[name].kind == p.kind, name


def test_anderson_forwards_each_option_to_scale_by_anderson(monkeypatch):
    import importlib

    module = importlib.import_module("jaxsci.optim.anderson")  # the module, not the function
    seen = {}

    def spy(memory, **options):
        seen.update(memory=memory, **options)
        return scale_by_anderson(memory, **options)

    monkeypatch.setattr(module, "scale_by_anderson", spy)
    options = dict(  # every option away from its default
        regularization=1e-6,
        beta=0.5,
        beta_max=7.0,
        frequency=2,
        warmup=3,
        safeguard=False,
        safeguard_memory=4,
        average=True,
        average_window=6,
        average_threshold=1.5,
        history="window",
        max_backoff=8,
        loss_margin=1.0,
        stretch=False,
        noise_test=False,
        layout="tree",
    )
    defaults = inspect.signature(scale_by_anderson).parameters
    assert set(options) == set(defaults) - {"memory"}
    assert all(options[k] != defaults[k].default for k in options)
    module.anderson(optax.sgd(0.1), 9, **options)
    assert seen == {"memory": 9, **options}
