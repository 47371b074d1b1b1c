"""Minibatches of in-memory data sets: shuffled epochs, on the host or under ``jit``.

:func:`batch_indices` is pure JAX (``[n_batches, batch_size]`` row indices of one epoch,
jit- and vmap-able: a ``lax.scan`` over its rows is an epoch). :func:`batches` iterates
over the minibatches of a pytree of arrays on the host, optionally placed on devices
with a ``jax.sharding.Sharding`` (a ``NamedSharding`` over a mesh's data axis splits each
batch over the devices). For several processes, give every rank the same ``key`` and
cut its block of each global batch with ``DataParallel.shard_batch`` (or
``jaxsci.parallel.rank_shard``): all ranks then see the same epoch order.
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
    key: jax.Array | None, n: int, batch_size: int, *, drop_remainder: bool = True
) -> jax.Array:
    """Row indices ``[n_batches, batch_size]`` (int32) of one epoch over ``n`` rows.

    ``key``: a PRNG key for a fresh random order (``jax.random.permutation``), or None for
    ``0..n-1`` in order. ``drop_remainder``: ``n_batches = n // batch_size`` and the last
    ``n % batch_size`` rows of the order sit out this epoch; otherwise the last batch is
    completed with the order's first rows (every row is seen, a few twice), so all
    batches keep one shape. ``n`` and ``batch_size`` are static."""
    _check_sizes(n, batch_size, drop_remainder, "batch_indices")
    order = jnp.arange(n, dtype=jnp.int32) if key is None else jax.random.permutation(key, n)
    order = order.astype(jnp.int32)
    n_batches = n // batch_size if drop_remainder else -(-n // batch_size)
    if n_batches * batch_size > n:
        order = jnp.concatenate([order, order[: n_batches * batch_size - n]])
    return order[: n_batches * batch_size].reshape(n_batches, batch_size)


def batches(
    data: Any,
    batch_size: int,
    *,
    key: jax.Array | None = None,
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
    # checked and ordered now, not at the first next(): a bad call fails where it is made
    idx = np.asarray(batch_indices(key, lengths[0], batch_size, drop_remainder=drop_remainder))
    return _iterate(data, idx, sharding)


def _iterate(data: Any, idx: np.ndarray, sharding: jax.sharding.Sharding | None) -> Iterator[Any]:
    for rows in idx:
        batch = jax.tree.map(lambda leaf, r=rows: leaf[r], data)
        yield batch if sharding is None else jax.device_put(batch, sharding)
