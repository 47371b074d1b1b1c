"""Minibatches of in-memory data sets: shuffled epochs, on the host or under ``jit``.

:func:`batch_indices` is pure JAX (``[n_batches, batch_size]`` row indices of one epoch,
jit- and vmap-able: a ``lax.scan`` over its rows is an epoch). :func:`batches` iterates
over the minibatches of a pytree of arrays on the host, optionally placed on devices
with a ``jax.sharding.Sharding`` (a ``NamedSharding`` over a mesh's data axis splits each
batch over the devices; ``DataParallel.batch_sharding`` is the one its ``step`` uses). For
several processes, give every rank the same ``key``, take host batches (no ``sharding``)
and cut each rank's block with ``DataParallel.shard_batch`` (or
``jaxsci.parallel.rank_shard``); ``step`` places the block on the local devices, so the
global batch never goes to a device whole. All ranks then see the same epoch order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsci._checks import is_int_at_least
from jaxsci._keys import as_key

__all__ = ["batch_indices", "batches"]


def _check_sizes(n: int, batch_size: int, drop_remainder: bool, where: str) -> None:
    for name, value in (("n", n), ("batch_size", batch_size)):
        if isinstance(value, jax.core.Tracer):
            raise ValueError(
                f"{where}: {name} is a shape and must be a static int, got a traced value "
                "(mark it static, e.g. jax.jit(..., static_argnums=...))"
            )
    if not is_int_at_least(n, 1):
        raise ValueError(f"{where}: need at least one row, got {n!r}")
    if not is_int_at_least(batch_size, 1):
        raise ValueError(f"{where}: batch_size must be an int >= 1, got {batch_size!r}")
    if drop_remainder and batch_size > n:
        raise ValueError(
            f"{where}: batch_size {batch_size} is larger than the {n} rows, so dropping the "
            "remainder leaves no batch (use drop_remainder=False or a smaller batch)"
        )


def batch_indices(
    key: jax.Array | int | None, n: int, batch_size: int, *, drop_remainder: bool = True
) -> jax.Array:
    """Row indices ``[n_batches, batch_size]`` (int32) of one epoch over ``n`` rows.

    ``key``: a PRNG key or an int seed (a Python / NumPy int or a 0-d integer array; see
    :func:`jaxsci._keys.as_key`) for a fresh random order (``jax.random.permutation``), or None for
    ``0..n-1`` in order. ``drop_remainder``:
    ``n_batches = n // batch_size`` and the last ``n % batch_size`` rows of the order sit
    out this epoch; otherwise the last batch is
    completed by going round the order again (every row is seen, some twice), so all
    batches keep one shape. ``n`` and ``batch_size`` are static."""
    _check_sizes(n, batch_size, drop_remainder, "batch_indices")
    key = as_key(key, "batch_indices")
    order = jnp.arange(n, dtype=jnp.int32) if key is None else jax.random.permutation(key, n)
    order = order.astype(jnp.int32)
    n_batches = n // batch_size if drop_remainder else -(-n // batch_size)
    total = n_batches * batch_size
    if total > n:  # complete the last batch by going round the order (more than once if
        order = jnp.tile(order, -(-total // n))  # the batch is over twice the data)
    return order[:total].reshape(n_batches, batch_size)


def batches(
    data: Any,
    batch_size: int,
    *,
    key: jax.Array | int | None = None,
    drop_remainder: bool = True,
    sharding: Any = None,
) -> Iterator[Any]:
    """Minibatches of ``data`` (a pytree of arrays with one leading length, e.g.
    ``(x, y)``), in the order of :func:`batch_indices` (same ``key``, same batches).

    Each batch keeps ``data``'s structure; NumPy leaves stay NumPy (host memory) unless
    ``sharding`` is given, in which case each batch is ``jax.device_put`` with it.
    ``sharding``: a ``jax.sharding.Sharding`` for every leaf, or a pytree of them that is a
    prefix of ``data`` (e.g. ``(x_sharding, y_sharding)``: a 1-D ``y`` cannot take a spec
    that names two axes). Every axis a sharding splits must divide over its shards (for
    the rows: ``batch_size`` a multiple of them). ValueError, at the call, for leaves of
    different lengths, an empty data set, a bad ``batch_size`` or ``key``, or a sharding
    that does not fit a leaf's batches (naming the leaf, its batch shape and the axis)."""
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("batches: data holds no arrays")
    if any(np.ndim(leaf) == 0 for leaf in leaves):
        raise ValueError("batches: every leaf needs a leading (row) axis, got a scalar")
    lengths = sorted({int(np.shape(leaf)[0]) for leaf in leaves})
    if len(lengths) != 1:
        raise ValueError(f"batches: every leaf needs the same leading length, got {lengths}")
    key = as_key(key, "batches")
    if sharding is not None and is_int_at_least(batch_size, 1):
        _check_sharding(data, sharding, batch_size)
    # checked and ordered now, not at the first next(): a bad call fails where it is made
    idx = np.asarray(batch_indices(key, lengths[0], batch_size, drop_remainder=drop_remainder))
    return _iterate(data, idx, sharding)


def _check_sharding(data: Any, sharding: Any, batch_size: int) -> None:
    """ValueError unless every leaf's batch ``[batch_size, ...]`` splits over its sharding."""
    is_sharding = lambda s: isinstance(s, jax.sharding.Sharding)  # noqa: E731
    if is_sharding(sharding):
        per_leaf = jax.tree.map(lambda _: sharding, data)
    else:
        try:
            per_leaf = jax.tree.broadcast(sharding, data, is_leaf=is_sharding)
        except (ValueError, TypeError) as err:
            raise ValueError(
                "batches: sharding must be a jax.sharding.Sharding or a pytree of them that is "
                f"a prefix of data's structure; got {sharding!r} ({err})"
            ) from None
    paths = jax.tree_util.tree_flatten_with_path(data)[0]
    shardings = jax.tree.leaves(per_leaf, is_leaf=is_sharding)
    for (path, leaf), sh in zip(paths, shardings, strict=True):
        shape = (batch_size, *np.shape(leaf)[1:])
        what = f"a batch of shape {shape}" + (
            f" (leaf {jax.tree_util.keystr(path)})" if path else ""
        )
        if not is_sharding(sh):
            raise ValueError(f"batches: the sharding for {what} is {sh!r}, not a Sharding")
        problem = _sharding_problem(sh, shape)
        if problem:
            raise ValueError(f"batches: {what} {problem}")


def _sharding_problem(sharding: jax.sharding.Sharding, shape: tuple[int, ...]) -> str | None:
    """Why ``sharding`` cannot place an array of ``shape`` (to follow "a batch of shape
    ..."), or None."""
    if isinstance(sharding, jax.sharding.NamedSharding):
        spec = sharding.spec
        if len(spec) > len(shape):
            return (
                f"has {len(shape)} axis/axes but the sharding's {spec} names {len(spec)}: give "
                "this leaf a sharding of at most its rank (sharding may be a pytree of "
                "shardings, one per leaf)"
            )
        for axis, entry in enumerate(spec):
            names = () if entry is None else (entry,) if isinstance(entry, str) else entry
            parts = int(np.prod([sharding.mesh.shape[a] for a in names], dtype=int))
            if shape[axis] % parts == 0:
                continue
            where = f"{entry!r} in {spec}"
            if axis == 0:
                return (
                    f"does not divide over the sharding: its {shape[0]} rows do not divide over "
                    f"the {parts} shards of {where}; make batch_size a multiple of {parts}"
                )
            return (
                f"does not divide over the sharding: its axis {axis} (size {shape[axis]}) does "
                f"not divide over the {parts} shards of {where} (batch_size is not the "
                "problem)"
            )
    try:
        sharding.shard_shape(shape)
    except (ValueError, IndexError) as err:
        return f"does not fit the sharding {sharding} ({type(err).__name__}: {err})"
    return None


def _iterate(data: Any, idx: np.ndarray, sharding: Any) -> Iterator[Any]:
    for rows in idx:
        batch = jax.tree.map(lambda leaf, r=rows: leaf[r], data)
        yield batch if sharding is None else jax.device_put(batch, sharding)
