"""Training conditional GANs: state, pure update steps, scanned chunks and the fit loop.

The pieces are pure functions of a :class:`GANState` pytree and a :class:`DataPool`, so
the same step trains one conditional model on all labels (the baseline) or, under
``jax.vmap`` over stacked states and pools, one model per label
(:mod:`jaxsci.parallel.per_label`).

* :func:`init_gan_state` -- parameters and optimizer states from a key.
* :func:`make_gan_step` -- ``step(state, pool) -> (state, metrics)``: ``n_critic``
  discriminator/critic updates then one generator update, minibatches drawn (with
  replacement) from the first ``pool.count`` rows of the pool.
* :func:`make_gan_trainer` -- ``run(state, pool, n_steps) -> (state, metrics[n_steps])``
  with ``lax.scan`` (one compiled call per chunk of steps).
* :func:`fit_gan` -- host loop over chunks with a progress bar, Orbax checkpoints and
  resume from the latest one.
* :func:`train_per_label` -- one GAN per label, stacked (vmap), sharded over a device mesh
  or split over MPI ranks; :func:`train_conditional` -- the single conditional baseline.
* :func:`sample_images`, :func:`sample_per_label` -- images for given labels.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxsci.models.gan import CGAN, check_labels
from jaxsci.parallel.bootstrap import ProcessInfo, bootstrap
from jaxsci.parallel.mesh import make_mesh
from jaxsci.parallel.per_label import (
    gather_over_ranks,
    group_by_label,
    label_keys,
    rank_labels,
    shard_over_labels,
)
from jaxsci.train.checkpoint import Checkpointer

__all__ = [
    "DataPool",
    "GANState",
    "PerLabelResult",
    "discriminator_loss",
    "fit_gan",
    "generator_loss",
    "gradient_penalty",
    "init_gan_state",
    "label_checkpoint_folder",
    "make_gan_step",
    "make_gan_trainer",
    "make_pool",
    "per_label_pools",
    "sample_images",
    "sample_per_label",
    "train_conditional",
    "train_per_label",
]

Metrics = dict[str, jax.Array]


class DataPool(NamedTuple):
    """Training images to draw minibatches from.

    Attributes:
      images: ``[N, S, S, C]`` on [-1, 1]; rows at and after ``count`` are padding.
      labels: ``[N]`` int32 class of each row.
      count: scalar int32, number of valid rows (>= 1).
    """

    images: jax.Array
    labels: jax.Array
    count: jax.Array


class GANState(NamedTuple):
    """Everything that changes during GAN training (a pytree; stackable over labels)."""

    g_params: Any
    d_params: Any
    g_opt_state: Any
    d_opt_state: Any
    key: jax.Array  # PRNG key (raw uint32) for minibatches and noise
    step: jax.Array  # scalar int32, generator updates done


def make_pool(images: Any, labels: Any, n_labels: int | None = None) -> DataPool:
    """A :class:`DataPool` holding all of ``images [N, S, S, C]`` with integer ``labels [N]``
    (in ``0 .. n_labels - 1`` when ``n_labels`` is given: one bad label made training NaN)."""
    images = jnp.asarray(images, jnp.float32)
    if not np.issubdtype(np.asarray(labels).dtype, np.integer):
        raise ValueError(f"labels must be integers, got {np.asarray(labels).dtype}")
    if n_labels is not None:
        check_labels(np.asarray(labels), n_labels)
    labels = jnp.asarray(labels, jnp.int32)
    if images.ndim != 4 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"images must be [N, S, S, C] with labels [N]; got {images.shape} and {labels.shape}"
        )
    if images.shape[0] == 0:
        raise ValueError("the data pool is empty: no training images")
    return DataPool(images, labels, jnp.asarray(images.shape[0], jnp.int32))


def init_gan_state(
    cgan: CGAN,
    g_opt: optax.GradientTransformation,
    d_opt: optax.GradientTransformation,
    key: jax.Array,
) -> GANState:
    """Initial parameters (from ``key``) and optimizer states; vmappable over keys.

    Runs as one compiled program, cached per ``(cgan, g_opt, d_opt)``: flax's ``init``
    called eagerly compiles every operation on its own (about 20 s for the two tiny test
    models on a 2-core CPU, 1 s jitted).
    """
    return _init_gan_state(cgan, g_opt, d_opt, key)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _init_gan_state(cgan, g_opt, d_opt, key):
    k_g, k_d, k_state = jax.random.split(key, 3)
    labels = jnp.zeros((1,), jnp.int32)
    g_params = cgan.generator.init(k_g, jnp.zeros((1, cgan.latent_dim)), labels)
    d_params = cgan.discriminator.init(k_d, jnp.zeros((1, *cgan.image_shape)), labels)
    return GANState(
        g_params,
        d_params,
        g_opt.init(g_params),
        d_opt.init(d_params),
        k_state,
        jnp.zeros((), jnp.int32),
    )


def _draw(pool: DataPool, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    idx = jax.random.randint(key, (batch_size,), 0, pool.count)
    return pool.images[idx], pool.labels[idx]


def discriminator_loss(
    d_real: jax.Array, d_fake: jax.Array, loss: Literal["dcgan", "wgan-gp"]
) -> tuple[jax.Array, jax.Array]:
    """Discriminator/critic loss from its outputs ``[B]`` on real and fake images, and the gap
    ``mean(d_real) - mean(d_fake)`` (for ``"wgan-gp"`` the critic's Wasserstein-1 estimate).

    ``"dcgan"`` (outputs are logits): ``mean softplus(-d_real) + mean softplus(d_fake)``
    (binary cross-entropy, real = 1); ``"wgan-gp"``: ``-gap`` (the gradient penalty is added
    by the caller, :func:`gradient_penalty`).
    """
    gap = jnp.mean(d_real) - jnp.mean(d_fake)
    if loss == "wgan-gp":
        return -gap, gap
    return jnp.mean(jax.nn.softplus(-d_real)) + jnp.mean(jax.nn.softplus(d_fake)), gap


def generator_loss(d_fake: jax.Array, loss: Literal["dcgan", "wgan-gp"]) -> jax.Array:
    """Generator loss from the discriminator's outputs ``[B]`` on its images: the
    non-saturating ``mean softplus(-d_fake)`` (``"dcgan"``) or ``-mean(d_fake)`` (``"wgan-gp"``)."""
    return -jnp.mean(d_fake) if loss == "wgan-gp" else jnp.mean(jax.nn.softplus(-d_fake))


def gradient_penalty(critic: Callable[[jax.Array], jax.Array], x_hat: jax.Array) -> jax.Array:
    """WGAN-GP penalty ``mean_b (||grad_x critic(x_hat)_b|| - 1)^2`` (Gulrajani et al. 2017).

    ``critic`` maps images ``[B, H, W, C]`` to ``[B]`` with no coupling across the batch (no
    batch norm), so the gradient of the summed output gives each sample's own gradient.
    """
    grads = jax.grad(lambda x: jnp.sum(critic(x)))(x_hat)
    axes = tuple(range(1, grads.ndim))
    norm = jnp.sqrt(jnp.sum(grads**2, axis=axes) + 1e-12)
    return jnp.mean((norm - 1.0) ** 2)


def make_gan_step(
    cgan: CGAN,
    g_opt: optax.GradientTransformation,
    d_opt: optax.GradientTransformation,
    batch_size: int,
) -> Callable[[GANState, DataPool], tuple[GANState, Metrics]]:
    """One generator update preceded by ``cgan.n_critic`` discriminator/critic updates.

    Fake images are conditioned on the labels of a real minibatch, so the label
    distribution follows the pool's. Metrics: ``d_loss`` (last critic update), ``g_loss``
    and, for W-CGAN, ``w_dist`` (critic estimate of the Wasserstein-1 distance).
    """
    G, D = cgan.generator, cgan.discriminator
    wgan = cgan.loss == "wgan-gp"

    def d_loss_fn(d_params, g_params, real, labels, z, eps):
        fake = jax.lax.stop_gradient(G.apply(g_params, z, labels))
        d_real = D.apply(d_params, real, labels)
        d_fake = D.apply(d_params, fake, labels)
        loss, gap = discriminator_loss(d_real, d_fake, cgan.loss)
        if wgan:
            x_hat = eps * real + (1.0 - eps) * fake
            critic = lambda x: D.apply(d_params, x, labels)  # noqa: E731
            loss = loss + cgan.gp_weight * gradient_penalty(critic, x_hat)
        return loss, gap

    def g_loss_fn(g_params, d_params, labels, z):
        d_fake = D.apply(d_params, G.apply(g_params, z, labels), labels)
        return generator_loss(d_fake, cgan.loss)

    def d_update(carry, key):
        state, pool = carry
        k_x, k_z, k_e = jax.random.split(key, 3)
        real, labels = _draw(pool, k_x, batch_size)
        z = jax.random.normal(k_z, (batch_size, cgan.latent_dim))
        eps = jax.random.uniform(k_e, (batch_size, 1, 1, 1))
        (loss, w), grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
            state.d_params, state.g_params, real, labels, z, eps
        )
        updates, d_opt_state = d_opt.update(grads, state.d_opt_state, state.d_params)
        d_params = optax.apply_updates(state.d_params, updates)
        return (state._replace(d_params=d_params, d_opt_state=d_opt_state), pool), (loss, w)

    def step(state: GANState, pool: DataPool) -> tuple[GANState, Metrics]:
        key, k_d, k_y, k_z = jax.random.split(state.key, 4)
        (state, _), (d_losses, w_dists) = jax.lax.scan(
            d_update, (state, pool), jax.random.split(k_d, cgan.n_critic)
        )
        _, labels = _draw(pool, k_y, batch_size)
        z = jax.random.normal(k_z, (batch_size, cgan.latent_dim))
        g_loss, grads = jax.value_and_grad(g_loss_fn)(state.g_params, state.d_params, labels, z)
        updates, g_opt_state = g_opt.update(grads, state.g_opt_state, state.g_params)
        g_params = optax.apply_updates(state.g_params, updates)
        state = state._replace(
            g_params=g_params, g_opt_state=g_opt_state, key=key, step=state.step + 1
        )
        metrics = {"d_loss": d_losses[-1], "g_loss": g_loss}
        if wgan:
            metrics["w_dist"] = w_dists[-1]
        return state, metrics

    return step


def make_gan_trainer(
    cgan: CGAN,
    g_opt: optax.GradientTransformation,
    d_opt: optax.GradientTransformation,
    batch_size: int,
) -> Callable[[GANState, DataPool, int], tuple[GANState, Metrics]]:
    """``run(state, pool, n_steps) -> (state, metrics)``: ``n_steps`` steps in one ``lax.scan``.

    Metrics come back with a leading ``[n_steps]`` axis. ``n_steps`` must be static
    (``jax.jit(run, static_argnums=2)``); ``jax.vmap(run, in_axes=(0, 0, None))`` trains a
    stack of independent models.
    """
    step = make_gan_step(cgan, g_opt, d_opt, batch_size)

    def run(state: GANState, pool: DataPool, n_steps: int) -> tuple[GANState, Metrics]:
        return jax.lax.scan(lambda s, _: step(s, pool), state, None, length=n_steps)

    return run


def sample_images(cgan: CGAN, g_params: Any, key: jax.Array, labels: jax.Array) -> jax.Array:
    """Generated images ``[B, S, S, C]`` on [-1, 1], conditioned on ``labels [B]``."""
    check_labels(labels, cgan.n_labels)
    labels = jnp.asarray(labels, jnp.int32)
    z = jax.random.normal(key, (labels.shape[0], cgan.latent_dim))
    return cgan.generator.apply(g_params, z, labels)


def fit_gan(
    run_chunk: Callable[[GANState, int], tuple[GANState, Metrics]],
    state: GANState,
    *,
    n_steps: int,
    chunk_steps: int,
    checkpointer: Checkpointer | None = None,
    desc: str = "gan",
    progress: bool = True,
) -> tuple[GANState, dict[str, np.ndarray]]:
    """Run ``run_chunk(state, k)`` until ``n_steps`` generator updates are done.

    Args:
      run_chunk: ``(state, k) -> (state, metrics)`` doing ``k`` steps (e.g. a jitted, vmapped
        or sharded trainer with its data bound); each metric has shape ``[..., k]`` (steps
        last, any leading model-stack axes first).
      state: initial state (single model or stacked per label); replaced by the latest
        checkpoint when ``checkpointer`` has one.
      n_steps: total generator updates.
      chunk_steps: steps per compiled call; a checkpoint is written after each chunk.
      checkpointer: an Orbax :class:`~jaxsci.train.checkpoint.Checkpointer`; training resumes
        from its latest step (state and metric history) and saves after every chunk.
      desc: progress-bar label.
      progress: show a tqdm progress bar.

    Returns:
      The final state and the metric histories ``{name: [..., n_steps]}`` (numpy).
    """
    from tqdm.auto import tqdm

    if n_steps < 0 or chunk_steps < 1:
        raise ValueError(f"need n_steps >= 0 and chunk_steps >= 1, got {n_steps}, {chunk_steps}")
    done, history = 0, {}
    if checkpointer is not None and checkpointer.latest_step() is not None:
        done = checkpointer.latest_step()
        if done > n_steps:
            raise ValueError(f"the checkpoint is at step {done}, past n_steps={n_steps}")
        shapes = jax.eval_shape(lambda s: run_chunk(s, 1)[1], state)
        target_history = {
            name: np.zeros((*v.shape[:-1], done), v.dtype) for name, v in shapes.items()
        }
        restored = checkpointer.restore({"state": state, "history": target_history}, done)
        state, history = restored["state"], jax.tree.map(np.asarray, restored["history"])
    bar = tqdm(total=n_steps, initial=done, desc=desc, disable=not progress, leave=False)
    while done < n_steps:
        k = min(chunk_steps, n_steps - done)
        state, metrics = run_chunk(state, k)
        done += k
        metrics = jax.tree.map(np.asarray, jax.device_get(metrics))
        history = {
            name: np.concatenate([history[name], v], axis=-1) if name in history else v
            for name, v in metrics.items()
        }
        if checkpointer is not None:
            checkpointer.save(done, {"state": state, "history": history}, force=True)
        post = {name: f"{float(np.mean(v[..., -1])):.3g}" for name, v in metrics.items()}
        bar.set_postfix(post, refresh=False)
        bar.update(k)
    bar.close()
    return state, history


class PerLabelResult(NamedTuple):
    """Per-label training outcome, stacked in ``labels`` order.

    Attributes:
      labels: ``[L]`` the labels, one model each.
      state: :class:`GANState` with a leading ``[L]`` axis on every leaf (numpy).
      history: ``{metric: [L, n_steps]}``.
    """

    labels: np.ndarray
    state: GANState
    history: dict[str, np.ndarray]


def per_label_pools(images: Any, labels: Any, label_set: Sequence[int]) -> DataPool:
    """Stacked :class:`DataPool` ``[L, n_max, ...]``, one per label (ValueError if one is empty)."""
    grouped, counts = group_by_label(np.asarray(images, np.float32), np.asarray(labels), label_set)
    lab = np.broadcast_to(np.asarray(label_set, np.int32)[:, None], grouped.shape[:2])
    return DataPool(jnp.asarray(grouped), jnp.asarray(lab), jnp.asarray(counts))


def train_per_label(
    cgan: CGAN,
    g_opt: optax.GradientTransformation,
    d_opt: optax.GradientTransformation,
    images: Any,
    labels: Any,
    *,
    key: jax.Array,
    label_set: Sequence[int],
    n_steps: int,
    batch_size: int,
    chunk_steps: int = 100,
    strategy: Literal["vmap", "shard", "mpi"] = "vmap",
    mesh: Mesh | None = None,
    info: ProcessInfo | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> PerLabelResult:
    """Train one GAN per label on that label's images only, all labels concurrently.

    The model of label ``l`` starts from ``fold_in(key, l)`` and sees only rows with label
    ``l``, so it is the same whichever strategy runs it:

    * ``"vmap"``: all labels stacked and vmapped on the default device;
    * ``"shard"``: the label axis split over ``mesh`` (1-D; default: all local devices);
    * ``"mpi"``: labels split into contiguous blocks over the ranks of ``info`` (default
      :func:`~jaxsci.parallel.bootstrap`), each rank vmaps its block; no communication until
      the results are gathered (every rank returns all labels).

    Args:
      images: ``[N, S, S, C]`` on [-1, 1]; labels: ``[N]`` ints.
      key: raw PRNG key (``jax.random.PRNGKey``), the same on every rank.
      label_set: labels to train (each needs data).
      n_steps: generator updates per label; batch_size: images per update per label.
      chunk_steps: steps per compiled call (progress / checkpoint granularity).
      checkpoint_dir: Orbax checkpoints, resumed from if present. Each block of labels trained
        together (all labels for "vmap"/"shard", one rank's block for "mpi") writes its own
        ``labels-<l0>-<l1>-...`` sub-folder (independent, no collective), so a run resumes
        with any strategy or rank count: a block with no checkpoint of its own is assembled
        from the newest step that every block holding its labels has saved.

    Raises:
      ValueError: a label without data, more ranks than labels, unknown strategy.
    """
    label_set = np.asarray(label_set)
    check_labels(label_set, cgan.n_labels)  # each model is conditioned on its own label
    if strategy not in ("vmap", "shard", "mpi"):
        raise ValueError(f"strategy must be 'vmap', 'shard' or 'mpi', got {strategy!r}")
    local = label_set
    single = ProcessInfo(rank=0, size=1, local_device_count=jax.local_device_count())
    if strategy == "mpi":
        info = info if info is not None else bootstrap()
        local = rank_labels(label_set, info)
    pools = per_label_pools(images, labels, local)
    states = jax.vmap(lambda k: init_gan_state(cgan, g_opt, d_opt, k))(label_keys(key, local))
    run = make_gan_trainer(cgan, g_opt, d_opt, batch_size)
    if strategy == "shard":
        mesh = mesh if mesh is not None else make_mesh(axis_name="label")
        compiled: dict[int, Callable] = {}

        def run_chunk(s, k):
            if k not in compiled:
                compiled[k] = shard_over_labels(lambda s1, p1: run(s1, p1, k), mesh)
            return compiled[k](s, pools)
    else:
        stacked = jax.jit(jax.vmap(run, in_axes=(0, 0, None)), static_argnums=2)
        run_chunk = lambda s, k: stacked(s, pools, k)
    ckpt = None
    if checkpoint_dir is not None:
        folder = label_checkpoint_folder(checkpoint_dir, local)
        ckpt = Checkpointer(folder, keep=2, info=single)
        if ckpt.latest_step() is None:

            @functools.cache
            def metric_dtypes() -> dict[str, Any]:  # traces the step: once, and only if needed
                one = jax.tree.map(lambda x: x[0], (states, pools))
                metrics = jax.eval_shape(lambda s, p: run(s, p, 1)[1], *one)
                return {k: v.dtype for k, v in metrics.items()}

            def block_target(block: Sequence[int], step: int) -> dict[str, Any]:
                """Shapes of a saved block's ``{"state", "history"}`` at ``step``."""
                init = jax.vmap(lambda k: init_gan_state(cgan, g_opt, d_opt, k))
                return {
                    "state": jax.eval_shape(init, label_keys(key, block)),
                    "history": {
                        k: jax.ShapeDtypeStruct((len(block), step), dt)
                        for k, dt in metric_dtypes().items()
                    },
                }

            _assemble_from_other_blocks(ckpt, checkpoint_dir, local, block_target)
    is_root = info is None or info.is_root
    try:
        state, history = fit_gan(
            run_chunk,
            states,
            n_steps=n_steps,
            chunk_steps=chunk_steps,
            checkpointer=ckpt,
            desc=f"per-label {cgan.loss} x{len(local)}",
            progress=progress and is_root,
        )
    finally:
        if ckpt is not None:
            ckpt.close()
    if strategy == "mpi":
        state, history = gather_over_ranks((state, history), info)
    state, history = jax.tree.map(np.asarray, jax.device_get((state, history)))
    return PerLabelResult(np.asarray(label_set, np.int32), state, history)


def _block_name(labels: Sequence[int]) -> str:
    """Checkpoint folder name of the per-label models of ``labels`` trained together."""
    return "labels-" + "-".join(str(int(lab)) for lab in labels)


def label_checkpoint_folder(checkpoint_dir: str | os.PathLike, labels: Sequence[int]) -> str:
    """Checkpoint folder of the per-label models of ``labels`` trained together."""
    return os.path.join(os.fspath(checkpoint_dir), _block_name(labels))


def _saved_blocks(checkpoint_dir: str | os.PathLike) -> dict[tuple[int, ...], str]:
    """``{labels: folder}`` of every per-label checkpoint block under ``checkpoint_dir``."""
    root = os.fspath(checkpoint_dir)
    blocks = {}
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        parts = name.split("-")
        if parts[0] == "labels" and len(parts) > 1 and all(p.isdigit() for p in parts[1:]):
            blocks[tuple(int(p) for p in parts[1:])] = os.path.join(root, name)
    return blocks


def _assemble_from_other_blocks(
    ckpt: Checkpointer,
    checkpoint_dir: str | os.PathLike,
    labels: np.ndarray,
    block_target: Callable[[Sequence[int], int], dict[str, Any]],
) -> None:
    """Save into ``ckpt`` the models of ``labels`` at the newest step that every saved block
    holding them has, cut out of those blocks' checkpoints.

    Lets a run resume after its labels were split differently (another rank count or
    strategy). Does nothing when no saved block holds any of ``labels``.

    Args:
      block_target: ``(labels, step) -> {"state", "history"}`` of ``jax.ShapeDtypeStruct``
        stacked over ``labels``, the restore target of a saved block (called only when a
        block is restored).

    Raises:
      ValueError: some of ``labels`` are saved and others not, or their blocks share no step.
    """
    mine = set(labels.tolist())
    single = ProcessInfo(rank=0, size=1, local_device_count=jax.local_device_count())
    readers = {}
    for block, folder in _saved_blocks(checkpoint_dir).items():
        if block != tuple(labels.tolist()) and mine & set(block):
            reader = Checkpointer(folder, keep=None, info=single)
            if reader.latest_step() is None:  # stopped before its first save
                reader.close()
            else:
                readers[block] = reader
    try:
        source = {}
        for lab in labels.tolist():
            holders = [b for b in readers if lab in b]
            if holders:
                source[lab] = holders[0]
        if not source:
            return
        missing = sorted(mine - set(source))
        if missing:
            raise ValueError(
                f"checkpoints in {os.fspath(checkpoint_dir)} hold labels {sorted(source)} but "
                f"not {missing}: cannot resume the block of labels {labels.tolist()}"
            )
        used = sorted(set(source.values()))
        common = set.intersection(*(set(readers[b].all_steps()) for b in used))
        if not common:
            names = [_block_name(b) for b in used]
            raise ValueError(f"the checkpoint blocks {names} share no saved step")
        step = max(common)
        restored = {}
        for b in used:
            restored[b] = readers[b].restore(block_target(b, step), step)
    finally:
        for reader in readers.values():
            reader.close()
    rows = [(restored[source[lab]], source[lab].index(lab)) for lab in labels.tolist()]
    stacked = jax.tree.map(
        lambda *leaves: np.stack(
            [np.asarray(x)[i] for x, (_, i) in zip(leaves, rows, strict=True)]
        ),
        *[r for r, _ in rows],
    )
    ckpt.save(step, stacked, force=True)


def train_conditional(
    cgan: CGAN,
    g_opt: optax.GradientTransformation,
    d_opt: optax.GradientTransformation,
    images: Any,
    labels: Any,
    *,
    key: jax.Array,
    n_steps: int,
    batch_size: int,
    chunk_steps: int = 100,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[GANState, dict[str, np.ndarray]]:
    """Train ONE conditional GAN on all labels (the baseline); returns ``(state, history)``."""
    pool = make_pool(images, labels, cgan.n_labels)
    state = init_gan_state(cgan, g_opt, d_opt, key)
    run = jax.jit(make_gan_trainer(cgan, g_opt, d_opt, batch_size), static_argnums=2)
    ckpt = None
    if checkpoint_dir is not None:
        info = ProcessInfo(rank=0, size=1, local_device_count=jax.local_device_count())
        ckpt = Checkpointer(checkpoint_dir, keep=2, info=info)
    try:
        return fit_gan(
            lambda s, k: run(s, pool, k),
            state,
            n_steps=n_steps,
            chunk_steps=chunk_steps,
            checkpointer=ckpt,
            desc=f"conditional {cgan.loss}",
            progress=progress,
        )
    finally:
        if ckpt is not None:
            ckpt.close()


def sample_per_label(
    cgan: CGAN, result: PerLabelResult, key: jax.Array, n_per_label: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n_per_label`` images from each label's generator: ``(images [L*n, S, S, C], labels)``.

    Label ``l`` uses noise from ``fold_in(key, l)``.
    """
    labs = jnp.asarray(result.labels)

    def one(g_params, lab):
        k = jax.random.fold_in(key, lab)
        return sample_images(cgan, g_params, k, jnp.full((n_per_label,), lab))

    images = jax.jit(jax.vmap(one))(result.state.g_params, labs)
    images = np.asarray(images).reshape(-1, *cgan.image_shape)
    return images, np.repeat(result.labels, n_per_label)
