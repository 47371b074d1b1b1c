"""Data-parallel training steps: local devices via ``jax.shard_map``, processes via mpi4jax.

``dp = data_parallel(loss_fn, tx)`` turns a user's ``loss_fn(params, batch) -> scalar`` (mean
over the batch) and an optax transformation into

* ``state = dp.init(params)``: checks that every rank has the same parameter tree (structure,
  shapes, dtypes; one small collective, so a mismatch is a ValueError on every rank instead of a
  hang), broadcasts rank 0's values, and stores the parameters as flat per-dtype buffers;
* ``state, loss = dp.step(state, batch)``: ``batch`` is this process's part of the global batch
  (see :meth:`DataParallel.shard_batch`); under MPI the ranks first agree that every local
  batch is usable (one small host collective, so a bad batch on one rank is a ValueError on
  every rank instead of a hang); it is split over the local devices, gradients are averaged
  over devices (``lax.pmean``) and processes (:func:`tree_allreduce`), weighted by each
  process's batch size, so the result equals one process training on the concatenated batch;
  ``loss`` is the global mean loss. 16-bit gradients are averaged in float32 and rounded back
  once (a float16 sum overflows where the mean does not);
* ``dp.params(state)``: the user's parameter pytree.

Which calls communicate: ``data_parallel(...)`` (construction), ``params``, ``shard_batch``
and ``close`` are local, so a rank may build a trainer alone (e.g. for evaluation). ``init``
and ``step`` are collective under MPI: every rank of ``info.comm`` calls them, in the same
order. The first ``init`` clones ``info.comm`` (``MPI_Comm_dup``) into the private
communicator the step's all-reduces use; ``close()`` frees it (once the last step is done);
a trainer collected without ``close()`` has its communicator freed by the next ``init`` of
any trainer, so trainers built in a loop do not exhaust MPI's communicators.

The state lives on the mesh's devices, a one-device mesh included (one rank per accelerator:
``make_mesh(devices=[jax.local_devices()[local_rank]])``); each batch is moved there.

Why flat buffers: on XLA:CPU each small op costs tens of microseconds, so a 200-leaf model
spends more time in 200 per-leaf update ops (and in packing gradients into one message and
unpacking them) than in the all-reduce itself. Here the model sees static slices (views) of
the flat buffer, which XLA fuses into their consumers; the gradient, taken with respect to those
views, is packed with one concatenate, all-reduced as one message (or a few buckets), and the
optax update runs on the flat buffer: a handful of fused ops, whatever the number of leaves.
Optax transformations that treat leaves differently need ``flat=False``, which keeps the
user's tree in the state and all-reduces it in buckets: with ``flat=True`` they see one 1-D
buffer per dtype instead of the leaves, and silently do something else. Among them:
``optax.masked`` and ``multi_transform``, ``adamw(mask=...)`` / ``add_decayed_weights(mask=...)``
(a mask callable sees the 1-D buffers: ``x.ndim > 1`` masks everything out), per-layer trust
ratios (``lamb``, ``lars``, ``scale_by_trust_ratio``), and ``adafactor`` (factored by leaf
shape), ``novograd``, ``sm3``, block norms. The first ``init`` runs two updates of the
optimizer on the leaves and two on the buffers (made-up gradients, on float32 copies of
16-bit parameters) and warns (UserWarning) when they differ beyond rounding; elementwise
transforms and global ones (SGD, Adam, ``clip_by_global_norm``, :func:`jaxsci.optim.anderson`)
agree either way. It also warns for float16 parameters: the optimizer then runs in float16,
where Adam's ``eps=1e-8`` is 0 (a zero gradient element gives a 0/0 update).

Hybrid (several local devices and several processes): mpi4jax calls cannot run inside a
multi-device program, so the step runs three programs: gradients over the local mesh, the
cross-process all-reduce on the mesh's first device, and the (replicated) update.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from jaxsci.parallel.bootstrap import ProcessInfo, bootstrap, rank_slice
from jaxsci.parallel.collectives import (
    _16BIT,
    check_same_tree,
    check_transfer,
    tree_allreduce,
    tree_signature,
)
from jaxsci.parallel.flat import FlatLayout
from jaxsci.parallel.mesh import make_mesh
from jaxsci.parallel.precision import DynamicLossScale, LossScaleState, Policy, all_finite

__all__ = ["DataParallel", "DataParallelState", "data_parallel", "tree_signature"]


class DataParallelState(NamedTuple):
    """Train state of :class:`DataParallel` (a pytree; checkpoint it with Orbax as is).

    Attributes:
      params: flat mode: tuple of 1-D buffers, one per parameter dtype; tree mode: the tree.
      opt_state: the optax state over ``params``.
      step: number of steps taken (int32 scalar), skipped overflow steps included.
      loss_scale: dynamic loss-scale state, or ``None`` without loss scaling. Its
        ``skipped`` (int32 scalar) counts the steps skipped because the reduced gradients,
        the loss or the new parameters were not finite, or an element of the optimizer
        state turned non-finite (the parameters and optimizer state were kept): the only
        sign of a skip once the scale sits at ``min_scale``, where it no longer halves,
        and the returned loss is finite whenever the loss itself was.
    """

    params: Any
    opt_state: Any
    step: jax.Array
    loss_scale: LossScaleState | None


def _free_comm(comm: Any, inflight: list) -> None:
    """``comm.Free()`` once the last step dispatched on it has finished (``inflight[0]``: its
    outputs; ``step`` returns before its all-reduces run, and freeing under them made MPICH
    report an invalid communicator and the step return garbage), unless MPI is already
    finalized. Called at safe points only (``close``, ``init``), never from a GC pass."""
    from mpi4py import MPI

    for leaf in jax.tree_util.tree_leaves(inflight[0]):
        if isinstance(leaf, jax.Array) and not leaf.is_deleted():
            leaf.block_until_ready()  # (a deleted one was donated to a later, finished step)
    inflight[0] = None
    if not MPI.Is_finalized() and comm != MPI.COMM_NULL:
        comm.Free()


# Communicators of trainers that were garbage-collected without close(): a finalizer only
# queues them (MPI and JAX calls inside a GC pass, which can run in the middle of tracing,
# crashed the process), and the next init() of any trainer frees them.
_UNFREED: list[tuple[Any, list]] = []


def _queue_free(comm: Any, inflight: list) -> None:
    _UNFREED.append((comm, inflight))


def _free_queued() -> None:
    while _UNFREED:
        _free_comm(*_UNFREED.pop())


def _per_leaf_difference(tx: optax.GradientTransformation, params: Any):
    """Largest relative difference between ``tx``'s first two updates on the parameter tree
    and on its flat buffers, for the same made-up gradients; ``None`` when ``tx`` cannot
    run outside the trainer (no verdict).

    Runs on float32 copies of 16-bit parameters: the verdict is about the transform, not
    the dtype, and float16 rounding (eps ~1e-3) alone made plain Adam's updates differ by
    4e-4, above the 1e-4 threshold.

    Any transform that treats leaves differently (a mask or labels chosen per leaf, a
    trust ratio, a factored or per-block moment) gives other updates on the buffers;
    elementwise and global ones agree to rounding. The gradients vary in size from leaf to
    leaf, so per-leaf norms differ; two steps, as some (SM3) differ only once they have
    accumulated statistics.
    """
    params = _widen(params)
    layout = FlatLayout.from_tree(params)
    leaves = jax.tree.leaves(params)
    treedef = jax.tree.structure(params)

    def made_up(phase: float) -> Any:
        return jax.tree.unflatten(
            treedef,
            [
                ((i + 1.0) * jnp.sin(0.37 * jnp.arange(x.size) + i + phase))
                .reshape(x.shape)
                .astype(x.dtype)
                for i, x in enumerate(leaves)
            ],
        )

    # Op by op, not jitted: the ops' compilations are cached per primitive and shape, so
    # every later trainer's check is cheap (a (16, 32, 64) UNet: 0.09 s against 0.55 s
    # jitted, which compiles anew for each transformation object; a first check 6.5 s
    # against 3.0 s). 2,100 trainers in one process: 5.4 s op by op, 166 s jitted.
    def two_updates(p: Any, g1: Any, g2: Any) -> Any:
        state = tx.init(p)
        u, state = tx.update(g1, state, p, value=jnp.float32(1.0))
        u, _ = tx.update(g2, state, optax.apply_updates(p, u), value=jnp.float32(0.9))
        return u

    tx = optax.with_extra_args_support(tx)
    g1, g2 = made_up(0.0), made_up(1.3)
    try:
        on_tree = two_updates(params, g1, g2)
        on_flat = two_updates(*(layout.flatten(t) for t in (params, g1, g2)))
        a = [np.asarray(x, np.float64) for x in layout.flatten(on_tree)]
        b = [np.asarray(x, np.float64) for x in jax.tree.leaves(on_flat)]
    except Exception:  # noqa: BLE001  (a transform needing other arguments: no verdict)
        return None
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        return np.inf
    scale = max(max((float(np.abs(x).max()) for x in a if x.size), default=0.0), 1e-30)
    return max((float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True)), default=0.0) / scale


def _widen(tree: Any) -> Any:
    """16-bit floating leaves as float32 (sums and scalings of gradients without overflow)."""
    return jax.tree.map(lambda g: g.astype(jnp.float32) if g.dtype in _16BIT else g, tree)


def _no_new_non_finite(new: Any, old: Any) -> jax.Array:
    """False when an element of a floating leaf of ``new`` is not finite where the same
    element of ``old`` was (bool scalar). Optimizer states may hold inf on purpose (a
    best-so-far loss starts at inf: ``reduce_on_plateau``, :func:`jaxsci.optim.anderson`),
    so "every element finite" would skip every step."""
    flags = [
        jnp.all(jnp.isfinite(n) | ~jnp.isfinite(o))
        for n, o in zip(jax.tree.leaves(new), jax.tree.leaves(old), strict=True)
        if jnp.issubdtype(n.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


def _node_names(tree: Any) -> str:
    """The classes of a pytree's nodes, in order (containers and None left out), e.g.
    ``(ScaleByAdamState, EmptyState)`` for ``optax.adam``'s state: names a state's kind."""
    names: list[str] = []

    def visit(x: Any) -> None:
        children = jax.tree_util.tree_flatten(x, is_leaf=lambda y: y is not x)[0]
        if len(children) == 1 and children[0] is x:
            return  # a leaf
        if x is not None and type(x) not in (tuple, list, dict):
            names.append(type(x).__name__)
        for c in children:
            visit(c)

    visit(tree)
    text = "(" + ", ".join(names) + ")"
    return text if len(text) <= 160 else text[:157] + "...)"


def _leading_size(batch: Any) -> int:
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("the batch has no array leaves")
    sizes = {int(np.shape(x)[0]) if np.ndim(x) else -1 for x in leaves}
    if -1 in sizes:
        raise ValueError("every batch leaf needs a leading batch axis (found a scalar leaf)")
    if len(sizes) != 1:
        raise ValueError(f"batch leaves disagree on the batch size: {sorted(sizes)}")
    return sizes.pop()


class DataParallel:
    """Built by :func:`data_parallel`; see the module docstring."""

    def __init__(
        self,
        loss_fn: Callable[[Any, Any], jax.Array],
        tx: optax.GradientTransformation,
        *,
        info: ProcessInfo,
        mesh: Mesh,
        bucket_bytes: int | None,
        transfer_dtype: Any,
        policy: Policy,
        loss_scale: DynamicLossScale | None,
        flat: bool,
        broadcast_params: bool,
    ) -> None:
        self.loss_fn = loss_fn
        # every transform takes the global loss as ``value`` (optax's extra-args convention:
        # Anderson's loss safeguard reads it; transforms without extra args ignore it)
        self.tx = optax.with_extra_args_support(tx)
        self.info = info
        self.mesh = mesh
        self.bucket_bytes = bucket_bytes
        self.transfer_dtype = transfer_dtype
        self.policy = policy
        self.loss_scale = loss_scale
        self.flat = flat
        self.broadcast_params = broadcast_params
        self.axis = mesh.axis_names[0]
        self.n_devices = mesh.devices.size
        self._mpi = info.comm is not None  # the step all-reduces over processes
        # device collectives get a private communicator so they never interleave with host-side
        # mpi4py calls (tree check, checkpoint barrier) on the user's communicator; cloned by
        # the first init() (collective anyway: construction stays local) and freed by close()
        # or, once the trainer is garbage-collected, by the next init() of any trainer
        # (MPICH allows ~2000 live communicators)
        self._comm: Any = None
        self._free_comm: weakref.finalize | None = None
        self._inflight: list = [None]  # outputs of the last step (the finalizer waits on them)
        self.layout: FlatLayout | None = None
        if self.n_devices == 1:
            # one device: plain placement on it (not jit's default device, local device 0,
            # where every rank of a one-rank-per-accelerator job would otherwise land)
            device = SingleDeviceSharding(mesh.devices.flat[0])
            self._replicated = self._batch_sharding = device
        else:
            self._replicated = NamedSharding(mesh, P())
            self._batch_sharding = NamedSharding(mesh, P(self.axis))
        self._step_fn: Callable | None = None
        self._params_fn: Callable | None = None
        self._traced: set = set()  # batch signatures whose loss traced on every rank
        self._state_def: Any = None  # set by init(): the state's structure, for step()
        self._opt_def: Any = None
        self._want_avals: list = []  # abstract values of the stored parameter leaves
        self._want_params: list = []  # their (shape, dtype)

    # -- set-up ---------------------------------------------------------------------------
    def init(self, params: Any) -> DataParallelState:
        """State for ``params`` (identical tree on every rank; rank 0's values are used).

        Collective under MPI (every rank calls it): checks the trees agree, broadcasts rank
        0's values, and the first call clones the communicator for the step.
        """
        # as JAX arrays: Python numbers become leaves with a dtype, and NumPy float64 the
        # float32 JAX computes in when x64 is off (else the layout kept a float64 group)
        params = self.policy.cast_to_param(jax.tree.map(jnp.asarray, params))
        self._check_same_tree(params)
        layout = FlatLayout.from_tree(params)  # also rejects non-floating parameters
        if self.layout is not None and layout != self.layout:
            raise ValueError("init() called with a different parameter tree than before")
        if self.layout is None and self.flat:
            self._warn_per_leaf_transform(params)
        if self.layout is None and np.dtype(np.float16) in layout.groups:
            self._warn_float16_params()
        self.layout = layout
        if self._mpi:
            _free_queued()  # communicators of trainers collected without close()
        if self._mpi and self._comm is None:
            # after every check that can fail on one rank only: every rank clones, or none
            self._comm = self.info.comm.Clone()
            self._free_comm = weakref.finalize(self, _queue_free, self._comm, self._inflight)
            self._step_fn = None  # a program built before close() holds the freed one
        store = layout.flatten(params) if self.flat else params
        # own copies: step() donates the state's buffers, never the caller's arrays
        store = jax.tree.map(jnp.array, store)
        if self.broadcast_params and self.info.comm is not None and self.info.size > 1:
            store = self._broadcast(store)
        scale = self.loss_scale.init() if self.loss_scale is not None else None
        state = DataParallelState(store, self.tx.init(store), jnp.int32(0), scale)
        state = jax.device_put(state, self._replicated)
        # what step() compares a state with, cheaply (one flatten, one treedef comparison)
        self._state_def = jax.tree.structure(state)
        self._opt_def = jax.tree.structure(state.opt_state)
        stored = jax.tree.leaves(state.params)
        self._want_avals = [x.aval for x in stored]  # what step() returns, usually
        self._want_params = [(x.shape, x.dtype) for x in stored]
        return state

    def close(self) -> None:
        """Free the communicator cloned by ``init`` (local; idempotent).

        Waits for the last step first. Without ``close()``, a collected trainer's
        communicator is freed by the next ``init`` of any trainer. ``step`` then raises
        until ``init`` (collective) is called again.
        """
        if self._free_comm is not None:
            self._free_comm.detach()  # freed here, not queued by the finalizer
            _free_comm(self._comm, self._inflight)
        self._comm, self._free_comm, self._step_fn = None, None, None

    def _warn_per_leaf_transform(self, params: Any) -> None:
        """Warn when ``tx`` treats the flat buffers differently from the leaves (two updates
        on each, in float32, compared; relative difference above 1e-4: rounding is ~1e-7)."""
        diff = _per_leaf_difference(self.tx, params)
        if diff is not None and diff > 1e-4:
            warnings.warn(
                "data_parallel(flat=True): the optimizer treats parameter leaves differently "
                f"(its updates differ by {diff:.1e} of their size between your leaves and "
                "the flat buffers: a per-leaf mask or labels, e.g. adamw(mask=...), or "
                "per-leaf statistics, e.g. lamb, lars, adafactor, novograd). In flat mode "
                "it sees one 1-D buffer per dtype and computes something else. Use "
                "data_parallel(..., flat=False).",
                UserWarning,
                stacklevel=3,
            )

    def _warn_float16_params(self) -> None:
        skip = (
            "with a loss scale such steps are skipped (counted in state.loss_scale.skipped)"
            if self.loss_scale is not None
            else "the parameters turn NaN"
        )
        warnings.warn(
            "data_parallel: float16 parameters: the optimizer then runs in float16, where "
            "small constants underflow (Adam's eps=1e-8 is 0: an element with a zero "
            f"gradient gets a 0/0 = NaN update; {skip}) and updates below a parameter's "
            "float16 rounding (1e-3 of it) are lost. Keep float32 parameters with float16 "
            "compute (get_policy('fp16') and a DynamicLossScale), or use bfloat16.",
            UserWarning,
            stacklevel=3,
        )

    def _check_same_tree(self, params: Any) -> None:
        if self.info.comm is None or self.info.size == 1:
            return
        check_same_tree(params, self.info.comm, "parameter tree")

    def _broadcast(self, store: Any) -> Any:
        comm = self.info.comm
        out = []
        for leaf in jax.tree.leaves(store):
            buf = np.array(leaf)  # writable host copy
            # as raw bytes: MPI has no bfloat16 (mpi4py refuses the buffer)
            comm.Bcast(buf.reshape(-1).view(np.uint8), root=0)
            out.append(jnp.asarray(buf))
        return jax.tree.unflatten(jax.tree.structure(store), out)

    # -- the step -------------------------------------------------------------------------
    def _local_grads(self, store: Any, batch: Any, scale: jax.Array) -> tuple[Any, jax.Array]:
        """Gradient of ``scale * loss`` with respect to the stored parameters, and the loss.

        In flat mode the gradient is taken with respect to the tree of views and then packed
        with one concatenate: differentiating through the slices instead would add one
        full-size padded buffer per leaf.
        """
        compute = self.policy.cast_to_compute

        def scaled_loss(params: Any) -> tuple[jax.Array, jax.Array]:
            loss = jnp.asarray(self.loss_fn(compute(params), compute(batch)))
            if loss.shape != ():
                raise ValueError(
                    f"loss_fn must return a scalar (the mean over its batch), got shape "
                    f"{loss.shape} on one device's share of the batch "
                    f"({_leading_size(batch)} samples per device, {self.n_devices} device(s))"
                )
            loss = loss.astype(jnp.float32)
            return loss * scale, loss

        params = self.layout.unflatten(store) if self.flat else store
        (_, loss), grads = jax.value_and_grad(scaled_loss, has_aux=True)(params)
        if self.flat:
            grads = self.layout.flatten(grads)
        return grads, loss

    def _device_grads(self, store: Any, batch: Any, scale: jax.Array) -> tuple[Any, jax.Array]:
        """Gradients averaged over the local devices (the batch is split along axis 0).

        16-bit gradients come back as float32 (summed over devices without overflow);
        :meth:`_apply` rounds them to the parameter dtype once, after every reduction.
        """
        if self.n_devices == 1:
            grads, loss = self._local_grads(store, batch, scale)
            return _widen(grads), loss

        def body(s: Any, b: Any, sc: jax.Array) -> tuple[Any, jax.Array]:
            # Differentiate with respect to a per-device ("varying") copy of the replicated
            # parameters: the gradient with respect to the replicated input itself is
            # already summed over the devices (the transpose of replication), and the mean
            # below would then keep n_devices times the gradient (what this did until SGD
            # on 4 devices was compared with 1 device; Adam is blind to the scale).
            s = jax.lax.pcast(s, self.axis, to="varying")
            g, loss = self._local_grads(s, b, sc)
            return jax.lax.pmean(_widen(g), self.axis), jax.lax.pmean(loss, self.axis)

        return jax.shard_map(
            body,
            mesh=self.mesh,
            in_specs=(P(), P(self.axis), P()),
            out_specs=(P(), P()),
        )(store, batch, scale)

    def _process_reduce(
        self, grads: Any, loss: jax.Array, n_local: int, scale: jax.Array
    ) -> tuple[Any, jax.Array]:
        """Mean over processes weighted by batch size, unscaled: (gradients, global loss).

        ``grads`` come from :meth:`_device_grads` (16-bit ones widened to float32); every
        product and sum here runs in that dtype, and only ``transfer_dtype`` narrows messages.
        """
        if not self._mpi:
            if self.loss_scale is None:
                return grads, loss
            inv = 1.0 / scale
            return jax.tree.map(lambda g: g * inv.astype(g.dtype), grads), loss
        if n_local == 0:  # weight 0: the mean loss and gradients of no samples are 0 / 0
            grads, loss = jax.tree.map(jnp.zeros_like, grads), jnp.zeros_like(loss)
        n = jnp.float32(n_local)
        stats = jnp.stack([loss * n, n])
        # one message: weighted gradients (16-bit ones as float32), loss, batch sizes
        if self.transfer_dtype is None:
            weighted = jax.tree.map(lambda g: g * n.astype(g.dtype), grads)
            weighted, stats = tree_allreduce(
                (weighted, stats), op="sum", comm=self._comm, bucket_bytes=self.bucket_bytes
            )
            inv = 1.0 / (stats[1] * scale)
            grads = jax.tree.map(lambda g: g * inv.astype(g.dtype), weighted)
            return grads, stats[0] / stats[1]
        # Gradients in 16-bit messages: the loss and batch sizes travel first (exactly), so each
        # rank sends its share n_local / N of the mean. Summed in 16 bits, the shares never exceed
        # the largest local (scaled) gradient, where n_local-weighted sums overflowed float16
        # (65504) at a few hundred samples per rank.
        stats = tree_allreduce(stats, op="sum", comm=self._comm, bucket_bytes=None)
        share = n / stats[1]
        mean = tree_allreduce(
            jax.tree.map(lambda g: g * share.astype(g.dtype), grads),
            op="sum",
            comm=self._comm,
            bucket_bytes=self.bucket_bytes,
            transfer_dtype=self.transfer_dtype,
        )
        inv = 1.0 / scale
        return jax.tree.map(lambda g: g * inv.astype(g.dtype), mean), stats[0] / stats[1]

    def _apply(self, state: DataParallelState, grads: Any, loss: jax.Array) -> DataParallelState:
        # the reduced gradients in the parameter dtype (16-bit ones were averaged in float32)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params, value=loss)
        params = optax.apply_updates(state.params, updates)
        scale_state = state.loss_scale
        if self.loss_scale is not None:
            # the check reads all-reduced values and the update made from them: every rank
            # takes the same branch. The update is checked too: a finite gradient can still
            # give a non-finite one (float16 Adam: eps 1e-8 is 0, so a zero gradient element
            # is 0/0; g**2 overflows), which was accepted and then skipped every later step
            finite = (
                all_finite(grads)
                & jnp.isfinite(loss)
                & all_finite(params)
                & _no_new_non_finite(opt_state, state.opt_state)
            )
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            params = jax.tree.map(keep, params, state.params)
            opt_state = jax.tree.map(keep, opt_state, state.opt_state)
            scale_state = self.loss_scale.adjust(state.loss_scale, finite)  # counts skips
        return DataParallelState(params, opt_state, state.step + 1, scale_state)

    def _scale(self, state: DataParallelState) -> jax.Array:
        return state.loss_scale.scale if self.loss_scale is not None else jnp.float32(1.0)

    def _build(self) -> Callable:
        hybrid = self.n_devices > 1 and self._mpi
        if not hybrid:

            def fused(state: DataParallelState, batch: Any) -> tuple[DataParallelState, Any]:
                scale = self._scale(state)
                grads, loss = self._device_grads(state.params, batch, scale)
                grads, loss = self._process_reduce(grads, loss, _leading_size(batch), scale)
                return self._apply(state, grads, loss), self.policy.cast_to_output(loss)

            return jax.jit(fused, donate_argnums=0)

        grads_prog = jax.jit(
            lambda state, batch: self._device_grads(state.params, batch, self._scale(state))
        )
        reduce_prog = jax.jit(self._process_reduce, static_argnums=2)
        apply_prog = jax.jit(self._apply, donate_argnums=0)

        def three_programs(state: DataParallelState, batch: Any) -> tuple[DataParallelState, Any]:
            grads, loss = grads_prog(state, batch)
            first = lambda x: x.addressable_data(0)  # noqa: E731  (replicated: any copy)
            grads, loss = reduce_prog(
                jax.tree.map(first, grads),
                first(loss),
                _leading_size(batch),
                first(self._scale(state)),
            )
            grads, loss = jax.device_put((grads, loss), self._replicated)
            return apply_prog(state, grads, loss), self.policy.cast_to_output(loss)

        return three_programs

    def _state_problem(self, state: Any) -> str | None:
        """Why ``state`` cannot be stepped by this trainer, or ``None``.

        Runs every step, so the common case is cheap: one flatten, ``is_deleted`` per leaf
        (a state donated to an earlier step crashed XLA: a segfault on a multi-device
        mesh), one comparison with the structure ``init`` made (parameters, optimizer state
        and loss-scale presence at once) and the stored parameters' shapes and dtypes.
        Only a mismatch is then described (:meth:`_state_mismatch`)."""
        if not isinstance(state, DataParallelState):
            return (
                f"state must be the DataParallelState returned by this trainer's init() or "
                f"step(), got {type(state).__name__}"
            )
        leaves, treedef = jax.tree.flatten(state)
        try:
            donated = True in [x.is_deleted() for x in leaves]
        except AttributeError:  # a leaf that is not a jax.Array (NumPy, a Python number)
            donated = any(isinstance(x, jax.Array) and x.is_deleted() for x in leaves)
        if donated:
            return (
                "this state was donated to an earlier step() (its buffers were reused in "
                "place): use the state that step returned (state, loss = dp.step(state, "
                "batch)); keep a copy (jax.tree.map(jnp.copy, state)) to step it twice"
            )
        if treedef == self._state_def:
            stored = leaves[: len(self._want_params)]  # the parameters come first
            try:
                # avals: 5x faster than (shape, dtype) pairs; a weak type or another
                # sharding in them is no mismatch, so (shape, dtype) decide when they differ
                if [x.aval for x in stored] == self._want_avals:
                    return None
                if [(x.shape, x.dtype) for x in stored] == self._want_params:
                    return None
            except AttributeError:  # a leaf that is not a jax.Array: the full comparison
                pass
        return self._state_mismatch(state)

    def _state_mismatch(self, state: DataParallelState) -> str | None:
        """The first part of ``state`` that does not match this trainer (parameters,
        loss-scale presence, optimizer state), described; ``None`` when none does."""
        layout = self.layout
        if self.flat:
            want_def = jax.tree.structure(tuple(range(len(layout.groups))))
            want = list(zip(((n,) for n in layout.sizes), layout.groups, strict=True))
        else:
            want_def = layout.treedef
            want = list(zip(layout.shapes, layout.dtypes, strict=True))
        leaves, treedef = jax.tree.flatten(state.params)
        got = [(tuple(np.shape(x)), np.dtype(getattr(x, "dtype", np.float32))) for x in leaves]
        if treedef != want_def or got != want:
            return self._params_mismatch(want, want_def, got, treedef)
        if state.loss_scale is None and self.loss_scale is not None:
            return (
                "the state has no loss-scale state (loss_scale=None) but this trainer scales "
                "the loss: a state from a trainer built without loss_scale=? Pass the state "
                "from this trainer's init()"
            )
        if state.loss_scale is not None and self.loss_scale is None:
            return (
                "the state has a loss-scale state but this trainer has no loss_scale: a "
                "state from a trainer built with loss_scale=? Pass the state from this "
                "trainer's init()"
            )
        if jax.tree.structure(state.opt_state) != self._opt_def:
            got_kind = _node_names(state.opt_state)
            want_kind = _node_names(self._opt_def.unflatten([0] * self._opt_def.num_leaves))
            if got_kind == want_kind:
                got_kind += " in another structure (other hyperparameters or options?)"
            return (
                f"the state's optimizer state does not match this trainer's optimizer (the "
                f"state holds {got_kind}, this trainer's tx.init makes {want_kind}): a state "
                "from a trainer with another optimizer? Pass the state from this trainer's "
                "init()"
            )
        if jax.tree.structure(state) != self._state_def:
            return (
                "the state's step or loss-scale fields do not match this trainer's "
                f"(step {type(state.step).__name__}, loss_scale "
                f"{type(state.loss_scale).__name__}): pass the state from this trainer's init()"
            )
        return None  # e.g. Python numbers for scalar parameters: accepted, as before

    def _params_mismatch(self, want: list, want_def: Any, got: list, treedef: Any) -> str:
        layout = self.layout
        mode = "flat buffers" if self.flat else "parameter tree"
        if treedef != want_def or len(got) != len(want):
            diff = f"{len(got)} leaves in another structure, this trainer's have {len(want)}"
        else:
            if self.flat:
                names = [f"buffer {g}" for g in range(len(want))]
            else:
                blank = layout.treedef.unflatten([0] * len(layout.shapes))
                names = [
                    jax.tree_util.keystr(p)
                    for p, _ in jax.tree_util.tree_flatten_with_path(blank)[0]
                ]
            diff = next(
                f"{name}: {np.dtype(gd).name}{list(gs)} where this trainer has "
                f"{np.dtype(wd).name}{list(ws)}"
                for name, (ws, wd), (gs, gd) in zip(names, want, got, strict=True)
                if (ws, wd) != (gs, gd)
            )
        return (
            f"the state's parameters do not match this trainer's {mode} ({diff}): a state "
            "from another trainer or model? Pass the state from this trainer's init()"
        )

    def _check_batch(self, state: DataParallelState, batch: Any) -> None:
        """Raise the same ValueError on every rank unless every rank can step ``batch``.

        Checked: ``state`` matches this trainer's layout, the batch leaves share a leading
        size that divides over the local devices, and, for a batch signature (structure,
        shapes, dtypes) not seen before, the loss and its gradient trace on a device's share
        of the batch (``jax.eval_shape``: no compilation). The error raised on the rank where
        a check failed chains the original exception. A local check that fails on one rank
        only would leave the others waiting in the gradient all-reduce forever, so under MPI
        each rank's verdict and batch size are gathered first (one small host collective on
        the caller's communicator).
        """
        signature = None
        cause: Exception | None = None
        try:
            problem = self._state_problem(state)
            n = _leading_size(batch)
            if problem is None and n % self.n_devices:
                problem = (
                    f"this process's batch of {n} does not divide over its {self.n_devices} devices"
                )
            elif problem is None and n > 0:
                signature = tree_signature(batch)[0]
                if signature not in self._traced:
                    share = jax.tree.map(
                        lambda x: jax.ShapeDtypeStruct(
                            (x.shape[0] // self.n_devices, *x.shape[1:]), x.dtype
                        ),
                        batch,
                    )
                    try:
                        jax.eval_shape(
                            lambda s, b: self._local_grads(s, b, jnp.float32(1.0)),
                            state.params,
                            share,
                        )
                    except Exception as err:
                        cause = err
                        what = str(err) if isinstance(err, ValueError) else repr(err)
                        problem = f"loss_fn fails on this batch: {what}"
        except Exception as err:  # any local failure must reach every rank
            cause = err
            n, problem = 0, str(err) if isinstance(err, ValueError) else repr(err)
        comm = self.info.comm
        if comm is None or self.info.size == 1:
            if problem is not None:
                raise ValueError(problem) from cause
            if n == 0:
                raise ValueError("the batch is empty: nothing to take a gradient of")
            if signature is not None:
                self._traced.add(signature)
            return
        everyone = comm.allgather((n, problem))
        bad = [f"rank {r}: {p}" for r, (_, p) in enumerate(everyone) if p is not None]
        if bad:
            raise ValueError("bad local batch, no rank steps: " + "; ".join(bad)) from cause
        if sum(m for m, _ in everyone) == 0:
            raise ValueError(
                f"the batch is empty on every rank ({len(everyone)} ranks): nothing to take a "
                "gradient of"
            )
        if signature is not None and n > 0:
            self._traced.add(signature)

    def step(self, state: DataParallelState, batch: Any) -> tuple[DataParallelState, jax.Array]:
        """One optimizer step on this process's ``batch``; returns (new state, global loss).

        Collective under MPI: every rank calls it. The old ``state``'s buffers are donated
        (reused in place): keep using the new one. Under MPI a rank may hold an empty batch
        (weight 0 in the means), but not every rank. A batch that cannot be stepped (empty
        everywhere, leaves of different lengths, not dividing over the local devices, a
        ``loss_fn`` that fails to trace on it) or a ``state`` that is not this trainer's
        (another parameter layout, optimizer state or loss-scale setting) or was already
        donated to an earlier ``step`` raises ValueError on every rank (with or without MPI;
        the original exception chained where it occurred), before ``state`` is touched.
        """
        if self.layout is None:
            raise ValueError("call init(params) before step()")
        if self._mpi and self._comm is None:
            raise ValueError("this trainer was closed: call init(params) (collective) again")
        self._check_batch(state, batch)
        if self._step_fn is None:
            self._step_fn = self._build()
        batch = jax.device_put(batch, self._batch_sharding)  # the mesh's device(s)
        out = self._step_fn(state, batch)
        if self._mpi:  # close() / the finalizer wait for it before freeing the communicator
            self._inflight[0] = out
        return out

    # -- views ------------------------------------------------------------------------------
    @property
    def batch_sharding(self) -> jax.sharding.Sharding:
        """Where :meth:`step` places this process's batch: split along axis 0 over the local
        devices (the mesh axis), or the one device. A batch already placed with it (e.g.
        ``jaxsci.data.batches(..., sharding=trainer.batch_sharding)`` in one process) is not
        moved again; under MPI, cut the rank's block of each host batch first
        (:meth:`shard_batch`) and let :meth:`step` place it."""
        return self._batch_sharding

    def params(self, state: DataParallelState) -> Any:
        """The user's parameter pytree (param dtype) from ``state``."""
        if not self.flat:
            return state.params
        if self.layout is None:
            raise ValueError("call init(params) first")
        if self._params_fn is None:
            self._params_fn = jax.jit(self.layout.unflatten)
        return self._params_fn(state.params)

    def shard_batch(self, global_batch: Any) -> Any:
        """This process's block of a global batch (the same on every rank), along axis 0.

        Raises ValueError unless the global batch divides over ``size x local devices``.
        """
        n = _leading_size(global_batch)
        per = self.info.size * self.n_devices
        if n % per:
            raise ValueError(
                f"global batch of {n} does not divide over {self.info.size} processes x "
                f"{self.n_devices} devices = {per} shards (remainder {n % per})"
            )
        sl = rank_slice(n, self.info)
        return jax.tree.map(lambda x: x[sl], global_batch)


def data_parallel(
    loss_fn: Callable[[Any, Any], jax.Array],
    tx: optax.GradientTransformation,
    *,
    info: ProcessInfo | None = None,
    mesh: Mesh | None = None,
    bucket_bytes: int | None = None,
    transfer_dtype: Any = None,
    policy: Policy | None = None,
    loss_scale: DynamicLossScale | None = None,
    flat: bool = True,
    broadcast_params: bool = True,
) -> DataParallel:
    """Build a data-parallel trainer for ``loss_fn(params, batch) -> scalar`` and ``tx``.

    Local (no communication, no MPI resource): a rank may build a trainer alone. Its
    ``init`` and ``step`` are collective under MPI; ``close()`` frees the communicator the
    first ``init`` cloned (for a trainer collected without it, the next ``init`` does).

    Args:
      loss_fn: mean loss over the (local) batch; pure, jittable.
      tx: optax transformation (runs on the flat buffer unless ``flat=False``); its update gets
        the global mean loss as ``value=`` (e.g. for :func:`jaxsci.optim.anderson`'s safeguard).
      info: process info (default ``bootstrap()``: MPI when launched by mpirun/srun).
      mesh: 1-D local device mesh (default: all local devices, axis ``"data"``); the state and
        the step live on its devices, a one-device mesh included (one rank per accelerator).
      bucket_bytes: cross-process message size (``None``: one flat message per dtype; ``0``:
        one per leaf); see :func:`jaxsci.parallel.tree_allreduce`.
      transfer_dtype: send gradients as ``jnp.bfloat16`` / ``jnp.float16`` (or ``"bf16"``,
        ``"fp16"``, ... as for :func:`get_policy`; default: own dtype).
      policy: mixed precision policy (default all float32).
      loss_scale: :class:`DynamicLossScale` to scale the loss and skip non-finite steps
        (counted in ``state.loss_scale.skipped``).
      flat: keep parameters and optimizer state as flat per-dtype buffers (fast); ``False``
        keeps the tree, needed for optax transforms that treat leaves differently, which in
        flat mode silently compute something else: ``adamw(mask=...)``,
        ``add_decayed_weights(mask=...)``, ``masked``, ``multi_transform``, ``lamb``,
        ``lars``, ``adafactor``, ``novograd`` (``init`` compares two updates on each
        layout and warns when they differ; see the module docstring).
      broadcast_params: ``init`` copies rank 0's parameter values to every rank.
    """
    # a bad value fails here, with or without MPI; aliases ("bf16") become dtypes
    transfer_dtype = check_transfer(bucket_bytes, transfer_dtype)
    info = info if info is not None else bootstrap()
    mesh = mesh if mesh is not None else make_mesh()
    if len(mesh.axis_names) != 1:
        raise ValueError(
            f"data_parallel needs a 1-D mesh (its axis splits the batch), got axes "
            f"{mesh.axis_names} of sizes {tuple(mesh.shape.values())}: model-parallel axes "
            "are not supported"
        )
    return DataParallel(
        loss_fn,
        tx,
        info=info,
        mesh=mesh,
        bucket_bytes=bucket_bytes,
        transfer_dtype=transfer_dtype,
        policy=policy if policy is not None else Policy(),
        loss_scale=loss_scale,
        flat=flat,
        broadcast_params=broadcast_params,
    )
