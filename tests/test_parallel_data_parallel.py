"""data_parallel: equal to single-process training, mixed precision, loss scaling, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsci.parallel import (
    DynamicLossScale,
    ProcessInfo,
    all_finite,
    bootstrap,
    data_parallel,
    get_policy,
    make_mesh,
    rank_shard,
)

N_STEPS = 20


def _init(key, widths=(6, 12, 12, 1)):
    params = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        key, sub = jax.random.split(key)
        params.append({"w": jax.random.normal(sub, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)})
    return params


def _loss(params, batch):
    x, y = batch
    h = x
    for i, p in enumerate(params):
        h = h @ p["w"] + p["b"]
        if i < len(params) - 1:
            h = jnp.tanh(h)
    return jnp.mean((h - y.astype(h.dtype)) ** 2)


def _data(n_steps=N_STEPS, batch=16):
    x = jax.random.normal(jax.random.key(1), (n_steps, batch, 6))
    return x, jnp.sin(x.sum(-1, keepdims=True))


def _reference(tx, n_steps=N_STEPS):
    """Plain single-process optax training on the whole (global) batch."""
    params, opt = _init(jax.random.key(0)), None
    opt = tx.init(params)
    x, y = _data(n_steps)

    @jax.jit
    def step(p, o, b):
        loss, g = jax.value_and_grad(_loss)(p, b)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss

    losses = []
    for s in range(n_steps):
        params, opt, loss = step(params, opt, (x[s], y[s]))
        losses.append(float(loss))
    return params, np.array(losses)


def _train(dp, n_steps=N_STEPS, params=None):
    state = dp.init(params if params is not None else _init(jax.random.key(0)))
    x, y = _data(n_steps)
    losses = []
    for s in range(n_steps):
        state, loss = dp.step(state, dp.shard_batch((x[s], y[s])))
        losses.append(float(loss))
    return state, np.array(losses)


def _max_diff(a, b):
    return max(
        float(jnp.max(jnp.abs(x - y)))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


TXS = {"sgd": optax.sgd(0.1), "adam": optax.adam(1e-2), "adamw_clip": None}


def _tx(name):
    if name == "adamw_clip":
        return optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(1e-2, weight_decay=1e-2))
    return TXS[name]


# -- single process --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("txname", "flat"), [("sgd", True), ("adam", True), ("adamw_clip", True), ("adam", False)]
)
def test_single_process_equals_plain_optax(txname, flat):
    ref_params, ref_losses = _reference(_tx(txname))
    dp = data_parallel(_loss, _tx(txname), flat=flat, mesh=make_mesh(1))
    state, losses = _train(dp)
    assert _max_diff(dp.params(state), ref_params) < 1e-5
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    assert int(state.step) == N_STEPS
    if flat:
        assert len(state.params) == 1 and state.params[0].ndim == 1  # one float32 buffer


def test_params_view_round_trips_and_keeps_dtypes():
    params = {"a": jnp.ones((2, 3)), "b": jnp.arange(4, dtype=jnp.bfloat16), "c": jnp.zeros(())}
    dp = data_parallel(lambda p, b: jnp.sum(b) * 0.0, optax.sgd(0.1), mesh=make_mesh(1))
    state = dp.init(params)
    assert [x.dtype for x in state.params] == [jnp.float32, jnp.bfloat16]  # one buffer per dtype
    back = dp.params(state)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    # NumPy float64 (x64 off) and Python float leaves: what JAX computes in, one buffer
    dp = data_parallel(lambda p, b: jnp.sum(b) * 0.0, optax.sgd(0.1), mesh=make_mesh(1))
    state = dp.init({"a": np.ones((2, 3)), "c": 0.0})
    assert [x.dtype for x in state.params] == [jnp.float32]
    assert dp.layout.groups == (np.dtype(np.float32),)


def test_mixed_precision_policy_computes_in_bf16_keeps_fp32_params():
    seen = []

    def loss(params, batch):
        seen.append((params[0]["w"].dtype, batch[0].dtype))
        return _loss(params, batch)

    dp = data_parallel(loss, optax.adam(1e-2), policy=get_policy("bf16"), mesh=make_mesh(1))
    state, losses = _train(dp)
    assert seen[0] == (jnp.bfloat16, jnp.bfloat16)
    assert state.params[0].dtype == jnp.float32
    _, ref_losses = _reference(optax.adam(1e-2))
    assert losses[-1] < losses[0]
    np.testing.assert_allclose(losses, ref_losses, rtol=0.05, atol=0.02)  # bf16 rounding


def test_policy_parsing():
    p = get_policy("params=float32,compute=float16,output=float32")
    assert p.compute_dtype == np.float16 and p.param_dtype == np.float32
    assert get_policy("fp32").compute_dtype == np.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        get_policy("float8")
    with pytest.raises(ValueError, match="bad policy field"):
        get_policy("weights=float32")


def test_dynamic_loss_scale_rules():
    ls = DynamicLossScale(initial=8.0, factor=2.0, period=3, min_scale=2.0)
    s = ls.init()
    for _ in range(2):
        s = ls.adjust(s, jnp.bool_(True))
    assert float(s.scale) == 8.0 and int(s.good_steps) == 2
    s = ls.adjust(s, jnp.bool_(True))
    assert float(s.scale) == 16.0 and int(s.good_steps) == 0
    s = ls.adjust(ls.adjust(ls.adjust(s, jnp.bool_(False)), jnp.bool_(False)), jnp.bool_(False))
    assert float(s.scale) == 2.0  # halved three times, floored at min_scale
    top = DynamicLossScale(initial=2.0**126, period=1)  # grows every finite step
    s = top.init()
    for _ in range(4):
        s = top.adjust(s, jnp.bool_(True))
    assert np.isfinite(float(s.scale))  # capped at the float32 max, never inf
    assert float(top.adjust(s, jnp.bool_(False)).scale) < float(s.scale)  # can come down
    for bad in ({"initial": 1.0, "min_scale": 4.0}, {"period": 1.5}, {"factor": 1.0}):
        with pytest.raises(ValueError, match="DynamicLossScale needs"):
            DynamicLossScale(**bad)


def test_loss_scaling_skips_overflow_and_matches_unscaled_training():
    tx = optax.adam(1e-2)
    ls = DynamicLossScale(initial=2.0**10, period=5)
    dp = data_parallel(_loss, tx, loss_scale=ls, mesh=make_mesh(1))
    state = dp.init(_init(jax.random.key(0)))
    x, y = _data(4)
    state, _ = dp.step(state, (x[0], y[0]))
    before = dp.params(state)
    bad_x = x[1].at[3, 2].set(jnp.inf)  # tanh saturates: finite loss, non-finite gradient
    state, _ = dp.step(state, (bad_x, y[1]))
    assert _max_diff(dp.params(state), before) == 0.0  # skipped
    assert float(state.loss_scale.scale) == 2.0**9
    state, _ = dp.step(state, (x[2], y[2]))
    # the same as unscaled training that never saw the bad batch
    ref = data_parallel(_loss, tx, mesh=make_mesh(1))
    rs = ref.init(_init(jax.random.key(0)))
    for s in (0, 2):
        rs, _ = ref.step(rs, (x[s], y[s]))
    assert _max_diff(dp.params(state), ref.params(rs)) < 1e-6


def test_fp16_compute_with_loss_scaling_trains():
    """float16 compute, a loss scale of 2**20 that overflows at first, SGD (which sees the
    gradient's scale, unlike Adam): the first k steps overflow, are skipped and halve the
    scale; then the run follows float32 training on the remaining batches. Gradients left
    scaled, overflows applied (NaN) or a scale that never backs off all fail here."""
    ls = DynamicLossScale(initial=2.0**20, period=10**6)  # never grows back within the run
    dp = data_parallel(
        _loss, optax.sgd(0.1), policy=get_policy("fp16"), loss_scale=ls, mesh=make_mesh(1)
    )
    state = dp.init(_init(jax.random.key(0)))
    x, y = _data()
    scales = []
    for s in range(N_STEPS):
        state, _ = dp.step(state, (x[s], y[s]))
        scales.append(float(state.loss_scale.scale))
    k = int(np.argmax(np.diff([2.0**20, *scales]) == 0))  # steps skipped before the first update
    assert 1 <= k <= N_STEPS // 2, scales  # overflowed at first and backed off
    assert scales == [2.0**20 / 2 ** min(i + 1, k) for i in range(N_STEPS)]  # then it held
    ref_params, _ = _reference_on(x[k:], y[k:], optax.sgd(0.1))
    assert _max_diff(dp.params(state), ref_params) < 5e-4  # float16 rounding, 15 steps
    assert _max_diff(dp.params(state), _init(jax.random.key(0))) > 0.1  # it trained


def test_bad_inputs_raise_clear_errors():
    dp = data_parallel(_loss, optax.sgd(0.1), mesh=make_mesh(1))
    with pytest.raises(ValueError, match="call init"):
        dp.step(None, _data(1))
    state = dp.init(_init(jax.random.key(0)))
    x, y = _data(1)
    with pytest.raises(ValueError, match="disagree on the batch size"):
        dp.step(state, (x[0], y[0, :5]))
    with pytest.raises(ValueError, match="the batch is empty"):
        dp.step(state, (x[0, :0], y[0, :0]))
    assert int(dp.step(state, (x[0], y[0]))[0].step) == 1  # the errors left the state intact
    with pytest.raises(ValueError, match="only floating parameters"):
        data_parallel(_loss, optax.sgd(0.1)).init({"n": jnp.arange(3)})
    solo4 = data_parallel(
        _loss, optax.sgd(0.1), info=ProcessInfo(0, 4, 1), mesh=make_mesh(1)
    )  # a 4-rank job, seen from rank 0
    with pytest.raises(ValueError, match="does not divide over 4 processes"):
        solo4.shard_batch((x[0][:10], y[0][:10]))
    with pytest.raises(ValueError, match="scalar"):
        bad = data_parallel(lambda p, b: b[0] @ p[0]["w"], optax.sgd(0.1), mesh=make_mesh(1))
        bad.step(bad.init(_init(jax.random.key(0))), (x[0], y[0]))
    two_d = jax.make_mesh((1, 1), ("data", "model"))
    with pytest.raises(ValueError, match=r"needs a 1-D mesh .* \('data', 'model'\)"):
        data_parallel(_loss, optax.sgd(0.1), mesh=two_d)


def test_shard_batch_is_this_ranks_rank_slice_block():
    x, y = _data(1)
    for rank in range(4):
        info = ProcessInfo(rank, 4, 1)  # rank ``rank`` of a 4-rank job, seen from there
        dp = data_parallel(_loss, optax.sgd(0.1), info=info, mesh=make_mesh(1))
        bx, by = dp.shard_batch((x[0], y[0]))
        np.testing.assert_array_equal(bx, x[0][4 * rank : 4 * rank + 4])
        np.testing.assert_array_equal(by, rank_shard(y[0], info))


def test_all_finite_is_one_shared_definition():
    from jaxsci.optim import _tree

    assert all_finite is _tree.all_finite  # the loss scale and Anderson share it
    assert bool(all_finite({"i": jnp.arange(3), "f": jnp.ones(2, jnp.float16)}))
    assert not bool(all_finite([jnp.ones(2), jnp.array([1.0, jnp.nan])]))
    assert bool(all_finite({}))


# -- 4 simulated devices ---------------------------------------------------------------------
@pytest.mark.multidevice
@pytest.mark.parametrize(("txname", "flat"), [("sgd", True), ("sgd", False), ("adam", True)])
def test_four_devices_equal_one_device(txname, flat):
    """SGD sees the gradient's scale (Adam does not: a 4x gradient passed with it)."""
    ref_params, ref_losses = _reference(_tx(txname))
    dp = data_parallel(_loss, _tx(txname), mesh=make_mesh(4), flat=flat)
    state, losses = _train(dp)
    assert _max_diff(dp.params(state), ref_params) < 1e-5
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == 4  # replicated


@pytest.mark.multidevice
def test_batch_not_dividing_over_devices_raises():
    dp = data_parallel(_loss, optax.sgd(0.1), mesh=make_mesh(4))
    state = dp.init(_init(jax.random.key(0)))
    x, y = _data(1)
    with pytest.raises(ValueError, match="batch of 6 does not divide over its 4 devices"):
        dp.step(state, (x[0, :6], y[0, :6]))
    with pytest.raises(ValueError, match="does not divide over 1 processes x 4 devices"):
        dp.shard_batch((x[0, :6], y[0, :6]))


@pytest.mark.multidevice
def test_four_devices_fp16_gradients_averaged_without_overflow():
    """float16 parameters, loss scale 2**12: each device's scaled gradient (16384) fits
    float16, their sum over 4 devices (65536) does not, their mean does. pmean summed in
    float16 (inf): 4 devices skipped the step and halved the scale where 1 device did not."""
    loss = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)  # noqa: E731
    x, y = jnp.ones((8, 4), jnp.float16), jnp.zeros((8, 1), jnp.float16)
    results = []
    for n_dev in (1, 4):
        ls = DynamicLossScale(initial=2.0**12, period=10**6)
        dp = data_parallel(loss, optax.sgd(1e-3), mesh=make_mesh(n_dev), loss_scale=ls)
        state, _ = dp.step(dp.init({"w": jnp.full((4, 1), 0.5, jnp.float16)}), (x, y))
        results.append((float(state.loss_scale.scale), np.asarray(dp.params(state)["w"])))
    (scale1, w1), (scale4, w4) = results
    assert scale1 == scale4 == 2.0**12  # no overflow on either
    assert w4.dtype == np.float16
    np.testing.assert_array_equal(w4, w1)
    np.testing.assert_allclose(w1.astype(np.float32), 0.5 - 1e-3 * 4.0, rtol=1e-3)  # trained


@pytest.mark.multidevice
def test_four_devices_loss_scaling_skip():
    dp = data_parallel(
        _loss, optax.sgd(0.1), mesh=make_mesh(4), loss_scale=DynamicLossScale(initial=4.0)
    )
    state = dp.init(_init(jax.random.key(0)))
    x, y = _data(1)
    before = dp.params(state)
    state, _ = dp.step(state, (x[0].at[13, 0].set(jnp.nan), y[0]))  # NaN on device 3 only
    assert _max_diff(dp.params(state), before) == 0.0
    assert float(state.loss_scale.scale) == 2.0


# -- 2 MPI ranks -----------------------------------------------------------------------------
def _world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def _same_on_all_ranks(tree):
    blobs = _world().allgather([np.asarray(x).tobytes() for x in jax.tree.leaves(tree)])
    return all(b == blobs[0] for b in blobs)


@pytest.mark.mpi
@pytest.mark.parametrize(
    ("txname", "bucket_bytes", "flat"),
    [("sgd", None, True), ("adam", None, True), ("adam", 256, True), ("adamw_clip", 0, False)],
)
def test_two_ranks_equal_single_process_on_concatenated_batch(txname, bucket_bytes, flat):
    ref_params, ref_losses = _reference(_tx(txname))
    dp = data_parallel(_loss, _tx(txname), bucket_bytes=bucket_bytes, flat=flat, mesh=make_mesh(1))
    assert dp.info.size == 2
    state, losses = _train(dp)
    params = dp.params(state)
    assert _max_diff(params, ref_params) < 1e-5
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    assert _same_on_all_ranks(params)


@pytest.mark.mpi
def test_two_ranks_anderson_matches_single_process_with_the_global_loss():
    """Anderson (loss safeguard fed the all-reduced loss) on 2 ranks: every rank holds the
    same state, counters included, and the run follows one process on the whole batch."""
    from jaxsci.optim import anderson

    def reference():
        tx, (x, y) = anderson(optax.sgd(0.1), 3), _data()

        @jax.jit  # one program: Anderson's update run eagerly compiles each of its ops
        def step(params, opt, batch):
            loss, g = jax.value_and_grad(_loss)(params, batch)
            u, opt = tx.update(g, opt, params, value=loss)
            return optax.apply_updates(params, u), opt

        params = _init(jax.random.key(0))
        opt = tx.init(params)
        for s in range(N_STEPS):
            params, opt = step(params, opt, (x[s], y[s]))
        return params, opt

    ref_params, ref_opt = reference()
    dp = data_parallel(_loss, anderson(optax.sgd(0.1), 3), flat=False, mesh=make_mesh(1))
    state, _ = _train(dp)
    assert _same_on_all_ranks(state.opt_state)
    aa, ref_aa = state.opt_state.anderson_state, ref_opt.anderson_state
    assert int(ref_aa.n_accelerated) > 0  # the test exercises extrapolation
    for name in ("n_accelerated", "n_rejected"):
        assert int(getattr(aa, name)) == int(getattr(ref_aa, name)), name
    assert _max_diff(dp.params(state), ref_params) < 1e-4


@pytest.mark.mpi
@pytest.mark.parametrize(("split", "scaled"), [(3, False), (8, False), (8, True)])
def test_two_ranks_unequal_local_batches_are_weighted(split, scaled):
    """Samples 0..split-1 on rank 0, the rest of 8 on rank 1, give the gradient of the mean
    over all 8. split = 8 leaves rank 1 empty (an uneven split can): it weighs nothing, the
    loss stays finite, and a loss scale does not read it as an overflow (NaN before)."""
    rank = _world().Get_rank()
    ls = DynamicLossScale(initial=8.0) if scaled else None
    dp = data_parallel(_loss, optax.sgd(0.1), mesh=make_mesh(1), loss_scale=ls)
    state = dp.init(_init(jax.random.key(0)))
    x, y = _data(3)
    x, y = x[:, :8], y[:, :8]
    ref_params, _ = _reference_on(x, y, optax.sgd(0.1))
    part = slice(0, split) if rank == 0 else slice(split, 8)
    for s in range(3):
        state, loss = dp.step(state, (x[s, part], y[s, part]))
        assert np.isfinite(float(loss))
    assert _max_diff(dp.params(state), ref_params) < 1e-5
    if scaled:
        assert float(state.loss_scale.scale) == 8.0


def _reference_on(x, y, tx):
    params = _init(jax.random.key(0))
    opt = tx.init(params)
    for s in range(x.shape[0]):
        loss, g = jax.value_and_grad(_loss)(params, (x[s], y[s]))
        u, opt = tx.update(g, opt, params)
        params = optax.apply_updates(params, u)
    return params, opt


@pytest.mark.mpi
@pytest.mark.parametrize("transfer", [jnp.bfloat16, jnp.float16])
def test_two_ranks_16bit_gradient_transfer_stays_close(transfer):
    """SGD (a gradient off by a constant factor shows, unlike under Adam), 16-bit messages."""
    ref_params, _ = _reference(optax.sgd(0.1))
    dp = data_parallel(_loss, optax.sgd(0.1), transfer_dtype=transfer, mesh=make_mesh(1))
    state, losses = _train(dp)
    tol = 2e-3 if transfer == jnp.bfloat16 else 3e-4  # 8 / 11 mantissa bits, 20 steps
    assert _max_diff(dp.params(state), ref_params) < tol
    assert _same_on_all_ranks(dp.params(state))


@pytest.mark.mpi
@pytest.mark.parametrize("transfer", [None, jnp.float16])
def test_two_ranks_fixed_loss_scale_is_undone(transfer):
    """A loss scale of 2**14 that never changes (period beyond the run) with SGD: the weights
    equal unscaled single-process training, so the gradients were divided by the scale. With
    float16 messages the scaled gradients times the local batch size would pass 65504 (the
    float16 maximum); each rank's share of the mean does not, so no step is skipped."""
    ref_params, _ = _reference(optax.sgd(0.1))
    ls = DynamicLossScale(initial=2.0**14, period=10**6)
    dp = data_parallel(
        _loss, optax.sgd(0.1), loss_scale=ls, transfer_dtype=transfer, mesh=make_mesh(1)
    )
    state, _ = _train(dp)
    assert float(state.loss_scale.scale) == 2.0**14  # nothing overflowed, nothing skipped
    assert _max_diff(dp.params(state), ref_params) < (1e-5 if transfer is None else 3e-4)


@pytest.mark.mpi
@pytest.mark.parametrize("transfer", [None, jnp.float16])
def test_two_ranks_float16_params_averaged_without_overflow(transfer):
    """float16 parameters, loss scale 2**12: the scaled gradient (16384) fits float16, but
    times the local batch size (8) it does not. The one-message path weighted and summed the
    gradients in float16 (inf: the step was skipped and the scale halved)."""
    loss = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)  # noqa: E731
    x = jnp.ones((16, 4), jnp.float16) + jnp.arange(16, dtype=jnp.float16)[:, None] / 64
    y = jnp.zeros((16, 1), jnp.float16)
    w0 = {"w": jnp.full((4, 1), 0.5, jnp.float16)}
    ls = DynamicLossScale(initial=2.0**12, period=10**6)
    dp = data_parallel(
        loss, optax.sgd(1e-3), loss_scale=ls, transfer_dtype=transfer, mesh=make_mesh(1)
    )
    state, _ = dp.step(dp.init(w0), dp.shard_batch((x, y)))
    assert float(state.loss_scale.scale) == 2.0**12  # nothing overflowed, nothing skipped
    grad = jax.grad(lambda w: loss({"w": w.astype(jnp.float32)}, (x, y)))(w0["w"])
    want = np.asarray(w0["w"], np.float32) - 1e-3 * np.asarray(grad, np.float32)
    got = dp.params(state)["w"]
    assert got.dtype == jnp.float16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-3)
    assert _same_on_all_ranks(got)


@pytest.mark.mpi
@pytest.mark.parametrize("scaled", [False, True])
def test_two_ranks_empty_batch_on_every_rank_raises_everywhere(scaled):
    """Every rank empty: no sample to take a gradient of (the weighted mean was 0 / 0 and
    turned the parameters into NaN). A ValueError on every rank, the state untouched."""
    ls = DynamicLossScale(initial=8.0) if scaled else None
    dp = data_parallel(_loss, optax.sgd(0.1), mesh=make_mesh(1), loss_scale=ls)
    state = dp.init(_init(jax.random.key(0)))
    x, y = _data(1)
    with pytest.raises(ValueError, match="the batch is empty on every rank"):
        dp.step(state, (x[0, :0], y[0, :0]))
    assert _max_diff(dp.params(state), _init(jax.random.key(0))) == 0.0  # not donated, intact
    state, loss = dp.step(state, dp.shard_batch((x[0], y[0])))  # the ranks are still in step
    assert np.isfinite(float(loss)) and _same_on_all_ranks(dp.params(state))
    if scaled:
        assert float(state.loss_scale.scale) == 8.0
    # a size-1 communicator is "every rank" too
    from mpi4py import MPI

    solo = ProcessInfo(0, 1, 1, MPI.COMM_SELF)
    dp1 = data_parallel(_loss, optax.sgd(0.1), info=solo, mesh=make_mesh(1), loss_scale=ls)
    with pytest.raises(ValueError, match="the batch is empty"):
        dp1.step(dp1.init(_init(jax.random.key(0))), (x[0, :0], y[0, :0]))


@pytest.mark.mpi
def test_two_ranks_bfloat16_params_broadcast():
    """init broadcasts rank 0's values as raw bytes: MPI has no bfloat16."""
    rank = _world().Get_rank()
    params = {"w": jnp.full((3, 2), 1.5 + rank, jnp.bfloat16), "b": jnp.zeros(2)}
    dp = data_parallel(
        lambda p, b: jnp.mean(b @ p["w"].astype(jnp.float32) + p["b"]),
        optax.sgd(0.1),
        mesh=make_mesh(1),
    )
    got = dp.params(dp.init(params))
    assert got["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got["w"], np.float32), np.full((3, 2), 1.5))


@pytest.mark.mpi
def test_two_ranks_overflow_on_one_rank_skips_on_every_rank():
    rank = _world().Get_rank()
    ls = DynamicLossScale(initial=2.0**8, period=100)
    dp = data_parallel(_loss, optax.adam(1e-2), loss_scale=ls, mesh=make_mesh(1))
    state = dp.init(_init(jax.random.key(0)))
    x, y = _data(3)
    state, _ = dp.step(state, dp.shard_batch((x[0], y[0])))
    before = dp.params(state)
    bx, by = dp.shard_batch((x[1], y[1]))
    if rank == 1:
        bx = bx.at[0, 0].set(jnp.inf)  # only rank 1 overflows
    state, _ = dp.step(state, (bx, by))
    assert _max_diff(dp.params(state), before) == 0.0  # skipped here, and (below) everywhere
    assert float(state.loss_scale.scale) == 2.0**7
    state, _ = dp.step(state, dp.shard_batch((x[2], y[2])))
    assert _same_on_all_ranks(dp.params(state))
    assert _same_on_all_ranks(state.loss_scale)
    assert _world().allgather(int(state.step)) == [3, 3]


@pytest.mark.mpi
def test_two_ranks_disagreeing_trees_fail_on_every_rank():
    rank = _world().Get_rank()
    widths = (6, 12, 1) if rank == 0 else (6, 13, 1)
    dp = data_parallel(_loss, optax.sgd(0.1), mesh=make_mesh(1))
    with pytest.raises(ValueError, match=r"ranks disagree on the parameter tree.*\[0\], \[1\]"):
        dp.init(_init(jax.random.key(0), widths))
    extra = _init(jax.random.key(0)) + ([{"w": jnp.ones((1, 1))}] if rank == 1 else [])
    with pytest.raises(ValueError, match="rank 0 has 6 leaves, rank 1 has 7"):
        dp.init(extra)


@pytest.mark.mpi
def test_two_ranks_non_dividing_global_batch_fails_on_every_rank():
    dp = data_parallel(_loss, optax.sgd(0.1), mesh=make_mesh(1))
    x, y = _data(1)
    with pytest.raises(ValueError, match="global batch of 7 does not divide over 2 processes"):
        dp.shard_batch((x[0, :7], y[0, :7]))


@pytest.mark.mpi
def test_init_broadcasts_rank0_values():
    rank = _world().Get_rank()
    dp = data_parallel(_loss, optax.sgd(0.1), mesh=make_mesh(1))
    state = dp.init(_init(jax.random.key(rank)))  # different values on each rank
    assert _same_on_all_ranks(dp.params(state))
    assert _max_diff(dp.params(state), _init(jax.random.key(0))) == 0.0


@pytest.mark.mpi
def test_two_ranks_checkpoint_resume_reproduces_run(tmp_path):
    from jaxsci.train import Checkpointer

    directory = _world().bcast(str(tmp_path / "ck"), root=0)
    tx = optax.adam(1e-2)
    dp = data_parallel(_loss, tx, mesh=make_mesh(1))
    full, _ = _train(dp, n_steps=8)
    x, y = _data(8)
    with Checkpointer(directory, every=3, info=bootstrap()) as ck:
        state = dp.init(_init(jax.random.key(0)))
        for s in range(5):  # stops after 5 steps; checkpoint at 3
            state, _ = dp.step(state, dp.shard_batch((x[s], y[s])))
            ck.save(s + 1, state)
    dp2 = data_parallel(_loss, tx, mesh=make_mesh(1))
    with Checkpointer(directory, info=bootstrap()) as ck:
        state, start = ck.resume(dp2.init(_init(jax.random.key(9))))
    assert start == 3
    for s in range(start, 8):
        state, _ = dp2.step(state, dp2.shard_batch((x[s], y[s])))
    assert _max_diff(dp2.params(state), dp.params(full)) == 0.0


@pytest.mark.parametrize("flat", [True, False])
def test_step_never_invalidates_the_callers_arrays(flat):
    params = {"v": jnp.ones(3)}  # a single 1-D leaf: flattening is a no-op view
    dp = data_parallel(lambda p, b: jnp.mean((b - p["v"]) ** 2), optax.sgd(0.1), flat=flat)
    state = dp.init(params)
    state, _ = dp.step(state, jnp.zeros((4, 3)))
    np.testing.assert_array_equal(params["v"], np.ones(3))  # still alive and unchanged
