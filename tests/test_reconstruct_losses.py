"""jaxsci.reconstruct.losses: minimum image and the periodic short-range repulsion."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from jaxsci.descriptors import ACSF
from jaxsci.geometry import perpendicular_widths
from jaxsci.reconstruct import reconstruct
from jaxsci.reconstruct.losses import feature_scales, min_image, repulsion

FCC_PRIMITIVE = np.asarray(bulk("Pt", "fcc", a=3.92).cell)  # 60 degree angles
SHEARED = np.array([[4.0, 0.0, 0.0], [3.2, 2.0, 0.0], [0.0, 0.0, 5.0]])  # user probe p22
VERY_SHEARED = np.array([[3.0, 0.0, 0.0], [8.7, 2.5, 0.0], [-5.1, 3.3, 4.0]])


def _brute_min_length(d: np.ndarray, cell: np.ndarray, reach: float) -> np.ndarray:
    """Shortest |d + n @ cell| [M] over every integer n that can give a vector <= reach."""
    frac = d @ np.linalg.inv(cell)
    k = int(np.ceil(np.abs(frac).max() + reach / perpendicular_widths(cell).min()))
    shifts = np.array(list(itertools.product(range(-k, k + 1), repeat=3))) @ cell
    best = np.full(len(d), np.inf)
    for i in range(0, len(shifts), 2000):
        r = np.linalg.norm(d[:, None] + shifts[None, i : i + 2000], axis=-1)
        best = np.minimum(best, r.min(axis=1))
    return best


@pytest.mark.parametrize(
    "cell", [FCC_PRIMITIVE, SHEARED, VERY_SHEARED], ids=["fcc", "sheared", "very_sheared"]
)
def test_min_image_matches_brute_force_in_skewed_cells(cell):
    rng = np.random.default_rng(0)
    d = rng.uniform(-1.5, 1.5, (400, 3)) @ cell  # differences of positions in and near the cell
    got = np.asarray(jax.jit(lambda x: min_image(x, cell))(jnp.asarray(d, jnp.float32)))
    assert got.dtype == np.float32
    length = np.linalg.norm(got, axis=-1)
    best = _brute_min_length(d, cell, float(length.max()) + 1e-3)
    np.testing.assert_allclose(length, best, atol=1e-5)
    # and it is d plus a lattice vector
    n = np.linalg.solve(cell.T, (got - d).T).T
    np.testing.assert_allclose(n, np.round(n), atol=1e-4)


def test_min_image_orthorhombic_and_free():
    cell = np.diag([3.0, 4.0, 5.0])
    d = jnp.array([[2.0, -3.5, 2.4], [-1.4, 1.9, -2.6]])
    np.testing.assert_allclose(min_image(d, cell), [[-1.0, 0.5, 2.4], [-1.4, 1.9, 2.4]], atol=1e-6)
    assert min_image(d, None) is d


def test_periodic_repulsion_sees_close_pair_across_skewed_boundary():
    """A pair 1.42 A apart in the sheared cell of the user probe whose fractional
    separation (0.55 along b) rounds the wrong way: rounding alone saw it at 2.47 A, beyond
    the 2 A repulsion range (repulsion 0; the probe's worst pair: 1.07 A seen at 3.54 A)."""
    sep = np.array([0.9, 1.1, 0.0])  # the shortest image of b - a
    a = np.array([0.2, 0.1, 0.5]) @ SHEARED
    b = a + sep + SHEARED[0] - 2.0 * SHEARED[1]  # plus a lattice vector
    pos = jnp.asarray(np.stack([a, b]), jnp.float32)
    r_true = float(np.linalg.norm(sep))
    r = float(jnp.linalg.norm(min_image(pos[1] - pos[0], SHEARED)))
    assert r == pytest.approx(r_true, abs=1e-5)
    dmin = jnp.full((2, 2), 2.0)
    rep = float(repulsion(pos, dmin, SHEARED))
    assert rep == pytest.approx(0.5 * 2 * (2.0 - r_true) ** 2 / 2, rel=1e-5)
    # the gradient pushes the pair apart along their minimum-image vector
    g = np.asarray(jax.grad(lambda x: repulsion(x, dmin, SHEARED))(pos))
    assert np.all(np.isfinite(g))
    assert np.dot(g[1], sep) < 0 and np.dot(g[0], sep) > 0


def test_an_all_zero_target_is_reconstructed():
    """Every atom farther than r_cut from the others: the per-feature scales floored at 1e-38,
    which float32 flushes to 0, and the search's 0/0 loss raised FloatingPointError."""
    atoms = Atoms("Pt2Au", [[0, 0, 0], [2.7, 0, 0], [0, 2.7, 0]])
    acsf = ACSF(["Pt", "Au"], 2.0, g2_params=[[0.1, 0.0]])  # r_cut below every bond
    target = acsf.create(atoms)
    assert not target.any()
    np.testing.assert_array_equal(feature_scales(target), np.ones(target.shape[1]))
    res = reconstruct(
        target, atoms.get_chemical_symbols(), acsf, key=jax.random.key(0), n_starts=4,
        time_limit=None, max_rounds=2,
    )  # fmt: skip
    assert res.success and res.error == 0.0


def test_an_all_zero_target_missed_reports_inf_not_1e300():
    # a probe's Pt13 search that could not spread its atoms beyond r_cut reported
    # error 2.6e300 (the difference over a 1e-300 floor); fingerprint_error says inf
    from jaxsci.metrics import fingerprint_error
    from jaxsci.reconstruct.polish import relative_error

    assert relative_error(0.0, 0.0) == 0.0
    assert (
        relative_error(1e-3, 0.0) == np.inf == fingerprint_error(np.ones((2, 1)), np.zeros((2, 1)))
    )
    assert relative_error(1.0, 4.0) == 0.25


def test_per_atom_sorted_error_compares_each_species_with_its_own_target_rows():
    """Zero on the target itself, whatever the atom order within a species; moving one
    species' atoms leaves the other's errors at zero (the second group was compared with
    the first group's target ranks before)."""
    from jaxsci.reconstruct.losses import per_atom_sorted_error, sort_by_species, species_groups

    rng = np.random.default_rng(0)
    species = np.array([0, 1, 0, 1, 1, 0, 1])
    t = rng.normal(size=(7, 3))
    t[species == 1] += 5.0  # the species differ, so a mix-up of their ranks shows
    groups = species_groups(species)
    scale = feature_scales(t)
    t_sorted = sort_by_species(jnp.asarray(t / scale, jnp.float32), groups)
    scale = jnp.asarray(scale, jnp.float32)
    feats = jnp.asarray(t, jnp.float32)
    err = np.asarray(per_atom_sorted_error(feats, t_sorted, scale, groups))
    np.testing.assert_allclose(err, 0.0, atol=1e-10)
    within = np.arange(7)
    within[[1, 3]] = within[[3, 1]]  # two atoms of species 1 trade places
    swapped = per_atom_sorted_error(feats[within], t_sorted, scale, groups)
    np.testing.assert_allclose(swapped, 0.0, atol=1e-10)
    moved = feats.at[species == 1].add(0.5)
    err = np.asarray(per_atom_sorted_error(moved, t_sorted, scale, groups))
    assert np.all(err[species == 0] < 1e-10) and np.all(err[species == 1] > 1e-3)


def test_repulsion_scale_reaches_the_search_loss():
    """The same call with and without the repulsion: a start with two atoms 0.5 A apart
    ends with another loss (the option was read, not ignored)."""
    from ase.cluster import Icosahedron

    acsf = ACSF(["Pt"], 6.0, g2_params=[[0.1, 0.0], [1.0, 0.0]], g4_params=[[0.01, 1.0, 1.0]])
    atoms = Icosahedron("Pt", 2)
    start = atoms.positions.copy()
    start[1] = start[0] + [0.5, 0.0, 0.0]
    kw = dict(
        key=jax.random.key(0),
        n_starts=2,
        max_rounds=1,
        time_limit=None,
        motif_starts=0,
        polish_below=0.0,
        initial_positions=start,
    )
    runs = [
        reconstruct(acsf.create(atoms), ["Pt"] * 13, acsf, repulsion_scale=s, **kw)
        for s in (0.0, 1.0)
    ]
    assert runs[0].start_losses[0] != runs[1].start_losses[0]


def test_the_ot_loss_pairs_rows_of_the_same_species_only():
    """Two atoms whose rows are each other's targets but of the other species: pairing
    across species would cost nothing; within species it costs the rows' difference."""
    from jaxsci.reconstruct.losses import ot_loss

    target = jnp.array([[0.0, 0.0], [1.0, 1.0]])
    feats = target[::-1]
    scale = jnp.ones(2)
    loss = ot_loss(feats, target, scale, np.array([0, 1]), jnp.asarray(0.01), iters=100)
    assert float(loss) == pytest.approx(1.0, rel=1e-3)
    same = ot_loss(feats, target, scale, np.array([0, 0]), jnp.asarray(0.01), iters=100)
    assert float(same) < 0.05  # one species: the swap is free (up to the entropic bias)
