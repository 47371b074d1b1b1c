"""tree_allreduce: the bucket plan (no MPI needed) and results against an mpi4py reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsci.parallel import allreduce_plan, tree_allreduce


def _tree(rank=0):
    k = jax.random.key(rank)
    return {
        "a": jax.random.normal(k, (10, 7)),  # 70 floats
        "b": [
            jnp.arange(5, dtype=jnp.int32) * (rank + 1),
            jnp.full((3,), rank + 1.0, jnp.bfloat16),
        ],
        "c": jax.random.normal(jax.random.fold_in(k, 1), (100,)),
        "empty": jnp.zeros((0, 3)),
    }


def _covered(plan, tree):
    """Every element of every leaf is sent exactly once."""
    leaves = jax.tree.leaves(tree)
    seen = [np.zeros(x.size, int) for x in leaves]
    for bucket in plan:
        for seg in bucket.segments:
            seen[seg.leaf][seg.start : seg.stop] += 1
    return all((s == 1).all() for s in seen)


@pytest.mark.parametrize("bucket_bytes", [0, 16, 64, 400, 10_000, None])
@pytest.mark.parametrize("transfer", [None, jnp.bfloat16])
def test_plan_covers_every_element_once(bucket_bytes, transfer):
    tree = _tree()
    plan = allreduce_plan(tree, bucket_bytes=bucket_bytes, transfer_dtype=transfer)
    assert _covered(plan, tree)
    for b in plan:
        assert len({np.dtype(b.dtype)}) == 1
        if bucket_bytes:
            assert b.nbytes <= max(bucket_bytes, b.dtype.itemsize)


def test_plan_order_and_modes():
    tree = _tree()
    leaves = jax.tree.leaves(tree)
    # per leaf: one message per non-empty leaf, last leaf first
    per_leaf = allreduce_plan(tree, bucket_bytes=0)
    assert [b.segments[0].leaf for b in per_leaf] == [3, 2, 1, 0]  # leaf 4 ("empty") skipped
    # flat: one message per dtype (float32, bfloat16, int32)
    flat = allreduce_plan(tree, bucket_bytes=None)
    assert sorted(np.dtype(b.dtype).name for b in flat) == ["bfloat16", "float32", "int32"]
    f32 = next(b for b in flat if b.dtype == np.float32)
    assert [s.leaf for s in f32.segments] == [3, 0]  # reverse layer order inside the bucket
    assert f32.size == leaves[0].size + leaves[3].size
    # bfloat16 transfer: the float32 and bfloat16 leaves share one 16-bit message
    half = allreduce_plan(tree, bucket_bytes=None, transfer_dtype=jnp.bfloat16)
    assert sorted(np.dtype(b.dtype).name for b in half) == ["bfloat16", "int32"]
    # a bucket smaller than a leaf cuts it in chunks
    chunks = allreduce_plan({"x": jnp.zeros(10)}, bucket_bytes=16)
    assert [(s.start, s.stop) for b in chunks for s in b.segments] == [(0, 4), (4, 8), (8, 10)]


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="bucket_bytes"):
        allreduce_plan(_tree(), bucket_bytes=-1)
    with pytest.raises(ValueError, match="transfer_dtype"):
        allreduce_plan(_tree(), transfer_dtype=jnp.int8)
    with pytest.raises(ValueError, match="op must be"):
        tree_allreduce(_tree(), op="prod")
    with pytest.raises(ValueError, match="floating"):
        tree_allreduce({"i": jnp.arange(3)}, op="mean")


def test_without_mpi_is_identity(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delitem(__import__("sys").modules, "mpi4py.MPI", raising=False)
    tree = {"a": jnp.arange(4.0)}
    assert tree_allreduce(tree) is tree


@pytest.mark.mpi
@pytest.mark.parametrize("op", ["sum", "mean", "max", "min"])
def test_allreduce_equals_mpi4py_reference(op):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    tree = _tree(comm.Get_rank())
    if op == "mean":
        tree["b"][0] = tree["b"][0].astype(jnp.float32)

    def reference(x):
        a = np.asarray(x, np.float64)
        out = np.empty_like(a)
        mpi_op = {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]
        comm.Allreduce(a, out, op=mpi_op)
        return out / comm.Get_size() if op == "mean" else out

    ref = jax.tree.map(reference, tree)
    for bucket_bytes in [0, 64, None]:
        fn = jax.jit(lambda t, b=bucket_bytes: tree_allreduce(t, op=op, comm=comm, bucket_bytes=b))
        out = jax.block_until_ready(fn(tree))
        for got, want, orig in zip(
            jax.tree.leaves(out), jax.tree.leaves(ref), jax.tree.leaves(tree), strict=True
        ):
            assert got.dtype == orig.dtype and got.shape == orig.shape
            tol = 1e-2 if got.dtype == jnp.bfloat16 else 1e-6
            np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol)


@pytest.mark.mpi
@pytest.mark.parametrize("transfer", [jnp.bfloat16, jnp.float16])
def test_16bit_transfer_keeps_dtypes_and_rounds_once(transfer):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    x = {"w": jnp.linspace(-3, 3, 1000, dtype=jnp.float32) * (comm.Get_rank() + 1)}
    out = jax.jit(lambda t: tree_allreduce(t, op="mean", comm=comm, transfer_dtype=transfer))(x)
    want = np.linspace(-3, 3, 1000) * 1.5  # mean of 1x and 2x
    assert out["w"].dtype == jnp.float32
    eps = float(jnp.finfo(transfer).eps)
    np.testing.assert_allclose(np.asarray(out["w"]), want, atol=4.5 * 4 * eps)
    assert not np.array_equal(np.asarray(out["w"]), want.astype(np.float32))  # really 16-bit


@pytest.mark.mpi
def test_default_comm_results_identical_on_all_ranks():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    tree = _tree(comm.Get_rank())
    # default communicator (mpi4jax's clone of COMM_WORLD), mixed with host calls on COMM_WORLD
    out = jax.block_until_ready(jax.jit(lambda t: tree_allreduce(t, op="sum"))(tree))
    blobs = comm.allgather([np.asarray(x).tobytes() for x in jax.tree.leaves(out)])
    assert blobs[0] == blobs[1]
    total = comm.allreduce(float(np.asarray(tree["c"], np.float64).sum()))
    np.testing.assert_allclose(float(out["c"].sum()), total, rtol=1e-5)


@pytest.mark.mpi
def test_bool_leaves_reduce_as_any_and_all():
    """A per-rank flag ("finite here") all-reduced: max is any rank, min every rank (MPI has
    no max/min for its bool type: this aborted the job); sum is refused up front."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    tree = {"first": jnp.array(rank == 0), "all": jnp.ones(3, bool), "x": 1.0 + rank}
    fn = jax.jit(lambda t, op: tree_allreduce(t, op=op, comm=comm), static_argnums=1)
    anyone, everyone = fn(tree, "max"), fn(tree, "min")
    assert anyone["first"].dtype == jnp.bool_ and bool(anyone["first"])
    assert not bool(everyone["first"])
    assert bool(jnp.all(everyone["all"])) and everyone["all"].dtype == jnp.bool_
    assert float(anyone["x"]) == comm.Get_size() and float(everyone["x"]) == 1.0
    with pytest.raises(ValueError, match="bool leaves"):
        tree_allreduce(tree, op="sum", comm=comm)
