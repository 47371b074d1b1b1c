"""jaxsci.reconstruct.relocate: hollow sites and single-atom relocations of a near miss."""

import numpy as np
import pytest

from jaxsci.reconstruct.relocate import CLEARANCE, hollow_sites, relocations

BOND = 2.75


def _triangle() -> np.ndarray:
    return BOND * np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, np.sqrt(3) / 2, 0.0]])


def test_a_triangle_has_the_two_tetrahedral_apexes_as_sites():
    x = _triangle()
    sites = hollow_sites(x, BOND)
    centre = x.mean(0)
    height = BOND * np.sqrt(2.0 / 3.0)
    expected = np.array([centre + [0, 0, height], centre - [0, 0, height]])
    assert sites.shape == (2, 3)
    np.testing.assert_allclose(np.sort(sites[:, 2]), np.sort(expected[:, 2]), atol=1e-9)
    np.testing.assert_allclose(sites[:, :2], expected[:, :2], atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(sites[:, None] - x[None], axis=-1), BOND)


def test_sites_are_clear_of_every_atom_and_not_repeated():
    fcc = (
        BOND
        * np.sqrt(2)
        * np.array(
            [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5], [0.5, 0.5, 1], [1, 0.5, 0.5]]
        )
    )
    sites = hollow_sites(fcc, BOND)
    assert len(sites) > 0
    nearest = np.linalg.norm(sites[:, None] - fcc[None], axis=-1).min(1)
    assert nearest.min() >= CLEARANCE * BOND - 1e-9
    gaps = np.linalg.norm(sites[:, None] - sites[None], axis=-1) + 1e9 * np.eye(len(sites))
    assert gaps.min() >= 0.2 * BOND - 1e-9


def test_a_line_or_a_far_apart_set_has_no_sites():
    line = BOND * np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]])
    assert hollow_sites(line, BOND).shape == (0, 3)
    sparse = 3.0 * BOND * np.eye(3)
    assert hollow_sites(sparse, BOND).shape == (0, 3)
    assert hollow_sites(line[:2], BOND).shape == (0, 3)


def test_relocations_move_one_atom_to_a_site():
    x = np.concatenate([_triangle(), [[BOND / 2, BOND * np.sqrt(3) / 6, 2.25]]])  # a tetrahedron
    sites = hollow_sites(x, BOND)
    moves = relocations(x, BOND, np.random.default_rng(0), 1000)
    assert moves.shape == (len(x) * len(sites), len(x), 3)
    changed = np.any(moves != x[None], axis=-1)  # [M, N]
    assert np.all(changed.sum(1) == 1)
    for move, c in zip(moves, changed, strict=True):
        assert np.min(np.linalg.norm(sites - move[c][0], axis=1)) == pytest.approx(0.0)


def test_relocations_beyond_the_cap_are_a_seeded_subset():
    x = np.concatenate([_triangle(), [[BOND / 2, BOND * np.sqrt(3) / 6, 2.25]]])
    every = relocations(x, BOND, np.random.default_rng(0), 1000)
    some = relocations(x, BOND, np.random.default_rng(1), 5)
    again = relocations(x, BOND, np.random.default_rng(1), 5)
    assert some.shape == (5, 4, 3)
    np.testing.assert_array_equal(some, again)
    assert all(any(np.array_equal(s, e) for e in every) for s in some)


def test_the_move_back_of_a_misplaced_atom_ranks_first():
    """A relaxed random Pt20 with its outermost atom moved to a hollow site 2.7 A away:
    among the 620 relocations, the one that puts it back (within 0.7 A of its site) has
    the lowest sorted-column loss, below the near miss's own."""
    import jax
    import jax.numpy as jnp

    from jaxsci.data.pt_clusters import relax, seed_cluster
    from jaxsci.descriptors import ACSF
    from jaxsci.reconstruct.losses import feature_scales, sorted_loss

    g2 = [[eta, 0.0] for eta in (0.01, 0.1, 0.4, 1.0)]
    g4 = [[eta, z, lam] for eta in (0.005, 0.05) for z in (1.0, 4.0) for lam in (1.0, -1.0)]
    acsf = ACSF(["Pt"], 6.0, g2_params=g2, g4_params=g4)
    atoms, _, _ = relax(seed_cluster("random", 20, seed=1))
    x = atoms.positions - atoms.positions.mean(0)
    k = int(np.argmax(np.linalg.norm(x, axis=1)))
    sites = hollow_sites(np.delete(x, k, 0), 2.72)
    near = x.copy()
    near[k] = sites[np.argmin(np.abs(np.linalg.norm(sites - x[k], axis=1) - 2.5))]
    assert np.linalg.norm(near[k] - x[k]) > 2.0
    target = np.asarray(acsf.create(atoms), np.float64)
    scale = feature_scales(target)
    t_sorted = jnp.asarray(np.sort(target / scale, axis=0), jnp.float32)
    scale = jnp.asarray(scale, jnp.float32)
    feats = jax.jit(jax.vmap(lambda p: acsf.fn(p, jnp.zeros(20, jnp.int32))))
    moves = relocations(near, 2.72, np.random.default_rng(0), 10_000)
    loss = jax.vmap(lambda f: sorted_loss(f, t_sorted, scale, [np.arange(20)], "l2"))
    losses = np.asarray(loss(feats(moves)))
    base = np.asarray(loss(feats(near[None])))
    best = int(np.argmin(losses))
    assert np.linalg.norm(moves[best, k] - x[k]) < 0.7
    assert losses[best] < 0.7 * base[0]


def test_reconstruct_starts_a_round_from_relocations_of_its_best(monkeypatch):
    """With ``repair_below`` (on by default), the best structure's relocations replace half
    the starts (REPAIR_AFTER set to 0: relocated after round 1, set in round 2, searched in
    round 3)."""
    import jax

    from jaxsci.data.pt_clusters import relax, seed_cluster
    from jaxsci.descriptors import ACSF
    from jaxsci.reconstruct import solver

    g2 = [[eta, 0.0] for eta in (0.01, 0.1, 0.4, 1.0)]
    g4 = [[eta, z, lam] for eta in (0.005, 0.05) for z in (1.0, 4.0) for lam in (1.0, -1.0)]
    acsf = ACSF(["Pt"], 6.0, g2_params=g2, g4_params=g4)
    atoms, _, _ = relax(seed_cluster("random", 20, seed=1))
    calls = []

    def counted(positions, *args):
        calls.append(np.array(positions))
        return relocations(positions, *args)

    monkeypatch.setattr(solver, "relocations", counted)
    monkeypatch.setattr(solver, "REPAIR_AFTER", 0)
    kw = dict(n_starts=8, motif_starts=0, max_rounds=3, polish_below=0.0, time_limit=None)
    res = solver.reconstruct(
        acsf.create(atoms), ["Pt"] * 20, acsf, key=jax.random.key(0), repair_below=1.0, **kw
    )
    assert len(calls) == 1  # after round 1 (those after round 2 would never run)
    assert res.n_rounds == 3 and np.isfinite(res.history).all()
    # Round 3 differs from a call without relocations in half of the starts (4 of 8).
    off = solver.reconstruct(
        acsf.create(atoms), ["Pt"] * 20, acsf, key=jax.random.key(0), repair_below=0.0, **kw
    )
    assert len(calls) == 1 and off.n_rounds == 3
    steps = res.history.shape[0] // 3
    np.testing.assert_array_equal(res.history[: 2 * steps], off.history[: 2 * steps])
    changed = np.any(res.history[2 * steps :] != off.history[2 * steps :], axis=0)
    assert changed.sum() == 4
