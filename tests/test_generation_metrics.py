"""Generated-structure scores (jaxsci.metrics.generation) against hand-computed values."""

import numpy as np
import pytest
from ase.cluster import Icosahedron
from scipy.spatial.transform import Rotation

from jaxsci.metrics import (
    PT_NN_DISTANCE,
    check_validity,
    energy_spearman,
    energy_wasserstein,
    kabsch_rmsd,
    novelty_mask,
    uniqueness_mask,
)


def _pt13() -> np.ndarray:
    return Icosahedron("Pt", noshells=2).get_positions()


def test_validity_of_a_cluster_a_close_pair_and_two_fragments():
    pos = _pt13()
    ok = check_validity(pos)
    assert ok.valid and ok.n_components == 1
    assert ok.min_distance == pytest.approx(np.sort(np.linalg.norm(pos - pos[0], axis=1))[1])

    close = pos.copy()
    close[1] = close[0] + [0.5 * PT_NN_DISTANCE, 0, 0]  # closer than 0.8 d_NN
    bad = check_validity(close)
    assert not bad.valid and bad.min_distance == pytest.approx(0.5 * PT_NN_DISTANCE)

    split = np.concatenate([pos, pos + [20.0, 0.0, 0.0]])  # two clusters 20 A apart
    two = check_validity(split)
    assert not two.valid and two.n_components == 2

    assert not check_validity(np.full((3, 3), np.nan)).valid
    with pytest.raises(ValueError, match="empty"):
        check_validity(np.zeros((0, 3)))


def _rmsd_by_scipy(positions: np.ndarray, reference: np.ndarray) -> float:
    """Oracle: the best proper rotation by scipy's ``Rotation.align_vectors`` (not an SVD
    of the covariance as in jaxsci), on centred coordinates."""
    p, q = positions - positions.mean(0), reference - reference.mean(0)
    _, rssd = Rotation.align_vectors(q, p)
    return float(rssd) / np.sqrt(len(p))


def test_kabsch_rmsd_rotation_free_but_not_mirror_free():
    rng = np.random.default_rng(0)
    pos = _pt13() + rng.normal(scale=0.1, size=(13, 3))
    rot = Rotation.random(random_state=3).as_matrix()
    assert kabsch_rmsd(pos @ rot.T + [1.0, -2.0, 0.5], pos) < 1e-10
    shifted = pos.copy()
    shifted[0] += [0.0, 0.0, 1.3]  # known RMSD before alignment: 1.3 / sqrt(13)
    got = kabsch_rmsd(shifted, pos)
    assert 0 < got <= 1.3 / np.sqrt(13) + 1e-12
    assert got == pytest.approx(_rmsd_by_scipy(shifted, pos), rel=1e-9)
    mirror = kabsch_rmsd(-pos, pos)  # a chiral (rattled) cluster's mirror image
    assert mirror > 0.5
    assert mirror == pytest.approx(_rmsd_by_scipy(-pos, pos), rel=1e-9)
    with pytest.raises(ValueError, match="shapes differ"):
        kabsch_rmsd(pos, pos[:5])


def test_kabsch_rmsd_refuses_nan_and_empty_input():
    """NaN/inf raised numpy's LinAlgError ("SVD did not converge"); zero atoms returned NaN."""
    pos = _pt13()
    bad = pos.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf in positions"):
        kabsch_rmsd(bad, pos)
    with pytest.raises(ValueError, match="NaN or inf in reference"):
        kabsch_rmsd(pos, np.where(np.isnan(bad), np.inf, bad))
    with pytest.raises(ValueError, match="no atoms"):
        kabsch_rmsd(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"shape \[n_atoms, 3\]"):
        kabsch_rmsd(pos[:, :2], pos[:, :2])
    assert kabsch_rmsd(pos[:1], pos[:1] + 3.0) == 0.0  # one atom: translation only


def test_uniqueness_and_novelty_use_sorted_pair_distances():
    rng = np.random.default_rng(1)
    a = _pt13()
    a_rot = a[rng.permutation(13)] @ Rotation.random(random_state=4).as_matrix().T
    b = a + rng.normal(scale=0.3, size=a.shape)
    c = _pt13()[:12]
    # a_rot is a permuted, rotated copy of a; b differs; c has another size.
    np.testing.assert_array_equal(uniqueness_mask([a, a_rot, b, c]), [True, False, True, True])
    np.testing.assert_array_equal(novelty_mask([a_rot, b, c], [a]), [False, True, True])


def test_homotops_and_other_compositions_are_different_structures():
    # before: species were ignored, so swapping an Au and a Cu atom (0.97 A RMSD) or
    # turning every atom into Cu counted as "the same" as the reference
    from ase import Atoms

    rng = np.random.default_rng(3)
    pos = _pt13() + rng.normal(scale=0.15, size=(13, 3))  # no symmetry makes swaps equal
    symbols = ["Au"] * 7 + ["Cu"] * 6
    ref = Atoms(symbols, positions=pos)
    homotop = Atoms(symbols[:1] + ["Cu"] + symbols[2:7] + ["Au"] + symbols[8:], positions=pos)
    assert homotop.get_chemical_formula() == ref.get_chemical_formula()
    all_cu = Atoms(["Cu"] * 13, positions=pos)
    perm = rng.permutation(13)
    moved = Atoms(
        [symbols[k] for k in perm],
        positions=pos[perm] @ Rotation.random(random_state=5).as_matrix().T + 2.0,
    )
    np.testing.assert_array_equal(
        novelty_mask([homotop, all_cu, moved], [ref]), [True, True, False]
    )
    np.testing.assert_array_equal(
        uniqueness_mask([ref, homotop, all_cu, moved]), [True, True, True, False]
    )
    # bare positions carry no species: compared on all distances, as before
    np.testing.assert_array_equal(novelty_mask([pos, homotop], [pos]), [False, False])
    np.testing.assert_array_equal(novelty_mask([pos], [homotop]), [False])
    # one species: Atoms and positions agree with the distance-only comparison
    pt = Atoms("Pt13", positions=pos)
    np.testing.assert_array_equal(uniqueness_mask([pt, pos, pos + 0.5]), [True, False, False])


def test_energy_scores():
    target = np.array([0.1, 0.2, 0.3, 0.4])
    assert energy_spearman(target, target**3) == pytest.approx(1.0)
    assert energy_spearman(target, -target) == pytest.approx(-1.0)
    assert np.isnan(energy_spearman(target[:2], target[:2]))  # too few pairs
    with pytest.raises(ValueError, match="shapes differ"):
        energy_spearman(target, target[:3])
    # W1 between point masses shifted by 0.05 eV/atom is 0.05; NaNs are dropped.
    assert energy_wasserstein(target + 0.05, np.append(target, np.nan)) == pytest.approx(0.05)
    # so are infinities (a failed relaxation's energy), on either side
    assert energy_wasserstein(np.append(target, np.inf), target) == pytest.approx(0.0)
    assert energy_wasserstein(target, np.append(target, -np.inf)) == pytest.approx(0.0)


def test_non_finite_structures_earn_no_credit_and_bad_tolerances_are_refused():
    # before: one NaN structure raised "positions: positions contain NaN or inf" for the
    # whole batch, and tol=-1 or NaN made every structure unique
    a = _pt13()
    bad = a.copy()
    bad[3, 1] = np.nan
    b = a + 0.3
    b[0] += 1.0
    np.testing.assert_array_equal(uniqueness_mask([bad, a, bad, a]), [False, True, False, False])
    np.testing.assert_array_equal(novelty_mask([bad, a, b], [bad, a]), [False, False, True])
    for fn, args in ((uniqueness_mask, ([a, a],)), (novelty_mask, ([a], [a]))):
        for tol in (-1.0, float("nan"), float("inf"), "0.02"):
            with pytest.raises(ValueError, match=f"{fn.__name__}: tol must be a finite number"):
                fn(*args, tol=tol)
    for kw in ({"d_nn": -1.0}, {"d_nn": float("nan")}, {"bond_factor": 0.0}):
        with pytest.raises(ValueError, match="check_validity: .* must be a finite number > 0"):
            check_validity(a, **kw)


def test_scalar_settings_accept_numpy_and_jax_scalars_and_refuse_bools():
    # before: np.int64(3), np.array(2.77), jnp.float32(2.77) and tol=np.int64(0) raised
    # "must be a finite number" while d_nn=True (1 A) was accepted
    import jax.numpy as jnp

    a = _pt13()
    near = a + 0.01  # the same structure, sorted distances unchanged: a match at any tol > 0
    for d_nn in (np.int64(3), np.float32(2.77), np.array(2.77), jnp.float32(2.77), jnp.array(3)):
        assert check_validity(a, d_nn=d_nn) == check_validity(a, d_nn=float(d_nn))
    assert check_validity(a, min_factor=np.array(0.8), bond_factor=jnp.bfloat16(1.25)).valid
    assert not check_validity(a, d_nn=np.int64(4)).valid  # 0.8 * 4 A > 2.6 A: too close
    for tol in (np.int64(0), np.array(0), np.float32(0.02), np.array(0.02), jnp.float32(0.02)):
        expected = [True, float(tol) == 0]
        np.testing.assert_array_equal(uniqueness_mask([a, near], tol=tol), expected)
        np.testing.assert_array_equal(novelty_mask([near], [a], tol=tol), expected[1:])
    for bad in (True, np.bool_(True), jnp.array(True), "2.77", np.array([2.77]), 1 + 0j):
        with pytest.raises(ValueError, match="check_validity: d_nn must be a finite number > 0"):
            check_validity(a, d_nn=bad)
        with pytest.raises(ValueError, match="uniqueness_mask: tol must be a finite number"):
            uniqueness_mask([a], tol=bad)
    for bad in (np.float64(np.nan), jnp.float32(np.inf), np.array(-0.1), np.int64(-1)):
        with pytest.raises(ValueError, match="novelty_mask: tol must be a finite number >= 0"):
            novelty_mask([a], [a], tol=bad)
    with pytest.raises(ValueError, match="check_validity: min_factor must be a finite number"):
        check_validity(a, min_factor=np.array(0))
