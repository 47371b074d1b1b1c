"""Process bootstrap: rank/size discovery, per-rank keys and data shards."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsci.parallel import ProcessInfo, bootstrap, rank_key, rank_shard, rank_slice


def _info(rank, size):
    return ProcessInfo(rank=rank, size=size, local_device_count=1)


def test_single_process_without_launcher(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("SLURM_STEP_ID", raising=False)
    info = bootstrap()
    assert (info.rank, info.size) == (0, 1)
    assert info.local_device_count == jax.local_device_count()
    assert info.is_root
    info.barrier()  # no-op, must not hang


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_rank_slices_cover_range_in_order(size):
    n = 12
    got = np.concatenate([np.arange(n)[rank_slice(n, _info(r, size))] for r in range(size)])
    np.testing.assert_array_equal(got, np.arange(n))


def test_unequal_slices_differ_by_at_most_one():
    n, size = 10, 4
    lens = [len(range(n)[rank_slice(n, _info(r, size), equal=False)]) for r in range(size)]
    assert lens == [3, 3, 2, 2]


def test_non_dividing_shard_raises():
    with pytest.raises(ValueError, match="do not divide over 4 ranks"):
        rank_slice(10, _info(0, 4))


def test_rank_shard_pytree_and_mismatch():
    data = {"x": np.arange(8).reshape(4, 2), "y": np.arange(4)}
    shard = rank_shard(data, _info(1, 2))
    np.testing.assert_array_equal(shard["y"], [2, 3])
    np.testing.assert_array_equal(shard["x"], [[4, 5], [6, 7]])
    assert rank_shard(list("abcd"), _info(0, 2)) == ["a", "b"]
    X, y = rank_shard((data["x"], data["y"]), _info(1, 2))  # a tuple is a pytree: (X, y)
    np.testing.assert_array_equal(X, [[4, 5], [6, 7]])
    np.testing.assert_array_equal(y, [2, 3])
    with pytest.raises(ValueError, match="leading length"):
        rank_shard({"x": np.zeros(4), "y": np.zeros(3)}, _info(0, 1))


def test_rank_keys_distinct_and_reproducible():
    k0, k1 = rank_key(7, _info(0, 2)), rank_key(7, _info(1, 2))
    assert not np.array_equal(jax.random.key_data(k0), jax.random.key_data(k1))
    np.testing.assert_array_equal(
        jax.random.key_data(k0), jax.random.key_data(rank_key(jax.random.key(7), _info(0, 2)))
    )
    np.testing.assert_array_equal(  # a NumPy integer seed is a seed
        jax.random.key_data(k0), jax.random.key_data(rank_key(np.int64(7), _info(0, 2)))
    )


@pytest.mark.mpi
def test_bootstrap_under_mpirun():
    from mpi4py import MPI

    info = bootstrap()
    assert info.size == MPI.COMM_WORLD.Get_size() == 2
    assert info.rank == MPI.COMM_WORLD.Get_rank()
    ranks = MPI.COMM_WORLD.allgather(info.rank)
    assert ranks == [0, 1]
    # shards of the same data are disjoint and cover it
    blocks = MPI.COMM_WORLD.allgather(list(range(10))[rank_slice(10, info)])
    assert sum(blocks, []) == list(range(10))
    info.barrier()


def _fake_mpi(monkeypatch, size):
    """mpi4py whose COMM_WORLD has ``size`` processes (no MPI started in this process)."""
    import sys
    import types

    class World:
        def Get_size(self):
            return size

        def Get_rank(self):
            return 0

    fake = types.ModuleType("mpi4py")
    fake.MPI = types.SimpleNamespace(COMM_WORLD=World())
    monkeypatch.setitem(sys.modules, "mpi4py", fake)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PMI_SIZE": "2"}, "PMI_SIZE=2"),
        ({"OMPI_COMM_WORLD_SIZE": "4"}, "OMPI_COMM_WORLD_SIZE=4"),
        ({"SLURM_NTASKS": "3", "SLURM_STEP_ID": "0"}, "SLURM_NTASKS=3, SLURM_STEP_ID=0"),
    ],
)
def test_a_stale_launcher_variable_is_named(monkeypatch, env, named):
    """PMI_SIZE=2 python script.py (a variable left from an enclosing launcher's shell) was
    blamed on "mpirun and mpi4py come from different MPI libraries"."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("SLURM_STEP_ID", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    _fake_mpi(monkeypatch, 1)
    with pytest.raises(RuntimeError) as err:
        bootstrap()
    msg = str(err.value)
    assert f"the expected size comes from {named} in the environment" in msg
    assert "left over from an enclosing launcher's shell" in msg
    assert "unset " + " ".join(v.split("=")[0] for v in named.split(", ")) in msg
    assert "different MPI libraries" in msg  # the other possible cause, still said


def test_rank_key_takes_the_seed_forms_batching_takes():
    """s28: a 0-d integer array (a traced seed, jnp.int32(7)) was read as raw key data and
    failed; an out-of-range seed or a float is now a named ValueError."""
    want = jax.random.key_data(rank_key(7, _info(1, 2)))
    for seed in (jnp.int32(7), np.array(7), np.uint8(7)):
        np.testing.assert_array_equal(jax.random.key_data(rank_key(seed, _info(1, 2))), want)
    traced = jax.jit(lambda s: jax.random.key_data(rank_key(s, _info(1, 2))))(jnp.int32(7))
    np.testing.assert_array_equal(traced, want)
    for bad in (7.0, -1, 2**40, True, None):
        with pytest.raises(ValueError, match="rank_key"):
            rank_key(bad, _info(0, 2))
