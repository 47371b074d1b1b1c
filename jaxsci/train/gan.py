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
* :func:`run_settings` -- what defines a run (model, optimizers, batch, key, data), saved
  with its checkpoints: a resume with other settings is refused, naming them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxsci._checks import is_int_at_least
from jaxsci.models.gan import CGAN, check_labels
from jaxsci.parallel.bootstrap import ProcessInfo, bootstrap
from jaxsci.parallel.mesh import make_mesh
from jaxsci.parallel.per_label import (
    _label_counts,
    gather_over_ranks,
    group_by_label,
    label_keys,
    rank_labels,
    shard_over_labels,
)
from jaxsci.train._fingerprint import (  # train_cvae's too
    LEGACY_PROBE_LENGTH,
    checksum,
    optimizer_probe,
)
from jaxsci.train.checkpoint import Checkpointer, check_checkpoint_folder, normalize_settings

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
    "run_settings",
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


def _check_batch_size(batch_size: Any) -> None:
    if not is_int_at_least(batch_size, 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")


def _check_image_shape(images: Any, cgan: CGAN) -> None:
    """ValueError unless ``images`` is ``[N, *cgan.image_shape]``."""
    shape = np.shape(images)
    if len(shape) != 4 or tuple(shape[1:]) != cgan.image_shape:
        want = ", ".join(map(str, cgan.image_shape))
        raise ValueError(
            f"images must be [N, {want}] (N images of cgan.image_shape) for this model, got "
            f"shape {tuple(shape)}"
        )


#: How far past [-1, 1] an image value may lie (rounding of a rescaling such as x / 8 - 1).
IMAGE_RANGE_TOLERANCE = 1e-4


def _rows(bad: np.ndarray) -> tuple[int, str]:
    """Number and first few indices of the rows (images) of ``bad`` holding a True."""
    rows = np.unique(np.argwhere(bad)[:, 0]) if bad.ndim else np.zeros(1, int)
    return rows.size, f"{rows[:5].tolist()}{' ...' if rows.size > 5 else ''}"


def _host_images(images: Any) -> np.ndarray:
    """``images`` as a float32 numpy array; ValueError unless every value is finite (one NaN
    image makes every loss NaN) and on [-1, 1] (the range of the generator's tanh: images on
    another scale, e.g. the 0..16 of the raw digits, can never be matched), up to
    :data:`IMAGE_RANGE_TOLERANCE`."""
    images = np.asarray(images, np.float32)
    bad = ~np.isfinite(images)
    if bad.any():
        n, rows = _rows(bad)
        raise ValueError(f"images hold non-finite (NaN or inf) values, in {n} images (rows {rows})")
    outside = np.abs(images) > 1.0 + IMAGE_RANGE_TOLERANCE
    if outside.any():
        n, rows = _rows(outside)
        lo, hi = float(images.min()), float(images.max())
        raise ValueError(
            f"images must lie in [-1, 1] (the generator's tanh range), but hold values in "
            f"[{lo:g}, {hi:g}], in {n} images (rows {rows}): rescale them, e.g. "
            f"2 * (x - {lo:g}) / ({hi:g} - {lo:g}) - 1"
        )
    return images


def _check_steps(n_steps: Any, chunk_steps: Any) -> None:
    """ValueError unless ``n_steps`` is an int >= 0 and ``chunk_steps`` an int >= 1 (a float
    was truncated silently, or failed at the first checkpoint, after the training)."""
    if not is_int_at_least(n_steps, 0):
        raise ValueError(f"n_steps must be an int >= 0, got {n_steps!r}")
    if not is_int_at_least(chunk_steps, 1):
        raise ValueError(f"chunk_steps must be an int >= 1, got {chunk_steps!r}")


def _check_integer_labels(labels: np.ndarray) -> None:
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")


def _raw_key(key: jax.Array) -> jax.Array:
    """A raw ``uint32`` key (``jax.random.PRNGKey`` style) from a raw or typed key.

    ``jax.random.key(s)`` and ``jax.random.PRNGKey(s)`` give the same run (same random
    numbers, same :class:`GANState`, same checkpoints); a typed key of another
    implementation than the default one is refused (its data would be read as the default's).
    """
    key = jnp.asarray(key)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single key, got a key array of shape {key.shape}")
        if jax.random.key_impl(key) != jax.random.key_impl(jax.random.key(0)):
            raise ValueError(
                f"key must use the default PRNG implementation "
                f"{jax.random.key_impl(jax.random.key(0))}, got {jax.random.key_impl(key)}"
            )
        return jax.random.key_data(key)
    return key


def make_pool(images: Any, labels: Any, n_labels: int | None = None) -> DataPool:
    """A :class:`DataPool` holding all of ``images [N, S, S, C]`` with integer ``labels [N]``
    (in ``0 .. n_labels - 1`` when ``n_labels`` is given: one bad label made training NaN;
    a non-finite image value is refused for the same reason, and so are images outside
    [-1, 1], the generator's range, beyond :data:`IMAGE_RANGE_TOLERANCE`)."""
    images = jnp.asarray(_host_images(images))
    _check_integer_labels(np.asarray(labels))
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

    The parameters come from one compiled program cached per ``cgan`` (a frozen dataclass,
    equal models share it): flax's ``init`` called eagerly compiles every operation on its
    own (about 20 s for the two tiny test models on a 2-core CPU, 1 s jitted). The optimizer
    states are initialised outside it, so a new but equal optimizer object (``optax.adam``
    called again) compiles nothing: a jit keyed on the optimizer, a new object each call,
    recompiled the whole init every time.
    """
    g_params, d_params, k_state = _init_gan_params(cgan, key)
    return GANState(
        g_params,
        d_params,
        g_opt.init(g_params),
        d_opt.init(d_params),
        k_state,
        jnp.zeros((), jnp.int32),
    )


@functools.partial(jax.jit, static_argnums=0)
def _init_gan_params(cgan: CGAN, key: jax.Array) -> tuple[Any, Any, jax.Array]:
    k_g, k_d, k_state = jax.random.split(key, 3)
    labels = jnp.zeros((1,), jnp.int32)
    g_params = cgan.generator.init(k_g, jnp.zeros((1, cgan.latent_dim)), labels)
    d_params = cgan.discriminator.init(k_d, jnp.zeros((1, *cgan.image_shape)), labels)
    return g_params, d_params, k_state


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
    by the caller, :func:`gradient_penalty`). Another ``loss`` name raises ``ValueError``.
    """
    _check_loss_name(loss)
    gap = jnp.mean(d_real) - jnp.mean(d_fake)
    if loss == "wgan-gp":
        return -gap, gap
    return jnp.mean(jax.nn.softplus(-d_real)) + jnp.mean(jax.nn.softplus(d_fake)), gap


def generator_loss(d_fake: jax.Array, loss: Literal["dcgan", "wgan-gp"]) -> jax.Array:
    """Generator loss from the discriminator's outputs ``[B]`` on its images: the
    non-saturating ``mean softplus(-d_fake)`` (``"dcgan"``) or ``-mean(d_fake)`` (``"wgan-gp"``);
    another ``loss`` name raises ``ValueError``."""
    _check_loss_name(loss)
    return -jnp.mean(d_fake) if loss == "wgan-gp" else jnp.mean(jax.nn.softplus(-d_fake))


_LOSSES = ("dcgan", "wgan-gp")


def _check_loss_name(loss: Any) -> None:
    """ValueError unless ``loss`` is "dcgan" or "wgan-gp" (a typo such as ``"wgan_gp"``
    trained the DCGAN loss)."""
    if not isinstance(loss, str) or loss not in _LOSSES:
        raise ValueError(f"loss must be one of {', '.join(map(repr, _LOSSES))}, got {loss!r}")


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
    ``batch_size``: an int >= 1 (minibatches are drawn with replacement: it may exceed the
    pool).
    """
    _check_batch_size(batch_size)
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
        if not is_int_at_least(n_steps, 0):
            raise ValueError(f"n_steps must be an int >= 0, got {n_steps!r}")
        return jax.lax.scan(lambda s, _: step(s, pool), state, None, length=n_steps)

    return run


def _chunk(
    cgan: CGAN,
    g_opt: optax.GradientTransformation,
    d_opt: optax.GradientTransformation,
    batch_size: int,
    n_steps: int,
    stacked: bool,
    state: GANState,
    pool: DataPool,
) -> tuple[GANState, Metrics]:
    """``n_steps`` steps of one model (``stacked=False``) or of a stack of them, one per
    pool (vmapped). :data:`_chunk_program` jits it once per model, optimizer objects, batch
    size, chunk and shapes, shared by every call with them."""
    run = make_gan_trainer(cgan, g_opt, d_opt, batch_size)
    if stacked:
        return jax.vmap(run, in_axes=(0, 0, None))(state, pool, n_steps)
    return run(state, pool, n_steps)


_chunk_program = jax.jit(_chunk, static_argnums=(0, 1, 2, 3, 4, 5))


def _chunk_runner(
    cgan: CGAN,
    g_opt: optax.GradientTransformation,
    d_opt: optax.GradientTransformation,
    batch_size: int,
    stacked: bool,
) -> Callable[[GANState, DataPool, int], tuple[GANState, Metrics]]:
    """``run(state, pool, n_steps)``, jitted: :func:`_chunk_program`, so a second run with
    the same model and optimizer objects (a resume, another label block of the same size)
    reuses its programs instead of compiling them again (1.5-3 s each for the tiny test
    models on a 2-core CPU); JAX's jit cache keeps those objects while it holds the
    programs. A new jit of its own when an argument cannot be hashed."""
    try:
        hash((cgan, g_opt, d_opt))
    except TypeError:
        return jax.jit(
            lambda state, pool, k: _chunk(cgan, g_opt, d_opt, batch_size, k, stacked, state, pool),
            static_argnums=2,
        )
    return lambda state, pool, k: _chunk_program(
        cgan, g_opt, d_opt, batch_size, k, stacked, state, pool
    )


def sample_images(cgan: CGAN, g_params: Any, key: jax.Array, labels: jax.Array) -> jax.Array:
    """Generated images ``[B, S, S, C]`` on [-1, 1], conditioned on ``labels [B]``.

    ``labels``: a 1-D sequence of integer labels, one per image (``[3]`` for one image of
    label 3, ``np.full(n, 3)`` for ``n``); a scalar or a 2-D array raises ``ValueError``
    (rather than guess whether a scalar means one image or an unbatched one).
    """
    if np.ndim(labels) != 1:
        got = f"a scalar {labels!r}" if np.ndim(labels) == 0 else f"shape {np.shape(labels)}"
        raise ValueError(
            f"labels must be 1-D [B], one label per image, got {got}: pass e.g. [3] for one "
            "image of label 3, np.full(n, 3) for n of them"
        )
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
    settings: Mapping[str, Any] | None = None,
) -> tuple[GANState, dict[str, np.ndarray]]:
    """Run ``run_chunk(state, k)`` until ``n_steps`` generator updates are done.

    Args:
      run_chunk: ``(state, k) -> (state, metrics)`` doing ``k`` steps (e.g. a jitted, vmapped
        or sharded trainer with its data bound); each metric has shape ``[..., k]`` (steps
        last, any leading model-stack axes first).
      state: initial state (single model or stacked per label); replaced by the latest
        checkpoint when ``checkpointer`` has one.
      n_steps: total generator updates, an int >= 0.
      chunk_steps: steps per compiled call, an int >= 1; a checkpoint is written after each
        chunk.
      checkpointer: an Orbax :class:`~jaxsci.train.checkpoint.Checkpointer`; training resumes
        from its latest step (state and metric history) and saves after every chunk.
      desc: progress-bar label.
      progress: show a tqdm progress bar.
      settings: JSON-serialisable description of the run (model, optimizer, batch size,
        seed...; not ``n_steps``, which may grow on resume), saved with every checkpoint.
        A resume from a checkpoint saved with other settings raises ``ValueError`` naming
        them, before anything is trained or written. ``None``: not saved nor checked.

    Returns:
      The final state and the metric histories ``{name: [..., n_steps]}`` (numpy).
    """
    from tqdm.auto import tqdm

    _check_steps(n_steps, chunk_steps)
    done, history = 0, {}
    if checkpointer is not None and checkpointer.latest_step() is not None:
        done = checkpointer.latest_step()
        if done > n_steps:
            raise ValueError(
                f"the checkpoint in {checkpointer.directory} ({desc}) is at step {done}, past "
                f"n_steps={n_steps}: ask for at least {done} steps to resume from it, or "
                "start afresh in another checkpoint folder (or after deleting this one)"
            )
        if settings is not None:
            _check_saved(checkpointer, settings, done)
        shapes = jax.eval_shape(lambda s: run_chunk(s, 1)[1], state)
        target_history = {
            name: np.zeros((*v.shape[:-1], done), v.dtype) for name, v in shapes.items()
        }
        restored = checkpointer.restore({"state": state, "history": target_history}, done)
        state, history = restored["state"], jax.tree.map(np.asarray, restored["history"])
    meta = {"settings": normalize_settings(settings)} if settings is not None else None
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
            checkpointer.save(done, {"state": state, "history": history}, force=True, metadata=meta)
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


def per_label_pools(
    images: Any, labels: Any, label_set: Sequence[int], rows: int | None = None
) -> DataPool:
    """Stacked :class:`DataPool` ``[L, n_max, ...]``, one per label; ``n_max`` is the
    largest label's count, or ``rows`` when given (see
    :func:`~jaxsci.parallel.group_by_label`).

    ValueError if a label of ``label_set`` has no rows, ``labels`` are not integers (a row
    whose label is no integer would otherwise be dropped from every pool), an image holds
    a non-finite value or ``rows`` is below the largest count.
    """
    labels = np.asarray(labels)
    _check_integer_labels(labels)
    grouped, counts = group_by_label(_host_images(images), labels, label_set, rows)
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
    settings: Mapping[str, Any] | None = None,
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
      images: ``[N, *cgan.image_shape]`` on [-1, 1] (up to :data:`IMAGE_RANGE_TOLERANCE`),
        finite; labels: ``[N]`` ints.
      key: PRNG key, raw (``jax.random.PRNGKey``) or typed (``jax.random.key``, same run),
        the same on every rank.
      label_set: labels to train (each needs data).
      n_steps: generator updates per label, an int >= 0; batch_size: images per update per
        label, an int >= 1.
      chunk_steps: steps per compiled call (progress / checkpoint granularity), an int >= 1.
      checkpoint_dir: Orbax checkpoints, resumed from if present. Each block of labels trained
        together (all labels for "vmap"/"shard", one rank's block for "mpi") writes its own
        ``labels-<l0>-<l1>-...`` sub-folder (independent, no collective), so a run resumes
        with any strategy or rank count: a block starts from the newest step at which every
        one of its labels is saved in some block (its own, or cut out of others'). The run's
        settings (:func:`run_settings`: model, optimizers, batch size, key, data) are saved
        with every checkpoint; resuming with other settings is refused.
      settings: extra JSON settings recorded and checked with the checkpoints (e.g. the
        optimizer's hyperparameters by name; the optimizers are otherwise told apart by
        their updates on a probe gradient).

    Raises:
      ValueError: a label without data, images of another shape than ``cgan.image_shape``,
        not finite or outside [-1, 1], non-integer labels, ``batch_size`` or
        ``chunk_steps`` not an int >= 1, ``n_steps`` not an int >= 0, more ranks than
        labels, unknown strategy, or a resume from checkpoints made with other settings
        (naming them; nothing written).
    """
    _check_steps(n_steps, chunk_steps)
    _check_batch_size(batch_size)
    _check_image_shape(images, cgan)
    key = _raw_key(key)
    label_set = np.asarray(label_set)
    check_labels(label_set, cgan.n_labels)  # each model is conditioned on its own label
    if strategy not in ("vmap", "shard", "mpi"):
        raise ValueError(f"strategy must be 'vmap', 'shard' or 'mpi', got {strategy!r}")
    local = label_set
    single = ProcessInfo(rank=0, size=1, local_device_count=jax.local_device_count())
    if strategy == "mpi":
        info = info if info is not None else bootstrap()
        local = rank_labels(label_set, info)
    # every block padded to the largest label of the whole set: blocks of as many labels
    # (ranks, resumes after another split) share one training program
    rows = int(_label_counts(np.asarray(labels), label_set).max(initial=0))
    pools = per_label_pools(images, labels, local, rows or None)
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
        stacked = _chunk_runner(cgan, g_opt, d_opt, batch_size, stacked=True)
        run_chunk = lambda s, k: stacked(s, pools, k)
    ckpt, mine, assembled = None, None, None
    if checkpoint_dir is not None:
        mine = run_settings(cgan, g_opt, d_opt, batch_size, key, images, labels, settings)

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

        folder = label_checkpoint_folder(checkpoint_dir, local)
        check_checkpoint_folder(folder)  # before any work
        # reads only: a refusal (other settings, labels missing) leaves no folder behind
        assembled = _assemble_from_other_blocks(folder, checkpoint_dir, local, block_target, mine)
        ckpt = Checkpointer(folder, keep=2, info=single)
    is_root = info is None or info.is_root
    try:
        if assembled is not None:
            at, models = assembled  # the models of this block cut out of others'
            meta = {"settings": normalize_settings(mine)} if mine is not None else None
            ckpt.save(at, models, force=True, metadata=meta)
        state, history = fit_gan(
            run_chunk,
            states,
            n_steps=n_steps,
            chunk_steps=chunk_steps,
            checkpointer=ckpt,
            desc=f"per-label {cgan.loss} x{len(local)}",
            progress=progress and is_root,
            settings=mine,
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
    folder: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    labels: np.ndarray,
    block_target: Callable[[Sequence[int], int], dict[str, Any]],
    settings: Mapping[str, Any] | None = None,
) -> tuple[int, dict[str, Any]] | None:
    """What brings ``folder``, the checkpoints of the block of ``labels``, to the newest
    step at which every one of ``labels`` is saved by some block: its own checkpoint, or
    models cut out of others'. Reads only (the caller saves): a refusal writes nothing,
    not even the block's folder.

    Lets a run resume after its labels were split differently (another rank count or
    strategy), possibly several times: each label's holders are all the saved blocks that
    hold it, not only the first found, so the newest consistent step wins.

    Returns:
      ``(step, {"state", "history"} stacked over labels)`` to save as ``step`` in
      ``folder``; ``None`` when no saved block holds any of ``labels`` or the own
      checkpoint is at that step already.

    Args:
      block_target: ``(labels, step) -> {"state", "history"}`` of ``jax.ShapeDtypeStruct``
        stacked over ``labels``, the restore target of a saved block (called only when a
        block is restored).
      settings: the run's settings; the blocks used must have been saved with them.

    Raises:
      ValueError: some of ``labels`` are saved and others not, no step is saved for all of
        them, or a block used was saved with other settings (nothing is written then).
    """
    mine = tuple(int(lab) for lab in labels.tolist())
    single = ProcessInfo(rank=0, size=1, local_device_count=jax.local_device_count())
    own, own_steps = None, set()
    if os.path.isdir(folder):
        with Checkpointer(folder, keep=None, info=single) as ckpt:
            own_steps = set(ckpt.all_steps())
            own = ckpt.latest_step()
    readers: dict[tuple[int, ...], Checkpointer] = {}
    try:
        for block, path in _saved_blocks(checkpoint_dir).items():
            if block != mine and set(mine) & set(block):
                reader = Checkpointer(path, keep=None, info=single)
                if reader.latest_step() is None:  # stopped before its first save
                    reader.close()
                else:
                    readers[block] = reader
        steps = {b: set(r.all_steps()) for b, r in readers.items()}
        if own is not None:
            steps[mine] = own_steps
        held = {lab: set().union(*(s for b, s in steps.items() if lab in b)) for lab in mine}
        saved = sorted(lab for lab in mine if held[lab])
        if not saved:
            return None
        missing = sorted(lab for lab in mine if not held[lab])
        if missing:
            raise ValueError(
                f"checkpoints in {os.fspath(checkpoint_dir)} hold labels {saved} but "
                f"not {missing}: cannot resume the block of labels {list(mine)}"
            )
        common = set.intersection(*held.values())
        if not common:
            each = "; ".join(
                f"label {lab}: steps {sorted(held[lab])} in "
                + ", ".join(_block_name(b) for b in sorted(steps) if lab in b)
                for lab in mine
            )
            raise ValueError(
                f"checkpoints in {os.fspath(checkpoint_dir)} share no step saved for every "
                f"one of labels {list(mine)} ({each}): cannot resume their block"
            )
        step = max(common)  # >= own: the own block holds all of mine at its latest step
        if own is not None and step == own:
            return None
        source = {}
        for lab in mine:  # a block holding lab at step; the one covering most of mine
            options = [b for b in sorted(readers) if lab in b and step in steps[b]]
            source[lab] = max(options, key=lambda b: len(set(b) & set(mine)))
        used = sorted(set(source.values()))
        if settings is not None:
            for b in used:  # before anything is written
                _check_saved(readers[b], settings, step)
        restored = {b: readers[b].restore(block_target(b, step), step) for b in used}
    finally:
        for reader in readers.values():
            reader.close()
    rows = [(restored[source[lab]], source[lab].index(lab)) for lab in mine]
    stacked = jax.tree.map(
        lambda *leaves: np.stack(
            [np.asarray(x)[i] for x, (_, i) in zip(leaves, rows, strict=True)]
        ),
        *[r for r, _ in rows],
    )
    return step, stacked


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
    settings: Mapping[str, Any] | None = None,
) -> tuple[GANState, dict[str, np.ndarray]]:
    """Train ONE conditional GAN on all labels (the baseline); returns ``(state, history)``.

    ``checkpoint_dir``: Orbax checkpoints, resumed from if present; the run's settings
    (:func:`run_settings`, plus the extra ``settings``) are saved with them, and resuming
    with other settings raises ``ValueError`` naming them (before anything is written).
    ``n_steps`` (an int >= 0) may grow on resume; ``chunk_steps``: an int >= 1.
    ``images``: ``[N, *cgan.image_shape]``, finite, on [-1, 1]; ``key``: raw or typed (the
    same run); ``batch_size``: an int >= 1. Bad arguments raise ``ValueError`` naming them
    before any work.
    """
    _check_steps(n_steps, chunk_steps)
    _check_batch_size(batch_size)
    _check_image_shape(images, cgan)
    key = _raw_key(key)
    pool = make_pool(images, labels, cgan.n_labels)
    state = init_gan_state(cgan, g_opt, d_opt, key)
    run = _chunk_runner(cgan, g_opt, d_opt, batch_size, stacked=False)
    ckpt, mine = None, None
    if checkpoint_dir is not None:
        mine = run_settings(cgan, g_opt, d_opt, batch_size, key, images, labels, settings)
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
            settings=mine,
        )
    finally:
        if ckpt is not None:
            ckpt.close()


def run_settings(
    cgan: CGAN,
    g_opt: optax.GradientTransformation,
    d_opt: optax.GradientTransformation,
    batch_size: int,
    key: jax.Array,
    images: Any,
    labels: Any,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What defines a GAN training run, as JSON: saved with its checkpoints and compared on
    resume (see :func:`train_per_label`, :func:`train_conditional`).

    ``model``: the CGAN's fields (architecture, loss, latent size, n_critic, gp_weight);
    ``batch_size``; ``key``: the key's data (the seed); ``data``: :func:`_data_fingerprint`
    (shape, label counts, and the arrangement, offsets and scales of the images and of the
    labels: other images, the rows shuffled, the images mirrored or the labels reassigned
    are told apart); ``g_optimizer`` / ``d_optimizer``: the
    updates each optimizer makes from a fixed probe gradient (optax transformations hide
    their hyperparameters: a learning rate or beta shows in these); ``extra``: the
    caller's own settings (e.g. the hyperparameters by name). Not the number of steps, the
    chunking, the strategy or the label split: those may change on resume.

    The probe takes 3 updates: a schedule tied to the total step count whose first rates
    move when the steps grow (a warm-up over a share of the steps; a cosine decay over
    fewer than some 500 steps) changes them, and the resume is refused (its learning-rate
    path did change); one whose first rates barely move (a cosine decay over thousands of
    steps) and a change that shows only after step 3 (a piecewise drop at step 1000) are
    not seen. Pass such hyperparameters by name in ``extra`` (``settings=``) to have them
    compared exactly.
    """
    key = jnp.asarray(key)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    out = {
        "model": _describe(cgan),
        "batch_size": int(batch_size),
        "key": np.asarray(key).ravel().tolist(),
        "data": _data_fingerprint(images, labels),
        "g_optimizer": optimizer_probe(g_opt),
        "d_optimizer": optimizer_probe(d_opt),
    }
    if extra:
        out["extra"] = dict(extra)
    return normalize_settings(out)


#: Keys of the data fingerprint that older versions did not save: a checkpoint without
#: them resumes with a warning, the rest of its fingerprint compared (:func:`_check_saved`).
_ADDED_DATA_KEYS = ("images_checksum", "labels_checksum")


def _data_fingerprint(images: Any, labels: Any) -> dict[str, Any]:
    """The training data as :func:`run_settings` records them: ``shape`` and
    ``label_counts`` (compared exactly), ``mean`` and ``mean_square`` of the images, and
    ``images_checksum`` / ``labels_checksum``: ``[order, location, scale]`` of the images
    (float32, as trained on) and of the labels, each column standardised (the fingerprint
    :func:`jaxsci.train.train_cvae` stores): the rows shuffled, the images mirrored, the
    labels reassigned among the images (same counts), other images of the same shape and
    moments are all refused on resume (up to some 10^7 values). Last-bit differences (the
    data recomputed on other hardware) pass the settings' 1e-5 relative tolerance, except
    one-ulp jitter scattered over a pixel that is otherwise constant (an always-black
    corner that is -1 in most images and -1 + 6e-8 in some): the checksum's noise floor
    (1e-6 of the images' RMS) scales it up, and the resume may be refused."""
    x = np.asarray(images, np.float32)
    y = np.asarray(labels)
    values, counts = np.unique(y, return_counts=True)
    return {
        "shape": list(x.shape),
        "label_counts": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
        "mean": float(np.mean(x, dtype=np.float64)) if x.size else 0.0,
        "mean_square": float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0,
        "images_checksum": checksum(x),
        "labels_checksum": checksum(y),
    }


def _check_saved(ckpt: Checkpointer, settings: Mapping[str, Any], step: int) -> None:
    """``ckpt.check_settings(settings, step)``, except that a checkpoint saved by an older
    jaxsci, whose ``data`` lacks :data:`_ADDED_DATA_KEYS` or whose optimizer probes have the
    older form (:data:`~jaxsci.train._fingerprint.LEGACY_PROBE_LENGTH` values), is compared
    without them (with a warning saying so) rather than refused. Reads only."""
    saved = ckpt.metadata(step).get("settings")
    data = settings.get("data") if isinstance(settings, Mapping) else None
    saved_data = saved.get("data") if isinstance(saved, Mapping) else None
    if isinstance(data, Mapping) and isinstance(saved_data, Mapping):
        unchecked = [k for k in _ADDED_DATA_KEYS if k in data and k not in saved_data]
        if unchecked:
            warnings.warn(
                f"checkpoint step {step} in {ckpt.directory} was saved by an older jaxsci "
                f"without data.{', data.'.join(unchecked)}: resuming without checking that "
                "the data are arranged and labelled as they were (only their shape, label "
                "counts and moments are compared)",
                stacklevel=3,
            )
            trimmed = {k: v for k, v in data.items() if k not in unchecked}
            settings = {**settings, "data": trimmed}
    if isinstance(settings, Mapping) and isinstance(saved, Mapping):
        old = [
            k
            for k in ("g_optimizer", "d_optimizer")
            if isinstance(saved.get(k), list) and len(saved[k]) == LEGACY_PROBE_LENGTH
        ]
        if old:
            warnings.warn(
                f"checkpoint step {step} in {ckpt.directory} was saved by an older jaxsci "
                f"whose {' and '.join(old)} probe this one does not compute: resuming without "
                "checking that the optimizers are the same",
                stacklevel=3,
            )
            settings = {**settings, **{k: saved[k] for k in old}}
    ckpt.check_settings(settings, step)


def _describe(obj: Any) -> Any:
    """A dataclass (a flax module too) as ``{"type", field: value...}``, recursively."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {"type": type(obj).__name__}
        for f in dataclasses.fields(obj):
            if f.name not in ("parent", "name"):  # flax module bookkeeping
                out[f.name] = _describe(getattr(obj, f.name))
        return out
    if isinstance(obj, list | tuple):
        return [_describe(v) for v in obj]
    if callable(obj):
        return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}"
    return obj


def sample_per_label(
    cgan: CGAN, result: PerLabelResult, key: jax.Array, n_per_label: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n_per_label`` images from each label's generator: ``(images [L*n, S, S, C], labels)``.

    Label ``l`` uses noise from ``fold_in(key, l)``; ``n_per_label``: an int >= 1.
    """
    if not is_int_at_least(n_per_label, 1):
        raise ValueError(f"n_per_label must be an int >= 1, got {n_per_label!r}")
    labs = jnp.asarray(result.labels)

    def one(g_params, lab):
        k = jax.random.fold_in(key, lab)
        return sample_images(cgan, g_params, k, jnp.full((n_per_label,), lab))

    images = jax.jit(jax.vmap(one))(result.state.g_params, labs)
    images = np.asarray(images).reshape(-1, *cgan.image_shape)
    return images, np.repeat(result.labels, n_per_label)
