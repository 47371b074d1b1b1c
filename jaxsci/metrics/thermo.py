"""Thermodynamic statistics of lattice-alloy Monte Carlo runs: C(T), chi(T), peaks, SRO.

Host-side NumPy/SciPy, for the VAE order parameter of order-disorder transitions in
high-entropy alloys (Yin et al., Nat. Comput. Sci. 2021, arXiv 2109.05598): swap Monte
Carlo at many temperatures, a VAE on the sampled configurations, and the Manhattan norm
of the encoder mean ``M = sum_i |z_i|`` as order parameter, whose susceptibility
``chi(T)`` peaks at a transition as the heat capacity ``C(T)`` does.

Sample arrays are ``[n_samples, n_temps]`` (one column per temperature); temperatures
are Kelvin, energies eV. Variances are sample variances with ``ddof`` (default 1,
unbiased; ``ddof=0`` is the paper's ``<x^2> - <x>^2``).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy.signal import find_peaks

from jaxsci.alloys.montecarlo import K_B  # eV/K

__all__ = [
    "drift_z",
    "heat_capacity",
    "local_peaks",
    "manhattan_order_parameter",
    "peak_temperature",
    "susceptibility",
    "warren_cowley",
]


def _finite(name: str, x: ArrayLike) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite (got NaN or inf)")
    return a


def _n_sites(fn: str, n_sites: int) -> int:
    if isinstance(n_sites, bool) or not isinstance(n_sites, int | np.integer) or n_sites < 1:
        raise ValueError(f"{fn}: n_sites must be an integer >= 1, got {n_sites!r}")
    return int(n_sites)


def _samples_and_temperatures(
    fn: str, name: str, samples: ArrayLike, temperatures: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    x = _finite(f"{fn}: {name}", samples)
    t = _finite(f"{fn}: temperatures", temperatures)
    if x.ndim != 2:
        raise ValueError(f"{fn}: {name} must have shape [n_samples, n_temps], got {x.shape}")
    if t.ndim != 1 or t.shape[0] != x.shape[1]:
        raise ValueError(
            f"{fn}: temperatures must have shape [n_temps] matching {name} "
            f"[n_samples, n_temps] = {x.shape}, got {t.shape}"
        )
    if np.any(t <= 0):
        raise ValueError(f"{fn}: temperatures must be > 0 K, got min {t.min()!r}")
    if x.shape[0] < 2:
        raise ValueError(f"{fn}: a variance needs at least 2 samples, got {x.shape[0]}")
    return x, t


def _variance(fn: str, x: np.ndarray, ddof: int) -> np.ndarray:
    if ddof not in (0, 1):
        raise ValueError(f"{fn}: ddof must be 0 or 1, got {ddof!r}")
    return x.var(axis=0, ddof=ddof)


def manhattan_order_parameter(mean: ArrayLike) -> np.ndarray:
    """VAE order parameter ``M = sum_i |z_i|`` of encoder means ``[..., latent]`` -> ``[...]``."""
    z = _finite("manhattan_order_parameter: mean", mean)
    if z.ndim == 0 or z.shape[-1] == 0:
        raise ValueError(
            f"manhattan_order_parameter: mean must have shape [..., latent] with latent >= 1, "
            f"got {z.shape}"
        )
    return np.abs(z).sum(axis=-1)


def heat_capacity(
    energies: ArrayLike, temperatures: ArrayLike, n_sites: int, *, ddof: int = 1
) -> np.ndarray:
    """Specific heat per site in units of k_B: ``Var(E) / (k_B T)^2 / n_sites``.

    Args:
      energies: ``[n_samples, n_temps]`` total energy of the system (eV), one column per
        temperature.
      temperatures: ``[n_temps]`` Kelvin.
      n_sites: lattice sites (atoms) of the system.
      ddof: 1 (unbiased sample variance) or 0 (``<E^2> - <E>^2``).

    Returns:
      ``[n_temps]`` dimensionless ``C / (N k_B)``.
    """
    e, t = _samples_and_temperatures("heat_capacity", "energies", energies, temperatures)
    n = _n_sites("heat_capacity", n_sites)
    return _variance("heat_capacity", e, ddof) / (K_B * t) ** 2 / n


def susceptibility(
    values: ArrayLike, temperatures: ArrayLike, n_sites: int, *, ddof: int = 1
) -> np.ndarray:
    """Susceptibility of an order parameter: ``n_sites * Var(values) / (k_B T)``.

    The paper's ``chi = N (<M^2> - <M>^2) / (k_B T)`` with ``k_B`` in eV/K. For an
    intensive (per-site) ``values`` this is the susceptibility per site; the unit is
    ``[values]^2 / eV``, i.e. 1/eV for a dimensionless order parameter such as the VAE's
    ``M``.

    Args:
      values: ``[n_samples, n_temps]`` order parameter, one column per temperature.
      temperatures: ``[n_temps]`` Kelvin.
      n_sites: lattice sites (atoms) of the system.
      ddof: 1 (unbiased sample variance) or 0 (``<M^2> - <M>^2``).

    Returns:
      ``[n_temps]`` in ``[values]^2 / eV``.
    """
    m, t = _samples_and_temperatures("susceptibility", "values", values, temperatures)
    n = _n_sites("susceptibility", n_sites)
    return n * _variance("susceptibility", m, ddof) / (K_B * t)


def drift_z(
    samples: ArrayLike, *, first: float = 0.1, last: float = 0.5, n_batches: int = 10
) -> np.ndarray:
    """Geweke's equilibration diagnostic per column: the z-score of the difference between
    the mean of the first ``first`` and of the last ``last`` share of a chain.

    Each share's standard error comes from ``n_batches`` batch means, so autocorrelation is
    accounted for (as long as a batch outlasts it). ``|z|`` of a few (e.g. > 3) means the
    chain still drifts: it was not equilibrated when sampling began, and its variance (a heat
    capacity, a susceptibility) is not an equilibrium value.

    Args:
      samples: ``[n_samples, n_cols]`` chains in time order (e.g. energies per temperature).
      first, last: shares of the chain compared, ``first + last <= 1``.
      n_batches: batches per share for its standard error (>= 2).

    Returns:
      ``[n_cols]`` z-scores (0 where both shares are constant and equal).
    """
    x = _finite("drift_z: samples", samples)
    if x.ndim != 2:
        raise ValueError(f"drift_z: samples must have shape [n_samples, n_cols], got {x.shape}")
    if not (0 < first < 1 and 0 < last < 1 and first + last <= 1):
        raise ValueError(
            f"drift_z: need 0 < first, last and first + last <= 1, got {first}, {last}"
        )
    if isinstance(n_batches, bool) or not isinstance(n_batches, int | np.integer) or n_batches < 2:
        raise ValueError(f"drift_z: n_batches must be an int >= 2, got {n_batches!r}")
    n = x.shape[0]
    n_a, n_b = (_share_count(share, n) // n_batches * n_batches for share in (first, last))
    if n_a < n_batches or n_b < n_batches:
        raise ValueError(
            f"drift_z: {n} samples are too few for {n_batches} batches in {first} and {last} "
            "of the chain"
        )

    def mean_and_se(seg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        means = seg.reshape(n_batches, -1, seg.shape[1]).mean(axis=1)
        return means.mean(axis=0), means.std(axis=0, ddof=1) / np.sqrt(n_batches)

    (ma, sa), (mb, sb) = mean_and_se(x[:n_a]), mean_and_se(x[n - n_b :])
    se = np.hypot(sa, sb)
    diff = ma - mb
    signed_inf = np.where(diff > 0, np.inf, np.where(diff < 0, -np.inf, 0.0))
    return np.where(se > 0, diff / np.where(se > 0, se, 1.0), signed_inf)


def _share_count(share: float, n: int) -> int:
    """``floor(share * n)``, the samples in a ``share`` of ``n``, immune to binary rounding at
    any ``n``: a product within 1e-9, or a relative 1e-14, of an integer counts as that
    integer (``0.29 * 100 = 28.999999999999996`` is 29, ``0.29 * 10**8 =
    28999999.999999996`` is 29000000, where an absolute 1e-9 gave 28999999). The product's
    own rounding error is about 1e-16 relative."""
    x = float(share) * n
    k = round(x)
    return k if abs(x - k) <= max(1e-9, 1e-14 * abs(x)) else math.floor(x)


def _curve(fn: str, temperatures: ArrayLike, values: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t = _finite(f"{fn}: temperatures", temperatures)
    y = _finite(f"{fn}: values", values)
    if t.ndim != 1 or y.shape != t.shape or t.size == 0:
        raise ValueError(
            f"{fn}: temperatures and values must have the same shape [n], n >= 1, "
            f"got {t.shape} and {y.shape}"
        )
    if np.any(t <= 0):
        raise ValueError(f"{fn}: temperatures must be > 0 K, got min {t.min()!r}")
    order = np.argsort(t, kind="stable")
    t, y = t[order], y[order]
    if np.any(np.diff(t) == 0):
        raise ValueError(f"{fn}: temperatures must be distinct")
    return t, y


def _vertex(t: np.ndarray, y: np.ndarray, i: int) -> float:
    """Vertex of the parabola through points ``i-1, i, i+1`` (``i`` interior, a maximum)."""
    x0, x1, x2 = t[i - 1], t[i], t[i + 1]
    y0, y1, y2 = y[i - 1], y[i], y[i + 1]
    num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
    den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    if den == 0:  # flat: no curvature to refine with
        return float(x1)
    return float(np.clip(x1 - 0.5 * num / den, x0, x2))


def peak_temperature(temperatures: ArrayLike, values: ArrayLike) -> float:
    """Temperature (K) of the global maximum of ``values`` ``[n]`` over ``temperatures`` ``[n]``.

    Refined by the parabola through the maximum and its two neighbours (in temperature
    order; the grid may be non-uniform and unsorted). A maximum at the first or last
    temperature returns that temperature.
    """
    t, y = _curve("peak_temperature", temperatures, values)
    i = int(np.argmax(y))
    if i == 0 or i == t.size - 1:
        return float(t[i])
    return _vertex(t, y, i)


def local_peaks(
    temperatures: ArrayLike, values: ArrayLike, *, min_prominence: float = 0.05
) -> list[float]:
    """Temperatures (K) of every prominent interior local maximum, increasing.

    A maximum is kept when its prominence (``scipy.signal.find_peaks``: height above the
    higher of the two minima that separate it from higher ground) is at least
    ``min_prominence`` times ``max(values) - min(values)``; each is refined as in
    :func:`peak_temperature`. Maxima at the first or last temperature are not peaks
    (they are unresolved: widen the grid).

    Args:
      temperatures: ``[n]`` Kelvin (non-uniform, any order).
      values: ``[n]`` e.g. ``C(T)`` or ``chi(T)``.
      min_prominence: fraction of the range of ``values``, in ``[0, 1]``.
    """
    if not (np.isfinite(min_prominence) and 0 <= min_prominence <= 1):
        raise ValueError(f"local_peaks: min_prominence must be in [0, 1], got {min_prominence!r}")
    t, y = _curve("local_peaks", temperatures, values)
    span = float(y.max() - y.min())
    if span == 0:
        return []
    idx, _ = find_peaks(y, prominence=min_prominence * span)
    return [_vertex(t, y, int(i)) for i in idx]


def warren_cowley(occupations: ArrayLike, neighbors: ArrayLike, n_species: int) -> np.ndarray:
    """Warren-Cowley short-range order ``alpha_ab = 1 - P(b | a) / c_b`` of one shell.

    ``P(b | a)`` is the fraction of the shell neighbours of ``a``-sites that are ``b``,
    ``c_b`` the concentration of ``b``. ``alpha = 0`` for a random solid solution,
    ``< 0`` for favoured ``a-b`` pairs, ``> 0`` for avoided ones; ``sum_b c_b alpha_ab = 0``.
    Pair and species counts are pooled over samples, which equals the average of the
    per-sample ``alpha`` when the composition is fixed (canonical / swap Monte Carlo).

    Args:
      occupations: ``[n_samples, n_sites]`` integer species index in ``0..n_species-1``.
      neighbors: ``[n_sites, z]`` integer site indices of each site's shell neighbours.
      n_species: number of species ``S``; every one must occur.

    Returns:
      ``[S, S]`` alpha (symmetric when the neighbour relation is).
    """
    fn = "warren_cowley"
    occ = np.asarray(occupations)
    nb = np.asarray(neighbors)
    if isinstance(n_species, bool) or not isinstance(n_species, int | np.integer) or n_species < 1:
        raise ValueError(f"{fn}: n_species must be an integer >= 1, got {n_species!r}")
    s = int(n_species)
    for name, a in (("occupations", occ), ("neighbors", nb)):
        if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{fn}: {name} must be integers, got dtype {a.dtype}")
    if occ.ndim != 2 or occ.shape[0] < 1 or occ.shape[1] < 1:
        raise ValueError(f"{fn}: occupations must have shape [n_samples, n_sites], got {occ.shape}")
    n_sites = occ.shape[1]
    if nb.ndim != 2 or nb.shape[0] != n_sites or nb.shape[1] < 1:
        raise ValueError(
            f"{fn}: neighbors must have shape [n_sites, z] with n_sites from occupations "
            f"{occ.shape}, z >= 1, got {nb.shape}"
        )
    if occ.min() < 0 or occ.max() >= s:
        raise ValueError(f"{fn}: occupations must lie in 0..{s - 1}, got {occ.min()}..{occ.max()}")
    if nb.min() < 0 or nb.max() >= n_sites:
        raise ValueError(
            f"{fn}: neighbors must lie in 0..{n_sites - 1}, got {nb.min()}..{nb.max()}"
        )
    occ = occ.astype(np.int64)
    n_species_total = np.bincount(occ.ravel(), minlength=s).astype(np.float64)  # [S]
    if np.any(n_species_total == 0):
        missing = np.flatnonzero(n_species_total == 0).tolist()
        raise ValueError(f"{fn}: species {missing} never occur: alpha is undefined")
    pairs = np.zeros(s * s, dtype=np.float64)  # [a * S + b]: (a-site, b-neighbour) pairs
    for k in range(nb.shape[1]):
        codes = occ * s + occ[:, nb[:, k]]
        pairs += np.bincount(codes.ravel(), minlength=s * s)
    p_b_given_a = pairs.reshape(s, s) / (n_species_total[:, None] * nb.shape[1])
    conc = n_species_total / occ.size
    return 1.0 - p_b_given_a / conc[None, :]
