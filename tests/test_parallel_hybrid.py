"""Hybrid data parallelism: 2 MPI processes x 2 simulated devices each, in a subprocess.

``make test`` runs the mpi tests with one device per process, so this test launches its own
``mpirun -n 2`` with two CPU devices per process and compares the result with single-process,
single-device training on the concatenated batch.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

COMMON = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax

    def init():
        k1, k2 = jax.random.split(jax.random.key(0))
        return [{"w": jax.random.normal(k1, (5, 8)) * 0.5, "b": jnp.zeros(8)},
                {"w": jax.random.normal(k2, (8, 1)) * 0.5, "b": jnp.zeros(1)}]

    def loss_fn(params, batch):
        x, y = batch
        h = jnp.tanh(x @ params[0]["w"] + params[0]["b"])
        return jnp.mean((h @ params[1]["w"] + params[1]["b"] - y) ** 2)

    X = jax.random.normal(jax.random.key(1), (6, 16, 5))
    Y = jnp.sin(X.sum(-1, keepdims=True))
    TX = optax.sgd(0.1, momentum=0.9)  # sees the gradient's scale (Adam would not)
    """
)

HYBRID = COMMON + textwrap.dedent(
    """
    import sys
    from jaxsci.parallel import bootstrap, data_parallel, make_mesh

    info = bootstrap()
    assert info.size == 2 and info.local_device_count == 2, info
    dp = data_parallel(loss_fn, TX, info=info, mesh=make_mesh(2))
    state = dp.init(init())
    losses = []
    for s in range(6):
        state, loss = dp.step(state, dp.shard_batch((X[s], Y[s])))
        losses.append(float(loss))
    flat = np.concatenate([np.ravel(a) for a in jax.tree.leaves(dp.params(state))])
    everyone = info.comm.allgather(flat)
    if info.rank == 0:
        np.savez(sys.argv[1], params=flat, other=everyone[1], losses=np.array(losses))
    """
)


BAD_BATCHES = COMMON + textwrap.dedent(
    """
    import json, sys
    from jaxsci.parallel import bootstrap, data_parallel, make_mesh

    info = bootstrap()
    assert info.size == 2 and info.local_device_count == 2, info
    x, y = X[0][8 * info.rank : 8 * info.rank + 8], Y[0][8 * info.rank : 8 * info.rank + 8]
    one = info.rank == 1
    cases = {
        "indivisible": (x[:3], y[:3]) if one else (x, y),  # 3 over rank 1's 2 devices
        "ragged": (x, y[:6]) if one else (x, y),  # leaves of different lengths on rank 1
        "empty": (x[:0], y[:0]),  # no sample anywhere
    }
    report = {}
    for n_dev in (2, 1):  # hybrid (3 programs), and one device per rank (one program)
        dp = data_parallel(loss_fn, TX, info=info, mesh=make_mesh(n_dev))
        state = dp.init(init())
        errors = {}
        for name, batch in cases.items():
            try:
                state, _ = dp.step(state, batch)
                errors[name] = None
            except ValueError as err:
                errors[name] = str(err)
        state, loss = dp.step(state, (x, y))  # still in step, the state intact
        flat = np.concatenate([np.ravel(a) for a in jax.tree.leaves(dp.params(state))])
        report[n_dev] = {"errors": errors, "loss": float(loss), "params": flat.tolist()}
        def rank1_fails(p, b):  # a loss that fails to trace on rank 1 only
            if one:
                raise TypeError("rank 1's loss does not trace")
            return loss_fn(p, b)
        bad = data_parallel(rank1_fails, TX, info=info, mesh=make_mesh(n_dev))
        try:
            bad.step(bad.init(init()), (x, y))
            report[n_dev]["loss_fn"] = None
        except ValueError as err:
            report[n_dev]["loss_fn"] = str(err)
    everyone = info.comm.allgather(report)
    if info.rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(everyone, f)
    """
)


SPREAD_ALLREDUCE = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from jaxsci.parallel import bootstrap, make_mesh, tree_allreduce

    info = bootstrap()
    assert info.size == 2 and info.local_device_count == 2, info
    mesh = make_mesh(2)
    x = jnp.arange(8.0) + 10 * info.rank
    split = jax.device_put(x, NamedSharding(mesh, P("data")))
    cases = {
        "split": {"x": split},
        "replicated": {"x": jax.device_put(x, NamedSharding(mesh, P()))},
        "rank1_only": {"x": split if info.rank == 1 else x},  # rank 0 alone would hang
    }
    report = {}
    for name, tree in cases.items():
        try:
            tree_allreduce(tree, op="sum")
            report[name] = None
        except ValueError as err:
            report[name] = str(err)
    one = jax.device_put({"x": split}, jax.local_devices()[0])  # the way the message gives
    out = jax.device_put(tree_allreduce(one, op="sum"), NamedSharding(mesh, P("data")))
    report["sum"] = np.asarray(out["x"]).tolist()
    everyone = info.comm.allgather(report)
    if info.rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(everyone, f)
    """
)


def _mpirun(tmp_path: Path, source: str, out: Path, devices: int, timeout: float) -> None:
    """Run ``source`` under ``mpirun -n 2`` with ``devices`` CPU devices per process; a run
    past ``timeout`` (a hang) fails the test and its whole process group is killed."""
    mpirun = Path(sys.executable).with_name("mpirun")
    if not mpirun.exists():
        pytest.skip("no mpirun beside the Python interpreter")
    pytest.importorskip("mpi4jax")
    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "script.py"
    script.write_text(source)
    flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    env = dict(os.environ, XLA_FLAGS=flags.strip())  # the last device count given wins
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(root)
    cmd = [str(mpirun), "-n", "2", sys.executable, str(script), str(out)]
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: a hang is killed with every rank
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"mpirun -n 2 hung for {timeout} s:\n{stdout[-2000:]}{stderr[-4000:]}")
    assert proc.returncode == 0, stdout[-2000:] + stderr[-4000:]


def _reference():
    namespace: dict = {}
    exec(COMMON, namespace)  # the same model and data, trained by plain optax on one device
    jax, optax = namespace["jax"], namespace["optax"]
    params, tx = namespace["init"](), namespace["TX"]
    opt = tx.init(params)
    losses = []
    for s in range(6):
        batch = (namespace["X"][s], namespace["Y"][s])
        loss, g = jax.value_and_grad(namespace["loss_fn"])(params, batch)
        u, opt = tx.update(g, opt, params)
        params = optax.apply_updates(params, u)
        losses.append(float(loss))
    return np.concatenate([np.ravel(a) for a in jax.tree.leaves(params)]), np.array(losses)


@pytest.mark.slow
def test_two_processes_two_devices_equal_single_process(tmp_path):
    out = tmp_path / "out.npz"
    _mpirun(tmp_path, HYBRID, out, devices=2, timeout=300)
    got = np.load(out)
    ref_params, ref_losses = _reference()
    np.testing.assert_allclose(got["params"], ref_params, atol=1e-5)
    np.testing.assert_array_equal(got["params"], got["other"])  # identical on both ranks
    np.testing.assert_allclose(got["losses"], ref_losses, rtol=1e-5, atol=1e-6)
    assert np.abs(got["params"] - _reference_init()).max() > 1e-3  # it really trained


def _reference_init():
    namespace: dict = {}
    exec(COMMON, namespace)
    jax = namespace["jax"]
    return np.concatenate([np.ravel(a) for a in jax.tree.leaves(namespace["init"]())])


@pytest.mark.slow
def test_bad_local_batch_on_one_rank_raises_on_every_rank(tmp_path):
    """A local batch that cannot be stepped on rank 1 only (not dividing over its devices,
    ragged leaves) raised there alone and left rank 0 in the all-reduce forever; an empty
    batch on every rank gave NaN parameters. Now every rank raises the same ValueError before
    stepping, and the next good step runs on every rank from the untouched state."""
    out = tmp_path / "out.json"
    _mpirun(tmp_path, BAD_BATCHES, out, devices=2, timeout=300)
    rank0, rank1 = json.loads(out.read_text())
    _, ref_losses = _reference()
    for n_dev in ("2", "1"):
        errors = rank0[n_dev]["errors"]
        assert errors == rank1[n_dev]["errors"], n_dev  # the same message on every rank
        if n_dev == "2":
            want = "rank 1: this process's batch of 3 does not divide over its 2 devices"
            assert want in errors["indivisible"]
        else:  # 3 samples divide over 1 device: a legal uneven split, weighted
            assert errors["indivisible"] is None
        assert "rank 1: batch leaves disagree on the batch size: [6, 8]" in errors["ragged"]
        assert "the batch is empty on every rank" in errors["empty"]
        # a loss_fn that fails to trace on rank 1 alone: the same error everywhere, no hang
        assert rank0[n_dev]["loss_fn"] == rank1[n_dev]["loss_fn"]
        want = "rank 1: loss_fn fails on this batch: TypeError"
        assert want in rank0[n_dev]["loss_fn"], rank0[n_dev]["loss_fn"]
        assert rank0[n_dev]["params"] == rank1[n_dev]["params"]
        assert np.all(np.isfinite(rank0[n_dev]["params"]))
    # with 2 devices no step ran before the good one: it is the reference's first step
    np.testing.assert_allclose(rank0["2"]["loss"], ref_losses[0], rtol=1e-5)


@pytest.mark.slow
def test_eager_allreduce_of_a_multi_device_leaf_raises_on_every_rank(tmp_path):
    """tree_allreduce on a leaf split or replicated over a rank's 2 devices gave mpi4jax's
    "ordered effects are not supported for more than 1 device"; with the leaf on several
    devices on rank 1 only, rank 0 was left in the all-reduce. Now every rank raises the
    same ValueError saying what to do, and the reduction on one device works."""
    out = tmp_path / "out.json"
    _mpirun(tmp_path, SPREAD_ALLREDUCE, out, devices=2, timeout=180)
    rank0, rank1 = json.loads(out.read_text())
    for name in ("split", "replicated"):
        for report in (rank0, rank1):
            assert report[name].startswith("tree_allreduce: leaf ['x'] lies on 2 devices")
            assert "jax.device_put(tree, jax.local_devices()[0])" in report[name]
    assert rank0["rank1_only"].startswith("on rank 1: tree_allreduce: leaf ['x'] lies on 2")
    assert rank1["rank1_only"].startswith("tree_allreduce: leaf ['x'] lies on 2 devices")
    want = (2 * np.arange(8.0) + 10).tolist()
    assert rank0["sum"] == rank1["sum"] == want
