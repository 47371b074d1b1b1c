"""Hybrid data parallelism: 2 MPI processes x 2 simulated devices each, in a subprocess.

``make test`` runs the mpi tests with one device per process, so this test launches its own
``mpirun -n 2`` with two CPU devices per process and compares the result with single-process,
single-device training on the concatenated batch.
"""

import os
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
    mpirun = Path(sys.executable).with_name("mpirun")
    if not mpirun.exists():
        pytest.skip("no mpirun beside the Python interpreter")
    pytest.importorskip("mpi4jax")
    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "hybrid.py"
    script.write_text(HYBRID)
    out = tmp_path / "out.npz"
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    env = dict(os.environ, XLA_FLAGS=flags.strip())  # the last device count given wins
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(root)
    cmd = [str(mpirun), "-n", "2", sys.executable, str(script), str(out)]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
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
