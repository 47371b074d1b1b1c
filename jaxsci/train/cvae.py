"""Train a (conditional) VAE in one call: validation curves, resumable Orbax checkpoints.

:func:`train_cvae` puts together what the CVAE studies need around
:func:`jaxsci.train.fit`: the parameters initialised from ``seed``, one jitted scan per
epoch (:func:`jaxsci.models.cvae.make_epoch_fn`), ``val_*`` metrics on held-out rows,
per-epoch metrics as JSON lines, and checkpoints that a restart resumes from, ending with
the parameters of an uninterrupted run. An unconditional VAE is a CVAE with ``C = 0``
condition columns.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsci._checks import is_int_at_least
from jaxsci.models.cvae import (
    CVAE,
    CVAEState,
    init_cvae_state,
    make_epoch_fn,
    make_eval_fn,
    with_validation,
)
from jaxsci.train._fingerprint import checksum, optimizer_probe
from jaxsci.train.checkpoint import (
    Checkpointer,
    check_checkpoint_folder,
    check_settings,
    normalize_settings,
)
from jaxsci.train.loop import FitResult, fit

__all__ = ["check_resume", "train_cvae"]


def _data_fingerprint(x: Any, c: Any) -> dict[str, Any]:
    """A cheap, deterministic fingerprint of training data, as :func:`train_cvae` stores it
    with its checkpoints: the shapes of ``x`` and ``c`` and, for each, three numbers in
    [0, 3] (:func:`jaxsci.train._fingerprint.checksum`) that the 1e-5 relative tolerance of
    :func:`jaxsci.train.check_settings` compares."""
    x, c = np.asarray(x, np.float32), np.asarray(c, np.float32)
    return {
        "x_shape": list(x.shape),
        "c_shape": list(c.shape),
        "x_checksum": checksum(x),
        "c_checksum": checksum(c),
    }


def _callable_name(fn: Callable[..., Any]) -> str:
    """A stable name of an activation: its (qualified) name, a partial with its arguments,
    else its type's name (never a repr with a memory address)."""
    if isinstance(fn, functools.partial):
        args = [_callable_name(fn.func), *map(repr, fn.args)]
        args += [f"{k}={v!r}" for k, v in sorted(fn.keywords.items())]
        return f"partial({', '.join(args)})"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return str(name) if name else type(fn).__qualname__


def _check_validation(validation: Any, data_dim: int, cond_dim: int) -> tuple[Any, Any]:
    """``validation`` as ``(x_val, c_val)`` float32 arrays, checked against the training
    widths before any work (``ValueError`` naming the part); ``None`` parts left as such
    for :func:`jaxsci.models.cvae.with_validation` to judge."""
    try:
        x_val, c_val = validation
    except (TypeError, ValueError):
        raise ValueError(
            f"validation must be a pair (x_val, c_val), got {type(validation).__name__}"
        ) from None
    if x_val is None or c_val is None:
        return x_val, c_val
    out = []
    for name, value, width, what in (
        ("x_val", x_val, data_dim, "model.data_dim is"),
        ("c_val", c_val, cond_dim, "c has"),
    ):
        arr = np.asarray(value, np.float32)
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D [rows, features], got shape {arr.shape}")
        if arr.shape[1] != width:
            raise ValueError(f"{name} has {arr.shape[1]} columns but {what} {width}")
        bad = int(np.sum(~np.isfinite(arr)))
        if bad:
            raise ValueError(f"{name} holds {bad} non-finite (NaN or inf) values")
        out.append(arr)
    if out[0].shape[0] != out[1].shape[0]:
        raise ValueError(f"x_val has {out[0].shape[0]} rows but c_val has {out[1].shape[0]}")
    return out[0], out[1]


def check_resume(
    checkpoint_dir: str | Path, settings: Mapping[str, Any] | None, epochs: int
) -> None:
    """``ValueError`` if ``checkpoint_dir`` holds checkpoints made with other ``settings``
    (every differing one named; ``None`` differs from the settings a checkpoint holds), or
    one past ``epochs`` (a run cannot resume to fewer epochs than it has done). Reads only;
    a missing folder is a fresh start; a file in its place is a ``ValueError``."""
    check_checkpoint_folder(checkpoint_dir)
    if not Path(checkpoint_dir).is_dir():
        return
    with Checkpointer(checkpoint_dir, keep=None) as ckpt:
        latest = ckpt.latest_step()
        if latest is None:
            return
        if settings is not None:
            ckpt.check_settings(settings)
        elif ckpt.metadata(latest).get("settings") is not None:
            raise ValueError(
                f"checkpoint step {latest} in {checkpoint_dir} was saved with run settings "
                f"but none were given (settings=None): resume with the settings it was made "
                f"with, or use a fresh checkpoint folder"
            )
        if latest > epochs:
            raise ValueError(
                f"the checkpoints in {checkpoint_dir} are at epoch {latest}, past "
                f"epochs={epochs}: resume with epochs >= {latest}, or use a fresh folder"
            )


def train_cvae(
    model: CVAE,
    optimizer: optax.GradientTransformation,
    x: Any,
    c: Any,
    *,
    epochs: int,
    batch_size: int,
    beta: float = 1.0,
    seed: int = 0,
    validation: tuple[Any, Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 1,
    keep: int = 2,
    settings: Mapping[str, Any] | None = None,
    metrics_path: str | Path | None = None,
    progress: bool = True,
    desc: str = "CVAE",
    postfix_keys: Sequence[str] = ("loss", "recon", "kl", "val_loss"),
) -> FitResult:
    """Train ``model`` on rows ``x [N, D]`` with conditions ``c [N, C]`` for ``epochs``.

    Args:
      model, optimizer: the :class:`~jaxsci.models.CVAE` (``data_dim == D``) and an optax
        transformation; parameters come from ``jax.random.key(seed)``.
      x, c: training rows and their conditions (finite; ``C`` may be 0: a plain VAE).
      epochs: total epochs of the run (a resumed run does the rest).
      batch_size, beta, seed: as :func:`jaxsci.models.cvae.make_epoch_fn` (``seed`` also
        fixes the permutations and the noise, so a run is a function of its inputs).
      validation: ``(x_val [V, D], c_val [V, C])`` for ``val_*`` metrics after every epoch
        (fixed noise); ``None`` or ``V = 0``: none. Checked before any work: 2-D, finite,
        as many rows, ``D`` and ``C`` columns as ``x`` and ``c``.
      checkpoint_dir: Orbax checkpoints every ``checkpoint_every`` epochs and at the end,
        the ``keep`` newest kept, each with ``settings`` in its metadata. If the folder
        holds checkpoints, training resumes from the newest and ends with the parameters
        of the uninterrupted run; made with other ``settings`` (``None`` included, when the
        checkpoint holds some), another ``batch_size``, ``beta``, ``seed``, model shape or
        activation (by name), another optimizer, other data, or past ``epochs``, it is
        refused (``ValueError`` naming what differs, both values shown) before anything
        is written. The data are recorded as their shapes and three numbers each for
        ``x`` and ``c`` (their arrangement, offsets and scales, all column-standardised):
        another data set, the rows shuffled (up to some 10^7 values) or a shifted or
        rescaled column is refused; last-bit differences (the data recomputed on other
        hardware) pass. The optimizer is recorded as the updates it makes on a fixed
        probe gradient (``optimizer``, as :func:`jaxsci.train.gan.run_settings` does for
        the GANs' optimizers): another optimizer, learning rate, betas or weight decay is
        refused, and so is a schedule tied to ``epochs`` whose first rates move when
        ``epochs`` grows (a warm-up over a share of the steps: its learning-rate path did
        change); one whose first rates barely move (a cosine decay over thousands of
        updates), a change showing only after 3 updates (a step decay at update 1000)
        and an optimizer that cannot update a plain vector (masked by parameter name) are
        not seen: put such hyperparameters by name in ``settings`` (they are then
        compared and named in the error). What may change on resume: ``epochs`` (to train
        longer), ``checkpoint_every``, ``keep``, ``validation`` (it only reads the
        parameters; the ``val_*`` metrics of the epochs after the resume then score the
        new rows), ``metrics_path`` and the progress bar. ``None``: no checkpoints.
      settings: JSON-able description of the run to store and check on resume (e.g. the
        data, model and optimizer settings; not ``epochs``, which a resume may raise).
      metrics_path: JSON-lines file of per-epoch metrics (continued on resume; a fresh
        run rewrites it, with a warning when it held records).
      progress, desc, postfix_keys: the progress bar.

    Returns:
      :class:`~jaxsci.train.FitResult`: ``state`` (a :class:`~jaxsci.models.cvae.CVAEState`)
      and ``history``, one record per epoch (resumed ones included when ``metrics_path``
      holds them).
    """
    if not is_int_at_least(epochs, 1):
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    c = np.asarray(c, np.float32)
    epoch_fn = make_epoch_fn(
        model, optimizer, x, c, batch_size=batch_size, beta=beta, seed=seed
    )  # checks x, c, batch_size and beta first
    if np.shape(x)[1] != model.data_dim:
        raise ValueError(f"x has {np.shape(x)[1]} columns but model.data_dim is {model.data_dim}")
    if validation is not None:
        x_val, c_val = _check_validation(validation, model.data_dim, c.shape[1])
        x_val = jnp.asarray(x_val, jnp.float32) if x_val is not None else None
        c_val = jnp.asarray(c_val, jnp.float32) if c_val is not None else None
        epoch_fn = with_validation(
            epoch_fn, make_eval_fn(model, beta=beta, seed=seed), x_val, c_val
        )
    saved = normalize_settings(settings) if settings is not None else None
    init = init_cvae_state(model, optimizer, c.shape[1], jax.random.key(seed))
    run = dict(
        num_epochs=epochs,
        metrics_path=metrics_path,
        progress=progress,
        desc=desc,
        postfix_keys=postfix_keys,
    )
    if checkpoint_dir is None:
        return fit(init, epoch_fn, **run)
    check_resume(checkpoint_dir, saved, epochs)
    # its own arguments too, whatever the caller's settings hold: a resume with another
    # batch size, beta, seed, model, optimizer (learning rate, betas...) or data would mix
    # two runs
    own = normalize_settings(
        {
            "batch_size": batch_size,
            "beta": beta,
            "seed": seed,
            "data_dim": model.data_dim,
            "cond_dim": c.shape[1],
            "latent_dim": model.latent_dim,
            "hidden": model.hidden,
            "activation": _callable_name(model.activation),
            "data": _data_fingerprint(x, c),
            "optimizer": optimizer_probe(optimizer),
        }
    )
    metadata = {"train_cvae": own, **({"settings": saved} if saved is not None else {})}
    with Checkpointer(checkpoint_dir, every=checkpoint_every, keep=keep) as ckpt:
        latest = ckpt.latest_step()
        saved_own = ckpt.metadata(latest).get("train_cvae") if latest is not None else None
        if saved_own is not None:
            where = f"the checkpoint at epoch {latest} in {checkpoint_dir}"
            unchecked = [k for k in own if k not in saved_own]  # saved by an older jaxsci
            if unchecked:
                warnings.warn(
                    f"{where} does not record {', '.join(unchecked)}: resuming without "
                    f"checking that they match",
                    stacklevel=2,
                )
            check_settings(saved_own, {k: v for k, v in own.items() if k in saved_own}, where)
        state, start = ckpt.resume(init)

        def save(epoch: int, st: CVAEState, _metrics: Mapping[str, float]) -> None:
            # returns None: a truthy callback return would stop fit (Checkpointer.save: True)
            ckpt.save(epoch + 1, st, force=epoch + 1 == epochs, metadata=metadata)

        return fit(state, epoch_fn, start_epoch=start, callbacks=[save], **run)
