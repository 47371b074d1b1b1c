"""Tests for the Pt nanoparticle data set builder (jaxsci.data.pt_clusters)."""

import numpy as np
import pytest

from jaxsci.data.pt_clusters import (
    SHAPES,
    PtClusterConfig,
    build_pt_clusters,
    bulk_energy_per_atom,
    lattice_constant,
    nearest_neighbour_distance,
    relax_many,
    seed_cluster,
)
from jaxsci.metrics.generation import check_validity

TINY = PtClusterConfig(
    min_size=10,
    max_size=12,
    shapes=("icosahedron", "random"),
    md_temperatures=(500.0,),
    md_snapshots=2,
    md_interval=10,
    seed=3,
)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_size": -5}, "min_size"),
        ({"min_size": 20, "max_size": 10}, "max_size"),
        ({"element": "Xx"}, "unknown element"),
        ({"element": "Fe"}, "unknown element"),
        ({"shapes": ()}, "empty data set"),
        ({"shapes": ("cube",)}, "unknown shape"),
        ({"md_temperatures": (-1.0,)}, "md_temperatures"),
        ({"min_size": 10.5, "max_size": 12}, "min_size must be an int"),  # passed, then TypeError
        ({"size_step": 1.5}, "size_step must be an int"),
        ({"md_interval": True}, "md_interval must be an int"),
    ],
)
def test_bad_config_fails_before_any_work(tmp_path, kwargs, match):
    cfg = PtClusterConfig(**kwargs)
    with pytest.raises(ValueError, match=match):
        build_pt_clusters(cfg, cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()


def test_lattice_constant_refuses_unknown_and_non_fcc_elements():
    """An unknown symbol raised a bare KeyError; bcc Fe returned its bcc a (2.87 A) as an
    fcc lattice constant, so its fcc nearest-neighbour distance came out 2.03 A."""
    assert lattice_constant("Pt") == pytest.approx(3.92)
    assert nearest_neighbour_distance("Cu") == pytest.approx(3.61 / np.sqrt(2.0))
    for bad in ("Xx", "pt", "", None, 78):
        with pytest.raises(ValueError, match="unknown chemical element"):
            lattice_constant(bad)
    for element, kind in (("Fe", "bcc"), ("Si", "diamond"), ("H", "diatom")):
        with pytest.raises(ValueError, match=f"no fcc reference state.*{kind}"):
            lattice_constant(element)
    with pytest.raises(ValueError, match="no fcc reference state"):
        nearest_neighbour_distance("Fe")


def test_bulk_reference_energy_is_emt_zero():
    # EMT is fitted so that bulk fcc at equilibrium has (nearly) zero energy.
    assert abs(bulk_energy_per_atom("Pt", prefer_asap=False)) < 1e-3


@pytest.mark.parametrize("shape", SHAPES)
def test_seed_shapes_have_requested_size_and_sane_geometry(shape):
    for n in (13, 23):
        atoms = seed_cluster(shape, n, seed=1)
        assert len(atoms) == n
        v = check_validity(atoms)
        assert v.n_components == 1 and v.min_distance > 0.75 * 2.77, (shape, n, v)


def test_build_is_deterministic_cached_and_physical(tmp_path):
    ds = build_pt_clusters(TINY, cache_dir=tmp_path, n_workers=1, progress=False)
    n_tasks = 3 * 2
    per_task = 1 + 1 * 2
    assert len(ds) == n_tasks * per_task
    assert sorted(set(ds.sizes.tolist())) == [10, 11, 12]
    e = ds.energies
    assert np.all(np.isfinite(e))
    # small Pt clusters: 0.6-1.0 eV/atom above bulk with EMT
    assert np.all((e > 0.5) & (e < 1.2)), e
    assert ds.relaxed.sum() == n_tasks
    for a in ds.structures:
        assert check_validity(a).valid
    # MD snapshots sit above their own relaxed minimum
    for task in range(n_tasks):
        idx = [i for i, a in enumerate(ds.structures) if a.info["task"] == task]
        relaxed = [i for i in idx if ds.structures[i].info["kind"] == "relaxed"]
        md = [i for i in idx if ds.structures[i].info["kind"] == "md"]
        assert len(relaxed) == 1 and len(md) == 2
        assert e[md].min() > e[relaxed[0]]

    # the cache folder holds extxyz + meta, and a second call reads it back identically
    files = sorted(p.name for p in ds.cache_dir.iterdir())
    assert files == ["meta.json", "structures.extxyz"]
    mtime = (ds.cache_dir / "structures.extxyz").stat().st_mtime_ns
    again = build_pt_clusters(TINY, cache_dir=tmp_path, n_workers=1, progress=False)
    assert (ds.cache_dir / "structures.extxyz").stat().st_mtime_ns == mtime
    np.testing.assert_allclose(again.energies, ds.energies, rtol=0, atol=1e-9)
    for a, b in zip(again.structures, ds.structures, strict=True):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-6)

    # same seed, built afresh with two worker processes: identical
    fresh = build_pt_clusters(TINY, n_workers=2, progress=False, use_cache=False)
    np.testing.assert_array_equal(fresh.energies, ds.energies)
    # another seed gives other structures
    other = build_pt_clusters(
        PtClusterConfig(**{**TINY.__dict__, "seed": 4}),
        n_workers=1,
        progress=False,
        use_cache=False,
    )
    assert not np.allclose(other.energies, ds.energies)


def test_relax_many_lowers_energy_and_keeps_nan_structures():
    a = seed_cluster("random", 12, seed=0)
    bad = a.copy()
    bad.positions[0] = np.nan
    relaxed, energies, converged = relax_many([a, bad], n_workers=1, progress=False)
    assert converged[0] and not converged[1]
    assert np.isfinite(energies[0]) and np.isnan(energies[1])
    assert check_validity(relaxed[0]).valid
    assert 0.5 < energies[0] < 1.0
    gold = a.copy()
    gold.symbols[3] = "Au"
    with pytest.raises(ValueError, match=r"structure 1 holds \['Au'\]"):  # was relaxed as Pt
        relax_many([a, gold], n_workers=1, progress=False)
    with pytest.raises(ValueError, match="n_workers"):
        relax_many([a], n_workers=0, progress=False)
