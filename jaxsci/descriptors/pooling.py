"""Structure-level pooling of per-atom features into fixed-length fingerprints."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

__all__ = ["POOL_OPS", "pool"]

Array = jnp.ndarray
#: The pooling operations :func:`pool` knows.
POOL_OPS = ("max", "min", "mean", "sum")


def pool(features: Array, mask: Array | None = None, ops: Sequence[str] = ("max", "min")) -> Array:
    """Pool per-atom features [..., N, F] over atoms into [..., F * len(ops)].

    ops: any of "max", "min", "mean", "sum", concatenated in the given order. ``mask``
    [..., N] (bool) excludes padding atoms. Differentiable (max/min route gradients to the
    arg-extreme atom); returns a JAX array (``ACSF.create`` returns NumPy for DScribe's
    sake; ``np.asarray`` converts).
    """
    if isinstance(ops, str):
        ops = (ops,)
    bad = [o for o in ops if o not in POOL_OPS]
    if bad or not ops:
        raise ValueError(f"pool ops must be a non-empty subset of {POOL_OPS}, got {list(ops)}")
    features = jnp.asarray(features)
    if features.ndim < 2:
        raise ValueError(
            f"features must be per-atom rows [..., N, F], got shape {features.shape} "
            "(one atom's row is [1, F])"
        )
    if mask is None:
        mask = jnp.ones(features.shape[:-1], dtype=bool)
    elif jnp.shape(mask) != features.shape[:-1]:
        raise ValueError(
            f"mask must have shape {list(features.shape[:-1])} (features without F), "
            f"got {list(jnp.shape(mask))}"
        )
    m = jnp.asarray(mask)[..., None]
    count = jnp.maximum(jnp.sum(m, axis=-2), 1)
    some = jnp.any(m, axis=-2)  # a structure with no (unmasked) atoms pools to 0 for every op
    out = []
    inf = jnp.inf
    for op in ops:
        if op == "max":
            top = jnp.max(jnp.where(m, features, -inf), axis=-2, initial=-inf)
            out.append(jnp.where(some, top, 0.0))
        elif op == "min":
            low = jnp.min(jnp.where(m, features, inf), axis=-2, initial=inf)
            out.append(jnp.where(some, low, 0.0))
        elif op == "mean":
            out.append(jnp.sum(jnp.where(m, features, 0.0), axis=-2) / count)
        else:
            out.append(jnp.sum(jnp.where(m, features, 0.0), axis=-2))
    return jnp.concatenate(out, axis=-1)
