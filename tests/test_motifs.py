"""Tests for jaxsci.geometry.motifs: ideal cluster motifs cut to any atom count."""

import numpy as np
import pytest
from ase.cluster import Decahedron, Icosahedron, Octahedron

from jaxsci.geometry.motifs import MOTIFS, complete_motifs, motif_cuts, motif_positions

A = 3.92  # Pt lattice constant, Angstrom


def _pair_distances(x):
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    return np.sort(d[np.triu_indices(len(x), 1)])


@pytest.mark.parametrize("shape", MOTIFS)
@pytest.mark.parametrize("n", [10, 27, 40])
def test_cuts_are_centred_and_keep_the_bond_length(shape, n):
    x = motif_positions(shape, n, A, np.random.default_rng(n))
    assert x.shape == (n, 3)
    np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-12)
    d = _pair_distances(x)
    # Nearest neighbours at a / sqrt(2) (icosahedra are strained by a few percent).
    assert d[0] == pytest.approx(A / np.sqrt(2.0), rel=0.06)


def test_complete_icosahedron_is_whole():
    for n, shells in ((13, 2), (55, 3)):
        x = motif_positions("icosahedron", n, A, np.random.default_rng(0))
        ref = Icosahedron("Pt", shells, latticeconstant=A).positions
        np.testing.assert_allclose(_pair_distances(x), _pair_distances(ref), atol=1e-9)


def test_cuts_depend_on_the_generator_only():
    a = motif_positions("decahedron", 30, A, np.random.default_rng(5))
    b = motif_positions("decahedron", 30, A, np.random.default_rng(5))
    c = motif_positions("decahedron", 30, A, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(_pair_distances(a), _pair_distances(c))


def test_complete_motifs_are_every_ase_shape_of_that_size():
    shapes = {
        13: {
            "icosahedron(2)": Icosahedron("Pt", 2, latticeconstant=A),
            "decahedron(2,2,0)": Decahedron("Pt", 2, 2, 0, latticeconstant=A),
            "octahedron(3,1)": Octahedron("Pt", 3, 1, latticeconstant=A),
        },
        23: {"decahedron(3,1,0)": Decahedron("Pt", 3, 1, 0, latticeconstant=A)},
        38: {"octahedron(4,1)": Octahedron("Pt", 4, 1, latticeconstant=A)},
        40: {"decahedron(1,3,1)": Decahedron("Pt", 1, 3, 1, latticeconstant=A)},
    }
    for n, expected in shapes.items():
        got = dict(complete_motifs(n, A))
        assert set(got) == set(expected), n
        for name, atoms in expected.items():
            x = got[name]
            assert x.shape == (n, 3) and not x.flags.writeable
            np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-12)
            ref = _pair_distances(atoms.positions)
            np.testing.assert_allclose(_pair_distances(x), ref, atol=1e-9)
    # Brute force over a wider parameter box finds no shape the enumeration missed.
    brute = {
        len(Decahedron("Pt", p, q, r, latticeconstant=A))
        for p in range(1, 6)
        for q in range(1, 21)
        for r in range(4)
        if p > 1 or r > 0
    }
    for n in range(4, 61):
        names = [k for k, _ in complete_motifs(n, A)]
        assert any(k.startswith("decahedron") for k in names) == (n in brute), n
    assert complete_motifs(14, A) == []
    assert complete_motifs(1, A) == []  # one atom is no cluster (not a one-shell icosahedron)


def test_motif_cuts_are_the_distinct_cuts_of_the_generator():
    cuts = motif_cuts(30, A)
    assert {shape for shape, _ in cuts} <= set(MOTIFS)
    dists = [_pair_distances(x) for _, x in cuts]
    for _, x in cuts:
        assert x.shape == (30, 3) and not x.flags.writeable
        np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-12)
    # No two alike (sorted pair distances differ by more than the 1% of a binning).
    for i in range(len(dists)):
        for j in range(i):
            assert np.abs(dists[i] - dists[j]).max() > 1e-3
    # Cuts drawn from another random stream are almost all in the set already.
    rng = np.random.default_rng(123)
    draws = [motif_positions(MOTIFS[k % 4], 30, A, rng) for k in range(40)]
    found = [min(np.abs(_pair_distances(x) - d).max() for d in dists) < 1e-6 for x in draws]
    assert np.mean(found) >= 0.9
    again = motif_cuts(30, A)  # cached: the same read-only arrays in a new list
    assert again is not cuts and all(a[1] is b[1] for a, b in zip(again, cuts, strict=True))


def test_bad_arguments_raise():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown motif"):
        motif_positions("cube", 10, A, rng)
    with pytest.raises(ValueError, match="lattice_constant must be a finite number > 0"):
        motif_positions("icosahedron", 10, -1.0, rng)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        motif_positions("octahedron", 0, A, rng)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        complete_motifs(0, A)
    with pytest.raises(ValueError, match="lattice_constant must be a finite number > 0"):
        complete_motifs(13, 0.0)
    with pytest.raises(ValueError, match="max_draws and patience must be integers >= 1"):
        motif_cuts(13, A, max_draws=0)
    # before: a TypeError from slicing, an IndexError inside ase, an OverflowError
    for bad_n in (2.5, True, "13", None):
        with pytest.raises(ValueError, match=r"motif_positions: n must be an integer >= 1"):
            motif_positions("icosahedron", bad_n, A, rng)
    for bad_a in (float("inf"), float("nan"), "3.9", None):
        with pytest.raises(ValueError, match=r"complete_motifs: lattice_constant must be"):
            complete_motifs(13, bad_a)
        with pytest.raises(ValueError, match=r"motif_positions: lattice_constant must be"):
            motif_positions("fcc_ball", 13, bad_a, rng)
        with pytest.raises(ValueError, match=r"motif_cuts: lattice_constant must be"):
            motif_cuts(13, bad_a)
    with pytest.raises(ValueError, match="max_draws and patience"):
        motif_cuts(13, A, patience=1.5)
    # NumPy integers and floats are fine
    assert motif_positions("icosahedron", np.int64(13), np.float32(A), rng).shape == (13, 3)
