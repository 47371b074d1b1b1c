"""Lattice alloys: BCC shells, pair Hamiltonian, swap Monte Carlo with parallel tempering.

Oracles: brute-force distances and bond sums in NumPy, energy differences of full
evaluations, and the exact Boltzmann distribution of a 16-site lattice by enumeration.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from jaxsci.alloys import (
    K_B,
    MONBTAW,
    RYDBERG_EV,
    bcc_lattice,
    epi_from_rydberg,
    montecarlo,
    pair_hamiltonian,
    parallel_tempering,
    pt_init,
    random_occupation,
    site_counts,
)

BCC_SHELLS = ((8, np.sqrt(3) / 2), (6, 1.0), (12, np.sqrt(2)), (24, np.sqrt(11) / 2),
              (8, np.sqrt(3)), (6, 2.0))  # fmt: skip


def _min_image_distances(lat) -> np.ndarray:
    """[n, n] distances under the minimum image (cubic box), by brute force."""
    box = np.diag(lat.cell)
    d = lat.positions[:, None, :] - lat.positions[None, :, :]
    d -= box * np.round(d / box)
    return np.linalg.norm(d, axis=-1)


def _bond_energy(lat, v, occ) -> float:
    """sum over unordered pairs within the shells, found by distance (independent of the
    lattice's neighbour tables)."""
    dist = _min_image_distances(lat)
    e = 0.0
    for s, r in enumerate(lat.distances):
        i, j = np.nonzero(np.triu(np.isclose(dist, r, atol=1e-9), 1))
        e += v[s][occ[i], occ[j]].sum()
    return float(e)


def test_bcc_shells_match_brute_force_distances():
    lat = bcc_lattice(5)
    assert lat.n_sites == 250
    assert lat.coordination == tuple(z for z, _ in BCC_SHELLS)
    np.testing.assert_allclose(lat.distances, [r for _, r in BCC_SHELLS])
    dist = _min_image_distances(lat)
    for s, (z, r) in enumerate(BCC_SHELLS):
        nb = lat.shell_neighbors(s)
        assert nb.shape == (lat.n_sites, z)
        expect = [set(np.nonzero(np.isclose(row, r, atol=1e-9))[0]) for row in dist]
        assert [set(row) for row in nb.tolist()] == expect
    # the relation is symmetric: j in shell s of i <=> i in shell s of j
    pairs = {
        (i, j, s)
        for i, row in enumerate(lat.neighbors)
        for j, s in zip(row, lat.shell, strict=True)
    }
    assert all((j, i, s) in pairs for i, j, s in pairs)


@pytest.mark.parametrize(("n_cells", "n_shells"), [(1, 1), (2, 2), (3, 4), (4, 6)])
def test_bcc_too_small_for_its_shells_raises(n_cells, n_shells):
    with pytest.raises(ValueError, match="too small"):
        bcc_lattice(n_cells, n_shells)


@pytest.mark.parametrize("bad", [0, -2, 2.0, True, "4"])
def test_bcc_bad_arguments_raise(bad):
    with pytest.raises(ValueError, match="n_cells"):
        bcc_lattice(bad)
    with pytest.raises(ValueError, match="n_shells"):
        bcc_lattice(5, bad)


def test_energy_and_swap_delta_against_brute_force():
    lat = bcc_lattice(5)
    ham = pair_hamiltonian(lat, MONBTAW.pair_energies)
    occ = np.asarray(random_occupation(jax.random.PRNGKey(3), lat.n_sites, MONBTAW.composition))
    e = float(ham.energy(occ))
    assert e == pytest.approx(_bond_energy(lat, MONBTAW.pair_energies, occ), rel=1e-5)
    rng = np.random.default_rng(0)
    nbr = lat.neighbors
    pairs = [tuple(rng.integers(0, lat.n_sites, 2)) for _ in range(20)]
    pairs += [
        (i, int(nbr[i, c]))
        for i, c in zip(rng.integers(0, lat.n_sites, 20), range(0, 60, 3), strict=True)
    ]
    pairs += [(7, 7)]
    for i, j in pairs:
        after = occ.copy()
        after[[i, j]] = occ[[j, i]]
        want = _bond_energy(lat, MONBTAW.pair_energies, after) - _bond_energy(
            lat, MONBTAW.pair_energies, occ
        )
        assert float(ham.swap_delta(occ, i, j)) == pytest.approx(want, abs=2e-5)


def test_epi_from_rydberg_reproduces_the_reference_pair_count_energy():
    # alloy-thermo-skill: E = sum_s sum_{a<b} W^s_ab J^s_ab / z_s, W counting the unlike
    # a-b bonds of shell s from both ends; the diagonal J_aa is read but unused
    lat = bcc_lattice(5, 2)
    rng = np.random.default_rng(1)
    j = rng.normal(size=(2, 3, 3)) * 1e-2  # with a non-zero diagonal
    j = (j + j.transpose(0, 2, 1)) / 2
    occ = rng.integers(0, 3, lat.n_sites)
    ref = 0.0
    for s, z in enumerate(lat.coordination):
        nb = occ[lat.shell_neighbors(s)]
        for a, b in itertools.combinations(range(3), 2):
            w = np.sum((occ[:, None] == a) & (nb == b)) + np.sum((occ[:, None] == b) & (nb == a))
            ref += w * j[s, a, b] / z
    ham = pair_hamiltonian(lat, epi_from_rydberg(j, lat.coordination))
    assert float(ham.energy(occ)) == pytest.approx(ref * RYDBERG_EV, rel=1e-5)
    assert np.all(np.diagonal(epi_from_rydberg(j, lat.coordination), axis1=1, axis2=2) == 0)


def test_species_out_of_range_give_a_nan_energy():
    lat = bcc_lattice(5, 1)
    ham = pair_hamiltonian(lat, np.ones((1, 4, 4)))
    occ = np.zeros(lat.n_sites, np.int32)
    assert np.isfinite(float(ham.energy(occ)))
    occ[3] = 7  # no such species
    assert np.isnan(float(ham.energy(occ)))
    occ[3] = -1  # would wrap to the last species
    assert np.isnan(float(ham.energy(occ)))
    with pytest.raises(ValueError, match="species indices"):
        pt_init(ham, occ[None])


def test_metropolis_log_uniform_is_finite_where_the_uniform_draws_zero():
    # a float32 uniform is exactly 0 once in 2^23 draws; log(0) = -inf accepted any move
    key, shape = jax.random.key(0), (1 << 23,)
    assert np.any(np.asarray(jax.random.uniform(key, shape)) == 0)  # the stream has a 0
    log_u = np.asarray(montecarlo._log_uniform(key, shape))
    assert np.all(np.isfinite(log_u)) and log_u.max() <= 0.0
    assert abs(log_u.mean() + 1.0) < 1e-3  # log U of a uniform has mean -1


@pytest.mark.parametrize(
    ("v", "match"),
    [
        (np.zeros((5, 4, 4)), "has 6"),
        (np.zeros((6, 4, 3)), "n_species"),
        (np.full((6, 2, 2), np.nan), "finite"),
        (np.arange(6 * 4).reshape(6, 2, 2) * 1.0, "symmetric"),
    ],
)
def test_pair_hamiltonian_bad_energies_raise(v, match):
    with pytest.raises(ValueError, match=match):
        pair_hamiltonian(bcc_lattice(5), v)


def test_site_counts_and_random_occupation():
    assert site_counts(10, [0.36, 0.22, 0.22, 0.2]).tolist() == [4, 2, 2, 2]
    assert site_counts(250, MONBTAW.composition).sum() == 250
    occ = np.asarray(random_occupation(jax.random.PRNGKey(0), 250, [0.5, 0.3, 0.2]))
    assert np.bincount(occ).tolist() == [125, 75, 50]
    assert site_counts(5_000_000, [0.5000004, 0.5]).sum() == 5_000_000  # within tolerance
    for bad in ([0.5, 0.4], [1.2, -0.2], [np.nan, 1.0]):
        with pytest.raises(ValueError, match="composition"):
            site_counts(10, bad)
    assert site_counts(np.int64(10), [0.5, 0.5]).tolist() == [5, 5]  # NumPy ints are fine


@pytest.mark.parametrize("n_sites", [0, -3, 10.5, 10.0, True, False, "10", None])
def test_site_counts_and_random_occupation_reject_bad_n_sites(n_sites):
    # 10.5 raised TypeError (slice indices) and True was taken as 1 site
    with pytest.raises(ValueError, match="n_sites must be an int >= 1"):
        site_counts(n_sites, (0.5, 0.5))
    with pytest.raises(ValueError, match="n_sites must be an int >= 1"):
        random_occupation(jax.random.PRNGKey(0), n_sites, (0.5, 0.5))


def _exact_levels(lat, v):
    """Energies of all C(16, 8) occupations of a two-species 16-site lattice."""
    e = []
    for ones in itertools.combinations(range(lat.n_sites), lat.n_sites // 2):
        occ = np.zeros(lat.n_sites, np.int64)
        occ[list(ones)] = 1
        e.append(v[0][occ[:, None], occ[lat.neighbors]].sum() / 2)
    return np.asarray(e)


def test_parallel_tempering_samples_the_exact_boltzmann_distribution():
    lat = bcc_lattice(2, 1)  # 16 sites, 8 first neighbours each
    v = np.array([[[0.0, -0.02], [-0.02, 0.0]]])  # unlike first neighbours favoured (eV)
    levels = _exact_levels(lat, v)
    temps = np.array([400.0, 550.0, 700.0, 900.0, 1200.0, 2000.0])  # order-disorder ~700 K
    ham = pair_hamiltonian(lat, v)
    occ0 = np.repeat([0, 1], 8)
    res = parallel_tempering(
        jax.random.PRNGKey(0), ham, occ0, temps, n_samples=3000, n_burn=50, progress=False
    )
    # composition kept, and the recorded energies are the samples' energies
    assert np.all(np.sum(res.samples == 1, axis=-1) == 8)
    for s, r in zip((0, 1, 2, 3), (1, 2, 3, 0), strict=True):
        assert res.energies[s * 700, r] == pytest.approx(float(ham.energy(res.samples[s * 700, r])))

    def exact_mean(t):
        w = np.exp(-(levels - levels.min()) / (K_B * t))
        return np.sum(w * levels) / w.sum(), np.sqrt(
            np.sum(w * levels**2) / w.sum() - (np.sum(w * levels) / w.sum()) ** 2
        )

    for r, t in enumerate(temps):
        mean, _ = exact_mean(t)
        batches = res.energies[:, r].reshape(30, 100).mean(axis=1)  # batch means: se with
        se = batches.std(ddof=1) / np.sqrt(30)  # the autocorrelation of the chain included
        assert abs(res.energies[:, r].mean() - mean) < 4 * se + 1e-6, (t, mean, se)
        if 500 < t < 1000:  # where E(T) is steep, the test tells a 20% error in T apart
            assert abs(exact_mean(1.2 * t)[0] - mean) > 8 * se, (t, se)
    # the ground state (perfect B2 on this lattice: two states) dominates the coldest slot
    p_ground = np.mean(np.isclose(res.energies[:, 0], levels.min()))
    w = np.exp(-(levels - levels.min()) / (K_B * temps[0]))
    assert p_ground == pytest.approx(
        np.sum(w[np.isclose(levels, levels.min())]) / w.sum(), abs=0.05
    )
    assert np.all((res.exchange_acceptance > 0) & (res.exchange_acceptance <= 1))
    assert np.all((res.swap_acceptance >= 0) & (res.swap_acceptance <= 1))


def test_parallel_tempering_bad_input_raises():
    lat = bcc_lattice(2, 1)
    ham = pair_hamiltonian(lat, np.zeros((1, 2, 2)))
    occ = np.repeat([0, 1], 8)
    run = lambda o, t, **kw: parallel_tempering(  # noqa: E731
        jax.random.PRNGKey(0), ham, o, t, n_samples=kw.pop("n_samples", 1), progress=False, **kw
    )
    with pytest.raises(ValueError, match="increasing"):
        run(occ, [300.0, 200.0])
    with pytest.raises(ValueError, match="positive"):
        run(occ, [-1.0, 200.0])
    with pytest.raises(ValueError, match="shape"):
        run(occ[:10], [300.0])
    with pytest.raises(ValueError, match="species"):
        run(occ + 1, [300.0])
    with pytest.raises(ValueError, match="n_samples"):
        run(occ, [300.0], n_samples=0)
    with pytest.raises(ValueError, match="same composition"):
        run(np.stack([occ, np.repeat([0, 1], [12, 4])]), [300.0, 400.0])
    with pytest.raises(ValueError, match="integer species indices, got dtype float64"):
        run(occ.astype(float), [300.0])  # in range: the type is what is wrong
    with pytest.raises(ValueError, match="integer species indices, got dtype bool"):
        run(occ.astype(bool), [300.0])
    state = run(occ, [300.0, 400.0]).final_state
    with pytest.raises(ValueError, match="2 replicas but 1 temperatures"):
        run(state, [300.0])
    with pytest.raises(ValueError, match=r"\[n_sites=16\], got shape \(10,\)"):
        ham.energy(occ[:10])


def test_parallel_tempering_samples_hold_species_beyond_127():
    """samples were int8: species 184..199 came back as -72..-57."""
    ham = pair_hamiltonian(bcc_lattice(2, 1), np.zeros((1, 200, 200)))
    occ = np.arange(16) + 184
    res = parallel_tempering(jax.random.key(0), ham, occ, [300.0], n_samples=1, progress=False)
    np.testing.assert_array_equal(np.sort(res.samples[0, 0]), occ)
    np.testing.assert_array_equal(np.sort(np.asarray(res.final_state.occupations[0])), occ)


def test_parallel_tempering_continues_from_a_state():
    lat = bcc_lattice(2, 1)
    ham = pair_hamiltonian(lat, np.array([[[0.0, -0.02], [-0.02, 0.0]]]))
    occ = np.tile(np.repeat([0, 1], 8), (3, 1))
    kw = dict(n_samples=5, n_burn=2, progress=False)
    key, temps = jax.random.PRNGKey(4), [300.0, 600.0, 900.0]
    fresh = parallel_tempering(key, ham, occ, temps, **kw)
    again = parallel_tempering(key, ham, pt_init(ham, occ), temps, **kw)
    np.testing.assert_array_equal(fresh.samples, again.samples)
    more = parallel_tempering(jax.random.PRNGKey(5), ham, fresh.final_state, temps, **kw)
    np.testing.assert_allclose(
        more.energies[-1], [float(ham.energy(o)) for o in more.samples[-1]], rtol=1e-6
    )
    np.testing.assert_array_equal(more.final_state.occupations, more.samples[-1])
    # the continuation (same hamiltonian, shapes and sample_every) compiled nothing new
    compiled = montecarlo._advance._cache_size()
    parallel_tempering(jax.random.PRNGKey(6), ham, more.final_state, [300.0, 500.0, 900.0], **kw)
    # nor does another hamiltonian of the same shapes (its tables are traced arguments)
    other = pair_hamiltonian(lat, np.array([[[0.0, 0.05], [0.05, 0.0]]]))
    moved = parallel_tempering(jax.random.PRNGKey(7), other, more.final_state, temps, **kw)
    assert montecarlo._advance._cache_size() == compiled
    np.testing.assert_allclose(
        moved.energies[-1], [float(other.energy(o)) for o in moved.samples[-1]], rtol=1e-6
    )


def test_exchange_acceptance_counts_each_pair_s_tries():
    # zero energies: every exchange is accepted, so each pair's rate is exactly 1, whatever
    # the parity of the burn-in and of the sampling sweeps
    lat = bcc_lattice(2, 1)
    ham = pair_hamiltonian(lat, np.zeros((1, 2, 2)))
    res = parallel_tempering(
        jax.random.PRNGKey(0), ham, np.repeat([0, 1], 8), [100.0, 200.0, 300.0, 400.0],
        n_samples=3, sample_every=1, n_burn=3, progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(res.exchange_acceptance, 1.0)
    assert res.n_burn == 3 and res.n_sweeps == 3


def test_a_pair_never_tried_reports_nan_not_zero():
    """s28 probe: with one sampled sweep the odd pair is not tried; it read 0.0, the sign of
    a ladder gap."""
    lat = bcc_lattice(2, 1)
    ham = pair_hamiltonian(lat, np.zeros((1, 2, 2)))
    res = parallel_tempering(
        jax.random.PRNGKey(0), ham, np.repeat([0, 1], 8), [100.0, 200.0, 300.0],
        n_samples=1, sample_every=1, n_burn=0, progress=False,
    )  # fmt: skip
    assert res.exchange_acceptance[0] == 1.0 and np.isnan(res.exchange_acceptance[1])


@pytest.mark.parametrize(
    "temps, match",
    [
        (300.0, "1-D sequence.*shape \\(\\)"),  # said "must be positive and finite"
        ([[100.0, 200.0]], "1-D sequence.*shape \\(1, 2\\)"),
        (("100", "200"), "must be numbers"),  # was accepted
        ([1e-36, 300.0], "positive and finite, >= 1e-30 K"),  # beta overflowed to inf
    ],
)
def test_parallel_tempering_temperature_messages(temps, match):
    lat = bcc_lattice(2, 1)
    ham = pair_hamiltonian(lat, np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match=match):
        parallel_tempering(
            jax.random.PRNGKey(0), ham, np.repeat([0, 1], 8), temps, n_samples=1, progress=False
        )


def test_pt_init_refuses_float_occupations_like_parallel_tempering():
    lat = bcc_lattice(2, 1)
    ham = pair_hamiltonian(lat, np.zeros((1, 2, 2)))
    occ = np.repeat([0.0, 1.0], 8)[None] + 0.5  # was truncated to 0, 1 silently
    with pytest.raises(ValueError, match="integer species indices, got dtype float64"):
        pt_init(ham, occ)
