"""Multislice propagation of a fast-electron wave and its CBED patterns.

Each slice ``s`` first transmits (``psi <- t_s psi``, ``t_s = exp(i sigma V_s)``) and then
propagates through ``dz`` of vacuum; the last slice is followed by a propagation too, so the
exit wave is the wave at the exit surface of a specimen ``S dz`` thick. (That last
propagation is a pure phase in Fourier space and does not change a diffraction pattern.)

``cbed`` uses the unitary FFT (``norm="ortho"``), so a pattern holds the wave's total
intensity: ``sum cbed(psi) = sum |psi|^2``; the zero frequency sits at pixel
``(ny // 2, nx // 2)`` (``fftshift``), and pixel ``(i, j)`` is the frequency
``((i - ny // 2) / Ly, (j - nx // 2) / Lx)`` in 1/Å, i.e. the angle ``lambda k``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxsci.imaging.optics import (
    Grid,
    _check_band_limit,
    _concrete,
    check_finite,
    check_positive,
    probe,
    propagator,
    shift_phase,
    transmission,
)

__all__ = ["cbed", "cbed_stack", "multislice"]


def _check_slices(potential_slices, grid: Grid, where: str) -> None:
    if not isinstance(grid, Grid):
        raise ValueError(f"{where}: grid must be a Grid, got {type(grid).__name__}")
    shape = jnp.shape(potential_slices)
    if len(shape) != 3 or shape[1:] != grid.shape or shape[0] < 1:
        raise ValueError(
            f"{where}: potential_slices must be [S, ny, nx] = [S, {grid.shape[0]}, "
            f"{grid.shape[1]}] with S >= 1, got {shape}"
        )
    check_finite(potential_slices, "potential_slices", where)


def _run(wave, transmissions, prop) -> jax.Array:
    """Transmit-then-propagate through the ``[S, ny, nx]`` transmission functions."""

    def step(psi, t):
        return jnp.fft.ifft2(jnp.fft.fft2(psi * t) * prop), None

    out, _ = jax.lax.scan(step, wave, transmissions)
    return out


def multislice(
    wave: ArrayLike,
    potential_slices: ArrayLike,
    grid: Grid,
    energy: float,
    dz: float,
    *,
    band_limit: float | None = 2 / 3,
) -> jax.Array:
    """Exit wave (complex ``[ny, nx]``) of ``wave`` through ``potential_slices``.

    Args:
      wave: complex ``[ny, nx]`` incident wave (e.g. :func:`probe`).
      potential_slices: ``[S, ny, nx]`` projected potential of each slice, V·Å.
      grid: sampling grid.
      energy: beam energy, eV.
      dz: slice thickness, Å (> 0).
      band_limit: anti-aliasing fraction of Nyquist applied to the propagator and to the
        transmission functions (Kirkland); ``None`` keeps everything unitary.

    Slice by slice: transmit, then propagate ``dz``, the last slice included.
    """
    _check_slices(potential_slices, grid, "multislice")
    if jnp.shape(wave) != grid.shape:
        raise ValueError(f"multislice: wave must be [ny, nx] = {grid.shape}, got {jnp.shape(wave)}")
    check_positive(energy, "energy", "multislice")
    check_positive(dz, "dz", "multislice")
    _check_band_limit(band_limit)
    t = transmission(potential_slices, energy, grid=grid, band_limit=band_limit)
    prop = propagator(grid, energy, dz, band_limit=band_limit)
    return _run(jnp.asarray(wave, dtype=t.dtype), t, prop)


def cbed(exit_wave: ArrayLike) -> jax.Array:
    """Diffraction intensity ``|FFT psi|^2`` of a ``[..., ny, nx]`` wave, unitary FFT (so
    the total equals ``sum |psi|^2``), zero frequency at the centre (``fftshift``)."""
    spectrum = jnp.fft.fft2(exit_wave, norm="ortho")
    return jnp.fft.fftshift(jnp.abs(spectrum) ** 2, axes=(-2, -1))


@functools.partial(jax.jit, static_argnames=("grid", "band_limit"))
def _cbed_stack(slices, positions, grid, energy, semiangle, defocus, cs, dz, band_limit):
    probe_hat = jnp.fft.fft2(
        probe(grid, energy, semiangle=semiangle, defocus=defocus, cs=cs, band_limit=band_limit)
    )
    t = transmission(slices, energy, grid=grid, band_limit=band_limit)
    prop = propagator(grid, energy, dz, band_limit=band_limit)

    def one(position):
        wave = jnp.fft.ifft2(probe_hat * shift_phase(grid, position))
        return cbed(_run(wave, t, prop))

    return jax.vmap(one)(positions)


def cbed_stack(
    potential_slices: ArrayLike,
    probe_positions: ArrayLike,
    grid: Grid,
    energy: float,
    *,
    semiangle: float,
    defocus: float = 0.0,
    cs: float = 0.0,
    dz: float,
    band_limit: float | None = 2 / 3,
) -> jax.Array:
    """CBED patterns ``[P, ny, nx]`` of a probe scanned over ``probe_positions``.

    The probe (:func:`jaxsci.imaging.probe`, same arguments) is moved to each ``(x, y)``
    position (``[P, 2]``, Å) by a Fourier phase ramp, sent through :func:`multislice` and
    recorded with :func:`cbed`. Compiled once per ``(grid, band_limit, shapes)``; energy,
    aberrations, ``dz`` and positions are traced, so new values do not recompile. The
    scalars are cast to the default float dtype first, so an ``int``, a Python ``float``
    and a NumPy ``float32`` / ``float64`` of the same argument share one compilation.
    """
    _check_slices(potential_slices, grid, "cbed_stack")
    pshape = np.shape(probe_positions)
    if len(pshape) != 2 or pshape[1] != 2:
        raise ValueError(f"cbed_stack: probe_positions must be [P, 2] (x, y), got {pshape}")
    r = _concrete(probe_positions)
    if r is not None and not np.all(np.isfinite(r)):
        raise ValueError("cbed_stack: probe_positions contain NaN or inf")
    for name, value in (("energy", energy), ("semiangle", semiangle), ("dz", dz)):
        check_positive(value, name, "cbed_stack")
    check_finite(defocus, "defocus", "cbed_stack")
    check_finite(cs, "cs", "cbed_stack")
    _check_band_limit(band_limit)
    # one dtype for the traced scalars: jit keys its cache on dtype (and weak typing), so
    # 100000, 100e3 and np.float32(100e3) would otherwise each compile anew
    fdt = jnp.result_type(float)
    energy, semiangle, defocus, cs, dz = (
        jnp.asarray(x, dtype=fdt) for x in (energy, semiangle, defocus, cs, dz)
    )
    positions = jnp.asarray(probe_positions, dtype=fdt)  # a nested list works too
    return _cbed_stack(
        potential_slices, positions, grid, energy, semiangle, defocus, cs, dz, band_limit
    )
