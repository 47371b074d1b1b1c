"""Conditional variational autoencoder (Flax linen) and its pure training pieces.

``CVAE(data_dim, latent_dim=10, hidden=(128, 128, 128))``: an MLP encoder maps
``[x, c]`` to the mean and log-variance of ``q(z | x, c)``; an MLP decoder maps ``[z, c]``
to ``x``. ``x`` is ``[B, data_dim]`` (standardised features), ``c`` is ``[B, cond_dim]``
(standardised conditions). The loss per sample is the squared error summed over features
plus ``beta`` times the KL divergence to ``N(0, I)`` (summed over latent dimensions).

Training is a pure function of ``(state, epoch)``: :func:`make_epoch_fn` shuffles with
``split(fold_in(key(seed), epoch))`` and draws the reparametrisation noise of batch ``b``
with ``fold_in(noise key, b)``, so a run resumed from a checkpoint after epoch ``k`` matches an
uninterrupted run bit for bit (on the same machine and JAX version).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsci._checks import is_int_at_least
from jaxsci.models.mlp import MLP

__all__ = [
    "CVAE",
    "CVAEState",
    "cvae_loss",
    "encode",
    "init_cvae_state",
    "kl_divergence",
    "make_epoch_fn",
    "make_eval_fn",
    "sample",
    "with_validation",
]

#: The parameters of a :class:`CVAE` (``model.init(...)["params"]``, as ``CVAEState.params``).
Params = Any


class CVAE(nn.Module):
    """Conditional VAE: ``(x [B, D], c [B, C], key) -> (x_hat [B, D], mean, logvar [B, L])``."""

    data_dim: int
    latent_dim: int = 10
    hidden: Sequence[int] = (128, 128, 128)
    activation: Callable[[jax.Array], jax.Array] = nn.elu

    def __post_init__(self) -> None:  # a tuple: the model is a static (hashed) jit argument
        hidden = tuple(self.hidden)
        for name, value in (("data_dim", self.data_dim), ("latent_dim", self.latent_dim)):
            if not is_int_at_least(value, 1):
                raise ValueError(f"CVAE: {name} must be an int >= 1, got {value!r}")
        if not all(is_int_at_least(w, 1) for w in hidden):
            raise ValueError(f"CVAE: hidden widths must be ints >= 1, got {hidden}")
        object.__setattr__(self, "hidden", hidden)
        super().__post_init__()

    def setup(self) -> None:
        self.encoder = MLP((*self.hidden, 2 * self.latent_dim), self.activation)
        self.decoder = MLP((*self.hidden, self.data_dim), self.activation)

    def encode(self, x: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean and log-variance of ``q(z | x, c)``, each ``[B, latent_dim]``."""
        h = self.encoder(jnp.concatenate([x, c], axis=-1))
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, jnp.clip(logvar, -12.0, 8.0)

    def decode(self, z: jax.Array, c: jax.Array) -> jax.Array:
        """Decoded ``x`` ``[B, data_dim]`` for latents ``z`` and conditions ``c``."""
        return self.decoder(jnp.concatenate([z, c], axis=-1))

    def __call__(
        self, x: jax.Array, c: jax.Array, key: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        mean, logvar = self.encode(x, c)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
        return self.decode(z, c), mean, logvar


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """``KL(N(mean, exp(logvar)) || N(0, I))`` summed over the last axis: ``[B, L] -> [B]``."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)


def cvae_loss(
    model: CVAE, params: Params, x: jax.Array, c: jax.Array, key: jax.Array, beta: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Batch mean of ``sum (x - x_hat)^2 + beta * KL``; returns ``(loss, {recon, kl})``,
    scalars. ``x`` [B, n_features] (standardised fingerprints), ``c`` [B, n_conditions],
    ``key`` the reparameterisation noise key."""
    x_hat, mean, logvar = model.apply({"params": params}, x, c, key)
    recon = jnp.mean(jnp.sum((x - x_hat) ** 2, axis=-1))
    kl = jnp.mean(kl_divergence(mean, logvar))
    return recon + beta * kl, {"recon": recon, "kl": kl}


def _check_beta(beta: float) -> None:
    try:
        ok = 0.0 <= float(beta) < np.inf
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")


def _as_rows(name: str, value: jax.Array) -> jax.Array:
    """``value`` as a float32 ``[M, D]`` array of finite numbers (ValueError naming it)."""
    arr = jnp.asarray(value, jnp.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, features], got shape {arr.shape}")
    if not bool(jnp.all(jnp.isfinite(arr))):
        bad = int(jnp.sum(~jnp.isfinite(arr)))
        raise ValueError(f"{name} holds {bad} non-finite (NaN or inf) values")
    return arr


class CVAEState(NamedTuple):
    """Training state (a pytree): parameters, optimizer state, number of updates done."""

    params: dict
    opt_state: optax.OptState
    step: jax.Array


def init_cvae_state(
    model: CVAE, optimizer: optax.GradientTransformation, cond_dim: int, key: jax.Array
) -> CVAEState:
    """Initialise parameters (from ``key``) and the optimizer state.

    The parameters come from one compiled program cached per ``(model, cond_dim)``; the
    optimizer state is initialised outside it, so a new but equal optimizer object compiles
    nothing (a jit keyed on the optimizer object recompiled on every call).
    """
    params = _init_cvae_params(model, cond_dim, key)
    return CVAEState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_cvae_params(model: CVAE, cond_dim: int, key: jax.Array) -> dict:
    x = jnp.zeros((1, model.data_dim))
    c = jnp.zeros((1, cond_dim))
    return model.init(key, x, c, jax.random.key(0))["params"]


def make_epoch_fn(
    model: CVAE,
    optimizer: optax.GradientTransformation,
    x: jax.Array,
    c: jax.Array,
    *,
    batch_size: int,
    beta: float,
    seed: int,
) -> Callable[[CVAEState, int], tuple[CVAEState, dict[str, jax.Array]]]:
    """``epoch_fn(state, epoch) -> (state, {loss, recon, kl})`` for :func:`jaxsci.train.fit`.

    One epoch = ``len(x) // b`` steps of ``optimizer`` with ``b = min(batch_size, len(x))``
    (a ``batch_size`` above ``len(x)`` gives one full-batch step per epoch), over a
    permutation drawn from ``fold_in(key(seed), epoch)`` (the ``len(x) % b`` samples left over
    change every epoch); the whole epoch is one jitted ``lax.scan``. ``x``: ``[M, D]``,
    ``c``: ``[M, C]`` (2-D, as many rows, finite: a NaN would make every loss NaN);
    ``batch_size``: an int >= 1; ``beta``: finite, >= 0.
    """
    x = _as_rows("x", x)
    c = _as_rows("c", c)
    m = x.shape[0]
    if c.shape[0] != m:
        raise ValueError(f"x has {m} rows but c has {c.shape[0]}")
    if not is_int_at_least(batch_size, 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    _check_beta(beta)
    if m == 0:
        raise ValueError("empty training set: no samples to train on")
    batch_size = min(batch_size, m)
    n_batches = m // batch_size
    base = jax.random.key(seed)

    def step(state: CVAEState, batch):
        xb, cb, key = batch
        (loss, aux), grads = jax.value_and_grad(
            lambda p: cvae_loss(model, p, xb, cb, key, beta), has_aux=True
        )(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return CVAEState(params, opt_state, state.step + 1), (loss, aux["recon"], aux["kl"])

    @jax.jit
    def run_epoch(state: CVAEState, epoch: jax.Array, x: jax.Array, c: jax.Array):
        perm_key, noise_key = jax.random.split(jax.random.fold_in(base, epoch))
        perm = jax.random.permutation(perm_key, m)[: n_batches * batch_size]
        idx = perm.reshape(n_batches, batch_size)
        keys = jax.vmap(lambda b: jax.random.fold_in(noise_key, b))(jnp.arange(n_batches))
        state, (loss, recon, kl) = jax.lax.scan(step, state, (x[idx], c[idx], keys))
        return state, {"loss": loss.mean(), "recon": recon.mean(), "kl": kl.mean()}

    def epoch_fn(state: CVAEState, epoch: int):
        return run_epoch(state, jnp.asarray(epoch, jnp.int32), x, c)

    return epoch_fn


def make_eval_fn(
    model: CVAE, *, beta: float, seed: int
) -> Callable[[dict, jax.Array, jax.Array], dict[str, jax.Array]]:
    """``eval_fn(params, x, c) -> {loss, recon, kl}`` with fixed noise (validation curves)."""
    _check_beta(beta)
    key = jax.random.fold_in(jax.random.key(seed), 2**30)

    @jax.jit
    def eval_fn(params, x, c):
        loss, aux = cvae_loss(model, params, x, c, key, beta)
        return {"loss": loss, **aux}

    return eval_fn


def with_validation(
    epoch_fn: Callable[[CVAEState, int], tuple[CVAEState, dict]],
    eval_fn: Callable[[dict, jax.Array, jax.Array], dict[str, jax.Array]],
    x_val: jax.Array | None,
    c_val: jax.Array | None,
) -> Callable[[CVAEState, int], tuple[CVAEState, dict]]:
    """``epoch_fn`` whose metrics also hold ``val_<name>`` of ``eval_fn`` on ``(x_val, c_val)``
    after the epoch.

    ``x_val [V, D]`` and ``c_val [V, C]`` go together: with no validation rows (both
    ``None``, or ``V == 0``, where the metrics would be NaN means of nothing) this returns
    ``epoch_fn`` itself, and no ``val_*`` metrics are logged. ``ValueError`` when only one of
    them has rows, or they are not 2-D with as many rows.
    """
    if x_val is None or c_val is None:
        for name, value, other in (("x_val", x_val, "c_val"), ("c_val", c_val, "x_val")):
            if value is not None and jnp.shape(value)[:1] != (0,):
                raise ValueError(
                    f"with_validation: {name} of shape {jnp.shape(value)} was given but {other} "
                    "is None; pass both (validation) or neither"
                )
        return epoch_fn
    x_shape, c_shape = jnp.shape(x_val), jnp.shape(c_val)
    if len(x_shape) != 2 or len(c_shape) != 2 or x_shape[0] != c_shape[0]:
        raise ValueError(
            f"with_validation: x_val and c_val must be 2-D with as many rows, got shapes "
            f"{x_shape} and {c_shape}"
        )
    if x_shape[0] == 0:
        return epoch_fn

    def run(state: CVAEState, epoch: int) -> tuple[CVAEState, dict]:
        state, metrics = epoch_fn(state, epoch)
        val = eval_fn(state.params, x_val, c_val)
        return state, {**metrics, **{f"val_{k}": v for k, v in val.items()}}

    return run


def _param_shapes(model: CVAE, cond_dim: int) -> dict[str, tuple[int, ...]]:
    """Kernel and bias shapes of ``model``'s parameters for ``cond_dim`` condition columns."""
    widths = {
        "encoder": (model.data_dim + cond_dim, *model.hidden, 2 * model.latent_dim),
        "decoder": (model.latent_dim + cond_dim, *model.hidden, model.data_dim),
    }
    out = {}
    for part, dims in widths.items():
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            out[f"{part}/dense_{i}/kernel"] = (d_in, d_out)
            out[f"{part}/dense_{i}/bias"] = (d_out,)
    return out


def _params_cond_dim(model: CVAE, params) -> int:
    """Number of condition columns ``C`` that ``params`` were made for (``ValueError`` when
    they are not ``model``'s parameters: another model's, or the ``{"params": ...}`` wrapper).

    Reads static shapes only, so it works on traced parameters inside ``jax.jit``.
    """
    try:
        rows = int(jnp.shape(params["decoder"]["dense_0"]["kernel"])[0])
    except (KeyError, TypeError, IndexError):
        keys = sorted(params) if hasattr(params, "keys") else type(params).__name__
        raise ValueError(
            f"params must be a CVAE's parameter tree with 'encoder' and 'decoder' (the "
            f"'params' entry of model.init), got {keys}"
        ) from None
    cond_dim = rows - model.latent_dim
    found = {
        "/".join(str(getattr(k, "key", k)) for k in path): tuple(jnp.shape(leaf))
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    wanted = _param_shapes(model, max(cond_dim, 0))
    if cond_dim < 0 or found != wanted:
        bad = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        name = bad[0]
        raise ValueError(
            f"params do not fit CVAE(data_dim={model.data_dim}, latent_dim={model.latent_dim}, "
            f"hidden={model.hidden}): {name} is {found.get(name, 'absent')} but the "
            f"model wants {wanted.get(name, 'absent')} (params of another model?)"
        )
    return cond_dim


def _check_cond(model: CVAE, params, c: jax.Array, rows: tuple[int, ...] | None = None) -> int:
    """``ValueError`` unless ``c`` is ``[B, C]`` with the ``C`` of ``params``; with ``rows``
    (the leading shape of ``x``), ``c`` may be ``[..., C]`` with those leading dimensions
    (one row ``[C]`` too, e.g. under ``vmap``). Returns ``C``. Static shapes only."""
    cond_dim = _params_cond_dim(model, params)
    shape = tuple(jnp.shape(c))
    if (len(shape) != 2) if rows is None else (len(shape) < 1):
        want = "2-D [rows, " if rows is None else "[..., "
        raise ValueError(f"c must be {want}{cond_dim} condition columns], got shape {shape}")
    if shape[-1] != cond_dim:
        raise ValueError(
            f"c has {shape[-1]} columns but the params were made for cond_dim {cond_dim}"
        )
    if rows is not None and shape[:-1] != rows:
        raise ValueError(f"x has leading shape {rows} but c has {shape[:-1]}")
    return cond_dim


def sample(
    model: CVAE, params: Params, c: jax.Array, key: jax.Array, *, temperature: float = 1.0
) -> jax.Array:
    """Decode ``z ~ N(0, temperature^2 I)`` for conditions ``c`` ``[B, C]``: ``[B, data_dim]``.

    ``ValueError`` when ``c`` is not 2-D with the ``C`` that ``params`` were made for, or
    ``params`` are not ``model``'s (static shape checks: jittable).
    """
    c = jnp.asarray(c, jnp.float32)
    _check_cond(model, params, c)
    z = temperature * jax.random.normal(key, (c.shape[0], model.latent_dim))
    return model.apply({"params": params}, z, c, method=CVAE.decode)


def encode(model: CVAE, params: Params, x: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Posterior mean and log-variance ``[B, latent_dim]`` of ``x [B, data_dim]`` under
    condition ``c [B, C]``; any leading shape works (one row ``[data_dim]`` with ``[C]``,
    e.g. under ``vmap``), as long as ``x`` and ``c`` share it. ``ValueError`` for another
    ``data_dim`` or ``C`` than the params', or mismatched leading shapes (static checks)."""
    x_shape = tuple(jnp.shape(x))
    if len(x_shape) < 1 or x_shape[-1] != model.data_dim:
        raise ValueError(
            f"x must be [..., data_dim = {model.data_dim}] feature rows, got shape {x_shape}"
        )
    _check_cond(model, params, c, rows=x_shape[:-1])
    return model.apply({"params": params}, x, c, method=CVAE.encode)
