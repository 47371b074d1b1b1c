"""The FCN (U-Net) and its data-parallel training, and the ePIE baseline."""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from experiments.inverse_imaging.config import Config
from experiments.inverse_imaging.data import (
    BAND_LIMIT,
    grid_of,
    log_patterns,
    lowpass,
    probe_positions,
)
from jaxsci.imaging import epie, potential_from_object, probe
from jaxsci.models.fcn import UNet
from jaxsci.parallel import ProcessInfo, data_parallel

__all__ = [
    "Standardizer",
    "epie_objects",
    "epie_potential",
    "fcn_inputs",
    "make_model",
    "predict",
    "relative_errors",
    "residual_answer",
    "train_fcn",
]


class Standardizer:
    """Scalar mean / std of the training inputs, applied to every input."""

    def __init__(self, inputs: np.ndarray) -> None:
        self.mean = float(inputs.mean())
        self.std = float(inputs.std()) or 1.0

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        return ((inputs - self.mean) / self.std).astype(np.float32)


def make_model(config: Config) -> UNet:
    """``[B, H, W, C]`` inputs (:func:`fcn_inputs`) -> ``[B, H, W, 1]`` projected potential
    (kV·Å). Circular padding: the cell is periodic."""
    return UNet(
        features=config.features,
        out_channels=1,
        bottleneck=config.bottleneck,
        dense_channels=config.dense_channels,
    )


def relative_errors(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per sample ``||prediction - target|| / ||target||`` over the cell (``[n, H, W]``;
    both already low-passed and mean-free)."""
    diff = np.linalg.norm((prediction - target).reshape(len(target), -1), axis=1)
    return diff / np.linalg.norm(target.reshape(len(target), -1), axis=1)


def predict(model: UNet, params: Any, inputs: np.ndarray, *, batch: int = 64) -> np.ndarray:
    """The network's output ``[n, H, W]`` for standardised inputs: the potential (kV·Å) or,
    for a residual network, ePIE's error in units of its RMS (:func:`residual_answer`);
    neither low-passed nor mean-free (:func:`lowpass` does that before scoring)."""
    out = [
        np.asarray(_apply(model, params, jnp.asarray(inputs[s : s + batch])))
        for s in range(0, len(inputs), batch)
    ]
    return np.concatenate(out)


@functools.partial(jax.jit, static_argnums=0)  # jit's own cache, one entry per model
def _apply(model: UNet, params: Any, x: jax.Array) -> jax.Array:
    return model.apply(params, x)[..., 0]


def _rms(base: np.ndarray) -> np.ndarray:
    """Per-specimen RMS ``[n, 1, 1]`` of ``[n, H, W]`` maps (the residual's unit)."""
    return np.sqrt(np.mean(base**2, axis=(1, 2), keepdims=True)) + 1e-6


def residual_answer(base: np.ndarray, output: np.ndarray) -> np.ndarray:
    """The answer of a residual network: ``base + rms(base) * output`` (``[n, H, W]``)."""
    return base + _rms(base) * output


def train_fcn(
    config: Config,
    train_inputs: np.ndarray,
    train_targets: np.ndarray,
    test_inputs: np.ndarray,
    test_targets: np.ndarray,
    *,
    train_base: np.ndarray | None = None,
    test_base: np.ndarray | None = None,
    progress: bool = False,
    info: ProcessInfo | None = None,
    mesh: Mesh | None = None,
) -> tuple[UNet, Any, dict[str, list[float]]]:
    """Train the U-Net on the mean squared error (kV·Å)² with Adam (cosine decay) through
    ``jaxsci.parallel``'s data-parallel step (all local devices; MPI ranks under mpirun).

    With ``train_base`` / ``test_base`` (``[n, H, W]``, e.g. ePIE's potentials) the network
    learns the residual in units of each specimen's base: it is trained on ``(targets -
    base) / rms(base)`` and predicts ``base + rms(base) * output`` (:func:`residual_answer`).

    Returns the model, its parameters and the history: per epoch the mean training loss
    and the test set's median relative error (after low-passing the prediction like the
    target).
    """
    if (train_base is None) != (test_base is None):
        raise ValueError("train_base and test_base go together (a residual network needs both)")
    if train_base is not None:
        train_targets = (train_targets - train_base) / _rms(train_base)
    model = make_model(config)
    n = len(train_inputs)
    per_epoch = n // config.batch_size
    if per_epoch < 1:
        raise ValueError(f"n_train ({n}) is smaller than batch_size ({config.batch_size})")
    total = per_epoch * config.epochs
    schedule = optax.cosine_decay_schedule(config.lr, total)
    key = jax.random.key(config.seed)
    params = model.init(key, jnp.asarray(train_inputs[:1]))

    def loss_fn(p, batch):
        x, y = batch
        return jnp.mean((model.apply(p, x)[..., 0] - y) ** 2)

    dp = data_parallel(loss_fn, optax.adam(schedule), info=info, mesh=mesh)
    state = dp.init(params)
    rng = np.random.default_rng(config.seed)
    history: dict[str, list[float]] = {
        "epoch": [],
        "train_loss": [],
        "test_median_error": [],
        "time_s": [],
    }
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="training FCN", leave=False)
    t0 = time.perf_counter()
    for epoch in range(config.epochs):
        order = rng.permutation(n)
        losses = []
        for b in range(per_epoch):
            idx = np.sort(order[b * config.batch_size : (b + 1) * config.batch_size])
            batch = dp.shard_batch((train_inputs[idx], train_targets[idx]))
            state, loss = dp.step(state, batch)
            losses.append(float(loss))
            if bar is not None:
                bar.update()
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
        pred = predict(model, dp.params(state), test_inputs)
        if test_base is not None:
            pred = residual_answer(test_base, pred)
        pred = np.asarray(lowpass(pred, config))
        history["epoch"].append(epoch + 1)
        history["train_loss"].append(float(np.mean(losses)))
        history["test_median_error"].append(float(np.median(relative_errors(pred, test_targets))))
        history["time_s"].append(time.perf_counter() - t0)
    if bar is not None:
        bar.close()
    return model, dp.params(state), history


def epie_objects(
    config: Config, patterns: np.ndarray, *, progress: bool = False
) -> tuple[np.ndarray, float]:
    """ePIE with the known probe (projection approximation; the modulus constraint inside
    the simulation's band limit) on every stack ``[n, P, H, W]``:
    the objects (complex ``[n, H, W]``) and the wall seconds per specimen (compilation
    excluded; chunks of specimens are vmapped)."""
    grid = grid_of(config)
    positions = jnp.asarray(probe_positions(config))
    probe0 = probe(grid, config.energy, semiangle=config.semiangle, defocus=config.defocus)

    def one(stack):  # the band limit cbed_stack recorded the patterns with
        return epie(
            stack, positions, probe0, grid, n_iter=config.epie_iters, band_limit=BAND_LIMIT
        ).object

    run = jax.jit(jax.vmap(one))
    chunk = 16
    warm = np.resize(patterns[:chunk], (chunk, *patterns.shape[1:]))  # the timed shape
    run(jnp.asarray(warm)).block_until_ready()  # compile outside the clock
    starts = range(0, len(patterns), chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="ePIE", leave=False)
    out = np.empty((len(patterns), *patterns.shape[2:]), np.complex64)
    t0 = time.perf_counter()
    for s in starts:
        part = patterns[s : s + chunk]
        pad = chunk - len(part)  # one compiled shape: pad the last chunk
        if pad:
            part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
        out[s : s + chunk] = np.asarray(run(jnp.asarray(part)))[: chunk - pad]
    return out, (time.perf_counter() - t0) / len(patterns)


def epie_potential(config: Config, objects: np.ndarray) -> np.ndarray:
    """The ePIE baseline's answer: ``arg(O) / sigma``, low-passed and mean-free, kV·Å."""
    pot = jax.vmap(lambda o: potential_from_object(o, config.energy))(jnp.asarray(objects))
    return np.asarray(lowpass(pot, config)) / 1000.0


def fcn_inputs(config: Config, patterns: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """What the FCN reads (unstandardised), by ``config.fcn_input``: ``"cbed"``, the log
    CBED stack ``[n, H, W, P]`` (Laanait et al.'s formulation); ``"epie"``, the ePIE
    object's real and imaginary parts ``[n, H, W, 2]`` (no phase wrapping)."""
    if config.fcn_input == "cbed":
        return log_patterns(patterns)
    return np.stack([objects.real, objects.imag], axis=-1).astype(np.float32)
