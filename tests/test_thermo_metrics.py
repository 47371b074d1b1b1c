"""Thermodynamic statistics (jaxsci.metrics.thermo) against analytic and brute-force oracles."""

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.optimize import brentq

from jaxsci.alloys import K_B
from jaxsci.metrics import (
    drift_z,
    heat_capacity,
    local_peaks,
    manhattan_order_parameter,
    peak_temperature,
    susceptibility,
    warren_cowley,
)


def _schottky(gap_ev: float, t: np.ndarray) -> np.ndarray:
    """Heat capacity per site / k_B of independent two-level sites with gap ``gap_ev``."""
    x = gap_ev / (K_B * t)
    return x**2 * np.exp(x) / (1.0 + np.exp(x)) ** 2


def _ring(n: int, shell: int = 1) -> np.ndarray:
    i = np.arange(n)
    return np.stack([(i - shell) % n, (i + shell) % n], axis=1)


def _simple_cubic(length: int) -> np.ndarray:
    """Nearest-neighbour table [L^3, 6] of a periodic simple-cubic lattice."""
    idx = np.arange(length**3).reshape(length, length, length)
    shifts = [np.roll(idx, s, axis=a) for a in range(3) for s in (1, -1)]
    return np.stack([s.ravel() for s in shifts], axis=1)


# ------------------------------------------------------------------ order parameter


def test_manhattan_order_parameter_is_the_l1_norm_of_the_last_axis():
    z = np.random.default_rng(0).normal(size=(4, 7, 3))
    np.testing.assert_allclose(manhattan_order_parameter(z), np.abs(z).sum(-1))
    assert manhattan_order_parameter(z).shape == (4, 7)
    assert manhattan_order_parameter([1.0, -2.0, 0.5]) == pytest.approx(3.5)
    for bad in (np.float64(1.0), [np.nan, 1.0], [[1.0, np.inf]], np.zeros((3, 0))):
        with pytest.raises(ValueError):
            manhattan_order_parameter(bad)


# ------------------------------------------------------------------ heat capacity


def test_heat_capacity_of_two_level_sites_matches_schottky():
    gap, n_sites, n_samples = 0.05, 1000, 20_000  # eV, sites, Boltzmann draws per T
    temps = np.array([60.0, 150.0, 240.0, 400.0, 900.0])  # K
    p = 1.0 / (1.0 + np.exp(gap / (K_B * temps)))  # occupation of the upper level
    rng = np.random.default_rng(1)
    energies = gap * rng.binomial(n_sites, p, size=(n_samples, temps.size))  # exact sampler
    c = heat_capacity(energies, temps, n_sites)
    exact = _schottky(gap, temps)
    # standard error of the sample variance from the exact binomial moments
    pq = p * (1 - p)
    var = n_sites * pq * gap**2
    mu4 = (3 * n_sites**2 * pq**2 + n_sites * pq * (1 - 6 * pq)) * gap**4
    n = n_samples
    se_var = np.sqrt(mu4 / n - var**2 * (n - 3) / (n * (n - 1)))
    se_c = se_var / (K_B * temps) ** 2 / n_sites
    assert np.all(np.abs(c - exact) < 5 * se_c), (c, exact, se_c)
    assert np.all(se_c < 0.05 * exact)  # the check has teeth: tolerance well below C


def test_peak_temperature_finds_the_schottky_maximum():
    gap = 0.05
    x_star = brentq(lambda x: x * np.tanh(x / 2) - 2.0, 1.0, 4.0)  # d/dx of C = 0
    t_star = gap / (K_B * x_star)  # ~242 K
    temps = np.geomspace(50.0, 2000.0, 60)
    spacing = np.diff(temps)[np.searchsorted(temps, t_star) - 1]  # ~15 K here
    assert peak_temperature(temps, _schottky(gap, temps)) == pytest.approx(
        t_star, abs=0.1 * spacing
    )
    assert local_peaks(temps, _schottky(gap, temps)) == [
        pytest.approx(peak_temperature(temps, _schottky(gap, temps)))
    ]


def test_heat_capacity_scalings_and_shift_invariance():
    rng = np.random.default_rng(2)
    e = rng.normal(size=(50, 3))
    t = np.array([100.0, 100.0, 100.0])
    c = heat_capacity(e, t, 10)
    np.testing.assert_allclose(c, e.var(axis=0, ddof=1) / (K_B * 100.0) ** 2 / 10)
    np.testing.assert_allclose(heat_capacity(e + 7.0, t, 10), c)
    np.testing.assert_allclose(heat_capacity(e, 2 * t, 10), c / 4)
    np.testing.assert_allclose(heat_capacity(e, t, 20), c / 2)
    np.testing.assert_allclose(heat_capacity(e, t, 10, ddof=0), c * 49 / 50)


# ------------------------------------------------------------------ susceptibility


def test_susceptibility_by_hand_and_its_scalings():
    m = np.array([[0.1, 1.0], [0.3, 1.0], [0.5, 4.0], [0.3, 2.0]])
    t = np.array([300.0, 600.0])
    n_sites = 128
    chi = susceptibility(m, t, n_sites, ddof=0)
    # column 0: mean 0.3, <M^2> = (0.01 + 0.09 + 0.25 + 0.09) / 4 = 0.11 -> var 0.02
    # column 1: mean 2.0, <M^2> = (1 + 1 + 16 + 4) / 4 = 5.5 -> var 1.5
    expected = n_sites * np.array([0.02, 1.5]) / (K_B * t)
    np.testing.assert_allclose(chi, expected, rtol=1e-12)
    np.testing.assert_allclose(susceptibility(m, t, n_sites), expected * 4 / 3, rtol=1e-12)
    # fixed data: chi ~ 1/T and ~ n_sites
    np.testing.assert_allclose(susceptibility(m, 3 * t, n_sites), susceptibility(m, t, n_sites) / 3)
    np.testing.assert_allclose(susceptibility(m, t, 2 * n_sites), 2 * susceptibility(m, t, n_sites))
    assert np.all(susceptibility(np.ones((5, 2)), t, n_sites) == 0.0)


@pytest.mark.parametrize("fn", [heat_capacity, susceptibility])
def test_fluctuation_formulas_validate_their_input(fn):
    x, t = np.ones((10, 3)), np.array([100.0, 200.0, 300.0])
    with pytest.raises(ValueError, match=r"\(10, 3\)"):
        fn(x, t[:2], 4)  # shapes named in the message
    with pytest.raises(ValueError, match="n_samples, n_temps"):
        fn(x[:, 0], t[:1], 4)
    for bad_t in (np.array([100.0, 0.0, 300.0]), np.array([100.0, -5.0, 300.0])):
        with pytest.raises(ValueError, match="> 0"):
            fn(x, bad_t, 4)
    with pytest.raises(ValueError, match="finite"):
        fn(x, np.array([100.0, np.nan, 300.0]), 4)
    x_nan = x.copy()
    x_nan[3, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        fn(x_nan, t, 4)
    with pytest.raises(ValueError, match="2 samples"):
        fn(x[:1], t, 4)
    for bad_n in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n_sites"):
            fn(x, t, bad_n)
    with pytest.raises(ValueError, match="ddof"):
        fn(x, t, 4, ddof=2)


# ------------------------------------------------------------------ peaks


def test_peak_temperature_recovers_a_parabola_vertex_on_a_non_uniform_grid():
    rng = np.random.default_rng(3)
    t = np.sort(rng.uniform(100.0, 1000.0, size=25))
    vertex = 437.3
    y = 5.0 - 1e-4 * (t - vertex) ** 2
    assert peak_temperature(t, y) == pytest.approx(vertex, abs=1e-8)
    perm = rng.permutation(t.size)  # any input order
    assert peak_temperature(t[perm], y[perm]) == pytest.approx(vertex, abs=1e-8)
    # maxima at the edges: the edge temperature, no extrapolation
    assert peak_temperature(t, t) == t[-1]
    assert peak_temperature(t, -t) == t[0]
    assert local_peaks(t, t) == []
    assert peak_temperature([300.0], [1.0]) == 300.0


def test_local_peaks_finds_both_transitions_and_ignores_a_small_bump():
    def curve(t, bump=0.04):  # transitions at 250 and 900 K, a narrow bump at 500 K
        g = lambda mu, sigma: np.exp(-0.5 * ((t - mu) / sigma) ** 2)
        return g(250.0, 40.0) + 2.0 * g(900.0, 150.0) + 0.5 + bump * g(500.0, 15.0)

    t = np.geomspace(150.0, 2000.0, 80)  # spacing ~8 K at 250 K, ~17 K at 500 K
    y = curve(t)
    peaks = local_peaks(t, y, min_prominence=0.05)  # the bump is 2% of the range
    assert len(peaks) == 2
    assert peaks[0] == pytest.approx(250.0, abs=1.0)
    assert peaks[1] == pytest.approx(900.0, abs=1.0)
    assert peak_temperature(t, y) == pytest.approx(peaks[1])  # the global one
    # with a low bar the bump counts too; it sits on the flank of the 900 K peak, so its
    # true maximum is taken from a dense grid (~507 K), within 1/3 of the local spacing
    small = local_peaks(t, y, min_prominence=0.001)
    t_dense = np.linspace(450.0, 550.0, 100_001)
    turns = np.flatnonzero(np.diff(np.sign(np.diff(curve(t_dense)))) < 0)  # the one maximum
    assert turns.size == 1
    bump_max = t_dense[turns[0] + 1]
    assert len(small) == 3 and small[1] == pytest.approx(bump_max, abs=17.0 / 3)
    perm = np.random.default_rng(4).permutation(t.size)
    assert local_peaks(t[perm], y[perm]) == peaks
    # the prominence is relative to the range (~2 here): the same peaks at any scale
    for scale in (1e-3, 1e3):
        assert local_peaks(t, scale * y, min_prominence=0.05) == pytest.approx(peaks)
        assert local_peaks(t, scale * y, min_prominence=0.001) == pytest.approx(small)
    assert local_peaks(t, np.ones_like(t)) == []


def test_peak_functions_validate_their_input():
    t, y = np.array([100.0, 200.0, 300.0]), np.array([1.0, 2.0, 1.0])
    for fn in (peak_temperature, local_peaks):
        with pytest.raises(ValueError, match=r"\(3,\) and \(2,\)"):
            fn(t, y[:2])
        with pytest.raises(ValueError, match="> 0"):
            fn(np.array([0.0, 200.0, 300.0]), y)
        with pytest.raises(ValueError, match="finite"):
            fn(t, np.array([1.0, np.nan, 1.0]))
        with pytest.raises(ValueError, match="distinct"):
            fn(np.array([100.0, 200.0, 200.0]), y)
        with pytest.raises(ValueError):
            fn(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="min_prominence"):
        local_peaks(t, y, min_prominence=-0.1)


# ------------------------------------------------------------------ Warren-Cowley


def _warren_cowley_loops(occ: np.ndarray, nb: np.ndarray, s: int) -> np.ndarray:
    """Per-sample alpha by explicit loops over sites and neighbours, then averaged."""
    alphas = []
    for config in occ:
        n_sites = len(config)
        count = np.zeros((s, s))
        for i in range(n_sites):
            for j in nb[i]:
                count[config[i], config[j]] += 1
        alpha = np.zeros((s, s))
        for a in range(s):
            n_a = sum(1 for x in config if x == a)
            for b in range(s):
                c_b = sum(1 for x in config if x == b) / n_sites
                alpha[a, b] = 1 - count[a, b] / (n_a * nb.shape[1]) / c_b
        alphas.append(alpha)
    return np.mean(alphas, axis=0)


def test_warren_cowley_matches_brute_force_loops():
    rng = np.random.default_rng(5)
    n_sites, z, s = 12, 3, 3
    nb = np.stack([rng.choice(np.delete(np.arange(n_sites), i), z, False) for i in range(n_sites)])
    base = np.array([0] * 5 + [1] * 4 + [2] * 3)  # fixed composition (swap Monte Carlo)
    occ = np.stack([rng.permutation(base) for _ in range(6)])
    alpha = warren_cowley(occ, nb, s)
    np.testing.assert_allclose(alpha, _warren_cowley_loops(occ, nb, s), atol=1e-12)
    conc = np.bincount(base) / n_sites
    np.testing.assert_allclose(alpha @ conc, 0.0, atol=1e-12)  # sum_b c_b alpha_ab = 0


def test_warren_cowley_of_a_perfect_alternating_ring():
    occ = (np.arange(20) % 2)[None, :]  # A B A B ...
    alpha = warren_cowley(occ, _ring(20), 2)
    np.testing.assert_array_equal(alpha, [[1.0, -1.0], [-1.0, 1.0]])
    # second neighbours of the same ring are always like: the opposite signs
    np.testing.assert_array_equal(warren_cowley(occ, _ring(20, 2), 2), [[-1.0, 1.0], [1.0, -1.0]])


def test_warren_cowley_of_a_random_solid_solution_is_zero():
    rng = np.random.default_rng(6)
    length, s, n_samples = 8, 4, 200
    nb = _simple_cubic(length)
    n_sites = length**3
    base = np.arange(n_sites) % s  # equiatomic, like MoNbTaW
    occ = np.stack([rng.permutation(base) for _ in range(n_samples)])
    alpha = warren_cowley(occ, nb, s)
    assert np.allclose(alpha, alpha.T)  # symmetric neighbour relation
    # standard error from the spread of the independent per-sample values
    per_sample = np.stack([warren_cowley(o[None], nb, s) for o in occ])
    se = per_sample.std(axis=0, ddof=1) / np.sqrt(n_samples)
    np.testing.assert_allclose(per_sample.mean(axis=0), alpha, atol=1e-12)  # fixed composition
    # exact mean for random permutations of fixed composition (finite-size, O(1/n_sites))
    n_a = n_sites / s
    exact = np.full((s, s), -1.0 / (n_sites - 1))
    np.fill_diagonal(exact, 1.0 - n_sites * (n_a - 1) / (n_a * (n_sites - 1)))
    assert np.all(np.abs(alpha - exact) < 5 * se), (alpha, exact, se)
    assert np.all(np.abs(alpha) < 5 * se + np.abs(exact)) and np.all(5 * se < 0.05)


def test_warren_cowley_validates_its_input():
    occ, nb = np.array([[0, 1, 0, 1]]), _ring(4)
    with pytest.raises(ValueError, match=r"\(1, 4\).*\(3, 2\)"):
        warren_cowley(occ, nb[:3], 2)
    with pytest.raises(ValueError, match="0..1"):
        warren_cowley(np.array([[0, 1, 2, 1]]), nb, 2)
    with pytest.raises(ValueError, match="neighbors must lie"):
        warren_cowley(occ, nb + 1, 2)
    with pytest.raises(ValueError, match="never occur"):
        warren_cowley(occ, nb, 3)
    with pytest.raises(ValueError, match="integers"):
        warren_cowley(occ.astype(float), nb, 2)
    with pytest.raises(ValueError, match="n_samples, n_sites"):
        warren_cowley(occ[0], nb, 2)
    with pytest.raises(ValueError, match="n_species"):
        warren_cowley(occ, nb, 0)


def test_drift_z_by_hand():
    """x = 0..39, first 1/4 and last 1/2 in 2 batches each: batch means 2, 7 and 24.5, 34.5;
    standard errors (sample std, ddof 1, over sqrt 2) 2.5 and 5: z = -25 / sqrt(31.25)."""
    z = drift_z(np.arange(40.0)[:, None], first=0.25, last=0.5, n_batches=2)
    np.testing.assert_allclose(z, [-25.0 / np.sqrt(31.25)], rtol=1e-12)


def test_drift_z_is_standard_normal_on_stationary_chains_and_flags_a_drift():
    rng = np.random.default_rng(0)
    # AR(1) chains (correlation time ~10 samples): stationary, so z ~ N(0, 1) if the batch
    # means account for the autocorrelation (with 10 batches a share, a t-like spread)
    n, cols, phi = 4000, 400, 0.9
    noise = rng.normal(size=(n, cols))
    x = np.empty_like(noise)
    x[0] = noise[0] / np.sqrt(1 - phi**2)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + noise[i]
    z = drift_z(x)
    # std(z) > 1: t-like (9-18 dof: 1.06-1.13), and the first share's batches of 40 samples,
    # ~2 integrated correlation times (1 + phi) / (1 - phi) = 19, underestimate its error.
    # Over 30 seeds it is 1.21 +- 0.04 (sd of the std over 400 columns; seed 0: 1.19); a
    # standard error 25% too large (se = sa + sb instead of hypot) gives 0.90 +- 0.03. The
    # band is >= 3.9 sd from the first and 4.7 sd from the second.
    assert abs(z.mean()) < 0.2 and 1.05 < z.std() < 1.4
    assert np.mean(np.abs(z) > 3) < 0.03
    # the same chains relaxing towards equilibrium (an exponential drift of 3 stationary
    # standard deviations, time constant 400 samples) are flagged
    drifted = x + 3 * np.sqrt(1 / (1 - phi**2)) * np.exp(-np.arange(n) / 400)[:, None]
    assert np.mean(np.abs(drift_z(drifted)) > 3) > 0.95
    assert drift_z(np.ones((100, 2))).tolist() == [0.0, 0.0]
    step = np.repeat([[0.0], [1.0]], 50, axis=0)  # constant shares: an infinite z, signed
    assert drift_z(np.hstack([step, step[::-1]])).tolist() == [-np.inf, np.inf]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"first": 0.6, "last": 0.5}, "first"), ({"n_batches": 1}, "n_batches")],
)
def test_drift_z_bad_input_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        drift_z(np.zeros((100, 2)), **kwargs)
    with pytest.raises(ValueError, match="too few"):
        drift_z(np.zeros((40, 2)))
    with pytest.raises(ValueError, match="shape"):
        drift_z(np.zeros(100))


def test_drift_z_counts_a_share_without_binary_rounding():
    # before: int(0.29 * 100) = 28 samples, "too few" for 29 batches of one sample
    x = np.random.default_rng(0).normal(size=(100, 2))
    z = drift_z(x, first=0.29, last=0.5, n_batches=29)
    assert z.shape == (2,) and np.all(np.isfinite(z))
    with pytest.raises(ValueError, match="too few"):
        drift_z(x, first=0.28, last=0.5, n_batches=29)


def test_share_count_is_rounding_safe_at_any_chain_length():
    # before: floor(share * n + 1e-9), which fails once n >= 1e8: 0.29 * 10**8 is
    # 28999999.999999996 and gave 28999999 samples
    from jaxsci.metrics.thermo import _share_count

    assert _share_count(0.29, 100) == 29  # 28.999999999999996
    assert _share_count(0.29, 10**8) == 29_000_000
    assert _share_count(0.1, 3) == 0 and _share_count(0.3, 10) == 3  # 0.30000000000000004 * 10
    assert _share_count(0.28, 100) == 28 and _share_count(0.295, 100) == 29  # true fractions
    for share in (0.1, 0.29, 0.57, 0.7):
        for n in (10**8, 10**9 + 7, 10**12):
            exact = Fraction(repr(share)) * n  # the decimal share the caller wrote
            assert _share_count(share, n) == math.floor(exact)


@pytest.mark.parametrize("fn", [heat_capacity, susceptibility])
@pytest.mark.parametrize("n_sites", [0, 2.5, True])
def test_a_bad_n_sites_names_the_function(fn, n_sites):
    """s28 probe: the only message of these two functions without their name."""
    e, t = np.ones((4, 2)) * [[1.0], [2.0], [3.0], [5.0]], np.array([300.0, 600.0])
    with pytest.raises(ValueError, match=f"^{fn.__name__}: n_sites must be an integer >= 1"):
        fn(e, t, n_sites)
