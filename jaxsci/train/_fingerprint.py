"""Cheap, deterministic fingerprints of training data and optimizers, stored with
checkpoints so that a resume on other data or with another optimizer (learning rate,
betas, schedule...) is refused (:func:`jaxsci.train.train_cvae`,
:func:`jaxsci.train.train_conditional`, :func:`jaxsci.train.gan.train_per_label`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

_GOLDEN = 0.6180339887498949  # position weights 1 + frac(k * golden): spread over [1, 2)
_CHUNK = 1 << 20


def checksum(values: np.ndarray) -> list[float]:
    """``[order, location, scale]`` of ``values [n, ...]`` (float64 sums), each in [0, 3]:

    - order: ``1 + sum w z / sum w |z|`` with ``z`` the values standardised per column and
      ``w`` position weights in [1, 2): another arrangement of the same values (rows
      shuffled, columns swapped) moves it by about ``0.34 / sqrt(values.size)``, far beyond
      1e-5 up to some 10^7 values, whatever the columns' offsets and scales;
    - location: ``2 + tanh(mean asinh(mean_col / std_col) / 10)`` (a shifted column);
    - scale: ``2 + arctan(mean log std_col) / pi`` (a rescaled column).

    A column's spread below 1e-6 of the whole array's RMS counts as none, so last-bit
    differences (the data recomputed on other hardware, a zero turned into -1e-8) move
    each number by ~1e-7 or less; another data set of the same shape differs in all three
    almost surely."""
    v2 = values.reshape(len(values), -1) if values.ndim else values.reshape(1, 1)
    n_rows = len(v2)
    if v2.size == 0:
        return [1.0, 2.0, 2.0]
    total = np.zeros(v2.shape[1])
    total_sq = np.zeros(v2.shape[1])
    rows = max(1, _CHUNK // max(v2.shape[1], 1))
    for start in range(0, n_rows, rows):
        block = v2[start : start + rows].astype(np.float64)
        total += block.sum(0)
        total_sq += (block * block).sum(0)
    mean = total / n_rows
    std = np.sqrt(np.maximum(total_sq / n_rows - mean * mean, 0.0))
    floor = 1e-6 * float(np.sqrt(total_sq.sum() / v2.size)) or 1e-300  # noise floor
    unit = np.maximum(std, floor)
    signed = absolute = 0.0
    for start in range(0, n_rows, rows):
        z = ((v2[start : start + rows].astype(np.float64) - mean) / unit).ravel()
        k = np.arange(start * v2.shape[1], start * v2.shape[1] + z.size, dtype=np.float64)
        w = 1.0 + np.modf(k * _GOLDEN)[0]
        signed += float(w @ z)
        absolute += float(w @ np.abs(z))
    order = 1.0 + (signed / absolute if absolute > 0 else 0.0)
    location = 2.0 + float(np.tanh(np.mean(np.arcsinh(mean / unit)) / 10.0))
    scale = 2.0 + float(np.arctan(np.mean(np.log(unit)))) / np.pi
    return [order, location, scale]


#: Length of :func:`optimizer_probe` as jaxsci 0.1 up to session 28 stored it (per update a
#: signed weighted sum and the L1 norm, summed on the device): a GAN checkpoint holding such a
#: probe resumes without its optimizers compared (:func:`jaxsci.train.gan._check_saved`).
LEGACY_PROBE_LENGTH = 6


def optimizer_probe(opt: optax.GradientTransformation) -> list[float] | None:
    """Three updates ``u`` of ``opt`` on a fixed 8-vector and gradients: per update
    ``sum |u|``, ``sum w |u|`` (position weights ``w = 1..8``) and ``sum u^2``, to 7
    significant digits (an error message shows them whole). Optax transformations hide
    their hyperparameters; these updates show them: another optimizer, learning rate,
    betas or weight decay, or a schedule that differs within its first 3 steps, gives
    other numbers (far beyond the settings' 1e-5 relative tolerance). The same optimizer
    gives the same numbers to ~1e-7 wherever it runs: the updates are computed with x64
    off (x64 on moved Adam's by 1e-5) and summed on the host in float64, over positive
    terms only (a signed sum that nearly cancelled moved by more than its 1e-9 absolute
    tolerance with the order of its float32 additions). Not seen: a change of sign of
    every update. Run eagerly (a jit would compile once per optimizer object). ``None``
    for an optimizer that cannot update such a vector (e.g. masks by name)."""
    weights = np.arange(1.0, 9.0)
    out = []
    try:
        with jax.enable_x64(False):
            params = {"w": jnp.linspace(-1.0, 1.0, 8, dtype=jnp.float32)}
            state = opt.init(params)
            for i, scale in enumerate((1.0, -0.5, 2.0)):
                grads = {"w": scale * jnp.cos(3.0 * params["w"] + 0.5 + i)}
                updates, state = opt.update(grads, state, params)
                params = optax.apply_updates(params, updates)
                a = np.abs(np.asarray(updates["w"], np.float64))
                out += [a.sum(), (weights * a).sum(), (a * a).sum()]
        out = [float(f"{v:.7g}") for v in out]
    except Exception:  # noqa: BLE001  any optimizer that cannot run on the probe
        return None
    return out
