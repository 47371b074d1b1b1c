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
    leaves = jax.tree.leaves(tree)
    for b in plan:
        # every segment travels in its leaf's transfer dtype: floating leaves in ``transfer``
        # when given, the others (and all leaves without ``transfer``) in their own
        for seg in b.segments:
            own = np.dtype(leaves[seg.leaf].dtype)
            floating = np.issubdtype(own, np.floating) or own == jnp.bfloat16
            want = np.dtype(transfer) if transfer is not None and floating else own
            assert b.dtype == want, (seg, b.dtype, want)
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


def test_plan_bucket_order_is_as_documented():
    """Reverse leaf order within a dtype; one open bucket per dtype, whatever lies between; a
    full bucket goes when the next leaf of its dtype comes, the open ones at the end in the
    order their dtypes were first met (so a float32 bucket with the last leaf goes last)."""
    tree = [jnp.zeros(3), jnp.zeros(100, jnp.int32), jnp.zeros(2), jnp.zeros(5, jnp.int32)]
    plan = allreduce_plan(tree, bucket_bytes=64)  # 16 elements of 4 bytes
    got = [(b.dtype.name, [(s.leaf, s.start, s.stop) for s in b.segments]) for b in plan]
    chunks = [("int32", [(1, a, min(a + 16, 100))]) for a in range(11, 100, 16)]
    assert got == [
        ("int32", [(3, 0, 5), (1, 0, 11)]),  # leaf 3 first, leaf 2 (float32) did not close it
        *chunks,
        ("float32", [(2, 0, 2), (0, 0, 3)]),  # opened before any int32 bucket, sent last
    ]
    flat = allreduce_plan(tree, bucket_bytes=None)
    assert [(b.dtype.name, [s.leaf for s in b.segments]) for b in flat] == [
        ("int32", [3, 1]),
        ("float32", [2, 0]),
    ]


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
    got = np.asarray(out["w"])
    assert out["w"].dtype == jnp.float32
    # what it computes: each rank's value rounded to 16 bits (float16: after dividing by the
    # rank count, so the sum cannot overflow), their sum in float32 rounded to 16 bits once,
    # back to float32 (bfloat16: then divided by the rank count)
    size, t = comm.Get_size(), np.dtype(transfer)
    base = np.asarray(jnp.linspace(-3, 3, 1000, dtype=jnp.float32))
    ranks = [base * np.float32(r + 1) for r in range(size)]
    if t == np.float16:
        total = sum((v / np.float32(size)).astype(t).astype(np.float32) for v in ranks)
        model = total.astype(t).astype(np.float32)
    else:
        total = sum(v.astype(t).astype(np.float32) for v in ranks)
        model = total.astype(t).astype(np.float32) / np.float32(size)
    np.testing.assert_array_equal(got, model)
    # so within one 16-bit unit of the exact mean: |err| <= 2 u |mean| (unit roundoff u):
    # one rounding of the inputs, one of the sum
    want = np.linspace(-3, 3, 1000) * (size + 1) / 2  # mean of 1x .. size x
    u = float(jnp.finfo(transfer).eps) / 2
    assert np.all(np.abs(got - want) <= 2 * u * np.abs(want) + 1e-7)
    assert not np.array_equal(got, want.astype(np.float32))  # really 16-bit


@pytest.mark.mpi
@pytest.mark.parametrize("transfer", [None, jnp.float32, jnp.bfloat16, jnp.float16])
def test_float16_mean_does_not_overflow(transfer):
    """40000 and 30000 in float16 (max 65504): their sum overflows, their mean (35000) does
    not. Sent in float32 or bfloat16 the sum was cast back to float16 (inf) before the
    division; it is now divided first."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    x = {"h": jnp.full((3,), 40000.0 - 10000.0 * (rank % 2), jnp.float16)}
    out = jax.jit(lambda t: tree_allreduce(t, op="mean", comm=comm, transfer_dtype=transfer))(x)
    assert out["h"].dtype == jnp.float16
    values = [40000.0 - 10000.0 * (r % 2) for r in range(size)]
    want = np.float16(np.float32(np.mean(values)))  # the float32 mean, rounded to float16
    got = np.asarray(out["h"])
    if transfer == jnp.bfloat16:  # the sum is rounded to 8 bits of mantissa on the way
        u = float(jnp.finfo(jnp.bfloat16).eps) / 2
        np.testing.assert_allclose(got.astype(np.float32), float(want), rtol=2 * u)
    else:
        np.testing.assert_array_equal(got, np.full(3, want))


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


@pytest.mark.mpi
@pytest.mark.parametrize("op", ["sum", "mean"])
@pytest.mark.parametrize(
    "transfer, leaf", [("bf16", jnp.float32), ("fp16", jnp.float32), (None, jnp.bfloat16)]
)
def test_derivatives_through_16_bit_messages_equal_the_float32_ones(op, transfer, leaf):
    """s28 probe: jax.grad through a 16-bit message (bit-cast to uint16 for the custom MPI op)
    was silently 0 under MPI, and the float32 path's 2x without it."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    x = jnp.arange(1.0, 4.0) * (comm.Get_rank() + 1)

    def loss(x, tr, dt):
        out = tree_allreduce({"a": (x * x).astype(dt)}, op=op, comm=comm, transfer_dtype=tr)
        return jnp.sum(out["a"].astype(jnp.float32))

    want = jax.grad(loss)(x, None, jnp.float32)
    assert np.any(np.asarray(want) != 0)
    got = jax.jit(jax.grad(loss), static_argnums=(1, 2))(x, transfer, leaf)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-2)
    t = jnp.ones_like(x)
    _, want_t = jax.jvp(lambda x: loss(x, None, jnp.float32), (x,), (t,))
    _, got_t = jax.jvp(lambda x: loss(x, transfer, leaf), (x,), (t,))
    np.testing.assert_allclose(float(got_t), float(want_t), rtol=1e-2)


@pytest.mark.mpi
def test_a_16_bit_max_is_not_silently_differentiated():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    loss = lambda x: jnp.sum(
        tree_allreduce({"a": x}, op="max", comm=comm, transfer_dtype="bf16")["a"]
    )  # noqa: E731
    with pytest.raises(NotImplementedError, match="op='max' is not differentiable"):
        jax.grad(loss)(jnp.arange(3.0))


@pytest.mark.multidevice
@pytest.mark.parametrize("spec", [("data",), ()])
def test_a_leaf_on_several_devices_is_a_clear_error_also_without_mpi(monkeypatch, spec):
    """Eagerly on a leaf split or replicated over local devices, mpi4jax failed with "ordered
    effects are not supported for more than 1 device" (and only under MPI: one process
    returned it). Refused in both, saying what to do; one device is still fine."""
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxsci.parallel import make_mesh

    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delitem(__import__("sys").modules, "mpi4py.MPI", raising=False)
    spread = jax.device_put(jnp.arange(8.0), NamedSharding(make_mesh(4), PartitionSpec(*spec)))
    with pytest.raises(ValueError, match=r"tree_allreduce: leaf \['b'\]\[0\] lies on 4 devices"):
        tree_allreduce({"a": jnp.ones(2), "b": [spread]}, op="sum")
    one = jax.device_put({"a": jnp.ones(2), "b": [spread]}, jax.local_devices()[0])  # the way
    out = tree_allreduce(one, op="sum")
    np.testing.assert_array_equal(out["b"][0], np.arange(8.0))
