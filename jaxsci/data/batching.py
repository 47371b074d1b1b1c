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

    ``key``: a PRNG key (or an int seed) for a fresh random order
    (``jax.random.permutation``), or None for ``0..n-1`` in order. ``drop_remainder``:
    ``n_batches = n // batch_size`` and the last ``n % batch_size`` rows of the order sit
    out this epoch; otherwise the last batch is
    completed by going round the order again (every row is seen, some twice), so all
    batches keep one shape. ``n`` and ``batch_size`` are static."""
    _check_sizes(n, batch_size, drop_remainder, "batch_indices")
    key = _as_key(key)
    order = jnp.arange(n, dtype=jnp.int32) if key is None else jax.random.permutation(key, n)
    order = order.astype(jnp.int32)
    n_batches = n // batch_size if drop_remainder else -(-n // batch_size)
    total = n_batches * batch_size
    if total > n:  # complete the last batch by going round the order (more than once if
        order = jnp.tile(order, -(-total // n))  # the batch is over twice the data)
    return order[:total].reshape(n_batches, batch_size)


def _as_key(key: Any) -> jax.Array | None:
    """A PRNG key, None, or an int seed (as ``jaxsci.parallel.rank_key`` takes)."""
    if key is None or isinstance(key, jax.Array | np.ndarray):
        return key
    if is_int_at_least(key, 0):
        return jax.random.key(int(key))
    raise ValueError(f"key must be a PRNG key, an int seed >= 0 or None, got {key!r}")


def batches(
    data: Any,
    batch_size: int,
    *,
    key: jax.Array | int | None = None,
    drop_remainder: bool = True,
    sharding: jax.sharding.Sharding | None = None,
) -> Iterator[Any]:
    """Minibatches of ``data`` (a pytree of arrays with one leading length, e.g.
    ``(x, y)``), in the order of :func:`batch_indices` (same ``key``, same batches).

    Each batch keeps ``data``'s structure; NumPy leaves stay NumPy (host memory) unless
    ``sharding`` is given, in which case each batch is ``jax.device_put`` with it (its
    leading dimension must divide over the sharding's devices). ValueError for leaves of
    different lengths, an empty data set or a bad ``batch_size``."""
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("batches: data holds no arrays")
    if any(np.ndim(leaf) == 0 for leaf in leaves):
        raise ValueError("batches: every leaf needs a leading (row) axis, got a scalar")
    lengths = sorted({int(np.shape(leaf)[0]) for leaf in leaves})
    if len(lengths) != 1:
        raise ValueError(f"batches: every leaf needs the same leading length, got {lengths}")
    if sharding is not None and is_int_at_least(batch_size, 1):
        for leaf in leaves:  # the batch's shape must split over the sharding
            shape = (batch_size, *np.shape(leaf)[1:])
            try:
                sharding.shard_shape(shape)
            except ValueError:
                raise ValueError(
                    f"batches: a batch of shape {shape} does not divide over the sharding "
                    f"({len(sharding.device_set)} devices): make batch_size a multiple of the "
                    "shards along the rows"
                ) from None
    # checked and ordered now, not at the first next(): a bad call fails where it is made
    idx = np.asarray(batch_indices(key, lengths[0], batch_size, drop_remainder=drop_remainder))
    return _iterate(data, idx, sharding)


def _iterate(data: Any, idx: np.ndarray, sharding: jax.sharding.Sharding | None) -> Iterator[Any]:
    for rows in idx:
        batch = jax.tree.map(lambda leaf, r=rows: leaf[r], data)
        yield batch if sharding is None else jax.device_put(batch, sharding)
