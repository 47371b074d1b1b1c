"""ACSF agreement with DScribe (the independent oracle), float64 and float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.cluster import Icosahedron

from jaxsci.descriptors import ACSF

dscribe = pytest.importorskip("dscribe.descriptors")

G2 = [[0.01, 0.0], [0.1, 2.0], [0.5, 3.0]]
G3 = [1.0, 2.5]
# integer zetas take the moment (matrix-product) path, the others the per-triplet kernel
G4 = [[0.005, 1, 1], [0.005, 2, -1], [0.05, 4, 1], [0.02, 3, -1]]
G5 = [[0.01, 1, 1], [0.02, 2, -1], [0.01, 3, 1]]
G4_FRAC = [[0.005, 1, 1], [0.05, 1.5, -1]]
G5_FRAC = [[0.01, 3.3, 1], [0.02, 2, -1]]
R_CUT = 5.0


def _pair(species, periodic, g2=G2, g3=G3, g4=G4, g5=G5, r_cut=R_CUT):
    ref = dscribe.ACSF(
        r_cut=r_cut,
        g2_params=g2,
        g3_params=g3,
        g4_params=g4,
        g5_params=g5,
        species=species,
        periodic=periodic,
    )
    ours = ACSF(species, r_cut, g2, g3, g4, g5, periodic=periodic)
    return ref, ours


def _cluster3():
    a = Icosahedron("Pt", 2)
    a.rattle(0.08, seed=0)
    a.numbers[[0, 3, 5]] = 29
    a.numbers[[1, 7]] = 8
    return a


def _triclinic():
    cell = np.array([[4.1, 0.0, 0.0], [1.3, 3.9, 0.0], [0.7, -0.9, 4.4]])
    rng = np.random.default_rng(5)
    a = Atoms("Cu2OPt", scaled_positions=rng.random((4, 3)), cell=cell, pbc=True)
    return a


def _structures():
    pt = Icosahedron("Pt", 2)
    pt.rattle(0.05, seed=1)
    small = bulk("Pt", "fcc", a=3.92)  # 1 atom, cell far below 2 r_cut: own images count
    small.rattle(0.02, seed=2)
    binary = bulk("Cu", "fcc", a=3.6) * (1, 2, 1)
    binary.numbers[1] = 8
    binary.rattle(0.05, seed=2)
    return [
        ("Pt13 cluster", ["Pt"], False, pt),
        ("3-species cluster", ["Pt", "Cu", "O"], False, _cluster3()),
        ("1-atom fcc cell", ["Pt"], True, small),
        ("Cu-O periodic", ["Cu", "O"], True, binary),
        ("triclinic 3 species", ["O", "Cu", "Pt"], True, _triclinic()),
    ]


def _rel_err(out, ref):
    """Largest error relative to its feature's (column's) scale: a small feature is checked
    at its own scale, not at the largest feature's (where one could be off several-fold)."""
    out, ref = np.asarray(out), np.asarray(ref)
    ok = np.isfinite(ref)  # DScribe gives NaN for pow(negative round-off, non-integer zeta)
    out, ref = np.where(ok, out, 0.0), np.where(ok, ref, 0.0)
    axes = tuple(range(ref.ndim - 1))
    scale = np.abs(ref).max(axis=axes)
    scale = np.maximum(scale, 1e-12 * scale.max())  # all-zero columns: absolute, tiny
    return np.max(np.abs(out - ref).max(axis=axes) / scale)


@pytest.mark.parametrize("name,species,periodic,atoms", _structures(), ids=lambda x: str(x)[:20])
def test_matches_dscribe_float64(name, species, periodic, atoms):
    ref, ours = _pair(species, periodic)
    assert ours.n_features == ref.get_number_of_features()
    expected = ref.create(atoms)
    with jax.enable_x64(True):
        out = ours.create(atoms)
    assert out.shape == expected.shape
    assert _rel_err(out, expected) < 1e-6, name


def test_dscribe_create_keywords_run_unchanged():
    """A DScribe call with its own keywords runs as is and gives the same values."""
    name, species, periodic, atoms = _structures()[0]
    ref, ours = _pair(species, periodic)
    kw = {"n_jobs": 2, "only_physical_cores": True, "verbose": False}
    with jax.enable_x64(True):
        out = ours.create([atoms, atoms], **kw)
    assert _rel_err(out, ref.create([atoms, atoms], **kw)) < 1e-6, name
    with pytest.raises(ValueError, match="n_jobs"):
        ours.create(atoms, n_jobs=0)


@pytest.mark.parametrize("name,species,periodic,atoms", _structures()[1::3], ids=str)
def test_fractional_zeta_matches_dscribe_float64(name, species, periodic, atoms):
    """Non-integer zeta takes the per-triplet kernel instead of the moment expansion."""
    ref, ours = _pair(species, periodic, g4=G4_FRAC, g5=G5_FRAC)
    with jax.enable_x64(True):
        out = ours.create(atoms)
    assert _rel_err(out, ref.create(atoms)) < 1e-6, name


def test_large_zeta_and_lambda_match_dscribe_float64():
    """zeta > 6 takes the per-triplet kernel; with |lambda| > 1 its base 1 + lambda cos turns
    negative, and an integer power keeps DScribe's sign (it was clipped at 0)."""
    g4, g5 = [[0.01, 7, -3], [0.02, 8, 2], [0.01, 2, -3]], [[0.01, 7, 2]]
    ref, ours = _pair(["Pt", "Cu", "O"], False, g4=g4, g5=g5)
    atoms = _cluster3()
    with jax.enable_x64(True):
        out = ours.create(atoms)
    assert _rel_err(out, ref.create(atoms)) < 1e-8


@pytest.mark.parametrize("name,species,periodic,atoms", _structures()[1:4:2], ids=str)
def test_matches_dscribe_float32(name, species, periodic, atoms):
    ref, ours = _pair(species, periodic)
    out = ours.create(atoms)
    assert _rel_err(out, ref.create(atoms)) < 1e-4, name


def test_cell_list_path_matches_dscribe():
    atoms = bulk("Pt", "fcc", a=3.92, cubic=True) * (2, 2, 2)  # 7.84 A cell, r_cut 5: 1 bin/axis
    atoms.rattle(0.05, seed=3)
    ref, ours = _pair(["Pt"], True, g3=None, g5=None)
    with jax.enable_x64(True):
        pos = jnp.asarray(atoms.positions)
        cell = jnp.asarray(atoms.cell[:])
        nbrs = ours.neighbor_list(pos, cell)
        out = np.asarray(
            ours.neighbor_fn(pos, jnp.asarray(ours.encode_species(atoms.numbers)), cell, nbrs)
        )
    assert not bool(nbrs.did_overflow)
    assert _rel_err(out, ref.create(atoms)) < 1e-6


def test_list_and_centers_like_dscribe():
    ref, ours = _pair(["Pt", "Cu", "O"], False, g3=None, g5=None)
    a, b = _cluster3(), Icosahedron("Cu", 2)
    with jax.enable_x64(True):
        out = ours.create([a, b], centers=[[0, 4], [2, 1]])
        ragged = ours.create([a, b[:7]])
    expected = ref.create([a, b], centers=[[0, 4], [2, 1]])
    assert out.shape == expected.shape == (2, 2, ours.n_features)
    assert _rel_err(out, expected) < 1e-6
    assert isinstance(ragged, list) and ragged[1].shape == (7, ours.n_features)
    assert _rel_err(ragged[1], ref.create(b[:7])) < 1e-6


def _spy_on_cell_list(monkeypatch) -> list[int]:
    """The atom counts of every cell-list allocation from now on (which path ran)."""
    import jaxsci.descriptors.acsf as acsf_module

    allocated = []
    allocate = acsf_module.cell_list_allocate
    monkeypatch.setattr(
        acsf_module,
        "cell_list_allocate",
        lambda *a, **k: allocated.append(len(a[0])) or allocate(*a, **k),
    )
    return allocated


def test_large_cluster_cell_list_path_matches_dscribe(monkeypatch):
    import jaxsci.descriptors.acsf as acsf_module

    monkeypatch.setattr(acsf_module, "LARGE_CLUSTER", 8)  # route a small cluster there
    monkeypatch.setattr(acsf_module, "CELL_LIST_MIN_ATOMS", 1)  # and on to the cell list
    allocated = _spy_on_cell_list(monkeypatch)
    ref, ours = _pair(["Pt", "Cu", "O"], False, g3=None)
    atoms = _cluster3()
    with jax.enable_x64(True):
        out = ours.create(atoms)
    assert allocated == [len(atoms)]  # the cell-list path ran (not the dense one)
    assert _rel_err(out, ref.create(atoms)) < 1e-6


def _slab():
    """Pt/Cu fcc(111) slab, 6 layers, 7 A of vacuum each side; pbc (True, True, False)."""
    from ase.build import fcc111

    a = fcc111("Pt", size=(3, 3, 6), vacuum=7.0)
    a.rattle(0.05, seed=4)
    a.numbers[[1, 9, 30]] = 29
    return a


def _wire():
    """Pt wire along x (period 7.84 A), 4 x 4 cubic cells across, in a cell with 10 A of
    vacuum along z (y none); pbc (True, False, False)."""
    a = bulk("Pt", "fcc", a=3.92, cubic=True) * (2, 4, 4)
    a.rattle(0.05, seed=5)
    a.numbers[[2, 40]] = 29
    a.cell[2, 2] += 10.0
    a.pbc = (True, False, False)
    return a


@pytest.mark.parametrize("make", [_slab, _wire], ids=["slab", "wire"])
def test_slab_and_wire_cell_list_path_matches_dense_and_dscribe(make, monkeypatch):
    """Partially periodic cells go through the cell list too (they were always dense,
    O(N^2): 4,800 slab atoms took 8 s and 3.5 GB), with the same features."""
    import jaxsci.descriptors.acsf as acsf_module

    allocated = _spy_on_cell_list(monkeypatch)
    atoms = make()
    ref, ours = _pair(["Pt", "Cu"], True, g3=None)
    with jax.enable_x64(True):
        monkeypatch.setattr(acsf_module, "CELL_LIST_MIN_ATOMS", 1)
        out = ours.create(atoms)
        assert allocated == [len(atoms)]  # the cell-list path ran
        monkeypatch.setattr(acsf_module, "CELL_LIST_MIN_ATOMS", 10**9)
        dense = ours.create(atoms)
        assert allocated == [len(atoms)]  # and now the dense one
        monkeypatch.setattr(acsf_module, "CELL_LIST_MIN_ATOMS", 1)
        zero_rows = atoms.copy()  # ase's way (DScribe refuses a zero-volume cell)
        zero_rows.cell[~np.asarray(atoms.pbc)] = 0.0
        again = ours.create(zero_rows)
    np.testing.assert_allclose(out, dense, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(again, out, rtol=1e-10, atol=1e-10)
    assert _rel_err(out, ref.create(atoms)) < 1e-6


@pytest.mark.parametrize("zeta", [130.0, 200.5])
def test_large_zeta_matches_dscribe_with_finite_gradients(zeta):
    """2^(1-zeta) underflowed to 0 and (1 + lambda cos)^zeta overflowed to inf in float32
    from zeta ~ 128: every G4/G5 feature (every species-pair block) and gradient was NaN."""
    atoms = Atoms("HOH", [[0, 0, 0], [1.0, 0.2, 0], [2.0, 0, 0]])
    g4, g5 = [[0.01, zeta, 1.0]], [[0.02, zeta, 1.0]]
    ref = dscribe.ACSF(r_cut=4.0, g4_params=g4, g5_params=g5, species=["H", "O"])
    ours = ACSF(["H", "O"], 4.0, g4_params=g4, g5_params=g5)
    want = ref.create(atoms)
    got = ours.create(atoms)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    x = jnp.asarray(atoms.get_positions(), jnp.float32)
    species = ours.encode_species(atoms.get_chemical_symbols())
    grad = jax.grad(lambda q: ours.fn(q, species).sum())(x)
    assert np.all(np.isfinite(np.asarray(grad)))
