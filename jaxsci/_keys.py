"""PRNG keys from the forms users pass: typed keys, raw key data, integer seeds."""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["as_key"]


def as_key(key: Any, where: str = "key") -> jax.Array | None:
    """``key`` as a PRNG key, or None: the key forms :func:`jaxsci.data.batch_indices`,
    :func:`jaxsci.data.batches`, :func:`jaxsci.data.select` and
    :func:`jaxsci.parallel.rank_key` accept (this helper is
    shared, so they accept the same ones).

    * None stays None;
    * a PRNG key stays a key: a typed key (``jax.random.key``) or raw key data (a uint32
      array such as ``jax.random.PRNGKey(0)``, ``uint32[2]``);
    * an integer seed becomes ``jax.random.key(seed)``: a Python or NumPy int, or a 0-d
      integer array (``np.array(5)``, ``jnp.int32(5)``; traced under ``jit`` / ``vmap`` too).
      A concrete seed must lie in ``[0, 2**32)``, or ``[0, 2**64)`` with ``jax_enable_x64``:
      JAX uses only the low 32 bits of a seed otherwise, so ``2**32`` would silently give the
      same order as ``0``.

    ValueError (prefixed with ``where``) for anything else: bools, floats, negative or too
    large seeds, integer arrays that are neither a scalar seed nor uint32 key data.
    """
    if key is None:
        return None
    if isinstance(key, bool | np.bool_):
        raise ValueError(f"{where}: key must be a PRNG key, an int seed >= 0 or None, got {key!r}")
    if isinstance(key, jax.Array | np.ndarray | np.generic):
        dtype = key.dtype
        if jnp.issubdtype(dtype, jax.dtypes.prng_key):
            return key  # a typed key
        if jnp.issubdtype(dtype, jnp.integer):  # (bool is not an integer dtype here)
            if np.ndim(key) == 0:  # a seed
                if isinstance(key, jax.core.Tracer):
                    return jax.random.key(key)
                return jax.random.key(_check_seed(int(key), where))
            if dtype == jnp.uint32:
                return key  # raw key data (jax.random.PRNGKey)
        got = f"{key!r}" if np.ndim(key) == 0 else f"an array of shape {np.shape(key)}"
        raise ValueError(
            f"{where}: key must be a PRNG key, an int seed >= 0 or None, got {got} of dtype "
            f"{dtype} (a key: jax.random.key(...), or uint32 key data such as "
            "jax.random.PRNGKey(...); a seed: an int or a 0-d integer array)"
        )
    if isinstance(key, numbers.Integral):
        return jax.random.key(_check_seed(int(key), where))
    raise ValueError(f"{where}: key must be a PRNG key, an int seed >= 0 or None, got {key!r}")


def _check_seed(seed: int, where: str) -> int | np.uint64:
    x64 = jax.config.jax_enable_x64
    bits = 64 if x64 else 32
    if not 0 <= seed < 2**bits:
        hint = "" if x64 else " (JAX uses only a seed's low 32 bits unless jax_enable_x64 is set)"
        raise ValueError(f"{where}: an int seed must be in [0, 2**{bits}){hint}, got {seed}")
    return np.uint64(seed) if seed >= 2**63 else seed  # jax.random.key: int64 overflows
