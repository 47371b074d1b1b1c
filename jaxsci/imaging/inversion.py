"""Multislice inversion: the projected potential whose multislice CBED stack fits the
measured patterns, refined by gradient descent through the forward model from a first
guess (ePIE's potential, or a network's).

ePIE assumes one slice (the projection approximation), which fails as a specimen thickens:
the probe spreads and channels on its way through. Here the specimen is ``n_slices``
identical slices of ``potential / n_slices``, each ``dz`` thick, which is exact for one
slice and, for a crystal seen along a zone axis (its atom columns repeat along the beam),
the usual first model of a thick one. With ``per_slice=True`` every slice is fitted on its
own (specimens whose slices differ), best started from an identical-slice fit. The
thickness ``n_slices * dz`` must be known (in an experiment, e.g. from EELS) or chosen by
the misfit of identical-slice fits. The misfit is that of the amplitudes,

    L(V) = sum_r sum_k (sqrt(I_model(V)_rk) - sqrt(I_rk))^2 / sum_rk I_rk,

minimised by L-BFGS (optax's, zoom line search) through :func:`cbed_stack`'s model. The
mean of ``V`` is not recoverable (a constant potential is a global phase) and stays that of
the first guess; components beyond the band limit are not measured and do not move.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from jaxsci.imaging.optics import (
    Grid,
    _check_band_limit,
    check_finite,
    check_positive,
    check_scan,
    interaction_constant,
)
from jaxsci.imaging.scattering import _cbed_stack

__all__ = ["RefineResult", "refine_potential"]


class RefineResult(NamedTuple):
    """Output of :func:`refine_potential`.

    Attributes:
      potential: ``[ny, nx]`` projected potential, V·Å: the iterate of lowest misfit (the
        sum of ``slices``).
      losses: ``[n_iter + 1]`` relative amplitude misfit of each iterate (``losses[0]``:
        the first guess).
      misfit: that of ``potential``, the lowest finite one of ``losses`` (``inf`` if none
        is finite); compare fits with it (``losses.min()`` is NaN after a NaN iterate).
      slices: ``[n_slices, ny, nx]`` the slices' potentials, V·Å (all ``potential /
        n_slices`` unless ``per_slice``).
    """

    potential: jax.Array
    losses: jax.Array
    misfit: jax.Array
    slices: jax.Array


def _check(potential0, patterns, probe_positions, grid, n_slices, n_iter, per_slice) -> None:
    where = "refine_potential"
    check_scan(patterns, probe_positions, grid, where)
    shape0 = jnp.shape(potential0)
    if shape0 != grid.shape and not (per_slice and shape0 == (n_slices, *grid.shape)):
        raise ValueError(
            f"{where}: potential0 must be [ny, nx] = {grid.shape} (or, with per_slice=True, "
            f"[n_slices, ny, nx]), got {shape0}"
        )
    for name, value in (("n_slices", n_slices), ("n_iter", n_iter)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{where}: {name} must be an int >= 1, got {value!r}")
    check_finite(potential0, "potential0", where)


@functools.partial(
    jax.jit,
    static_argnames=("grid", "n_slices", "n_iter", "band_limit", "optimizer", "per_slice"),
)
def _refine(
    potential0,
    patterns,
    positions,
    energy,
    semiangle,
    defocus,
    cs,
    dz,
    *,
    grid: Grid,
    n_slices: int,
    n_iter: int,
    band_limit: float | None,
    optimizer: optax.GradientTransformation | None,
    per_slice: bool,
):
    amplitude = jnp.sqrt(patterns)
    total = jnp.sum(patterns)

    # optimise the phase sigma V (radians; O(1) curvature) rather than V (V·Å)
    sigma = interaction_constant(energy)

    def loss(phase):
        if per_slice:  # phase: [n_slices, ny, nx], each slice's own
            slices = phase / sigma
        else:  # phase: [ny, nx], the projected potential's, split evenly
            slices = jnp.broadcast_to(phase / (sigma * n_slices), (n_slices, *grid.shape))
        model = _cbed_stack(slices, positions, grid, energy, semiangle, defocus, cs, dz, band_limit)
        # the square root's gradient is infinite at 0: offset by a tiny fraction of the mean
        floor = 1e-12 * total / patterns.size
        return jnp.sum((jnp.sqrt(model + floor) - amplitude) ** 2) / total

    if optimizer is None:
        opt = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(loss)
    else:  # (the extra arguments below are L-BFGS's line search's; others ignore them)
        opt = optax.with_extra_args_support(optimizer)
        value_and_grad = lambda v, state: jax.value_and_grad(loss)(v)  # noqa: E731

    def step(carry, _):
        v, state, best, best_loss = carry
        value, grad = value_and_grad(v, state=state)
        better = value < best_loss  # NaN never is
        best, best_loss = jnp.where(better, v, best), jnp.where(better, value, best_loss)
        updates, state = opt.update(grad, state, v, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(v, updates), state, best, best_loss), value

    if per_slice and potential0.ndim == 2:
        potential0 = jnp.broadcast_to(potential0 / n_slices, (n_slices, *grid.shape))
    phase0 = sigma * potential0
    init = (phase0, opt.init(phase0), phase0, jnp.asarray(jnp.inf, phase0.dtype))
    (v, _, best, best_loss), losses = jax.lax.scan(step, init, None, length=n_iter)
    last = loss(v)
    better = last < best_loss
    best, best_loss = jnp.where(better, v, best), jnp.where(better, last, best_loss)
    if per_slice:
        slices = best / sigma
    else:
        slices = jnp.broadcast_to(best / (sigma * n_slices), (n_slices, *grid.shape))
    return slices.sum(0), jnp.concatenate([losses, last[None]]), best_loss, slices


def refine_potential(
    potential0: ArrayLike,
    patterns: ArrayLike,
    probe_positions: ArrayLike,
    grid: Grid,
    energy: float,
    *,
    semiangle: float,
    defocus: float = 0.0,
    cs: float = 0.0,
    dz: float,
    n_slices: int,
    n_iter: int = 100,
    band_limit: float | None = 2 / 3,
    optimizer: optax.GradientTransformation | None = None,
    per_slice: bool = False,
) -> RefineResult:
    """Refine a projected potential so that its multislice CBED stack fits ``patterns``.

    Args:
      potential0: ``[ny, nx]`` first guess of the projected potential, V·Å (e.g.
        :func:`potential_from_object` of ePIE's object).
      patterns: ``[P, ny, nx]`` measured intensities, as :func:`cbed_stack` records them.
      probe_positions: ``[P, 2]`` probe positions ``(x, y)``, Å.
      grid: sampling grid.
      energy: beam energy, eV.
      semiangle, defocus, cs: the probe, as in :func:`probe` (mrad, Å, Å).
      dz: slice thickness, Å.
      n_slices: number of slices (the specimen is ``n_slices * dz`` thick); static, one
        compilation per value.
      n_iter: L-BFGS iterations (>= 1).
      band_limit: the band limit of the forward model, as in :func:`cbed_stack`.
      optimizer: an optax transformation of the phase ``sigma V`` (radians), e.g.
        ``optax.adam(1e-2)``; default (``None``) L-BFGS with its zoom line search, measured
        best here (RESULTS.md, session 25). Static: one compilation per object.
      per_slice: ``False``: the slices are identical, ``potential / n_slices`` (one image
        to fit; the model of a crystal along a zone axis, and what chooses the thickness
        best). ``True``: every slice its own image (``potential0`` ``[ny, nx]`` split
        evenly, or ``[n_slices, ny, nx]``), for specimens whose slices differ (e.g. the
        alternating planes along [011]); start it from an identical-slice fit (RESULTS.md,
        session 25: 0.015 -> 0.006 median error).

    Returns:
      :class:`RefineResult` ``(potential, losses, misfit, slices)``: the iterate of lowest
      misfit (so never worse than ``potential0`` in misfit), the misfit of every iterate,
      and the slices. Pure and jitted; compiled once per ``(grid, n_slices, n_iter,
      band_limit, optimizer, per_slice, shapes)``.
    """
    _check(potential0, patterns, probe_positions, grid, n_slices, n_iter, per_slice)
    for name, value in (("energy", energy), ("semiangle", semiangle), ("dz", dz)):
        check_positive(value, name, "refine_potential")
    check_finite(defocus, "defocus", "refine_potential")
    check_finite(cs, "cs", "refine_potential")
    _check_band_limit(band_limit)
    fdt = jnp.result_type(float)
    energy, semiangle, defocus, cs, dz = (
        jnp.asarray(x, dtype=fdt) for x in (energy, semiangle, defocus, cs, dz)
    )
    potential, losses, misfit, slices = _refine(
        jnp.asarray(potential0, fdt),
        jnp.asarray(patterns, fdt),
        jnp.asarray(probe_positions, fdt),
        energy,
        semiangle,
        defocus,
        cs,
        dz,
        grid=grid,
        n_slices=int(n_slices),
        n_iter=int(n_iter),
        band_limit=band_limit,
        optimizer=optimizer,
        per_slice=bool(per_slice),
    )
    return RefineResult(potential, losses, misfit, slices)
