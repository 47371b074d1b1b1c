"""jaxsci.imaging forward model: optics, projected potential and multislice, each against an
independent oracle (CODATA formulas, scipy's K0, exact FFT identities, Taylor limits)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special

from jaxsci.imaging import (
    COULOMB_VA,
    Grid,
    band_limit_mask,
    cbed,
    cbed_stack,
    interaction_constant,
    multislice,
    probe,
    projected_potential,
    propagate,
    transmission,
    wavelength,
)

E = 100e3  # eV
A0 = 0.529177210903  # Bohr radius, Å (CODATA 2018)
# A non-square grid, so that mixing up x and y (or ny and nx) fails the tests.
GRID = Grid((48, 64), (9.6, 12.8))


def _wentzel_a(z):
    return 0.8853 * A0 * np.asarray(z, float) ** (-1.0 / 3.0)


def _atoms(seed=0, n=7):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0.0, 1.0, size=(n, 2)) * np.array(GRID.extent[::-1])  # (x, y)
    numbers = rng.choice(np.array([6, 8, 14, 79]), size=n)
    return pos.astype(np.float32), numbers


# ------------------------------------------------------------------------------ optics


@pytest.mark.parametrize(
    "energy, lam, sigma",
    [(100e3, 0.0370144, 9.2440e-4), (200e3, 0.0250793, 7.2884e-4), (300e3, 0.0196875, 6.5262e-4)],
)
def test_wavelength_and_interaction_constant_match_codata(energy, lam, sigma):
    assert float(wavelength(energy)) == pytest.approx(lam, rel=1e-4)
    assert float(interaction_constant(energy)) == pytest.approx(sigma, rel=1e-4)


def test_grid_is_hashable_static_and_validated():
    g = Grid((48, 64), (9.6, 12.8))
    assert g == GRID and hash(g) == hash(GRID)
    assert g.sampling == pytest.approx((0.2, 0.2))
    ky, kx = g.frequencies()
    np.testing.assert_allclose(ky, np.fft.fftfreq(48, 0.2))
    np.testing.assert_allclose(kx, np.fft.fftfreq(64, 0.2))
    f = jax.jit(lambda x, grid: x * grid.pixel_area, static_argnames="grid")
    assert float(f(1.0, grid=g)) == pytest.approx(0.04)
    for shape, extent in [((4,), (1.0,)), ((4, 0), (1.0, 1.0)), ((4, 4.5), (1.0, 1.0))]:
        with pytest.raises(ValueError, match="shape"):
            Grid(shape, extent)
    for extent in [(1.0, -1.0), (1.0, float("nan")), (1.0, float("inf")), (1.0,)]:
        with pytest.raises(ValueError, match="extent"):
            Grid((4, 4), extent)


def _centred_k(grid):
    ny, nx = grid.shape
    ky = (np.arange(ny) - ny // 2) / grid.extent[0]
    kx = (np.arange(nx) - nx // 2) / grid.extent[1]
    return np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)


@pytest.mark.parametrize("defocus, cs", [(0.0, 0.0), (-120.0, 1e6)])
def test_vacuum_cbed_is_the_uniform_aperture_disk(defocus, cs):
    semiangle = 30.0
    psi = probe(GRID, E, semiangle=semiangle, defocus=defocus, cs=cs, position=(1.3, -0.7))
    assert float(jnp.sum(jnp.abs(psi) ** 2)) == pytest.approx(1.0, rel=1e-5)
    pattern = np.asarray(cbed(psi))
    k = _centred_k(GRID)
    radius = semiangle * 1e-3 / float(wavelength(E))  # 1/Å; below the 2/3 band limit here
    assert radius < 2 / 3 * GRID.k_nyquist
    inside = k <= radius
    # aberrations are pure phases: a flat disk of 1 / n_inside, nothing outside
    np.testing.assert_allclose(pattern[inside], 1.0 / inside.sum(), rtol=1e-4)
    assert np.all(pattern[~inside] < 1e-10)
    assert pattern.sum() == pytest.approx(1.0, rel=1e-5)


def test_probe_aberration_phase_is_defocus_plus_spherical_aberration():
    """Inside the aperture, the aberrated probe's spectrum over the ideal one's is
    exp(-i chi), chi = pi lambda df k^2 + (pi / 2) Cs lambda^3 k^4 (flat-disk tests cannot
    see a wrong phase: aberrations do not change |psi_hat|)."""
    df, cs, semiangle = -120.0, 1e6, 30.0
    ideal = np.fft.fft2(np.asarray(probe(GRID, E, semiangle=semiangle), np.complex128))
    aberrated = np.fft.fft2(
        np.asarray(probe(GRID, E, semiangle=semiangle, defocus=df, cs=cs), np.complex128)
    )
    lam, k2 = float(wavelength(E)), np.asarray(GRID.k2(), np.float64)
    inside = np.abs(ideal) > 0.5 * np.abs(ideal).max()
    assert inside.sum() > 50
    chi = np.pi * lam * df * k2 + 0.5 * np.pi * cs * lam**3 * k2**2
    assert np.ptp(chi[inside]) > 2 * np.pi  # the phase varies over the aperture
    ratio = aberrated[inside] / ideal[inside]
    np.testing.assert_allclose(ratio, np.exp(-1j * chi[inside]), atol=2e-3)


# odd sizes (fftshift != ifftshift) and non-square pixels (dy = 0.2 Å, dx = 0.3 Å), so
# mixing up the shifts or the pixel sizes of the two axes fails
ODD = Grid((45, 57), (9.0, 17.1))


def test_odd_grid_with_non_square_pixels_plane_wave_and_frequencies():
    ny, nx = ODD.shape
    ky, kx = ODD.frequencies()
    np.testing.assert_allclose(ky, np.fft.fftfreq(45, 0.2))
    np.testing.assert_allclose(kx, np.fft.fftfreq(57, 0.3))
    dy, dx = ODD.sampling
    y, x = np.meshgrid(np.arange(ny) * dy, np.arange(nx) * dx, indexing="ij")
    my, mx = 3, -5
    k_y, k_x = my / ODD.extent[0], mx / ODD.extent[1]
    plane = np.exp(2j * np.pi * (k_x * x + k_y * y)) / np.sqrt(ny * nx)
    # cbed: the zero frequency sits at (ny // 2, nx // 2), pixel (i, j) is ((i - ny // 2) /
    # Ly, (j - nx // 2) / Lx)
    pattern = np.asarray(cbed(jnp.asarray(plane, jnp.complex64)))
    assert np.unravel_index(int(np.argmax(pattern)), ODD.shape) == (ny // 2 + my, nx // 2 + mx)
    assert pattern.max() == pytest.approx(1.0, rel=1e-5)
    flat = np.asarray(cbed(jnp.ones(ODD.shape, jnp.complex64)))
    assert np.unravel_index(int(np.argmax(flat)), ODD.shape) == (22, 28)
    # vacuum propagation multiplies a plane wave by the Fresnel phase of its own k
    dz = 37.0
    fresnel = np.exp(-1j * np.pi * float(wavelength(E)) * dz * (k_x**2 + k_y**2))
    np.testing.assert_allclose(propagate(plane, ODD, E, dz), plane * fresnel, atol=1e-6)


def test_vacuum_cbed_disk_is_a_circle_in_reciprocal_space_on_an_odd_grid():
    """Pixels of 0.2 x 0.3 Å: the aperture is a circle in 1/Å, so an ellipse in pixels
    (semi-axes ~7.3 along y and ~11 along x at 30 mrad), centred at (ny // 2, nx // 2)."""
    semiangle = 30.0
    psi = probe(ODD, E, semiangle=semiangle, defocus=-60.0, position=(2.1, 3.4))
    pattern = np.asarray(cbed(psi))
    radius = semiangle * 1e-3 / float(wavelength(E))
    assert radius < 2 / 3 * ODD.k_nyquist
    inside = _centred_k(ODD) <= radius
    rows, cols = np.nonzero(inside)
    assert np.ptp(cols) > 1.3 * np.ptp(rows)  # an ellipse in pixels
    np.testing.assert_allclose(pattern[inside], 1.0 / inside.sum(), rtol=1e-4)
    assert np.all(pattern[~inside] < 1e-10)


def test_probe_integer_shift_is_a_roll_and_x_is_axis_1():
    p0 = probe(GRID, E, semiangle=25.0, defocus=40.0)
    dy, dx = GRID.sampling
    shifted = probe(GRID, E, semiangle=25.0, defocus=40.0, position=(3 * dx, -2 * dy))
    np.testing.assert_allclose(shifted, jnp.roll(p0, (-2, 3), axis=(0, 1)), atol=1e-6)
    # the intensity maximum of a focused probe sits at the position, wrapped periodically
    focused = probe(GRID, E, semiangle=25.0, position=(5 * dx, 7 * dy))
    assert np.unravel_index(int(jnp.argmax(jnp.abs(focused))), GRID.shape) == (7, 5)


def test_probe_defocus_is_propagation_of_the_focused_probe():
    focused = probe(GRID, E, semiangle=25.0, band_limit=None)
    defocused = probe(GRID, E, semiangle=25.0, defocus=55.0, band_limit=None)
    np.testing.assert_allclose(defocused, propagate(focused, GRID, E, 55.0), atol=1e-6)


# --------------------------------------------------------------------------- potential


def test_potential_cell_integral_is_analytic():
    pos, numbers = _atoms()
    v = projected_potential(pos, numbers, GRID, rms_displacement=0.07)
    expected = np.sum(4 * np.pi * COULOMB_VA * numbers * _wentzel_a(numbers) ** 2)
    assert float(jnp.sum(v)) * GRID.pixel_area == pytest.approx(expected, rel=1e-5)


def test_single_atom_matches_scipy_k0():
    """A lone carbon atom in a 24 Å cell, 0.05 Å pixels, against ``2 C Z K0(R/a)`` blurred
    by the Debye-Waller Gaussian (variance u^2 per axis). The blur is done exactly: with
    ``(lap - a^-2) V = -4 pi C Z delta``, ``G_u * V = e^{u^2/2a^2} C Z int_{u^2/2}^inf
    e^{-t/a^2 - R^2/4t} dt/t``, i.e. ``e^{u^2/2a^2} C Z (2 K0(R/a) - int_0^{u^2/2} ...)``.
    What is left is the Fourier truncation at k_N = 10/Å, at most ``~C Z E1(2 pi^2 u^2
    k_N^2) = 86 * E1(12.6) ~ 3e-5 V·Å`` (1e-6 of V(0.5 Å) = 22 V·Å); the periodic images
    are ``K0(12 / 0.26) ~ e^-46`` away. Measured: max relative error 1.8e-5."""
    z, u, cell, n = 6, 0.08, 24.0, 480
    grid = Grid((n, n), (cell, cell))
    centre = np.array([[cell / 2 + 0.013, cell / 2 - 0.021]])
    with jax.enable_x64(True):
        v = np.asarray(projected_potential(centre, np.array([z]), grid, rms_displacement=u))
    d = grid.sampling[0]
    y, x = np.meshgrid(np.arange(n) * d, np.arange(n) * d, indexing="ij")
    r = np.hypot(x - centre[0, 0], y - centre[0, 1])
    rows, cols = np.nonzero((r > 0.5) & (r < 4.0))
    pick = np.linspace(0, rows.size - 1, 60).astype(int)
    rows, cols = rows[pick], cols[pick]
    a = _wentzel_a(z)

    def oracle(rr):
        tail = integrate.quad(lambda t: np.exp(-t / a**2 - rr**2 / (4 * t)) / t, 0, u**2 / 2)[0]
        return np.exp(u**2 / (2 * a**2)) * COULOMB_VA * z * (2 * special.k0(rr / a) - tail)

    want = np.array([oracle(rr) for rr in r[rows, cols]])
    got = v[rows, cols]
    v_half = oracle(0.5)
    assert np.max(np.abs(got - want)) < 1e-5 * v_half
    big = want > 1e-3 * v_half  # relative check where the potential is not ~0
    np.testing.assert_allclose(got[big], want[big], rtol=2e-4)
    # and the blur matters: the un-blurred K0 is off by e^{u^2/2a^2} - 1 ~ 4.8 %
    assert (
        np.max(np.abs(got[big] / (2 * COULOMB_VA * z * special.k0(r[rows, cols][big] / a)) - 1))
        > 0.04
    )


def test_zero_padding_rows_contribute_nothing():
    pos, numbers = _atoms()
    ref = projected_potential(pos, numbers, GRID)
    pad_pos = np.concatenate([pos, pos[:3] + 0.37, np.zeros((2, 2), np.float32)])
    pad_num = np.concatenate([numbers, np.zeros(5, numbers.dtype)])
    padded = projected_potential(pad_pos, pad_num, GRID)
    np.testing.assert_allclose(padded, ref, rtol=0, atol=1e-6 * float(jnp.max(ref)))
    # traced numbers take the per-atom path, where a Z = 0 form factor is exactly 0
    traced = jax.jit(projected_potential, static_argnames="grid")
    np.testing.assert_allclose(traced(pad_pos, pad_num, GRID), ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(
        traced(pad_pos, pad_num, GRID), traced(pos, numbers, GRID), atol=1e-6 * float(jnp.max(ref))
    )


def test_species_path_and_per_atom_path_agree_and_unknown_species_is_nan():
    pos, numbers = _atoms(seed=3, n=12)
    auto = projected_potential(pos, numbers, GRID)  # concrete numbers: grouped by species
    per_atom = jax.jit(projected_potential, static_argnames="grid")(pos, numbers, GRID)
    explicit = jax.jit(lambda p, z: projected_potential(p, z, GRID, species=(6, 8, 14, 79, 92)))(
        pos, numbers
    )
    scale = float(jnp.max(auto))
    np.testing.assert_allclose(per_atom, auto, atol=2e-6 * scale)
    np.testing.assert_allclose(explicit, auto, atol=2e-6 * scale)
    with pytest.raises(ValueError, match=r"Z = \[79\] not in species \(6, 8, 14\)"):
        projected_potential(pos, numbers, GRID, species=(6, 8, 14))  # concrete: caught
    traced = jax.jit(lambda p, z: projected_potential(p, z, GRID, species=(6, 8, 14)))
    assert bool(jnp.all(jnp.isnan(traced(pos, numbers))))  # under jit: NaN, not silence


def test_integer_pixel_shift_rolls_the_image():
    pos, numbers = _atoms(seed=1)
    dy, dx = GRID.sampling
    v = projected_potential(pos, numbers, GRID)
    moved = projected_potential(pos + np.float32([3 * dx, -5 * dy]), numbers, GRID)
    np.testing.assert_allclose(
        moved, jnp.roll(v, (-5, 3), axis=(0, 1)), atol=2e-6 * float(jnp.max(v))
    )


def test_atom_order_does_not_matter():
    pos, numbers = _atoms(seed=2, n=9)
    perm = np.random.default_rng(5).permutation(9)
    v = projected_potential(pos, numbers, GRID)
    np.testing.assert_allclose(
        projected_potential(pos[perm], numbers[perm], GRID), v, atol=2e-6 * float(jnp.max(v))
    )


def test_position_gradient_matches_finite_differences():
    pos, numbers = _atoms(seed=4, n=5)
    weights = np.random.default_rng(6).normal(size=GRID.shape)
    with jax.enable_x64(True):
        pos64 = pos.astype(np.float64)

        @jax.jit
        def f(p):
            return jnp.sum(projected_potential(p, numbers, GRID, rms_displacement=0.1) * weights)

        grad = np.asarray(jax.grad(f)(pos64))
        h = 1e-5
        fd = np.zeros_like(pos64)
        for i in range(pos64.shape[0]):
            for j in range(2):
                e = np.zeros_like(pos64)
                e[i, j] = h
                fd[i, j] = (float(f(pos64 + e)) - float(f(pos64 - e))) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())


def test_potential_rejects_bad_input():
    pos, numbers = _atoms()
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        projected_potential(np.zeros((3, 4)), np.ones(3, int), GRID)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        projected_potential(np.zeros(3), np.ones(3, int), GRID)
    with pytest.raises(ValueError, match="numbers must be"):
        projected_potential(pos, numbers[:-1], GRID)
    with pytest.raises(ValueError, match="integer"):
        projected_potential(pos, numbers.astype(float), GRID)
    bad = pos.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        projected_potential(bad, numbers, GRID)
    with pytest.raises(ValueError, match=">= 0"):
        projected_potential(pos, -numbers, GRID)
    with pytest.raises(ValueError, match="rms_displacement"):
        projected_potential(pos, numbers, GRID, rms_displacement=-0.1)
    with pytest.raises(ValueError, match="Grid"):
        projected_potential(pos, numbers, (48, 64))


# -------------------------------------------------------------------------- multislice


def _strong_slices(n_slices, seed=0):
    """Slices of a strong phase object: 3 rad peak phase per slice at 100 keV (one Wentzel
    atom gives ~0.3 rad, so think of each slice as a short atom column)."""
    pos, numbers = _atoms(seed=seed, n=10)
    v = projected_potential(pos, numbers, GRID, rms_displacement=0.1)
    v = v * (3.0 / float(jnp.max(interaction_constant(E) * v)))
    return jnp.stack([jnp.roll(v, 7 * s, axis=1) for s in range(n_slices)])


def test_cbed_is_unitary_and_centred():
    rng = np.random.default_rng(0)
    wave = rng.normal(size=GRID.shape) + 1j * rng.normal(size=GRID.shape)
    assert float(jnp.sum(cbed(wave))) == pytest.approx(np.sum(np.abs(wave) ** 2), rel=1e-5)
    plane = cbed(jnp.ones(GRID.shape, jnp.complex64))
    assert np.unravel_index(int(jnp.argmax(plane)), GRID.shape) == (24, 32)


def test_intensity_is_conserved_without_band_limit():
    slices = _strong_slices(40)
    assert float(jnp.max(interaction_constant(E) * slices)) > 2.0  # a strong phase object
    psi = probe(GRID, E, semiangle=25.0, band_limit=None)
    out = multislice(psi, slices, GRID, E, 2.0, band_limit=None)
    assert float(jnp.sum(jnp.abs(out) ** 2)) == pytest.approx(1.0, abs=1e-5)
    # the 2/3 band limit removes what would alias: some loss, never a gain
    lossy = float(jnp.sum(jnp.abs(multislice(psi, slices, GRID, E, 2.0)) ** 2))
    assert 0.5 < lossy < 1.0 - 1e-4


def test_vacuum_propagation_composes():
    psi = probe(GRID, E, semiangle=25.0, position=(2.0, 3.0))
    two_steps = propagate(propagate(psi, GRID, E, 30.0), GRID, E, 45.0)
    np.testing.assert_allclose(two_steps, propagate(psi, GRID, E, 75.0), atol=1e-6)
    # multislice through 5 empty slices of 15 Å is one 75 Å propagation
    vacuum = multislice(psi, jnp.zeros((5, *GRID.shape)), GRID, E, 15.0, band_limit=None)
    np.testing.assert_allclose(vacuum, propagate(psi, GRID, E, 75.0), atol=1e-6)


def _bump_exit_intensity_ratio(sign=1.0):
    """A plane wave through an attractive (positive) Gaussian bump of projected potential,
    one 10 Å slice at 200 keV: exp(+i sigma V) is a converging lens and the Fresnel
    propagator exp(-i pi lambda dz k^2) brings the beam towards its axis."""
    grid = Grid((64, 64), (12.8, 12.8))
    y, x = np.meshgrid(np.arange(64) * 0.2, np.arange(64) * 0.2, indexing="ij")
    v = sign * 300.0 * np.exp(-((x - 6.4) ** 2 + (y - 6.4) ** 2) / (2 * 0.3**2))  # V·Å
    psi = jnp.ones(grid.shape, jnp.complex64) / 64
    out = multislice(psi, jnp.asarray(v, jnp.float32)[None], grid, 200e3, 10.0, band_limit=None)
    return float(jnp.abs(out[32, 32]) ** 2 / jnp.abs(psi[32, 32]) ** 2)


def test_attractive_potential_channels_the_beam():
    """Atoms channel the beam: the intensity on the bump's axis rises (measured 1.176); with
    the propagator's sign flipped (and the defocus's, which keeps the defocus test passing)
    the bump would defocus the beam instead (ratio < 1). That mutant is the complex
    conjugate of the true model with -V (the plane wave is real), so a repulsive bump must
    defocus: measured 0.851."""
    assert _bump_exit_intensity_ratio() > 1.1
    assert _bump_exit_intensity_ratio(-1.0) < 0.95


def test_weak_phase_limit_is_second_order():
    """One slice: exit = P_dz[t psi] with ``t = 1 + i x - x^2/2 + O(x^3)``, ``x = sigma V``.
    Propagation is unitary, so the residual of the first-order model has the norm of the
    second-order term, ``||x^2 psi|| / 2``, up to a relative ``O(max x)``; it is below
    ``max(x)^2 / 2`` and halving V quarters it."""
    pos, numbers = _atoms(seed=7)
    v = projected_potential(pos, numbers, GRID, rms_displacement=0.1)
    sigma = interaction_constant(E)
    psi = probe(GRID, E, semiangle=25.0, defocus=30.0, band_limit=None)
    residuals = []
    with jax.enable_x64(True):
        for scale in (0.05, 0.025):
            vs = v * scale / float(jnp.max(sigma * v))  # max phase = scale
            exit_wave = multislice(psi, vs[None], GRID, E, 1.5, band_limit=None)
            linear = propagate(psi * (1 + 1j * sigma * vs), GRID, E, 1.5)
            residuals.append(float(jnp.linalg.norm(exit_wave - linear)))
            second = 0.5 * float(jnp.linalg.norm((sigma * vs) ** 2 * psi))
            assert residuals[-1] == pytest.approx(second, rel=scale)
            assert residuals[-1] <= 0.5 * scale**2
    assert residuals[0] / residuals[1] == pytest.approx(4.0, rel=0.02)


def test_thin_specimen_converges_to_projection_approximation():
    """Fixed total potential split into S equal slices over a thickness T = S dz: as S grows
    and T -> 0 the exit wave tends to one transmission by the summed potential (the
    projection approximation); the error is first order in T (measured: 0.033 at T = 1 Å)."""
    total = _strong_slices(1)[0] * 0.5
    psi = probe(GRID, E, semiangle=25.0, band_limit=None)
    projected = transmission(total, E) * psi

    def error(n, thickness):
        slices = jnp.broadcast_to(total / n, (n, *GRID.shape))
        out = multislice(psi, slices, GRID, E, thickness / n, band_limit=None)
        return float(jnp.linalg.norm(out - projected))

    errors = np.array([error(n, t) for n, t in ((2, 8.0), (4, 4.0), (8, 2.0), (16, 1.0))])
    np.testing.assert_allclose(errors[:-1] / errors[1:], 2.0, rtol=0.15)
    assert error(32, 1e-3) < 1e-4  # ~3e-5 expected, float32 floor ~1e-6


def test_shifting_object_and_probe_together_gives_the_same_cbed():
    pos, numbers = _atoms(seed=8, n=12)
    dy, dx = GRID.sampling
    shift = np.float32([4 * dx, -3 * dy])
    probes = np.float32([[1.0, 2.0], [4.3, 5.1]])

    def patterns(p, r):
        v = projected_potential(p, numbers, GRID)
        slices = jnp.stack([v, 0.5 * v])
        return cbed_stack(slices, r, GRID, E, semiangle=25.0, defocus=20.0, dz=2.0)

    a = patterns(pos, probes)
    b = patterns(pos + shift, probes + shift)
    np.testing.assert_allclose(b, a, atol=1e-5 * float(jnp.max(a)))


def test_multislice_rejects_bad_input():
    psi = probe(GRID, E, semiangle=25.0)
    good = jnp.zeros((2, *GRID.shape))
    with pytest.raises(ValueError, match=r"\[S, ny, nx\]"):
        multislice(psi, good[0], GRID, E, 1.0)
    with pytest.raises(ValueError, match=r"\[S, ny, nx\]"):
        multislice(psi, jnp.zeros((2, 64, 48)), GRID, E, 1.0)
    with pytest.raises(ValueError, match="dz"):
        multislice(psi, good, GRID, E, 0.0)
    with pytest.raises(ValueError, match="energy"):
        multislice(psi, good, GRID, float("nan"), 1.0)
    with pytest.raises(ValueError, match="band_limit"):
        multislice(psi, good, GRID, E, 1.0, band_limit=1.5)
    with pytest.raises(ValueError, match="semiangle"):
        probe(GRID, E, semiangle=0.0)
    with pytest.raises(ValueError, match="energy"):
        wavelength(-1.0)
    with pytest.raises(ValueError, match=r"\[P, 2\]"):
        cbed_stack(good, np.zeros((3, 3)), GRID, E, semiangle=20.0, dz=1.0)
    with pytest.raises(ValueError, match="semiangle"):
        cbed_stack(good, np.zeros((3, 2)), GRID, E, semiangle=-20.0, dz=1.0)
    with pytest.raises(ValueError, match="dz"):
        cbed_stack(good, np.zeros((3, 2)), GRID, E, semiangle=20.0, dz=-1.0)


def test_non_finite_optics_and_potentials_are_refused():
    # each of these made every pattern NaN without a word
    psi = probe(GRID, E, semiangle=25.0)
    good = jnp.zeros((2, *GRID.shape))
    xy = np.zeros((3, 2))
    nan = float("nan")
    for kw, name in (({"defocus": nan}, "defocus"), ({"cs": float("inf")}, "cs")):
        with pytest.raises(ValueError, match=f"{name} contains NaN or inf"):
            probe(GRID, E, semiangle=25.0, **kw)
        with pytest.raises(ValueError, match=f"{name} contains NaN or inf"):
            cbed_stack(good, xy, GRID, E, semiangle=20.0, dz=1.0, **kw)
    bad = good.at[1, 3, 4].set(nan)
    with pytest.raises(ValueError, match="potential_slices contains NaN"):
        multislice(psi, bad, GRID, E, 1.0)
    with pytest.raises(ValueError, match="potential_slices contains NaN"):
        cbed_stack(bad, xy, GRID, E, semiangle=20.0, dz=1.0)
    with pytest.raises(ValueError, match=r"propagate: wave must be \[\.\.\., ny, nx\]"):
        propagate(psi[:, :-1], GRID, E, 10.0)
    assert propagate(jnp.stack([psi, psi]), GRID, E, 10.0).shape == (2, *GRID.shape)


@pytest.mark.parametrize("n", [48, 45, 64])
def test_the_two_thirds_mask_keeps_products_of_masked_waves_free_of_aliasing(n):
    """Inside the mask, the spectrum of a product of two masked fields equals the exact
    (alias-free) one. The mask kept |k| = N/3 exactly on grids divisible by 3, where the
    product aliased back onto it (2k - N = -k)."""
    grid = Grid((n, n), (0.2 * n, 0.2 * n))
    mask = band_limit_mask(grid, 2 / 3)
    rng = np.random.default_rng(n)
    a, b = (np.fft.ifft2(rng.normal(size=(n, n)) * mask) for _ in range(2))
    got = np.fft.fft2(a * b) * mask
    # exact: the product on a grid twice as fine (no aliasing), spectra zero-padded
    big = 2 * n

    def pad(x):
        spec = np.zeros((big, big), complex)
        idx = np.r_[0 : (n + 1) // 2, big - n // 2 : big]
        spec[np.ix_(idx, idx)] = np.fft.fft2(x) * 4  # ifft2 normalisation on 4x the points
        return np.fft.ifft2(spec)

    exact_big = np.fft.fft2(pad(a) * pad(b)) / 4
    idx = np.r_[0 : (n + 1) // 2, big - n // 2 : big]
    exact = exact_big[np.ix_(idx, idx)] * mask
    np.testing.assert_allclose(got, exact, atol=1e-9 * np.abs(exact).max())


def test_propagate_takes_any_finite_distance():
    psi = probe(GRID, E, semiangle=25.0, defocus=30.0)
    np.testing.assert_allclose(propagate(psi, GRID, E, 0.0), psi, atol=1e-6)
    there = propagate(psi, GRID, E, 40.0)
    np.testing.assert_allclose(propagate(there, GRID, E, -40.0), psi, atol=1e-5)
    with pytest.raises(ValueError, match="propagate: dz must be a finite scalar"):
        propagate(psi, GRID, E, float("nan"))
