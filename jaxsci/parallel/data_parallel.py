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

Why flat buffers: on XLA:CPU each small op costs tens of microseconds, so a 200-leaf model
spends more time in 200 per-leaf update ops (and in packing gradients into one message and
unpacking them) than in the all-reduce itself. Here the model sees static slices (views) of
the flat buffer, which XLA fuses into their consumers; the gradient, taken with respect to those
views, is packed with one concatenate, all-reduced as one message (or a few buckets), and the
optax update runs on the flat buffer: a handful of fused ops, whatever the number of leaves.
Optax transformations that treat leaves differently (``masked``, ``multi_transform``,
per-layer trust ratios such as LARS/LAMB) need ``flat=False``, which keeps the user's tree in
the state and all-reduces it in buckets.

Hybrid (several local devices and several processes): mpi4jax calls cannot run inside a
multi-device program, so the step runs three programs: gradients over the local mesh, the
cross-process all-reduce on the mesh's first device, and the (replicated) update.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxsci.parallel.bootstrap import ProcessInfo, bootstrap, rank_slice
from jaxsci.parallel.collectives import _16BIT, check_transfer, tree_allreduce
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
      loss_scale: dynamic loss-scale state, or ``None`` without loss scaling.
    """

    params: Any
    opt_state: Any
    step: jax.Array
    loss_scale: LossScaleState | None


def tree_signature(tree: Any) -> tuple[str, list[str]]:
    """Hash of a pytree's structure, shapes and dtypes, and the per-leaf descriptions hashed."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    desc = [
        f"{jax.tree_util.keystr(path)}:{np.dtype(leaf.dtype).name}{list(np.shape(leaf))}"
        for path, leaf in leaves
    ]
    text = str(jax.tree.structure(tree)) + "|" + ";".join(desc)
    return hashlib.sha256(text.encode()).hexdigest(), desc


def _widen(tree: Any) -> Any:
    """16-bit floating leaves as float32 (sums and scalings of gradients without overflow)."""
    return jax.tree.map(lambda g: g.astype(jnp.float32) if g.dtype in _16BIT else g, tree)


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
        # device collectives get a private communicator so they never interleave with host-side
        # mpi4py calls (tree check, checkpoint barrier) on the user's communicator
        self._comm = info.comm.Clone() if info.comm is not None else None
        self.layout: FlatLayout | None = None
        self._replicated = NamedSharding(mesh, P())
        self._batch_sharding = NamedSharding(mesh, P(self.axis))
        self._step_fn: Callable | None = None
        self._params_fn: Callable | None = None
        self._traced: set = set()  # batch signatures whose loss traced on every rank

    # -- set-up ---------------------------------------------------------------------------
    def init(self, params: Any) -> DataParallelState:
        """State for ``params`` (identical tree on every rank; rank 0's values are used)."""
        # as JAX arrays: Python numbers become leaves with a dtype, and NumPy float64 the
        # float32 JAX computes in when x64 is off (else the layout kept a float64 group)
        params = self.policy.cast_to_param(jax.tree.map(jnp.asarray, params))
        self._check_same_tree(params)
        layout = FlatLayout.from_tree(params)  # also rejects non-floating parameters
        if self.layout is not None and layout != self.layout:
            raise ValueError("init() called with a different parameter tree than before")
        self.layout = layout
        store = layout.flatten(params) if self.flat else params
        # own copies: step() donates the state's buffers, never the caller's arrays
        store = jax.tree.map(jnp.array, store)
        if self.broadcast_params and self.info.comm is not None and self.info.size > 1:
            store = self._broadcast(store)
        scale = self.loss_scale.init() if self.loss_scale is not None else None
        state = DataParallelState(store, self.tx.init(store), jnp.int32(0), scale)
        if self.n_devices > 1:
            state = jax.device_put(state, self._replicated)
        return state

    def _check_same_tree(self, params: Any) -> None:
        digest, desc = tree_signature(params)
        if self.info.comm is None or self.info.size == 1:
            return
        everyone = self.info.comm.allgather((digest, desc))
        digests = [d for d, _ in everyone]
        if len(set(digests)) == 1:
            return
        other = next(r for r, d in enumerate(digests) if d != digests[0])
        ref, bad = everyone[0][1], everyone[other][1]
        diff = next(
            (
                f"leaf {i}: rank 0 has {a}, rank {other} has {b}"
                for i, (a, b) in enumerate(zip(ref, bad, strict=False))
                if a != b
            ),
            f"rank 0 has {len(ref)} leaves, rank {other} has {len(bad)}",
        )
        groups: dict[str, list[int]] = {}
        for r, d in enumerate(digests):
            groups.setdefault(d, []).append(r)
        raise ValueError(
            "ranks disagree on the parameter tree (structure, shapes or dtypes): rank groups "
            f"{sorted(groups.values())}; first difference: {diff}"
        )

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
                raise ValueError(f"loss_fn must return a scalar, got shape {loss.shape}")
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
        if self._comm is None:
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
            # the check reads all-reduced values: every rank takes the same branch
            finite = all_finite(grads) & jnp.isfinite(loss)
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            params = jax.tree.map(keep, params, state.params)
            opt_state = jax.tree.map(keep, opt_state, state.opt_state)
            scale_state = self.loss_scale.adjust(state.loss_scale, finite)
        return DataParallelState(params, opt_state, state.step + 1, scale_state)

    def _scale(self, state: DataParallelState) -> jax.Array:
        return state.loss_scale.scale if self.loss_scale is not None else jnp.float32(1.0)

    def _build(self) -> Callable:
        if self.layout is None:
            raise ValueError("call init(params) before step()")
        hybrid = self.n_devices > 1 and self._comm is not None
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

    def _check_batch(self, state: DataParallelState, batch: Any) -> None:
        """Raise the same ValueError on every rank unless every rank's batch can be stepped.

        A local check that fails on one rank only would leave the others waiting in the
        gradient all-reduce forever, so under MPI each rank's verdict and batch size are
        gathered first (one small host collective on the caller's communicator). For a batch
        signature (structure, shapes, dtypes) not seen before, the verdict includes tracing
        the loss and its gradient on a device's share of the batch (``jax.eval_shape``: no
        compilation): a ``loss_fn`` that fails on one rank only also fails everywhere.
        """
        signature = None
        try:
            n = _leading_size(batch)
            problem = None
            if n % self.n_devices:
                problem = (
                    f"this process's batch of {n} does not divide over its {self.n_devices} devices"
                )
            elif self.info.comm is not None and self.info.size > 1:
                signature = tree_signature(batch)[0]
                if signature not in self._traced and n > 0:
                    share = jax.tree.map(
                        lambda x: jax.ShapeDtypeStruct(
                            (x.shape[0] // self.n_devices, *x.shape[1:]), x.dtype
                        ),
                        batch,
                    )
                    jax.eval_shape(
                        lambda s, b: self._local_grads(s, b, jnp.float32(1.0)),
                        state.params,
                        share,
                    )
        except Exception as err:  # any local failure must reach every rank
            n, problem = 0, str(err) if isinstance(err, ValueError) else repr(err)
        comm = self.info.comm
        if comm is None or self.info.size == 1:
            if problem is not None:
                raise ValueError(problem)
            if n == 0:
                raise ValueError("the batch is empty: nothing to take a gradient of")
            return
        everyone = comm.allgather((n, problem))
        bad = [f"rank {r}: {p}" for r, (_, p) in enumerate(everyone) if p is not None]
        if bad:
            raise ValueError("bad local batch, no rank steps: " + "; ".join(bad))
        if sum(m for m, _ in everyone) == 0:
            raise ValueError(
                f"the batch is empty on every rank ({len(everyone)} ranks): nothing to take a "
                "gradient of"
            )
        if signature is not None and n > 0:
            self._traced.add(signature)

    def step(self, state: DataParallelState, batch: Any) -> tuple[DataParallelState, jax.Array]:
        """One optimizer step on this process's ``batch``; returns (new state, global loss).

        The old ``state``'s buffers are donated (reused in place): keep using the new one.
        Under MPI a rank may hold an empty batch (weight 0 in the means), but not every rank.
        A batch that cannot be stepped (empty everywhere, leaves of different lengths, not
        dividing over the local devices, a ``loss_fn`` that fails to trace on it) raises
        ValueError on every rank, before ``state`` is touched.
        """
        self._check_batch(state, batch)
        if self._step_fn is None:
            self._step_fn = self._build()
        if self.n_devices > 1:
            batch = jax.device_put(batch, self._batch_sharding)
        return self._step_fn(state, batch)

    # -- views ------------------------------------------------------------------------------
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

    Args:
      loss_fn: mean loss over the (local) batch; pure, jittable.
      tx: optax transformation (runs on the flat buffer unless ``flat=False``); its update gets
        the global mean loss as ``value=`` (e.g. for :func:`jaxsci.optim.anderson`'s safeguard).
      info: process info (default ``bootstrap()``: MPI when launched by mpirun/srun).
      mesh: 1-D local device mesh (default: all local devices, axis ``"data"``).
      bucket_bytes: cross-process message size (``None``: one flat message per dtype; ``0``:
        one per leaf); see :func:`jaxsci.parallel.tree_allreduce`.
      transfer_dtype: send gradients as ``jnp.bfloat16`` / ``jnp.float16`` (default: own dtype).
      policy: mixed precision policy (default all float32).
      loss_scale: :class:`DynamicLossScale` to scale the loss and skip non-finite steps.
      flat: keep parameters and optimizer state as flat per-dtype buffers (fast); ``False``
        keeps the tree (needed for optax transforms that treat leaves differently).
      broadcast_params: ``init`` copies rank 0's parameter values to every rank.
    """
    check_transfer(bucket_bytes, transfer_dtype)  # a bad value fails here, with or without MPI
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
