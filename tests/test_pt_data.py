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


# ---------------------------------------------------------------- probe s27: MD settings, cache

NAN, INF = float("nan"), float("inf")
# 4-atom fcc balls: a build is two FIRE relaxations (with md_snapshots=0), well under a second
SMALL = PtClusterConfig(
    min_size=4,
    max_size=4,
    shapes=("fcc_ball", "random"),
    md_snapshots=0,
    max_relax_steps=200,
)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"md_friction": -1.0}, "md_friction must be a finite number >= 0"),
        ({"md_friction": NAN}, "md_friction"),
        ({"md_temperatures": (NAN,)}, "md_temperatures"),
        ({"md_temperatures": (300.0, INF)}, "md_temperatures"),
        ({"md_temperatures": 300.0}, "md_temperatures must be a tuple"),
        ({"md_timestep": INF}, "md_timestep must be a finite number > 0"),
        ({"md_timestep": NAN}, "md_timestep"),
        ({"fmax": NAN}, "fmax must be a finite number > 0"),
        ({"rattle": NAN}, "rattle must be a finite number >= 0"),
        ({"rattle": INF}, "rattle"),
        ({"rattle": "x"}, "rattle"),
        ({"seed": -1}, "seed must be an int >= 0"),
        ({"seed": 1.5}, "seed must be an int >= 0"),
        ({"seed": "a"}, "seed must be an int >= 0"),
        ({"shapes": "random"}, "shapes must be a tuple"),
    ],
)
def test_validate_refuses_non_finite_and_non_physical_md_settings(kwargs, match):
    """All of these passed validate(); md_friction=-1 / nan, a nan temperature or an inf
    timestep then cached MD snapshots with NaN positions and a finite energy."""
    with pytest.raises(ValueError, match=match):
        PtClusterConfig(**kwargs).validate()


def test_numpy_scalars_in_the_config_become_python_numbers():
    """np.int64 sizes and np.float32 temperatures passed validate() but crashed cache_key
    ("Object of type int64 is not JSON serializable")."""
    cfg = PtClusterConfig(
        min_size=np.int64(4),
        max_size=np.int64(6),
        md_temperatures=(np.float32(300.0), np.float64(800.0)),
        shapes=["fcc_ball", np.str_("random")],
        seed=np.int32(2),
    )
    cfg.validate()
    plain = PtClusterConfig(
        min_size=4,
        max_size=6,
        md_temperatures=(300.0, 800.0),
        shapes=("fcc_ball", "random"),
        seed=2,
    )
    assert cfg.cache_key("ase.EMT") == plain.cache_key("ase.EMT")
    assert cfg == plain and type(cfg.min_size) is int and type(cfg.md_temperatures[0]) is float
    assert PtClusterConfig(md_temperatures=np.array([300.0])).md_temperatures == (300.0,)
    hash(cfg)  # still a frozen, hashable config


@pytest.mark.filterwarnings("ignore:invalid value encountered in sqrt")
def test_a_blown_up_md_run_is_refused_and_not_cached(tmp_path, monkeypatch):
    """With md_friction=-1 the MD snapshot had all-NaN positions, a finite energy 5.85 eV/atom
    and converged=True; it was cached and served from the cache on later calls."""
    from jaxsci.data import pt_clusters

    bad = PtClusterConfig(
        min_size=4,
        max_size=4,
        shapes=("fcc_ball",),
        md_temperatures=(300.0,),
        md_snapshots=1,
        md_interval=5,
        max_relax_steps=200,
        md_friction=-1.0,
    )
    with pytest.raises(RuntimeError, match=r"MD snapshot 0 at 300.0 K.*non-finite"):
        pt_clusters._run_task((bad, 0, 4, "fcc_ball", 0.0))
    # the whole build, with validate() out of the way: it raises and writes nothing
    monkeypatch.setattr(PtClusterConfig, "validate", lambda self: None)
    with pytest.raises(RuntimeError, match="non-finite"):
        build_pt_clusters(bad, cache_dir=tmp_path, n_workers=1, progress=False)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def _small_folder(tmp_path):
    from jaxsci.data.pt_clusters import emt_calculator

    return tmp_path / SMALL.cache_key(emt_calculator()[1])


@pytest.mark.parametrize(
    "damage", ["meta_half", "meta_empty", "structures_half", "no_structures", "no_meta"]
)
def test_an_incomplete_cache_is_rebuilt_with_a_warning(tmp_path, damage):
    """A half-written meta.json gave a JSONDecodeError on every later call; a truncated
    structures.extxyz loaded silently with 1 structure where meta.json says 2."""
    ds = build_pt_clusters(SMALL, cache_dir=tmp_path, n_workers=1, progress=False)
    assert len(ds) == 2
    meta, structs = ds.cache_dir / "meta.json", ds.cache_dir / "structures.extxyz"
    if damage == "meta_half":
        meta.write_text(meta.read_text()[: len(meta.read_text()) // 2])
    elif damage == "meta_empty":
        meta.write_text("")
    elif damage == "structures_half":
        structs.write_text(structs.read_text()[: len(structs.read_text()) // 2])
    elif damage == "no_meta":  # a crash between the two writes (was rebuilt silently)
        meta.unlink()
    else:
        structs.unlink()
    with pytest.warns(RuntimeWarning, match="incomplete or corrupt.*rebuilding"):
        again = build_pt_clusters(SMALL, cache_dir=tmp_path, n_workers=1, progress=False)
    assert len(again) == 2
    np.testing.assert_array_equal(again.energies, ds.energies)
    # the cache was repaired: the next call loads it without a warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        third = build_pt_clusters(SMALL, cache_dir=tmp_path, n_workers=1, progress=False)
    assert len(third) == 2


def test_cache_files_are_written_atomically_under_unique_tmp_names(tmp_path, monkeypatch):
    """meta.json (the completion marker) was written in place; the structures went through a
    fixed structures.extxyz.tmp that a concurrent builder of the same config shares."""
    import os

    folder = _small_folder(tmp_path)
    folder.mkdir(parents=True)
    other = folder / "structures.extxyz.tmp"  # another builder's file, mid-write
    other.write_text("another builder's half-written file")
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(
        os, "replace", lambda src, dst: (replaced.append((src, dst)), real_replace(src, dst))[1]
    )
    build_pt_clusters(SMALL, cache_dir=tmp_path, n_workers=1, progress=False)
    assert other.read_text() == "another builder's half-written file"
    targets = {os.path.basename(dst): os.fspath(src) for src, dst in replaced}
    assert set(targets) == {"structures.extxyz", "meta.json"}
    for name, src in targets.items():
        assert os.path.dirname(src) == os.fspath(folder) and os.path.basename(src) != name
        assert os.path.basename(src) != "structures.extxyz.tmp"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["meta.json", "structures.extxyz", "structures.extxyz.tmp"]
    )


def test_fresh_and_cached_results_are_identical(tmp_path):
    """Cached positions differed from fresh ones by up to 5e-9 A (extxyz keeps 8 decimals)
    and the cached task came back as numpy.int64."""
    fresh = build_pt_clusters(SMALL, cache_dir=tmp_path, n_workers=1, progress=False)
    cached = build_pt_clusters(SMALL, cache_dir=tmp_path, n_workers=1, progress=False)
    memory = build_pt_clusters(SMALL, n_workers=1, progress=False, use_cache=False)
    for a, b, c in zip(fresh.structures, cached.structures, memory.structures, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.positions, c.positions)
        assert a.info == b.info == c.info
        assert [type(a.info[k]) for k in ("task", "temperature_K", "converged", "kind")] == [
            int,
            float,
            bool,
            str,
        ]
        assert [type(b.info[k]) for k in ("task", "energy_per_atom")] == [int, float]
        # 8 decimals, as the extxyz cache keeps them
        np.testing.assert_array_equal(a.positions, np.round(a.positions, 8))


@pytest.mark.parametrize("n", [0, -3, 5.0, True, "5"])
def test_seed_cluster_refuses_a_non_integer_or_empty_size(n):
    """n=0 gave ase's 'Array "positions" has wrong length', n=5.0 a TypeError."""
    with pytest.raises(ValueError, match="seed_cluster: n must be an int >= 1"):
        seed_cluster("random", n)
    with pytest.raises(ValueError, match="seed_cluster: n must be an int >= 1"):
        seed_cluster("fcc_ball", n)
    assert len(seed_cluster("fcc_ball", np.int64(5))) == 5


def test_relax_many_and_build_refuse_a_fractional_worker_count(tmp_path):
    """relax_many(n_workers=1.5) ran."""
    a = seed_cluster("fcc_ball", 4)
    for bad in (1.5, True, "2"):
        with pytest.raises(ValueError, match="n_workers must be an int >= 1"):
            relax_many([a], n_workers=bad, progress=False, bulk_energy=0.0)
        with pytest.raises(ValueError, match="n_workers must be an int >= 1"):
            build_pt_clusters(SMALL, cache_dir=tmp_path, n_workers=bad, progress=False)
    assert not any(tmp_path.iterdir())


def test_an_unreadable_fingerprint_file_is_recomputed(tmp_path):
    from jaxsci.descriptors import ACSF

    acsf = ACSF(["Pt"], 5.0, g2_params=[[0.5, 0.0]])
    ds = build_pt_clusters(SMALL, cache_dir=tmp_path, descriptor=acsf, n_workers=1, progress=False)
    (npz,) = ds.cache_dir.glob("fingerprints-*.npz")
    npz.write_bytes(npz.read_bytes()[:40])  # cut short: np.load raised before
    again = build_pt_clusters(
        SMALL, cache_dir=tmp_path, descriptor=acsf, n_workers=1, progress=False
    )
    for a, b in zip(again.fingerprints, ds.fingerprints, strict=True):
        np.testing.assert_array_equal(a, b)
    with np.load(npz) as z:  # and rewritten whole
        assert z["features"].shape[0] == sum(ds.sizes)


# ---------------------------------------------------------------- s28: unwritable caches


def test_an_unwritable_cache_warns_and_returns_the_data_uncached(tmp_path):
    """A cache under a file (the folder cannot be made) raised after the whole build."""
    from jaxsci.descriptors import ACSF

    blocker = tmp_path / "afile"
    blocker.write_text("x")
    acsf = ACSF(["Pt"], 5.0, g2_params=[[0.5, 0.0]])
    with pytest.warns(RuntimeWarning, match="could not write the cache file.*not cached"):
        ds = build_pt_clusters(
            SMALL, cache_dir=blocker / "cache", descriptor=acsf, n_workers=1, progress=False
        )
    assert ds.cache_dir is None and blocker.read_text() == "x"
    memory = build_pt_clusters(SMALL, descriptor=acsf, n_workers=1, progress=False, use_cache=False)
    np.testing.assert_array_equal(ds.energies, memory.energies)
    for a, b in zip(ds.fingerprints, memory.fingerprints, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_complete_read_only_cache_is_read_and_new_fingerprints_still_returned(
    tmp_path, read_only
):
    """A shared read-only cache (e.g. a project folder on a cluster) must be usable."""
    import warnings

    from jaxsci.data import is_cached
    from jaxsci.descriptors import ACSF

    acsf = ACSF(["Pt"], 5.0, g2_params=[[0.5, 0.0]])
    assert not is_cached(SMALL, tmp_path)
    ds = build_pt_clusters(SMALL, cache_dir=tmp_path, descriptor=acsf, n_workers=1, progress=False)
    assert is_cached(SMALL, tmp_path)
    assert not is_cached(PtClusterConfig(**{**SMALL.__dict__, "seed": 9}), tmp_path)
    listing = sorted(p.name for p in ds.cache_dir.iterdir())
    read_only(ds.cache_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read only: nothing to write, nothing to warn about
        again = build_pt_clusters(
            SMALL, cache_dir=tmp_path, descriptor=acsf, n_workers=1, progress=False
        )
    np.testing.assert_array_equal(again.energies, ds.energies)
    for a, b in zip(again.fingerprints, ds.fingerprints, strict=True):
        np.testing.assert_array_equal(a, b)
    other = ACSF(["Pt"], 5.0, g2_params=[[1.0, 0.0]])  # its fingerprints are not cached
    with pytest.warns(RuntimeWarning, match="could not write the cache file.*fingerprints"):
        third = build_pt_clusters(
            SMALL, cache_dir=tmp_path, descriptor=other, n_workers=1, progress=False
        )
    for a, b in zip(third.fingerprints, other.create(ds.structures), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert sorted(p.name for p in ds.cache_dir.iterdir()) == listing  # nothing left behind


def test_cache_keys_tell_calculators_and_descriptors_apart():
    """A cache shared by two calculators, or fingerprints by two descriptors that differ in
    one setting, would hand one the other's data."""
    from jaxsci.data.pt_clusters import _descriptor_key
    from jaxsci.descriptors import ACSF

    cfg = PtClusterConfig()
    assert cfg.cache_key("asap3.EMT") != cfg.cache_key("ase.EMT")
    base = dict(g2_params=[[0.1, 0.0]], g4_params=[[0.01, 1.0, 1.0]])
    variants = [
        ACSF(["Pt"], 6.0, **base),
        ACSF(["Pt"], 5.0, **base),
        ACSF(["Pt"], 6.0, g2_params=[[0.2, 0.0]], g4_params=base["g4_params"]),
        ACSF(["Pt"], 6.0, g2_params=base["g2_params"], g4_params=[[0.01, 4.0, 1.0]]),
        ACSF(["Pt"], 6.0, **base, g3_params=[1.0]),
        ACSF(["Pt"], 6.0, **base, g5_params=[[0.01, 1.0, 1.0]]),
        ACSF(["Pt", "Au"], 6.0, **base),
    ]
    keys = [_descriptor_key(d) for d in variants]
    assert len(set(keys)) == len(keys)
    assert _descriptor_key(ACSF(["Pt"], 6.0, **base)) == keys[0]  # and equal ones agree
