"""State of :func:`jaxsci.optim.scale_by_anderson`: its static spec, its arrays and the
packing of its scalar bookkeeping, and the flat layout's ravel."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any

# Scalar bookkeeping is packed into one int32 and one float vector: a few carried buffers
# and a few fused kernels per step instead of ~20 scalar ones (on small problems an
# Anderson step costs its kernel count). The named views below read them.
INTS = (
    "count",  # calls to update (none counted for a params tree without leaves)
    "head",  # next history row to overwrite (the oldest when full)
    "next_try",  # first step at which acceleration may be tried again
    "penalty",  # current back-off length after rejections
    "n_ema",  # EMA updates so far
    "n_loss",  # losses in the running loss statistics
    "n_accelerated",  # extrapolations taken
    # points rolled back: extrapolations, and stretched and averaged steps too (each is
    # judged like an extrapolation), so it can exceed n_accelerated
    "n_rejected",
    "n_averaged",  # moving-average steps taken
    "n_stretched",  # stretched inner steps taken (see `stretch`)
    "n_noisy",  # steps on which the noise test held acceleration off
)
BOOLS = (
    "has_prev",  # x_prev/u_prev hold an accepted step
    "pending",  # last update was an extrapolation awaiting its loss
    "rejected",  # this update rolled an extrapolation back
)
FLOATS = (
    "trust",  # max ||extrapolation step|| / ||inner step|| (loss safeguard only)
    "ema_sq",  # EMA of ||u||^2
    "loss_mean",  # EMA of the accepted losses (average mode: the noise-aware check)
    "loss_var",  # EMA of their squared deviation from the running mean
    "rsd",  # last relative standard deviation of the inner steps (average mode)
    "beta",  # mixing of the last step (beta="auto": its latest Barzilai-Borwein ratio)
    "stretch",  # factor of the next stretched inner step (see `stretch`), 1 after a rejection
    "res_min",  # smallest log ||g|| (else ||u||) at an accepted point (residual check, no loss)
    "f_prev",  # loss at the previous step (noise test)
    "gs_prev",  # <gradient, step taken> at the previous step (noise test)
    "noise_r",  # EMA weight of the pairs that disagreed with their gradients (noise test)
    "noise_p",  # EMA weight of all pairs, two agreeing prior pairs included (noise test)
)
N_SCALARINTS = len(INTS) + len(BOOLS)


def dtype_name(x: object) -> str:
    """The name of the dtype JAX computes ``x`` in: a NumPy float64 array (or a
    ``ShapeDtypeStruct`` saying float64) is float32 when x64 is off, as every JAX operation
    on it, ``optax.apply_updates`` included, makes it."""
    return jax.dtypes.canonicalize_dtype(x.dtype).name


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class ParamsSpec:
    """What :func:`scale_by_anderson` was initialised for: a static pytree node (no leaves,
    nothing to checkpoint) holding the params' structure, leaf shapes and dtypes, and the
    layout chosen. ``update`` checks its params against it (the flat layout's state is
    one vector, which alone cannot tell two pytrees of the same size apart)."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    flat: bool

    @classmethod
    def of(cls, params: PyTree, flat: bool) -> ParamsSpec:
        leaves, treedef = jax.tree_util.tree_flatten(params)
        shapes = tuple(tuple(jnp.shape(x)) for x in leaves)
        return cls(treedef, shapes, tuple(dtype_name(x) for x in leaves), flat)

    def check(self, params: PyTree) -> None:
        """Raise ``ValueError`` unless ``params`` has this structure, shapes and dtypes."""
        leaves, treedef = jax.tree_util.tree_flatten(params)
        if treedef != self.treedef:
            raise ValueError(
                f"anderson: params pytree structure {treedef} does not match the one the "
                f"state was initialised with, {self.treedef}"
            )
        for i, x in enumerate(leaves):
            shape, dtype = tuple(jnp.shape(x)), dtype_name(x)
            if shape != self.shapes[i] or dtype != self.dtypes[i]:
                raise ValueError(
                    f"anderson: params leaf {i} is {dtype}{list(shape)} but the state was "
                    f"initialised for {self.dtypes[i]}{list(self.shapes[i])} (init with the "
                    "params you update, in the same dtype)"
                )


class ScaleByAndersonState(NamedTuple):
    """State of :func:`scale_by_anderson` (all leaves are arrays).

    Scalars live in ``ints`` / ``floats``; read them by name (``state.count``,
    ``state.n_accelerated``, ``state.pending``, ``state.valid``, ``state.loss_hist``...);
    a state batched by ``vmap`` reads them along its last axis (one per problem). They are
    properties, not fields, so ``optax.tree_utils.tree_get(state, "n_accelerated")`` does
    not find them; nor does ``optax.tree_utils.tree_map_params`` apply (the history is
    ``[m, ...]`` per leaf, not shaped like the params). Checkpoint with Orbax, pickle or
    ``flax.serialization`` (the static ``spec`` comes from the target on restore; its
    handler is registered by ``init`` and ``update`` once ``flax.serialization`` is loaded:
    import it before them). The layout shapes the state (flat: one ``[n]`` vector per
    quantity; tree: leaves like the params), and ``layout="auto"`` picks it by backend: a
    checkpoint restored on another backend needs an explicit ``layout=``.
    ``n_rejected`` counts every point rolled back, stretched and averaged steps as well as
    extrapolations, so it can exceed ``n_accelerated``.
    """

    ints: jax.Array  # int32 [14 + m]: INTS, BOOLS (0/1), then valid history rows (0/1)
    floats: jax.Array  # [12 + safeguard_memory + m] acc dtype: FLOATS, recent losses (-inf),
    # then <Y_i, u_prev> for the stored rows (orthogonal history: <Y_i, y> = <Y_i, u> minus
    # it, so each step needs one pass of inner products over Y, not two)
    s_hist: PyTree  # [m, ...] per leaf: iterate differences (orthogonalised in that mode)
    y_hist: PyTree  # [m, ...] per leaf: residual (update) differences
    gram: jax.Array  # [m, m] Y^T Y ("window" mode), accumulation dtype
    x_prev: PyTree  # params at the previous accepted step
    u_prev: PyTree  # inner update at the previous accepted step
    rollback: PyTree  # update from the extrapolated point back to the plain one
    ema_step: PyTree  # EMA of the inner steps u (the rsd test); () when average is off
    ema_x: PyTree  # EMA of post-step iterates x + u (moving average); () when off
    spec: ParamsSpec  # static: the params' structure, shapes, dtypes and the layout

    @property
    def valid(self) -> jax.Array:
        """[..., m] bool: which history rows hold data."""
        return self.ints[..., N_SCALARINTS:] != 0

    @property
    def loss_hist(self) -> jax.Array:
        """[..., safeguard_memory] recent accepted losses (-inf: empty)."""
        m = self.ints.shape[-1] - N_SCALARINTS
        return self.floats[..., len(FLOATS) : self.floats.shape[-1] - m]

    @property
    def yu_prev(self) -> jax.Array:
        """[..., m] inner products of the stored residual rows with ``u_prev``."""
        m = self.ints.shape[-1] - N_SCALARINTS
        return self.floats[..., self.floats.shape[-1] - m :]


def register_flax_serialization() -> None:
    """Let ``flax.serialization`` (``to_bytes``, ``to_state_dict``) write and read a
    :class:`ScaleByAndersonState`: its static :class:`ParamsSpec` is written as an empty
    dict and taken from the target on restore. Done once, and only when the caller has
    loaded ``flax.serialization`` (never imported here: it costs 0.65 s). Orbax and pickle
    need nothing."""
    serialization = sys.modules.get("flax.serialization")
    if serialization is None or serialization.is_serializable(ParamsSpec):
        return
    serialization.register_serialization_state(
        ParamsSpec, lambda spec: {}, lambda target, data: target
    )


def _int_view(i: int) -> property:
    return property(lambda self: self.ints[..., i], doc=f"int32 scalar: {INTS[i]}")


def _bool_view(i: int) -> property:
    return property(lambda self: self.ints[..., len(INTS) + i] != 0, doc=f"bool: {BOOLS[i]}")


def _float_view(i: int) -> property:
    return property(lambda self: self.floats[..., i], doc=f"scalar: {FLOATS[i]}")


for _i, _name in enumerate(INTS):
    setattr(ScaleByAndersonState, _name, _int_view(_i))
for _i, _name in enumerate(BOOLS):
    setattr(ScaleByAndersonState, _name, _bool_view(_i))
for _i, _name in enumerate(FLOATS):
    setattr(ScaleByAndersonState, _name, _float_view(_i))


def pack(
    ints: dict, floats: dict, valid: jax.Array, loss_hist: jax.Array, yu_prev: jax.Array, dt
) -> tuple:
    """The ``ints`` and ``floats`` vectors of the state from named scalars.

    Built as one elementwise select chain over an iota (XLA fuses it, with the scalar
    arithmetic feeding it, into one loop kernel; a concatenate of scalars is not fused).
    """

    def vec(scalars: list, tail: jax.Array, dtype) -> jax.Array:
        k = len(scalars)
        idx = jnp.arange(k + tail.shape[0])
        out = jnp.pad(tail.astype(dtype), (k, 0))
        for i, v in enumerate(scalars):
            out = jnp.where(idx == i, jnp.asarray(v).astype(dtype), out)
        return out

    iv = vec([ints[k] for k in INTS + BOOLS], valid, jnp.int32)
    fv = vec([floats[k] for k in FLOATS], jnp.concatenate([loss_hist, yu_prev]), dt)
    return iv, fv


def ravel(tree: PyTree, dtype: object = None) -> jax.Array:
    """The leaves of ``tree`` as one vector (``ravel_pytree`` order), materialised once.

    Written leaf by leaf into a buffer (in-place slice writes, a copy each) rather than
    by ``concatenate``: XLA fuses a concatenate into each of its consumers, and its CPU
    backend emits a fused concatenate element by element (profiled at 1M parameters:
    ~100 ms per consuming fusion, five of them per Anderson step, the flat layout's
    10x slower CPU step). On accelerators, where fused concatenates are fast and each
    slice write would be a kernel launch, a plain concatenate.
    """
    leaves = jax.tree_util.tree_leaves(tree)
    dt = jnp.result_type(*leaves) if dtype is None else dtype
    if jax.default_backend() != "cpu":  # fused concatenates are fast there; writes = launches
        return jnp.concatenate([x.reshape(-1).astype(dt) for x in leaves])
    offsets = [0]
    for x in leaves:
        offsets.append(offsets[-1] + x.size)
    buf = jnp.empty((offsets[-1],), dt)
    # Largest leaf first: XLA turns the first write into an empty buffer into a pad (a
    # full-length write); the other writes are in place (measured: pad 1.45 -> 0.59 ms).
    for i in sorted(range(len(leaves)), key=lambda i: -leaves[i].size):
        buf = jax.lax.dynamic_update_slice(buf, leaves[i].reshape(-1).astype(dt), (offsets[i],))
    return buf
