"""Tests for jaxsci.reconstruct.crossover: cut-and-splice, the population, the GA search."""

import numpy as np
import pytest
from ase.cluster import Icosahedron

from jaxsci.metrics import sorted_pair_distances
from jaxsci.reconstruct.crossover import Population, cut_and_splice, twist


def _sorted_rows(x):
    return x[np.lexsort(x.T[::-1])]


def test_cut_and_splice_keeps_composition_and_takes_halves_of_each_parent():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 3)) * 3.0
    b = rng.normal(size=(20, 3)) * 3.0 + 10.0  # an offset: centring must remove it
    species = np.array([0] * 12 + [1] * 8)
    child = cut_and_splice(a, b, species, np.random.default_rng(1))
    assert child.shape == (20, 3) and np.all(np.isfinite(child))
    # Each species' atoms come from some rotation of the centred parents: the child's
    # distances to its centre match, atom for atom, a radius of a or b of that species.
    ra = np.linalg.norm(a - a.mean(0), axis=1)
    rb = np.linalg.norm(b - b.mean(0), axis=1)
    from_a = from_b = 0
    for s in (0, 1):
        idx = np.flatnonzero(species == s)
        for r in np.linalg.norm(child[idx], axis=1):
            in_a = np.isclose(r, ra[idx], atol=1e-9).any()
            in_b = np.isclose(r, rb[idx], atol=1e-9).any()
            assert in_a or in_b
            from_a += in_a
            from_b += in_b
    # The cut lies between the 30% and 70% quantiles: both parents contribute.
    assert from_a >= 5 and from_b >= 5


def test_cut_and_splice_of_a_structure_with_itself_rotated_is_plausible():
    """Two rotated copies of Pt13 cut at a plane through the centre: every atom of the
    child is an atom of one copy, the centre exactly once (an icosahedron has 6 shell atoms
    on either side of any plane through its centre), so the child has the parent's radii."""
    x = Icosahedron("Pt", 2).positions
    child = cut_and_splice(x, x, np.zeros(13, int), np.random.default_rng(3))
    assert child.shape == (13, 3)
    np.testing.assert_allclose(
        np.sort(np.linalg.norm(child, axis=1)),
        np.sort(np.linalg.norm(x - x.mean(0), axis=1)),
        atol=1e-9,
    )
    d = np.linalg.norm(child[:, None] - child[None], axis=-1)[np.triu_indices(13, 1)]
    assert d.min() > 0.0


def test_twist_keeps_radii_and_changes_the_structure():
    x = Icosahedron("Pt", 3).positions
    y = twist(x, np.random.default_rng(0))
    assert y.shape == x.shape
    np.testing.assert_allclose(
        np.sort(np.linalg.norm(y, axis=1)), np.sort(np.linalg.norm(x - x.mean(0), axis=1))
    )
    assert np.abs(sorted_pair_distances(y) - sorted_pair_distances(x)).max() > 0.1


def test_population_keeps_the_best_distinct_structures():
    rng = np.random.default_rng(0)
    pop = Population(3, min_distance=0.02)
    xs = [rng.normal(size=(8, 3)) * 2.0 for _ in range(5)]
    for i, x in enumerate(xs):
        assert pop.add(x, float(5 - i))
    assert len(pop) == 3 and pop.loss == [1.0, 2.0, 3.0]
    # A rotated copy of a member is the same structure: kept only if its loss is lower,
    # and then it replaces the member.
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    assert not pop.add(xs[4] @ q, 1.5)
    assert pop.add(xs[4] @ q, 0.5)
    assert len(pop) == 3 and pop.loss == [0.5, 2.0, 3.0]
    assert not pop.add(xs[0], np.inf)
    assert not pop.add(rng.normal(size=(8, 3)), 10.0)  # worse than all of a full population
    parent = pop.pick(np.random.default_rng(0))
    assert any(parent is x for x in pop.x)


@pytest.mark.parametrize(
    "bad",
    [
        {"crossover": 1.5},
        {"crossover": -0.1},
        {"population_size": 1},
        {"temperature": -1.0},
        {"twist": 2.0},
    ],
)
def test_bad_crossover_options_raise(bad):
    import jax

    from jaxsci.descriptors import ACSF
    from jaxsci.reconstruct import reconstruct

    acsf = ACSF(["Pt"], 6.0, g2_params=[[0.1, 0.0]], g4_params=[[0.01, 1.0, 1.0]])
    atoms = Icosahedron("Pt", 2)
    with pytest.raises(ValueError, match="crossover|population_size|temperature|twist"):
        reconstruct(acsf.create(atoms), ["Pt"] * 13, acsf, key=jax.random.key(0), **bad)


def test_crossover_search_runs_and_is_deterministic(monkeypatch):
    import jax

    from jaxsci.descriptors import ACSF
    from jaxsci.reconstruct import reconstruct, solver

    made = []  # every child the search bred from its population

    def counted(*args):
        made.append(breed(*args))
        return made[-1]

    breed = solver.child
    monkeypatch.setattr(solver, "child", counted)

    acsf = ACSF(["Pt"], 6.0, g2_params=[[0.1, 0.0], [1.0, 0.0]], g4_params=[[0.01, 1.0, 1.0]])
    atoms = Icosahedron("Pt", 2)
    target = acsf.create(atoms)
    opts = dict(
        key=jax.random.key(0),
        n_starts=8,
        steps_per_round=10,
        max_rounds=5,
        time_limit=None,
        tol=1e-9,  # never met: every round runs and the population is used
        polish_below=0.0,  # no polish: the search alone
        crossover=0.5,
        population_size=4,
        twist=0.5,
    )
    a = reconstruct(target, ["Pt"] * 13, acsf, **opts)
    assert len(made) >= 4 and all(k.shape == (13, 3) for k in made)  # the population is used
    b = reconstruct(target, ["Pt"] * 13, acsf, **opts)
    assert a.n_rounds == 5 and a.history.shape == (50, 8)
    assert np.all(np.isfinite(a.start_positions)) and np.all(np.isfinite(a.history))
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.history, b.history)
    # the children change the search: the same call without crossover takes other steps
    plain = reconstruct(target, ["Pt"] * 13, acsf, **{**opts, "crossover": 0.0, "twist": 0.0})
    assert plain.history.shape == a.history.shape
    assert not np.array_equal(plain.history, a.history)
