"""Electron optics on a periodic 2-D grid: wavelength, interaction constant, grid, probe,
transmission and Fresnel propagator.

Conventions (shared by the whole of :mod:`jaxsci.imaging`):

* Lengths in Å, energies in eV, potentials in V, projected potentials in V·Å, angles in
  mrad at the API and rad inside.
* Arrays are ``[ny, nx]`` (row = y, column = x). Positions are ``(x, y)`` pairs in Å
  (``x`` runs along axis 1, ``y`` along axis 0), the order ase uses, so ``positions[:, :2]``
  of an ``ase.Atoms`` can be passed directly.
* Fourier transforms follow NumPy's sign, ``F(k) = sum_r f(r) exp(-2 pi i k.r)``; a plane
  wave ``exp(+2 pi i k.r)`` sits at frequency ``k``.
* Propagation over ``dz`` multiplies the spectrum by ``exp(-i pi lambda dz |k|^2)``
  (Fresnel, paraxial). The probe's aberration function enters as ``exp(-i chi(k))`` with
  ``chi(k) = pi lambda df |k|^2 + (pi/2) Cs lambda^3 |k|^4``, so a probe of defocus ``df``
  is exactly the focused probe propagated by ``df``: positive ``df`` puts the crossover
  ``df`` upstream of the entrance surface (abTEM's ``C10 = df``; Kirkland's ``df`` has the
  opposite sign), negative ``df`` focuses ``|df|`` inside the specimen.
* Anti-aliasing: ``band_limit=b`` keeps ``|k| <= b * k_nyquist`` with ``k_nyquist =
  min(1 / (2 dy), 1 / (2 dx))``; the standard value is 2/3, ``None`` switches it off.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "BOHR_A",
    "COULOMB_VA",
    "Grid",
    "band_limit_mask",
    "fourier_shift",
    "interaction_constant",
    "probe",
    "propagate",
    "propagator",
    "shift_phase",
    "transmission",
    "wavelength",
]

# CODATA 2018 (scipy.constants), in units that stay well inside float32's range.
_HC_EV_A = 12398.419843320026  # h c, eV·Å
_MC2_EV = 510998.95000  # m0 c^2, eV

#: e / (4 pi eps0) in V·Å (the Coulomb prefactor of the atomic potential).
COULOMB_VA = 14.399645468667815
#: Bohr radius, Å.
BOHR_A = 0.529177210903


def _concrete(x) -> np.ndarray | None:
    """``x`` as a NumPy array when its value is known at trace time, else ``None``."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def check_positive(value, name: str, where: str) -> None:
    """Raise ``ValueError`` unless a concrete ``value`` is finite and > 0 (tracers pass)."""
    v = _concrete(value)
    if v is None:
        return
    if v.ndim != 0:
        raise ValueError(f"{where}: {name} must be a scalar, got shape {v.shape}")
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{where}: {name} must be positive and finite, got {float(v)!r}")


def check_finite(value, name: str, where: str) -> None:
    """Raise ``ValueError`` if a concrete ``value`` (scalar or array) has NaN or inf."""
    v = _concrete(value)
    if v is not None and not np.all(np.isfinite(v)):
        raise ValueError(f"{where}: {name} contains NaN or inf")


def check_scan(patterns, probe_positions, grid, where: str) -> None:
    """Raise ``ValueError`` unless ``grid`` is a :class:`Grid`, ``patterns`` are
    ``[P, ny, nx]`` intensities on it (when concrete: finite, non-negative, not all zero)
    and ``probe_positions`` are ``[P, 2]`` (when concrete: finite). Tracers pass."""
    if not isinstance(grid, Grid):
        raise ValueError(f"{where}: grid must be a Grid, got {type(grid).__name__}")
    shape = jnp.shape(patterns)
    if len(shape) != 3 or shape[1:] != grid.shape or shape[0] < 1:
        raise ValueError(f"{where}: patterns must be [P, ny, nx] = [P, *{grid.shape}], got {shape}")
    pshape = np.shape(probe_positions)
    if pshape != (shape[0], 2):
        raise ValueError(f"{where}: probe_positions must be [P, 2] = [{shape[0]}, 2], got {pshape}")
    p = _concrete(patterns)
    if p is not None:
        if not np.all(np.isfinite(p)):
            raise ValueError(f"{where}: patterns contain NaN or inf")
        if np.any(p < 0):
            raise ValueError(f"{where}: patterns must be non-negative intensities")
        if not np.any(p > 0):
            raise ValueError(f"{where}: patterns are all zero")
    r = _concrete(probe_positions)
    if r is not None and not np.all(np.isfinite(r)):
        raise ValueError(f"{where}: probe_positions contain NaN or inf")


def wavelength(energy: float) -> jax.Array:
    """Relativistic electron wavelength in Å for a kinetic ``energy`` in eV:
    ``lambda = h c / sqrt(E (2 m0 c^2 + E))``."""
    check_positive(energy, "energy", "wavelength")
    e = jnp.asarray(energy, dtype=jnp.result_type(float))
    return _HC_EV_A / jnp.sqrt(e * (2.0 * _MC2_EV + e))


def interaction_constant(energy: float) -> jax.Array:
    """Interaction constant ``sigma = 2 pi gamma m0 e lambda / h^2`` in rad / (V·Å), so the
    phase a projected potential ``V`` (V·Å) imparts is ``sigma V``; ``energy`` in eV.
    Evaluated as ``2 pi / (lambda E) (m0 c^2 + E) / (2 m0 c^2 + E)`` (same quantity)."""
    check_positive(energy, "energy", "interaction_constant")
    e = jnp.asarray(energy, dtype=jnp.result_type(float))
    return 2.0 * jnp.pi / (wavelength(e) * e) * (_MC2_EV + e) / (2.0 * _MC2_EV + e)


@dataclasses.dataclass(frozen=True)
class Grid:
    """A periodic 2-D sampling grid: ``shape = (ny, nx)`` pixels over ``extent = (Ly, Lx)``
    Å. Frozen and hashable, so it can be a static argument of ``jax.jit``."""

    shape: tuple[int, int]
    extent: tuple[float, float]

    def __post_init__(self):
        shape, extent = tuple(self.shape), tuple(self.extent)
        if len(shape) != 2 or not all(
            isinstance(n, int | np.integer) and not isinstance(n, bool) and n > 0 for n in shape
        ):
            raise ValueError(f"Grid: shape must be two positive ints (ny, nx), got {self.shape!r}")
        try:
            ext = tuple(float(v) for v in extent)
        except (TypeError, ValueError):
            raise ValueError(f"Grid: extent must be two numbers (Ly, Lx), got {extent!r}") from None
        if len(ext) != 2 or not all(math.isfinite(v) and v > 0 for v in ext):
            raise ValueError(f"Grid: extent must be two positive finite lengths, got {extent!r}")
        object.__setattr__(self, "shape", tuple(int(n) for n in shape))
        object.__setattr__(self, "extent", ext)

    @property
    def sampling(self) -> tuple[float, float]:
        """Pixel size ``(dy, dx)`` in Å."""
        return (self.extent[0] / self.shape[0], self.extent[1] / self.shape[1])

    @property
    def pixel_area(self) -> float:
        """Area of one pixel, Å²."""
        return self.sampling[0] * self.sampling[1]

    @property
    def k_nyquist(self) -> float:
        """Largest frequency (1/Å) resolved along both axes, ``min(1/(2 dy), 1/(2 dx))``."""
        return 0.5 / max(self.sampling)

    def frequencies(self) -> tuple[np.ndarray, np.ndarray]:
        """Spatial frequencies ``(ky [ny], kx [nx])`` in 1/Å, FFT order (zero first)."""
        return (
            np.fft.fftfreq(self.shape[0], self.sampling[0]),
            np.fft.fftfreq(self.shape[1], self.sampling[1]),
        )

    def k2(self) -> np.ndarray:
        """``|k|^2`` on the FFT grid, ``[ny, nx]``, 1/Å²."""
        ky, kx = self.frequencies()
        return ky[:, None] ** 2 + kx[None, :] ** 2


def _check_band_limit(band_limit) -> None:
    if band_limit is None:
        return
    b = _concrete(band_limit)
    if b is None or b.ndim != 0 or not np.isfinite(b) or not 0 < b <= 1:
        raise ValueError(f"band_limit must be None or a number in (0, 1], got {band_limit!r}")


def band_limit_mask(grid: Grid, band_limit: float | None = 2 / 3) -> np.ndarray:
    """``[ny, nx]`` 0/1 mask (FFT order) of ``|k| < band_limit * k_nyquist``; all ones
    for ``None``.

    Strictly below: with 2/3, a frequency exactly at the limit (grids divisible by 3) would
    alias a product of two masked waves back onto itself (``2 k - N = -k`` for ``k = N/3``),
    the one aliasing the 2/3 rule exists to prevent."""
    _check_band_limit(band_limit)
    if band_limit is None:
        return np.ones(grid.shape)
    kmax = band_limit * grid.k_nyquist
    return (grid.k2() < kmax**2 * (1 - 1e-12)).astype(float)


def _check_xy(shift, name: str, where: str) -> None:
    s = _concrete(shift)
    if s is None:
        if jnp.shape(shift) != (2,):
            raise ValueError(f"{where}: {name} must be an (x, y) pair, got {jnp.shape(shift)}")
        return
    if s.shape != (2,):
        raise ValueError(f"{where}: {name} must be an (x, y) pair, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{where}: {name} must be finite, got {s!r}")


def shift_phase(grid: Grid, shift: ArrayLike | Sequence[float]) -> jax.Array:
    """``[ny, nx]`` Fourier phase ramp ``exp(-2 pi i k.shift)`` (FFT order) that moves an
    array by ``shift = (x, y)`` Å; periodic, exact for integer pixels."""
    ky, kx = grid.frequencies()
    shift = jnp.asarray(shift, dtype=jnp.result_type(float))
    py = jnp.exp(-2j * jnp.pi * ky * shift[1])
    px = jnp.exp(-2j * jnp.pi * kx * shift[0])
    return py[:, None] * px[None, :]


def fourier_shift(array: ArrayLike, grid: Grid, shift: ArrayLike | Sequence[float]) -> jax.Array:
    """Translate a complex ``[ny, nx]`` array periodically by ``shift = (x, y)`` Å."""
    _check_xy(shift, "shift", "fourier_shift")
    return jnp.fft.ifft2(jnp.fft.fft2(array) * shift_phase(grid, shift))


def probe(
    grid: Grid,
    energy: float,
    *,
    semiangle: float,
    defocus: float = 0.0,
    cs: float = 0.0,
    position: ArrayLike | Sequence[float] = (0.0, 0.0),
    band_limit: float | None = 2 / 3,
) -> jax.Array:
    """Convergent-beam probe, complex ``[ny, nx]`` with ``sum |psi|^2 = 1``.

    ``psi_hat(k) = A(k) exp(-i chi(k)) exp(-2 pi i k.position)`` with the aperture ``A = 1``
    for ``lambda |k| <= semiangle`` (and inside the band limit), ``chi(k) = pi lambda df
    |k|^2 + (pi/2) Cs lambda^3 |k|^4`` (see the module docstring for the sign).

    Args:
      grid: sampling grid.
      energy: beam energy, eV.
      semiangle: convergence semi-angle, mrad.
      defocus: ``df``, Å; the probe equals the focused one propagated by ``df``.
      cs: spherical aberration ``Cs``, Å.
      position: probe centre ``(x, y)``, Å (a Fourier phase ramp, so any real value works
        and the probe wraps periodically).
      band_limit: anti-aliasing fraction of the Nyquist frequency, or ``None``.
    """
    check_positive(semiangle, "semiangle", "probe")
    check_positive(energy, "energy", "probe")
    check_finite(defocus, "defocus", "probe")
    check_finite(cs, "cs", "probe")
    _check_xy(position, "position", "probe")
    lam = wavelength(energy)
    k2 = jnp.asarray(grid.k2())
    alpha = jnp.asarray(semiangle, dtype=lam.dtype) * 1e-3
    aperture = jnp.where(k2 * lam**2 <= alpha**2, 1.0, 0.0) * band_limit_mask(grid, band_limit)
    chi = jnp.pi * lam * defocus * k2 + 0.5 * jnp.pi * cs * lam**3 * k2**2
    spectrum = aperture * jnp.exp(-1j * chi) * shift_phase(grid, position)
    norm = jnp.sqrt(jnp.sum(aperture))
    # with sum |A|^2 = norm^2 and Parseval for numpy's ifft2 (1/N), this gives sum |psi|^2 = 1
    return jnp.fft.ifft2(spectrum) * (math.sqrt(grid.shape[0] * grid.shape[1]) / norm)


def transmission(
    potential: ArrayLike,
    energy: float,
    *,
    grid: Grid | None = None,
    band_limit: float | None = None,
) -> jax.Array:
    """Transmission function ``exp(i sigma V)`` of a projected potential ``V`` (V·Å,
    ``[..., ny, nx]``). With ``band_limit`` (needs ``grid``) it is low-pass filtered to
    ``|k| <= band_limit * k_nyquist`` (Kirkland's anti-aliasing; no longer unitary)."""
    check_positive(energy, "energy", "transmission")
    t = jnp.exp(1j * interaction_constant(energy) * jnp.asarray(potential))
    if band_limit is None:
        return t
    if grid is None:
        raise ValueError("transmission: band_limit needs the grid")
    return jnp.fft.ifft2(jnp.fft.fft2(t) * band_limit_mask(grid, band_limit))


def _check_propagation(energy, dz, where: str) -> None:
    check_positive(energy, "energy", where)
    v = _concrete(dz)
    if v is not None and (v.ndim != 0 or not np.isfinite(v)):
        raise ValueError(f"{where}: dz must be a finite scalar (Å), got {v!r}")


def propagator(
    grid: Grid, energy: float, dz: float, *, band_limit: float | None = 2 / 3
) -> jax.Array:
    """Fresnel propagator over ``dz`` Å, ``[ny, nx]`` FFT order: ``exp(-i pi lambda dz
    |k|^2)`` times the band-limit mask (``None``: no mask, exactly unitary). ``dz`` is any
    finite distance: 0 is the identity, a negative one propagates back (the inverse of
    ``+|dz|`` without a mask)."""
    _check_propagation(energy, dz, "propagator")
    lam = wavelength(energy)
    k2 = jnp.asarray(grid.k2())
    return jnp.exp(-1j * jnp.pi * lam * dz * k2) * band_limit_mask(grid, band_limit)


def propagate(
    wave: ArrayLike, grid: Grid, energy: float, dz: float, *, band_limit: float | None = None
) -> jax.Array:
    """Propagate a complex ``[..., ny, nx]`` wave through vacuum by ``dz`` Å (any finite
    ``dz``: negative propagates back). Unlike :func:`propagator` and :func:`multislice`, no
    band limit by default (``None``): exactly unitary."""
    _check_propagation(energy, dz, "propagate")
    if jnp.shape(wave)[-2:] != grid.shape:
        raise ValueError(
            f"propagate: wave must be [..., ny, nx] = [..., {grid.shape[0]}, {grid.shape[1]}], "
            f"got {jnp.shape(wave)}"
        )
    p = propagator(grid, energy, dz, band_limit=band_limit)
    return jnp.fft.ifft2(jnp.fft.fft2(wave) * p)
