"""mpi4jax all-reduce of a whole pytree, with leaves grouped into buckets.

mpi4jax moves one array per call and each MPI call costs a fixed latency (~5 us here plus the
XLA custom-call overhead), so a 200-leaf gradient sent leaf by leaf is latency-bound. The plan
below packs leaves into a few large messages (Horovod's tensor fusion, PyTorch DDP's buckets):

* leaves are visited in **reverse** flatten order (backprop produces the last layer's gradient
  first); each transfer dtype has one open bucket of at most ``bucket_bytes``, which every
  leaf of that dtype joins in turn, whatever leaves of other dtypes lie between them; a leaf
  larger than the room left is cut: its first part fills the bucket, the rest opens the next;
* a full bucket is emitted when the next leaf of its dtype arrives, and the buckets still open
  at the end, one per dtype, in the order their dtypes were first met. Within one dtype the
  messages therefore go last leaves first; across dtypes they need not (a leaf's partly filled
  bucket of one dtype can be sent after the full buckets of another dtype holding earlier
  leaves); inside a bucket the segments also run last leaf first;
* ``bucket_bytes=None`` is the flat-buffer mode (one message per dtype, chunked only at MPI's
  2**31 - 1 element limit), ``bucket_bytes=0`` the per-leaf baseline (one message per leaf,
  last leaf first);
* the plan depends only on the tree structure, shapes and dtypes, so it is fixed at trace time
  and every rank runs the same sequence of collectives without talking to the others first.

Floating leaves can travel as bfloat16, float16 or float32 (``transfer_dtype``) and come back
in their own dtype. MPI has no 16-bit float type, so those messages are bit-cast to uint16 and
reduced by a user-defined MPI operation (computed in float32 and rounded once per pairwise
step). A mean never overflows where the values do not: float16 messages carry each rank's
value divided by the number of ranks, and the others are divided after the sum, in the wider of
the transfer and leaf dtypes, before being cast back to the leaf dtype.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Bucket",
    "Segment",
    "allreduce_plan",
    "check_same_tree",
    "tree_allreduce",
    "tree_signature",
    "MAX_MESSAGE_ELEMENTS",
]

MAX_MESSAGE_ELEMENTS = 2**31 - 1  # MPI counts are C ints
Op = Literal["mean", "sum", "max", "min"]
_16BIT = (np.dtype(jnp.bfloat16), np.dtype(np.float16))


@dataclass(frozen=True)
class Segment:
    """Elements ``[start, stop)`` of the raveled leaf number ``leaf`` (flatten order)."""

    leaf: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Bucket:
    """One MPI message: the concatenation of ``segments`` cast to ``dtype``."""

    dtype: np.dtype
    segments: tuple[Segment, ...]

    @property
    def size(self) -> int:
        """Number of elements in the message."""
        return sum(s.size for s in self.segments)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


def check_transfer(bucket_bytes: int | None, transfer_dtype: Any) -> np.dtype | None:
    """Validate the message options of :func:`tree_allreduce`; returns the transfer dtype.

    ``transfer_dtype`` is a dtype or one of :func:`jaxsci.parallel.get_policy`'s names
    (``"bf16"``, ``"fp16"``, ``"f32"``, ...). Raises ``ValueError`` for ``bucket_bytes < 0``
    or a ``transfer_dtype`` other than bfloat16, float16, float32 or ``None``.
    """
    if bucket_bytes is not None and bucket_bytes < 0:
        raise ValueError(f"bucket_bytes must be >= 0 or None, got {bucket_bytes}")
    if isinstance(transfer_dtype, str):
        from jaxsci.parallel.precision import _dtype  # the aliases get_policy accepts

        transfer: np.dtype | None = _dtype(transfer_dtype)
    else:
        transfer = None if transfer_dtype is None else np.dtype(transfer_dtype)
    if transfer is not None and transfer not in _16BIT + (np.dtype(np.float32),):
        raise ValueError(f"transfer_dtype must be bfloat16, float16 or float32, got {transfer}")
    return transfer


def _dtype_name(leaf: Any) -> str:
    dtype = getattr(leaf, "dtype", None)
    return np.dtype(dtype if dtype is not None else np.result_type(leaf)).name


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def tree_signature(tree: Any) -> tuple[str, list[str]]:
    """Hash of a pytree's structure, shapes and dtypes, and the per-leaf descriptions hashed.

    Memory addresses in the structure's text (a function or object in a node's static data,
    e.g. ``jax.tree_util.Partial``: ``<function f at 0x7f...>``) are left out: they differ
    between processes holding the same tree."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    desc = [
        f"{jax.tree_util.keystr(path)}:{_dtype_name(leaf)}{list(np.shape(leaf))}"
        for path, leaf in leaves
    ]
    structure = _ADDRESS.sub("", str(jax.tree.structure(tree)))
    text = structure + "|" + ";".join(desc)
    return hashlib.sha256(text.encode()).hexdigest(), desc


def check_same_tree(tree: Any, comm: Any, what: str = "tree") -> None:
    """Raise the same ValueError on every rank of ``comm`` unless ``tree`` has the same
    structure, shapes and dtypes on every rank.

    Collective (host-side mpi4py): one ``allgather`` of a 64-character hash; only on a
    mismatch a second one of the per-leaf descriptions, to name the first difference.
    """
    digest, desc = tree_signature(tree)
    digests = comm.allgather(digest)
    if len(set(digests)) == 1:
        return
    everyone = comm.allgather(desc)  # every rank saw the mismatch: every rank takes part
    other = next(r for r, d in enumerate(digests) if d != digests[0])
    ref, bad = everyone[0], everyone[other]
    diff = next(
        (
            f"leaf {i}: rank 0 has {a}, rank {other} has {b}"
            for i, (a, b) in enumerate(zip(ref, bad, strict=False))
            if a != b
        ),
        f"rank 0 has {len(ref)} leaves, rank {other} has {len(bad)}"
        if len(ref) != len(bad)
        else f"the tree structures of rank 0 and rank {other} differ",
    )
    groups: dict[str, list[int]] = {}
    for r, d in enumerate(digests):
        groups.setdefault(d, []).append(r)
    raise ValueError(
        f"ranks disagree on the {what} (structure, shapes or dtypes): rank groups "
        f"{sorted(groups.values())}; first difference: {diff}"
    )


def _transfer_dtype(dtype: np.dtype, transfer: np.dtype | None) -> np.dtype:
    if transfer is not None and jnp.issubdtype(dtype, jnp.floating):
        return transfer
    return dtype


def allreduce_plan(
    tree: Any,
    *,
    bucket_bytes: int | None = 4 * 2**20,
    transfer_dtype: Any = None,
) -> tuple[Bucket, ...]:
    """The message layout :func:`tree_allreduce` uses for a tree of this structure.

    Args:
      tree: pytree of arrays or ``jax.ShapeDtypeStruct`` (only shapes and dtypes are read).
      bucket_bytes: capacity of one message in bytes; ``None`` one message per dtype (flat
        mode); ``0`` one message per leaf.
      transfer_dtype: ``None`` (keep dtypes), ``jnp.bfloat16``, ``jnp.float16`` or
        ``jnp.float32`` for the floating leaves.

    Returns:
      Buckets in the order they are sent: see the module docstring (last leaves first within
      a dtype; a full bucket goes when the next leaf of its dtype arrives, the buckets still
      open at the end go in the order their dtypes were first met).
    """
    transfer = check_transfer(bucket_bytes, transfer_dtype)
    leaves = jax.tree.leaves(tree)
    buckets: list[Bucket] = []
    open_segments: dict[np.dtype, list[Segment]] = {}
    open_size: dict[np.dtype, int] = {}

    def close(dt: np.dtype) -> None:
        if open_segments.get(dt):
            buckets.append(Bucket(dt, tuple(open_segments[dt])))
        open_segments[dt], open_size[dt] = [], 0

    for i in reversed(range(len(leaves))):
        leaf = leaves[i]
        dt = _transfer_dtype(np.dtype(leaf.dtype), transfer)
        n = math.prod(leaf.shape)
        if n == 0:
            continue
        if bucket_bytes == 0:
            cap = MAX_MESSAGE_ELEMENTS
        elif bucket_bytes is None:
            cap = MAX_MESSAGE_ELEMENTS
        else:
            cap = max(1, min(bucket_bytes // dt.itemsize, MAX_MESSAGE_ELEMENTS))
        if bucket_bytes == 0:
            for start in range(0, n, cap):
                buckets.append(Bucket(dt, (Segment(i, start, min(n, start + cap)),)))
            continue
        open_segments.setdefault(dt, [])
        open_size.setdefault(dt, 0)
        start = 0
        while start < n:
            room = cap - open_size[dt]
            if room == 0:
                close(dt)
                room = cap
            stop = min(n, start + room)
            open_segments[dt].append(Segment(i, start, stop))
            open_size[dt] += stop - start
            start = stop
    for dt in list(open_segments):
        close(dt)
    return tuple(buckets)


def _resolve_comm(comm: Any | None) -> tuple[int, Any | None, bool]:
    """(size, communicator for mpi4jax, whether MPI is in use).

    Without an explicit ``comm`` under MPI, mpi4jax's own clone of ``COMM_WORLD`` is used, so
    device collectives never interleave with the caller's host-side calls on ``COMM_WORLD``.
    """
    if comm is not None:
        return int(comm.Get_size()), comm, True
    from jaxsci.parallel.bootstrap import bootstrap

    world = bootstrap().comm
    if world is None:
        return 1, None, False
    return int(world.Get_size()), None, True


@functools.cache
def _mpi_op(dtype_name: str, op: str) -> Any:
    """MPI operation for a 16-bit float bit-cast to uint16 (computed in float32)."""
    from mpi4py import MPI

    np_dtype = np.dtype(jnp.bfloat16) if dtype_name == "bfloat16" else np.dtype(np.float16)
    combine = {"sum": np.add, "max": np.maximum, "min": np.minimum}[op]

    def reduce(inbuf: Any, inoutbuf: Any, datatype: Any) -> None:
        a = np.frombuffer(inbuf, dtype=np_dtype)
        b = np.frombuffer(inoutbuf, dtype=np_dtype)
        b[...] = combine(a.astype(np.float32), b.astype(np.float32)).astype(np_dtype)

    return MPI.Op.Create(reduce, commute=True)


def _allreduce_array(x: jax.Array, op: str, comm: Any) -> jax.Array:
    import mpi4jax
    from mpi4py import MPI

    if np.dtype(x.dtype) in _16BIT:
        return _allreduce_16bit(x, op, comm)
    mpi_op = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]
    return mpi4jax.allreduce(x, op=mpi_op, comm=comm)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _allreduce_16bit(x: jax.Array, op: str, comm: Any) -> jax.Array:
    """A 16-bit float message, bit-cast to uint16 for a custom MPI op (summed in float32)."""
    import mpi4jax

    bits = jax.lax.bitcast_convert_type(x, jnp.uint16)
    out = mpi4jax.allreduce(bits, op=_mpi_op(np.dtype(x.dtype).name, op), comm=comm)
    return jax.lax.bitcast_convert_type(out, x.dtype)


@_allreduce_16bit.defjvp
def _allreduce_16bit_jvp(op: str, comm: Any, primals: tuple, tangents: tuple) -> tuple:
    """The derivative of the 16-bit path is that of the float32 one (through the bit-cast
    it was silently 0): the sum is linear, so the tangent is summed too, in float32
    through mpi4jax, whose sum has the transpose that reverse mode needs."""
    import mpi4jax
    from mpi4py import MPI

    (x,), (t,) = primals, tangents
    if op != "sum":
        raise NotImplementedError(
            f"tree_allreduce: op={op!r} is not differentiable; only 'sum' and 'mean' are"
        )
    dt = mpi4jax.allreduce(t.astype(jnp.float32), op=MPI.SUM, comm=comm)
    return _allreduce_16bit(x, op, comm), dt.astype(x.dtype)


def _spread_over_devices(tree: Any) -> str | None:
    """Why ``tree`` cannot be all-reduced eagerly (a concrete leaf on more than one device),
    or None. mpi4jax's collectives are ordered effects, which JAX runs only in single-device
    programs: such a leaf gave "ordered effects are not supported for more than 1 device"."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not isinstance(leaf, jax.Array) or isinstance(leaf, jax.core.Tracer):
            continue
        n = len(leaf.sharding.device_set)
        if n > 1:
            name = jax.tree_util.keystr(path) or "(the tree)"
            return (
                f"tree_allreduce: leaf {name} lies on {n} devices ({leaf.sharding}); mpi4jax "
                "runs only in single-device programs (eager or under jit), so it cannot be "
                "reduced there. Reduce a copy on one device and place the result back: "
                "one = jax.device_put(tree, jax.local_devices()[0]) (for a replicated leaf, "
                "x.addressable_data(0) is that copy), out = jax.device_put(tree_allreduce(one), "
                "sharding); DataParallel's step does this for its gradients. Refused without "
                "MPI too, so that what runs in one process also runs under mpirun"
            )
    return None


def tree_allreduce(
    tree: Any,
    *,
    op: Op = "mean",
    comm: Any | None = None,
    bucket_bytes: int | None = 4 * 2**20,
    transfer_dtype: Any = None,
    check: bool = True,
) -> Any:
    """All-reduce every leaf of ``tree`` over the ranks of ``comm``; usable inside ``jit``.

    Collective: every rank of ``comm`` must call it, with the same options.

    Args:
      tree: pytree of arrays, the same structure, shapes and dtypes on every rank. Inside
        ``jit`` this is not checked: a tree that differs between ranks gives **wrong values
        without an error** (leaves paired across ranks by position), different results on
        different ranks, an MPI truncation error or a hang.
      op: ``"mean"``, ``"sum"``, ``"max"`` or ``"min"`` over ranks.
      comm: mpi4py communicator. Default: under MPI (see :func:`bootstrap`) mpi4jax's clone of
        ``COMM_WORLD``; without MPI the tree comes back as is (a reduction over one process).
        A communicator of size 1 still runs the MPI calls.
      bucket_bytes: message capacity; ``None`` flat mode (one message per dtype); ``0`` one
        message per leaf. See :func:`allreduce_plan`.
      transfer_dtype: ``None`` to send leaves in their own dtype, or ``jnp.bfloat16``,
        ``jnp.float16`` or ``jnp.float32`` for the floating leaves (results come back in the
        leaf dtype; a mean is divided before that cast, so it cannot overflow there). Also
        the names :func:`jaxsci.parallel.get_policy` accepts (``"bf16"``, ``"fp16"``, ...).
      check: outside ``jit`` (concrete leaves) first compare the tree's signature (structure,
        shapes, dtypes) across ranks: one small host ``allgather`` of a hash (tens of
        microseconds; it carries the multi-device verdict too, see Raises), so a
        mismatch is the same ValueError on every rank, naming the first differing rank,
        instead of silent garbage. Ignored inside ``jit``, where the
        leaves are tracers (check once outside, or call :func:`check_same_tree`). The check
        is a host collective on ``comm``, so a checked call waits for its own reduction
        before it returns; if other device collectives on ``comm`` may still be running (a
        jitted step dispatched just before), block on their results first or pass
        ``check=False``: MPI matches collectives on a communicator by call order, which
        asynchronous dispatch does not fix.

    Returns:
      A tree like ``tree`` holding the reduction; identical on every rank.

    Raises:
      ValueError: besides bad options or trees that differ between ranks, a concrete leaf
        placed on more than one device (split or replicated over a mesh): mpi4jax's
        collectives run only in single-device programs, eager or jitted (inside ``jit``
        such a program fails to compile with JAX's "ordered effects are not supported for
        more than 1 device"). Move the tree to one device, reduce, and place the result
        back (``jax.device_put(tree, jax.local_devices()[0])``, then
        ``jax.device_put(out, sharding)``), as :class:`DataParallel`'s hybrid step does.
        This is refused without MPI too (where the reduction is the identity), so a script
        that runs in one process does not fail only under ``mpirun``; under MPI with
        ``check`` the verdict is shared, so every rank raises.
    """
    if op not in ("mean", "sum", "max", "min"):
        raise ValueError(f"op must be 'mean', 'sum', 'max' or 'min', got {op!r}")
    transfer = check_transfer(bucket_bytes, transfer_dtype)
    spread = _spread_over_devices(tree)
    leaves, treedef = jax.tree.flatten(tree)
    leaves = [jnp.asarray(leaf) for leaf in leaves]  # Python scalars too
    size, comm, active = _resolve_comm(comm)
    checked = active and check and size > 1
    checked = checked and not any(isinstance(x, jax.core.Tracer) for x in leaves)
    if checked:
        # first, so that the dtype checks below fail on every rank or on none
        from jaxsci.parallel.bootstrap import bootstrap

        host_comm = comm if comm is not None else bootstrap().comm
        signed = jax.tree.unflatten(treedef, leaves)
        # one host collective for both checks: the signature and the multi-device verdict
        gathered = host_comm.allgather((tree_signature(signed)[0], spread))
        bad = next(((r, v) for r, (_, v) in enumerate(gathered) if v), None)
        if bad is not None:  # a multi-device leaf on any rank: all raise
            raise ValueError(spread or f"on rank {bad[0]}: {bad[1]}")
        if len({digest for digest, _ in gathered}) > 1:  # every rank sees it: all describe it
            check_same_tree(signed, host_comm, "all-reduced tree")
    elif spread:
        raise ValueError(spread)
    if op == "mean":
        for leaf in leaves:
            if not jnp.issubdtype(leaf.dtype, jnp.inexact):
                raise ValueError(f"op='mean' needs floating leaves, got {leaf.dtype}")
    dtypes = [leaf.dtype for leaf in leaves]
    if any(dt == jnp.bool_ for dt in dtypes):  # MPI defines no max/min on its bool type
        if op == "sum":
            raise ValueError("op='sum' on bool leaves: use 'max' (any rank) or 'min' (every rank)")
        leaves = [leaf.astype(jnp.uint8) if leaf.dtype == jnp.bool_ else leaf for leaf in leaves]
    if not active:
        return tree
    sent = jax.tree.unflatten(treedef, leaves)
    plan = allreduce_plan(sent, bucket_bytes=bucket_bytes, transfer_dtype=transfer)
    mpi_op = "sum" if op == "mean" else op
    # a float16 sum can overflow where the mean would not: divide before sending instead of after
    prescaled = [_transfer_dtype(np.dtype(leaf.dtype), transfer) == np.float16 for leaf in leaves]
    flat = [jnp.ravel(jnp.asarray(leaf)) for leaf in leaves]
    pieces: dict[int, list[tuple[int, jax.Array]]] = {i: [] for i in range(len(leaves))}
    for bucket in plan:
        parts = []
        for seg in bucket.segments:
            part = flat[seg.leaf]
            if seg.start != 0 or seg.stop != part.shape[0]:
                part = part[seg.start : seg.stop]
            if op == "mean" and prescaled[seg.leaf]:
                part = part / size
            parts.append(part.astype(bucket.dtype))
        message = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
        reduced = _allreduce_array(message, mpi_op, comm)
        offset = 0
        for seg in bucket.segments:
            piece = reduced if len(parts) == 1 else reduced[offset : offset + seg.size]
            pieces[seg.leaf].append((seg.start, piece))
            offset += seg.size
    out = []
    for i, leaf in enumerate(leaves):
        segs = sorted(pieces[i], key=lambda p: p[0])
        if not segs:  # empty leaf
            out.append(leaf.astype(dtypes[i]))
            continue
        vals = [p for _, p in segs]
        value = vals[0] if len(vals) == 1 else jnp.concatenate(vals)
        if op == "mean" and not prescaled[i]:
            # divide in the wider of the transfer and leaf dtypes, then narrow: a float16 leaf
            # summed in float32 or bfloat16 passed 65504 where its mean does not
            wide = jnp.promote_types(value.dtype, dtypes[i])
            value = value.astype(wide) / jnp.asarray(size, wide)
        out.append(value.astype(dtypes[i]).reshape(jnp.shape(leaf)))
    result = jax.tree.unflatten(treedef, out)
    if checked:  # eager: done before returning, so a later call's host check never runs
        jax.block_until_ready(result)  # on the communicator under this call's reduction
    return result
