"""Pytree linear algebra for history buffers (leading axis ``m``) used by Anderson.

A *history* is a pytree shaped like the parameters with one extra leading axis
of length ``m`` on every leaf (a ring buffer of ``m`` vectors). Reductions are
accumulated in ``acc_dtype`` (float64 when x64 is on), so float32 parameters
get float64 inner products without a float64 copy of the buffers.
"""

from __future__ import annotations

import math
import sys

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec

PyTree = object
# On small problems (hundreds of parameters) an Anderson step costs its kernel count on
# CPU (~50 ns per kernel), and a library call (dot, YNNPACK fusion) several kernels' worth.
# Leaves up to this size therefore get inner products and history products as
# elementwise-and-reduce loops (no library call); larger leaves get matrix products and
# one reduction per pair (stacking them would copy them: +1.8 ms on a 7 ms update at 1M).
_STACK_MAX = 1 << 16
# XLA's CPU backend rewrites a reduction over an axis longer than 32 into a reduce-window
# plus a reduce (two kernels, neither fused with the product feeding it). Small inner
# products are therefore folded in halves (elementwise adds: pairwise summation) down to
# 32 lanes, then reduced: one kernel with the product fused in.
_TILE = 32


def as_arrays(tree: PyTree) -> PyTree:
    """``tree`` with its Python-number leaves as JAX arrays (as optax's own transforms
    take them) and Flax NNX variables unwrapped to their values (``nnx.Optimizer`` calls
    ``init`` with ``Param``-wrapped leaves and ``update`` with plain ones, and keeps its
    state in ``OptArray`` wrappers); arrays and ``jax.ShapeDtypeStruct`` leaves unchanged
    (a NumPy float64 leaf stays one: compare dtypes through ``canonicalize_dtype``)."""
    nnx = sys.modules.get("flax.nnx")  # loaded if the caller uses NNX; never imported here
    if nnx is not None:
        tree = nnx.as_pure(tree)
    scalar = lambda x: jnp.asarray(x) if isinstance(x, int | float | complex) else x  # noqa: E731
    return jax.tree_util.tree_map(scalar, tree)


def safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(x)`` of a squared norm ``x`` whose derivative at 0 is 0, not inf: ``jax.grad``
    through an update (meta-gradients) stays finite where a norm vanishes, e.g. at
    convergence (the double-``where`` idiom). NaN stays NaN; a negative ``x`` (rounding)
    gives 0; elsewhere identical to ``jnp.sqrt``."""
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0 * x)


def acc_dtype() -> jnp.dtype:
    """Accumulation/solve dtype: float64 when x64 is enabled, else float32."""
    return jnp.dtype(jnp.float64) if jax.config.jax_enable_x64 else jnp.dtype(jnp.float32)


def _leaves(tree: PyTree) -> list:
    return jax.tree_util.tree_leaves(tree)


def _fold(p: jax.Array) -> jax.Array:
    """Fold the last axis to at most 32 lanes by adding halves (no padding copy)."""
    n = p.shape[-1]
    if n <= _TILE:
        return p
    head = _TILE << int(math.log2(n // _TILE))  # largest 32 * 2^j <= n
    acc = p[..., :head]
    while acc.shape[-1] > _TILE:
        half = acc.shape[-1] // 2
        acc = acc[..., :half] + acc[..., half:]
    if head == n:
        return acc
    rest = _fold(p[..., head:])
    return acc.at[..., : rest.shape[-1]].add(rest)


def sum_last(p: jax.Array) -> jax.Array:
    """``sum(p, axis=-1)`` by pairwise folding to 32 lanes: one fused kernel on CPU."""
    return jnp.sum(_fold(p), axis=-1)


def vdot(a: PyTree, b: PyTree) -> jax.Array:
    """Real inner product of two pytrees, accumulated in ``acc_dtype()``."""
    terms = [_dot(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True)]
    return sum(terms, jnp.zeros((), acc_dtype()))


def _dot(x: jax.Array, y: jax.Array) -> jax.Array:
    dt = acc_dtype()
    return jnp.sum(x.astype(dt) * y.astype(dt))


def explicit_spec(x: object) -> PartitionSpec | None:
    """The partition spec of ``x`` when it is sharded over *Explicit* mesh axes (its type
    carries the sharding, under ``jit`` too), else ``None``.

    Such leaves must not be reshaped (a reshape that merges a sharded axis is a type
    error), so the history products below reduce over their axes in place instead.
    """
    try:
        spec = jax.typeof(x).sharding.spec
    except (AttributeError, TypeError):  # ShapeDtypeStruct, Python scalars
        return None
    return spec if any(a is not None for a in spec) else None


def explicit_mesh() -> bool:
    """Whether the mesh in context (``jax.set_mesh``) has an Explicit axis. Under ``vmap``
    a leaf's type hides its batch axis, and with it that axis' sharding, so there the mesh
    decides: no reshapes (and no ``lax.cond``, whose batched form Explicit sharding refuses).
    """
    return any(t == AxisType.Explicit for t in jax.sharding.get_abstract_mesh().axis_types)


def keep_shape(x: object) -> bool:
    """Whether ``x`` must not be reshaped: sharded over Explicit axes, or maybe (see
    :func:`explicit_mesh`)."""
    return explicit_spec(x) is not None or explicit_mesh()


def _leaf_dot(x: jax.Array, y: jax.Array) -> jax.Array:
    """``<x, y>`` of two leaves in ``acc_dtype()``: small leaves by :func:`sum_last` (one
    fused kernel on CPU instead of up to three), large or explicitly sharded ones by a
    plain reduction."""
    if x.size > _STACK_MAX or keep_shape(x):
        return _dot(x, y)
    dt = acc_dtype()
    return sum_last(x.reshape(-1).astype(dt) * y.reshape(-1).astype(dt))


def dots(v: PyTree, others: list[PyTree]) -> jax.Array:
    """``[<v, o> for o in others]``, accumulated in ``acc_dtype()``."""
    other_leaves = [_leaves(o) for o in others]
    out = None
    for i, x in enumerate(_leaves(v)):
        d = jnp.stack([_leaf_dot(x, ol[i]) for ol in other_leaves])
        out = d if out is None else out + d
    return out


def gram(vecs: list[PyTree]) -> jax.Array:
    """``[k, k]`` Gram matrix of ``k`` pytrees (``acc_dtype()``): each pair's inner product
    computed once per leaf (``k (k + 1) / 2`` of them), mirrored."""
    vec_leaves = [_leaves(o) for o in vecs]
    k = len(vecs)
    out = None
    for i in range(len(vec_leaves[0])):
        xs = [vl[i] for vl in vec_leaves]
        pair = {(a, b): _leaf_dot(xs[a], xs[b]) for a in range(k) for b in range(a, k)}
        g = jnp.stack([jnp.stack([pair[min(a, b), max(a, b)] for b in range(k)]) for a in range(k)])
        out = g if out is None else out + g
    return out


def hist_dot(hist: PyTree, vecs: list[PyTree]) -> jax.Array:
    """``[m, k]`` matrix of inner products between the ``m`` rows of ``hist`` and ``k`` vectors.

    Large leaves: one matrix-vector product per vector and leaf (stacking the vectors
    into an ``[n, k]`` operand was 3-10x slower on CPU: strided layout). Small leaves:
    a product-and-reduce loop (no library call). Explicitly sharded leaves: a product
    reduced over the leaf's own axes (no reshape).
    """
    dt = acc_dtype()
    cols = []
    for v in vecs:
        col = jnp.zeros((_leaves(hist)[0].shape[0],), dt)
        for h, x in zip(_leaves(hist), _leaves(v), strict=True):
            if keep_shape(x):
                prod = h.astype(dt) * x[None].astype(dt)
                col = col + jnp.sum(prod, axis=tuple(range(1, h.ndim)))
                continue
            hf = h.reshape(h.shape[0], -1)
            if x.size <= _STACK_MAX:
                col = col + sum_last(hf.astype(dt) * x.reshape(1, -1).astype(dt))
            else:
                col = col + jnp.matmul(hf, x.reshape(-1), preferred_element_type=dt).astype(dt)
        cols.append(col)
    return jnp.stack(cols, axis=1)


def hist_combine_many(hist: PyTree, coefs: jax.Array) -> list[PyTree]:
    """``[sum_i coefs[k, i] * hist[i] for k]``: ``k`` combinations from one pass over ``hist``."""
    k = coefs.shape[0]

    def comb(h):
        c = coefs.astype(h.dtype)
        # One [k, ...] product read by every consumer (not k reductions fused into their
        # consumers): the history is then read only before its one-row write, which XLA
        # does in place (no per-step copy of the buffer). A matrix product except for tiny
        # leaves: XLA's CPU loop over the history axis cost ~0.5 us per row at 200 entries
        # (least squares, m = 10 / 20: 1.74 / 1.99x a Nesterov step vs 1.35 / 1.46x).
        if h[0].size <= _TILE:
            both = jnp.sum(c.reshape(c.shape + (1,) * (h.ndim - 1)) * h[None], axis=1)
        else:
            both = jnp.tensordot(c, h, axes=1).astype(h.dtype)
        return [both[j] for j in range(k)]

    leaves, treedef = jax.tree_util.tree_flatten(hist)
    per = [comb(h) for h in leaves]
    return [jax.tree_util.tree_unflatten(treedef, [p[j] for p in per]) for j in range(k)]


def hist_set(hist: PyTree, index: jax.Array, vec: PyTree) -> PyTree:
    """Write ``vec`` into row ``index`` of every leaf of ``hist``."""
    return jax.tree_util.tree_map(
        lambda h, v: jax.lax.dynamic_update_index_in_dim(h, v.astype(h.dtype), index, 0),
        hist,
        vec,
    )


def _named(x: object, spec: PartitionSpec) -> NamedSharding:
    """``spec`` on the (abstract) mesh of ``x``'s explicit sharding."""
    return NamedSharding(jax.typeof(x).sharding.mesh, spec)


def stacked_zeros(p: object, m: int) -> jax.Array:
    """Zeros of shape ``(m, *p.shape)`` in ``p.dtype``, sharded like ``p`` when it is sharded.

    Under ``jit`` only an explicit sharding is known (it is part of the type); an
    ``Auto``-axis leaf's sharding is chosen by the compiler, as for ``optax``'s own
    states: give ``jit`` ``out_shardings``, or call ``init`` outside ``jit``.
    """
    return _zeros(p, (m,))


def zeros_like(p: object) -> jax.Array:
    """Zeros shaped like ``p`` (an array or ``jax.ShapeDtypeStruct``), sharded like it
    (under ``jit``: when the sharding is explicit; see :func:`stacked_zeros`)."""
    return _zeros(p, ())


def _zeros(p: object, lead: tuple[int, ...]) -> jax.Array:
    """Zeros of shape ``(*lead, *p.shape)``, sharded like ``p`` on its own axes, in the
    dtype JAX computes ``p`` in (a NumPy float64 leaf is float32 when x64 is off)."""
    shape, free = (*lead, *p.shape), (None,) * len(lead)
    dtype = jax.dtypes.canonicalize_dtype(p.dtype)
    if isinstance(p, jax.core.Tracer):
        spec = explicit_spec(p)
        out = None if spec is None else _named(p, PartitionSpec(*free, *spec))
        return jnp.zeros(shape, dtype, out_sharding=out)
    sharding = getattr(p, "sharding", None)
    if isinstance(sharding, NamedSharding):
        spec = PartitionSpec(*free, *sharding.spec)
        return jax.device_put(jnp.zeros(shape, dtype), NamedSharding(sharding.mesh, spec))
    return jnp.zeros(shape, dtype)


def lin(fn, *trees: PyTree) -> PyTree:
    """``fn`` applied leafwise (one fused elementwise expression per leaf), each result cast
    to the dtype of the first tree's leaf."""
    return jax.tree_util.tree_map(lambda *a: fn(*a).astype(a[0].dtype), *trees)


def select(pred: jax.Array, a: PyTree, b: PyTree) -> PyTree:
    """Leafwise ``a if pred else b`` for a scalar boolean ``pred``."""
    return jax.tree_util.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


def all_finite(tree: PyTree) -> jax.Array:
    """True when every entry of every leaf is finite."""
    flags = [jnp.all(jnp.isfinite(x)) for x in _leaves(tree)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)
