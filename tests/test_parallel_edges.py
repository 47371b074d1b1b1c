"""jaxsci.parallel fixes: device placement, communicator lifetime, visible loss-scale skips,
consistent step errors, per-leaf optimizer warning, tree_allreduce checks, scaling inputs."""

import dataclasses
import gc
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsci.metrics import scaling_efficiency
from jaxsci.parallel import (
    DynamicLossScale,
    ProcessInfo,
    data_parallel,
    get_policy,
    make_mesh,
    shard_over_labels,
    tree_allreduce,
)


def _params():
    return [
        {"w": jnp.linspace(-1.0, 1.0, 15).reshape(5, 3), "b": jnp.zeros(3)},
        {"w": jnp.linspace(0.5, -0.5, 3).reshape(3, 1), "b": jnp.zeros(1)},
    ]


def _loss(params, batch):
    x, y = batch
    h = jnp.tanh(x @ params[0]["w"] + params[0]["b"])
    return jnp.mean((h @ params[1]["w"] + params[1]["b"] - y) ** 2)


def _batch(n=8):
    x = jnp.linspace(-1.0, 1.0, n * 5).reshape(n, 5)
    return x, jnp.sin(x.sum(-1, keepdims=True))


# -- loss-scale skips are counted -----------------------------------------------------------------
def test_loss_scale_counts_every_skip_also_at_min_scale():
    """fp16 compute, scale already at its floor: the fp16 copy of w (1e-9) underflows to 0,
    the loss is 0 (finite) and d sqrt(w)/dw is inf. Every step is skipped; before, nothing
    showed it (finite loss, constant scale, good_steps 0)."""
    loss_fn = lambda p, x: jnp.mean(jnp.sqrt(p["w"] * x))  # noqa: E731
    dp = data_parallel(
        loss_fn,
        optax.sgd(1e-12),
        policy=get_policy("fp16"),
        loss_scale=DynamicLossScale(initial=2.0, min_scale=1.0, period=10),
        mesh=make_mesh(1),
    )
    state = dp.init({"w": jnp.float32(1e-9)})
    assert int(state.loss_scale.skipped) == 0
    for i in range(4):
        state, loss = dp.step(state, jnp.ones(4))
        assert np.isfinite(float(loss))
        assert int(state.loss_scale.skipped) == i + 1
        assert state.loss_scale.skipped.dtype == jnp.int32
    assert float(state.loss_scale.scale) == 1.0 and int(state.step) == 4


def test_loss_scale_adjust_counts_only_non_finite_steps():
    ls = DynamicLossScale(initial=8.0, period=2)
    s = ls.init()
    for finite in (True, False, True, True, False):
        s = ls.adjust(s, jnp.bool_(finite))
    assert int(s.skipped) == 2
    s = jax.jit(ls.adjust)(s, jnp.bool_(False))  # a pytree of scalars under jit
    assert int(s.skipped) == 3


# -- step errors: ValueError with the cause, with or without MPI ----------------------------------
def test_loss_fn_failing_on_the_batch_is_a_value_error_with_its_cause():
    dp = data_parallel(_loss, optax.sgd(0.1), mesh=make_mesh(1))
    state = dp.init(_params())
    x, y = _batch()
    with pytest.raises(ValueError, match="loss_fn fails on this batch") as exc:
        dp.step(state, (x[:, :4], y))  # 4 features where the model takes 5
    assert isinstance(exc.value.__cause__, TypeError)
    state, loss = dp.step(state, (x, y))  # untouched and usable
    assert np.isfinite(float(loss)) and int(state.step) == 1


def test_non_scalar_loss_error_names_the_per_device_share():
    dp = data_parallel(lambda p, b: b[0] @ p[0]["w"][:, 0], optax.sgd(0.1), mesh=make_mesh(1))
    with pytest.raises(ValueError, match=r"scalar .* got shape \(8,\) on one device's share"):
        dp.step(dp.init(_params()), _batch())


@pytest.mark.parametrize("flat", [True, False])
def test_another_trainers_state_is_a_clear_value_error(flat):
    dp_a = data_parallel(_loss, optax.sgd(0.1), flat=flat, mesh=make_mesh(1))
    dp_b = data_parallel(_loss, optax.sgd(0.1), flat=flat, mesh=make_mesh(1))
    state_a = dp_a.init(_params())
    wider = [{"w": jnp.ones((5, 4)), "b": jnp.zeros(4)}, {"w": jnp.ones((4, 1)), "b": jnp.ones(1)}]
    state_b = dp_b.init(wider)
    with pytest.raises(ValueError, match="do not match this trainer's"):
        dp_a.step(state_b, _batch())
    with pytest.raises(ValueError, match="DataParallelState"):
        dp_a.step(dp_a.params(state_a), _batch())
    state_a, _ = dp_a.step(state_a, _batch())  # its own state still steps
    assert int(state_a.step) == 1


# -- flat=True and per-leaf optimizers ------------------------------------------------------------
@pytest.mark.parametrize(
    "make_tx",
    [
        lambda: optax.adamw(1e-2, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
        lambda: optax.lamb(1e-2),
        lambda: optax.lars(1e-2),
        lambda: optax.chain(optax.clip(1.0), optax.adafactor(1e-2)),
        lambda: optax.multi_transform(
            {"a": optax.sgd(0.1), "b": optax.adam(0.1)},
            lambda p: jax.tree.map(lambda x: "a" if x.ndim > 1 else "b", p),
        ),
        lambda: optax.inject_hyperparams(optax.lamb)(learning_rate=1e-2),
        # missed by the first detector (matching optax functions by name), found by comparing
        # one update on the leaves with one on the buffers
        lambda: optax.novograd(1e-2),
        lambda: optax.sm3(1e-2),
        lambda: optax.chain(optax.scale_by_param_block_norm(), optax.sgd(0.1)),
        lambda: optax.chain(optax.clip_by_block_rms(0.1), optax.sgd(0.1)),
        lambda: optax.chain(optax.adaptive_grad_clip(0.01), optax.sgd(0.1)),
    ],
)
def test_flat_mode_warns_for_per_leaf_transforms(make_tx):
    with pytest.warns(UserWarning, match="flat=False"):
        data_parallel(_loss, make_tx(), mesh=make_mesh(1)).init(_params())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data_parallel(_loss, make_tx(), flat=False, mesh=make_mesh(1)).init(_params())


@pytest.mark.parametrize(
    "make_tx",
    [
        lambda: optax.sgd(0.1, momentum=0.9),
        lambda: optax.adam(1e-2),
        lambda: optax.adamw(1e-2),  # decay on every leaf: the same on the buffers
        lambda: optax.adamw(1e-2, mask=lambda p: jax.tree.map(lambda x: True, p)),
        lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)),
        lambda: __import__("jaxsci.optim", fromlist=["anderson"]).anderson(optax.sgd(0.1), 3),
        lambda: optax.chain(optax.clip_by_global_norm(1e-3), optax.sgd(0.1, nesterov=True)),
        lambda: optax.contrib.reduce_on_plateau(),  # needs value=: the check passes one
    ],
)
def test_flat_mode_does_not_warn_for_leafwise_or_global_transforms(make_tx):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data_parallel(_loss, make_tx(), mesh=make_mesh(1)).init(_params())


# -- small input checks ---------------------------------------------------------------------------
def test_transfer_dtype_accepts_the_policy_aliases():
    for alias, want in (("bf16", jnp.bfloat16), ("fp16", jnp.float16), ("f32", jnp.float32)):
        dp = data_parallel(_loss, optax.sgd(0.1), transfer_dtype=alias, mesh=make_mesh(1))
        assert dp.transfer_dtype == np.dtype(want)
    with pytest.raises(ValueError, match="unknown dtype 'bf8'"):
        data_parallel(_loss, optax.sgd(0.1), transfer_dtype="bf8", mesh=make_mesh(1))
    with pytest.raises(ValueError, match="transfer_dtype must be"):
        data_parallel(_loss, optax.sgd(0.1), transfer_dtype=jnp.int32, mesh=make_mesh(1))


def test_construction_does_not_communicate():
    """Building a trainer is local: nothing touches the communicator until init()."""
    calls = []

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            raise AssertionError(f"construction called comm.{name}")

    data_parallel(_loss, optax.sgd(0.1), info=ProcessInfo(0, 2, 1, Spy()), mesh=make_mesh(1))
    assert calls == []


def test_scaling_efficiency_takes_numpy_and_jax_scalars_and_rejects_bools():
    got = scaling_efficiency({np.int64(1): np.float32(10.0), 2: jnp.float32(6.0)}, "strong")
    assert got == pytest.approx({1: 1.0, 2: 10.0 / 12.0})
    assert list(got) == [1, 2] and all(type(n) is int for n in got)
    assert scaling_efficiency({1: np.float64(2.0), 4: 2}, "weak") == {1: 1.0, 4: 1.0}
    for bad, match in (
        ({1: True, 2: 0.5}, "not .*bool|the bool"),
        ({1: np.True_}, "the bool"),
        ({1: "3"}, "must be a real number of seconds, got str"),
        ({1: jnp.ones(2)}, "must be a real number of seconds"),
        ({1: np.float32(-1.0)}, "finite and > 0"),
        ({np.bool_(True): 1.0}, "not bools"),
        ({1.0: 1.0}, "integers >= 1, got float"),
    ):
        with pytest.raises(ValueError, match=match):
            scaling_efficiency(bad, "strong")


def test_shard_over_labels_scalar_argument_is_a_clear_error():
    g = shard_over_labels(lambda a, b: a * b, make_mesh(1))
    with pytest.raises(ValueError, match="argument 1 is a scalar"):
        g(jnp.ones(4), 2.0)
    with pytest.raises(ValueError, match=r"argument 0\['s'\] is a scalar"):
        g({"s": jnp.float32(1.0)}, jnp.ones(4))
    with pytest.raises(ValueError, match="at least one stacked argument"):
        g()
    np.testing.assert_array_equal(g(jnp.ones(3), jnp.arange(3.0)), np.arange(3.0))


# -- experiments/data_parallel --------------------------------------------------------------------
def test_experiment_config_is_validated():
    from experiments.data_parallel.config import Config, n_train, tiny

    assert n_train(0.25) == 1347  # train_test_split's split of the 1797 digits
    for bad, match in (
        ({"global_batch": 2048}, "larger than the 1347 training samples"),
        ({"global_batch": 0}, "global_batch must be an integer >= 1"),
        ({"steps": -1}, "steps must be an integer >= 1"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"eval_every": 0}, "eval_every"),
        ({"hidden": ()}, "hidden"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"devices": 0}, "devices"),
        ({"bucket_bytes": -1}, "bucket_bytes"),
    ):
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(tiny(), **bad)
    Config(global_batch=1347)  # one step per epoch is fine
    dataclasses.replace(tiny(), target_accuracy=1.01)  # unreachable on purpose: allowed


def test_aborted_run_logs_fractional_epochs(tmp_path):
    from experiments.data_parallel.config import tiny
    from experiments.data_parallel.train import train_and_evaluate
    from jaxsci.train import MLLogger, read_mllog, time_to_train

    config = dataclasses.replace(tiny(), steps=3, eval_every=3, devices=1, target_accuracy=1.01)
    log = MLLogger(tmp_path / "run.mllog")
    out = train_and_evaluate(config, info=ProcessInfo(0, 1, 1), progress=False, mllog=log)
    events = read_mllog(tmp_path / "run.mllog")
    stop = next(e for e in events if e["key"] == "run_stop")
    per_epoch = 1347 // config.global_batch  # 84 steps
    assert stop["metadata"]["status"] == "aborted"
    assert stop["metadata"]["epoch_num"] == pytest.approx(3 / per_epoch)  # was missing
    assert time_to_train(events).epochs == pytest.approx(3 / per_epoch)  # was 1.0
    assert 0 < out["all_steps_s"]


def test_strong_scaling_without_target_uses_time_over_all_steps_not_wall_time():
    from experiments.data_parallel.run import scaling_summary

    def curve(procs, devs, ttt, success, all_steps, wall=100.0):
        return {
            "processes": procs,
            "devices_per_process": devs,
            "wall_s": wall,  # mostly start-up and compilation: never the measure
            "all_steps_s": all_steps,
            "time_to_train": {"time_to_train_s": ttt, "success": success},
        }

    missed = {
        "1proc_1dev": curve(1, 1, 8.0, False, 8.0),
        "1proc_4dev": curve(1, 4, 1.0, True, 4.0),  # reached at step k: its full run is 4 s
        "2proc_1dev": curve(2, 1, 5.0, False, 5.0),
    }
    s = scaling_summary(missed)
    assert s["measure"] == "time_over_all_steps_s"
    assert s["strong_efficiency_by_workers"] == pytest.approx({1: 1.0, 2: 0.8, 4: 0.5})
    assert "1proc_1dev, 2proc_1dev missed the target" in s["basis"]
    reached = {
        k: curve(c["processes"], c["devices_per_process"], 2.0, True, 9.0)
        for k, c in missed.items()
    }
    s = scaling_summary(reached)
    assert s["measure"] == "time_to_train_s" and s["basis"] == ""
    assert s["strong_efficiency_by_workers"] == pytest.approx({1: 1.0, 2: 0.5, 4: 0.25})


# -- donated states, float16 parameters, optimizer states ----------------------------------------
def _deleted(tree):
    return [x.is_deleted() for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("flat", [True, False])
def test_a_donated_state_is_a_value_error_before_it_is_touched(flat):
    """step() donates its state: stepping the old one again was a raw XLA INVALID_ARGUMENT
    on one device and a segfault on four (see the subprocess test below)."""
    dp = data_parallel(_loss, optax.adam(1e-2), flat=flat, mesh=make_mesh(1))
    old = dp.init(_params())
    new, _ = dp.step(old, _batch())
    with pytest.raises(ValueError, match="donated to an earlier step"):
        dp.step(old, _batch())
    with pytest.raises(ValueError, match="donated to an earlier step"):
        dp.step(new._replace(opt_state=old.opt_state), _batch())  # only part of it donated
    assert not any(_deleted(new))  # untouched by the refused calls
    new, loss = dp.step(new, _batch())
    assert np.isfinite(float(loss)) and int(new.step) == 2


def test_a_donated_state_on_four_devices_is_a_value_error_not_a_crash(tmp_path):
    """The same on a 4-device mesh killed the process (SIGSEGV inside XLA): run it in a
    subprocess with 4 simulated devices, so a crash fails this test and not the run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "donated.py"
    script.write_text(
        "import jax, jax.numpy as jnp, numpy as np, optax\n"
        "from jaxsci.parallel import data_parallel, make_mesh\n"
        "assert jax.device_count() == 4\n"
        "loss = lambda p, b: jnp.mean((b[0] @ p['w'] - b[1]) ** 2)\n"
        "b = (np.ones((8, 3), np.float32), np.ones(8, np.float32))\n"
        "dp = data_parallel(loss, optax.sgd(0.1), mesh=make_mesh(4))\n"
        "old = dp.init({'w': jnp.zeros(3)})\n"
        "new, _ = dp.step(old, b)\n"
        "try:\n"
        "    dp.step(old, b)\n"
        "except ValueError as err:\n"
        "    print('ValueError:', err)\n"
        "print(f'then {float(dp.step(new, b)[1]):.4f}')\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(root))
    flags = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env["XLA_FLAGS"] = flags.strip()  # the last device count given wins
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=root, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"rc {proc.returncode}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    assert "ValueError: this state was donated to an earlier step" in proc.stdout, proc.stdout
    assert "then 0.1600" in proc.stdout  # the new state steps: w 0 -> 0.2, loss (1 - 0.6)**2


_FP16 = "params=float16,compute=float16,output=float32"


def _fp16_run(flat, tx, loss_fn, params, batch, loss_scale, steps=1):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "data_parallel: float16 parameters")  # tested below
        dp = data_parallel(
            loss_fn,
            tx,
            policy=get_policy(_FP16),
            loss_scale=loss_scale,
            flat=flat,
            mesh=make_mesh(1),
        )
        state = dp.init(params)
    losses = []
    for _ in range(steps):
        state, loss = dp.step(state, batch)
        losses.append(float(loss))
    return dp, state, losses


def test_loss_scale_skips_a_non_finite_update_flat_and_tree_alike():
    """float16 Adam: eps=1e-8 is 0, so the weight with a zero gradient (x[:, 2] = 0) gets a
    0/0 update. The gradients and loss were finite, so the NaN update was accepted (params
    NaN) and every later step was then skipped. Now the step is skipped: state kept, scale
    halved, counted; a later batch with no zero gradient trains."""
    x = np.ones((8, 3), np.float32)
    x[:, 2] = 0.0
    y = np.full(8, 2.0, np.float32)
    lin = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)  # noqa: E731
    p0 = {"w": jnp.full(3, 0.5)}
    results = []
    for flat in (True, False):
        ls = DynamicLossScale(initial=8.0, period=100)
        dp, state, losses = _fp16_run(flat, optax.adam(1e-2), lin, p0, (x, y), ls, steps=2)
        assert losses == [1.0, 1.0]  # the loss of the kept parameters
        np.testing.assert_array_equal(dp.params(state)["w"], np.full(3, 0.5, np.float16))
        assert int(state.loss_scale.skipped) == 2 and float(state.loss_scale.scale) == 2.0
        assert int(state.step) == 2
        for leaf in jax.tree.leaves(state.opt_state):  # Adam's count, mu, nu: as at init
            assert not np.any(np.asarray(leaf, np.float32))
        state, _ = dp.step(state, (np.ones((8, 3), np.float32), y))  # no zero gradient
        assert int(state.loss_scale.skipped) == 2
        w = np.asarray(dp.params(state)["w"], np.float32)
        assert np.all(np.isfinite(w)) and np.all(w > 0.5)
        results.append(w)
    np.testing.assert_array_equal(results[0], results[1])  # flat and tree modes agree


@pytest.mark.parametrize("flat", [True, False])
def test_loss_scale_skips_a_step_that_makes_the_optimizer_state_non_finite(flat):
    """A float16 gradient of 1e4 is finite, its square (Adam's nu) is not: the update was 0,
    the parameters finite, and nu = inf was kept (every later update 0, silently)."""
    big = lambda p, b: jnp.mean(b) * 1e4 * jnp.sum(p["w"])  # noqa: E731
    ls = DynamicLossScale(initial=1.0, period=100)
    _, state, _ = _fp16_run(flat, optax.adam(1e-2), big, {"w": jnp.full(2, 0.5)}, jnp.ones(4), ls)
    assert int(state.loss_scale.skipped) == 1
    assert all(np.all(np.isfinite(np.asarray(v, np.float32))) for v in jax.tree.leaves(state))


@pytest.mark.parametrize("how", ["policy", "arrays"])
def test_float16_parameters_warn_once_at_init(how):
    """float16 Adam went NaN from step 1 (its eps=1e-8 is 0 in float16) without a word."""
    if how == "policy":
        dp = data_parallel(_loss, optax.adam(1e-2), policy=get_policy(_FP16), mesh=make_mesh(1))
        params = _params()
    else:  # the user's own float16 arrays, the default policy keeps them
        dp = data_parallel(_loss, optax.adam(1e-2), mesh=make_mesh(1))
        params = jax.tree.map(lambda x: x.astype(jnp.float16), _params())
    with pytest.warns(UserWarning, match=r"float16 parameters.*eps=1e-8 is 0.*bfloat16"):
        dp.init(params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dp.init(params)  # once per trainer
        data_parallel(_loss, optax.adam(1e-2), policy=get_policy("fp16"), mesh=make_mesh(1)).init(
            params
        )  # float16 compute with float32 parameters: the recommended set-up, no warning


@pytest.mark.parametrize(
    "make_tx",
    [
        lambda: __import__("jaxsci.optim", fromlist=["anderson"]).anderson(optax.sgd(0.1), 3),
        lambda: optax.chain(optax.sgd(0.1), optax.contrib.reduce_on_plateau()),
    ],
)
def test_loss_scale_keeps_steps_of_optimizers_with_infinite_sentinels(make_tx):
    """These optimizer states start with inf / -inf entries (best loss so far, an empty loss
    history): only an element turning non-finite makes a step non-finite."""
    dp = data_parallel(_loss, make_tx(), loss_scale=DynamicLossScale(), mesh=make_mesh(1))
    state = dp.init(_params())
    assert not all(
        np.all(np.isfinite(x)) for x in jax.tree.leaves(state.opt_state) if x.dtype.kind == "f"
    )
    for _ in range(3):
        state, _ = dp.step(state, _batch())
    assert int(state.loss_scale.skipped) == 0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_elementwise_optimizers_never_get_the_per_leaf_warning(dtype):
    """Plain Adam with float16 parameters differed by 3.8e-4 between leaves and buffers
    (float16 rounding) and was told to use flat=False; the check now runs in float32."""
    p0 = {"w": jnp.zeros(8), "b": jnp.zeros(())}
    lin = lambda p, b: jnp.mean((b[0] @ p["w"] + p["b"] - b[1]) ** 2)  # noqa: E731
    policy = get_policy(f"params={dtype},compute={dtype},output=float32")
    for tx in (
        optax.adam(1e-2),
        optax.sgd(0.1, momentum=0.9),
        optax.rmsprop(1e-2),
        optax.adamw(1e-2),
    ):
        for params in (p0, _params()):
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                data_parallel(lin, tx, policy=policy, mesh=make_mesh(1)).init(params)
            messages = [str(w.message) for w in seen]
            assert not [m for m in messages if "leaves differently" in m], messages
            # the float16 warning: for float16 parameters only
            assert any("float16 parameters" in m for m in messages) == (dtype == "float16")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_per_leaf_warning_still_fires_for_16_bit_parameters(dtype):
    policy = get_policy(f"params={dtype},compute={dtype},output=float32")
    mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
    for tx in (optax.lamb(1e-2), optax.adamw(1e-2, weight_decay=0.1, mask=mask)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            data_parallel(_loss, tx, policy=policy, mesh=make_mesh(1)).init(_params())
        assert any("flat=False" in str(w.message) for w in seen)


@pytest.mark.parametrize("flat", [True, False])
def test_another_optimizers_state_is_a_clear_value_error(flat):
    """Only the parameters were compared: an Adam state was stepped by an SGD trainer
    (and kept), an SGD state in an Adam trainer was a raw AttributeError from optax."""
    from jaxsci.optim import anderson

    def trainer(tx, **kw):
        return data_parallel(_loss, tx, flat=flat, mesh=make_mesh(1), **kw)

    sgd, adam = trainer(optax.sgd(0.1)), trainer(optax.adam(1e-2))
    accel = trainer(anderson(optax.adam(1e-2)))
    scaled = trainer(optax.sgd(0.1), loss_scale=DynamicLossScale())
    states = {dp: dp.init(_params()) for dp in (sgd, adam, accel, scaled)}
    cases = [
        (sgd, adam, r"optimizer state does not match.*holds \(ScaleByAdamState, EmptyState\)"),
        (adam, sgd, r"optimizer state does not match.*holds \(EmptyState, EmptyState\)"),
        (accel, adam, "optimizer state does not match.*AndersonState"),
        (adam, accel, "optimizer state does not match.*AndersonState"),
        (sgd, scaled, "has a loss-scale state but this trainer has no loss_scale"),
        (scaled, sgd, "has no loss-scale state"),
    ]
    for dp, other, match in cases:
        with pytest.raises(ValueError, match=match):
            dp.step(states[other], _batch())
    same = trainer(optax.adam(0.5))  # other hyperparameters, the same state: accepted
    for dp, state in states.items():
        state, loss = dp.step(state, _batch())  # every state untouched, steps with its own
        assert int(state.step) == 1 and np.isfinite(float(loss))
        if dp is adam:
            same.init(_params())
            assert int(same.step(state, _batch())[0].step) == 2


# -- 4 simulated devices --------------------------------------------------------------------------
@pytest.mark.multidevice
@pytest.mark.parametrize("loss_scale", [None, DynamicLossScale(initial=4.0)])
def test_one_device_mesh_runs_on_that_device(loss_scale):
    """One rank per accelerator picks its device: the state and the step must live there
    (they ran on local device 0 for any one-device mesh)."""
    dev3 = jax.devices()[3]
    dp = data_parallel(
        _loss, optax.adam(1e-2), mesh=make_mesh(devices=[dev3]), loss_scale=loss_scale
    )
    ref = data_parallel(_loss, optax.adam(1e-2), mesh=make_mesh(1), loss_scale=loss_scale)
    state, rstate = dp.init(_params()), ref.init(_params())
    assert {d for x in jax.tree.leaves(state) for d in x.devices()} == {dev3}
    for n in (8, 4, 8):
        batch = _batch(n)
        state, loss = dp.step(state, batch)
        rstate, rloss = ref.step(rstate, batch)
        assert loss.devices() == {dev3}
        assert float(loss) == float(rloss)
    assert {d for x in jax.tree.leaves(state) for d in x.devices()} == {dev3}
    assert dp.params(state)[0]["w"].devices() == {dev3}
    got, want = jax.tree.leaves(dp.params(state)), jax.tree.leaves(ref.params(rstate))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


# -- 2 MPI ranks ----------------------------------------------------------------------------------
def _world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


@pytest.mark.mpi
def test_construction_on_one_rank_alone_does_not_communicate():
    """An evaluation-only trainer built on rank 0 alone: the constructor cloned
    COMM_WORLD (a collective) and rank 0 waited forever for rank 1."""
    world = _world()
    if world.Get_rank() == 0:
        dp = data_parallel(_loss, optax.sgd(0.1), mesh=make_mesh(1))
        assert dp._comm is None  # nothing cloned before init()
    world.Barrier()


@pytest.mark.mpi
def test_many_trainers_do_not_exhaust_communicators():
    """MPICH holds ~2046 communicators: each trainer cloned one and never freed it."""
    from mpi4py import MPI

    params = {"w": jnp.ones(3)}
    for _ in range(2100):
        dp = data_parallel(lambda p, b: jnp.mean(b @ p["w"]), optax.sgd(0.1), mesh=make_mesh(1))
        dp.init(params)  # collective: clones the step's communicator
        del dp  # freed with the trainer
    # a stepped trainer (a reference cycle through its compiled step), once collected, has
    # its communicator freed by the next init (never inside the GC pass itself)
    dp = data_parallel(lambda p, b: jnp.mean(b @ p["w"]), optax.sgd(0.1), mesh=make_mesh(1))
    state, _ = dp.step(dp.init(params), jnp.ones((2, 3)))
    comm = dp._comm
    assert comm != MPI.COMM_NULL
    del dp, state
    gc.collect()
    data_parallel(lambda p, b: jnp.mean(b @ p["w"]), optax.sgd(0.1), mesh=make_mesh(1)).init(params)
    assert comm == MPI.COMM_NULL
    # close(): freed now; step refuses until init (collective) clones a new one
    dp = data_parallel(lambda p, b: jnp.mean(b @ p["w"]), optax.sgd(0.1), mesh=make_mesh(1))
    state = dp.init(params)
    comm = dp._comm
    dp.close()
    assert comm == MPI.COMM_NULL
    with pytest.raises(ValueError, match="closed"):
        dp.step(state, jnp.ones((2, 3)))
    state = dp.init(params)
    state, loss = dp.step(state, jnp.ones((2, 3)))
    assert float(loss) == 3.0


@pytest.mark.mpi
@pytest.mark.parametrize("how", ["close", "gc"])
def test_freeing_the_communicator_waits_for_the_step_in_flight(how):
    """step() returns before its all-reduce has run: close() (or the trainer's collection)
    right after it freed the communicator under it: MPICH reported an invalid communicator
    and both ranks returned a wrong loss (-52 and -33 for 0.0433)."""
    d = 384

    def loss(p, x):
        return jnp.mean((jnp.tanh(x @ p["w"]) @ p["w"]) ** 2)

    x = np.random.default_rng(_world().Get_rank()).normal(size=(1024, d)).astype(np.float32)
    params = {"w": jnp.eye(d, dtype=jnp.float32) * 0.5}
    ref = data_parallel(loss, optax.sgd(1e-3), mesh=make_mesh(1))
    state = ref.init(params)
    for _ in range(2):
        state, want = ref.step(state, x)
    dp = data_parallel(loss, optax.sgd(1e-3), mesh=make_mesh(1))
    state = dp.init(params)
    state, _ = dp.step(state, x)
    jax.block_until_ready(state)  # compiled and done
    state, got = dp.step(state, x)  # dispatched, its all-reduce still to run
    if how == "close":
        dp.close()
    else:
        del dp
        gc.collect()
        ref.init(params)  # frees the collected trainer's communicator
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    ref.close()


@pytest.mark.mpi
def test_two_ranks_loss_fn_failure_is_a_value_error_with_its_cause():
    dp = data_parallel(_loss, optax.sgd(0.1), mesh=make_mesh(1))
    state = dp.init(_params())
    x, y = dp.shard_batch(_batch(8))
    with pytest.raises(ValueError, match="rank 0: .*TypeError.*; rank 1: .*TypeError") as exc:
        dp.step(state, (x[:, :4], y))
    assert isinstance(exc.value.__cause__, TypeError)


@pytest.mark.mpi
@pytest.mark.parametrize("kind", ["dtype", "struct", "shape", "same"])
def test_tree_allreduce_checks_the_trees_agree(kind):
    rank = _world().Get_rank()
    trees = {
        "dtype": [jnp.ones(3), jnp.ones(3, jnp.int32)],
        "struct": [{"a": jnp.ones(2), "b": jnp.ones(2)}, {"a": jnp.ones(4)}],
        "shape": [jnp.ones(3), jnp.ones(4)],
        "same": [jnp.ones(3), jnp.full(3, 2.0)],
    }
    tree = trees[kind][rank]
    if kind == "same":
        np.testing.assert_array_equal(tree_allreduce(tree, op="sum"), np.full(3, 3.0))
        return
    # the same error on every rank (before: garbage, or a truncation error on one rank only)
    with pytest.raises(ValueError, match=r"ranks disagree on the all-reduced tree.*rank 1 has"):
        tree_allreduce(tree, op="sum")
    with pytest.raises(ValueError, match="ranks disagree"):
        tree_allreduce(tree, op="mean", comm=_world())  # before the int-mean check on rank 1
    # inside jit the leaves are tracers: no host check (documented), matching trees work
    same = jax.jit(lambda t: tree_allreduce(t, op="sum"))(jnp.ones(2))
    np.testing.assert_array_equal(same, np.full(2, 2.0))


@pytest.mark.mpi
def test_tree_check_ignores_memory_addresses_in_the_structure():
    """The check hashed str(treedef), which prints a Partial's function with its address
    (different on every rank): identical trees were refused on every rank."""

    def scale(a, x):
        return a * x

    tree = {"g": jnp.ones(3), "fn": jax.tree_util.Partial(scale, jnp.float32(2.0))}
    out = tree_allreduce(tree, op="sum")
    np.testing.assert_array_equal(out["g"], np.full(3, 2.0))


@pytest.mark.mpi
def test_two_ranks_donated_state_is_a_value_error_on_every_rank():
    dp = data_parallel(_loss, optax.adam(1e-2), mesh=make_mesh(1))
    old = dp.init(_params())
    batch = dp.shard_batch(_batch(8))
    new, _ = dp.step(old, batch)
    with pytest.raises(ValueError, match="rank 0: this state was donated.*; rank 1: this state"):
        dp.step(old, batch)
    new, loss = dp.step(new, batch)
    assert int(new.step) == 2 and np.isfinite(float(loss))
    dp.close()


@pytest.mark.parametrize("n", [True, False, 1.0, 2.5, "1", 0, -1])
def test_make_mesh_refuses_a_count_that_is_not_an_int(n):
    """make_mesh(True) built a one-device mesh; make_mesh(1.0) was a TypeError from a slice."""
    with pytest.raises(ValueError, match=r"make_mesh: n_devices must be an int >= 1 or None"):
        make_mesh(n)
    assert make_mesh(np.int64(1)).devices.size == 1


def test_make_mesh_refuses_more_devices_than_there_are():
    n = jax.local_device_count()
    assert make_mesh(n).devices.size == n
    with pytest.raises(ValueError, match="local devices are available"):
        make_mesh(n + 1)


def test_flat_layout_refuses_a_tree_of_other_leaf_shapes():
    """Params restored from another model: the buffer would hold the wrong entries."""
    from jaxsci.parallel.flat import FlatLayout

    layout = FlatLayout.from_tree({"a": jnp.zeros((2, 3)), "b": jnp.zeros(4)})
    with pytest.raises(ValueError, match="shape"):
        layout.flatten({"a": jnp.zeros((3, 3)), "b": jnp.zeros(4)})
