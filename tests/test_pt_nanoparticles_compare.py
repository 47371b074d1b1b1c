"""experiments/pt_nanoparticles/compare_representations: run folder, progress and CLI checks.

The tiny comparison (``--tiny``: one Pt10, two starts, one round) runs for real, ~25 s at
XLA optimisation level 0, nearly all of it compiling ``reconstruct``'s set and pooled
searches.
"""

import json

import numpy as np
import pytest

from experiments.pt_nanoparticles import compare_representations as cr


def test_tiny_comparison_writes_a_run_folder(tmp_path, capsys):
    out, cache = tmp_path / "runs", tmp_path / "cache"
    rc = cr.main(["--tiny", "--no-progress", "--cache-dir", str(cache), "--out-root", str(out)])
    assert rc == 0
    run_dir = out / capsys.readouterr().out.strip().splitlines()[-1].split("/")[-1]
    saved = json.loads((run_dir / "results.json").read_text())
    names = ["exact_set", "pooled_max_min", "quantiles_4_step"]
    assert list(saved["summary"]) == names
    assert [r["representation"] for r in saved["rows"]] == names
    for r in saved["rows"]:
        assert r["n"] == 10 and np.isfinite(r["fingerprint_error"])
        assert r["rmsd"] >= 0 and r["rmsd_after_relax"] >= 0
    assert saved["config"]["sizes"] == [10] and saved["summary"]["exact_set"]["n"] == 1
    assert (run_dir / "representations.png").stat().st_size > 1000
    check_structures(run_dir, saved["rows"])
    check_numbers(run_dir, saved, cache)
    # a size with too few relaxed clusters is refused once the (cached) data set is read
    args = ["--tiny", "--per-size", "50", "--cache-dir", str(cache), "--out-root", str(out)]
    assert cr.main(args) == 2
    assert "fewer than per_size=50" in capsys.readouterr().err
    assert list(out.iterdir()) == [run_dir]


def check_numbers(run_dir, saved, cache):
    """The RMSDs recomputed against the data set's cluster (before and after relaxation, from
    the written structures), and the summary recomputed from the rows."""
    from ase.io import read

    from experiments.pt_nanoparticles.config import Config
    from experiments.pt_nanoparticles.pipeline import make_descriptor
    from jaxsci.data.pt_clusters import build_pt_clusters
    from jaxsci.metrics import structure_rmsd

    config = cr.tiny_compare_config(cache_dir=str(cache))
    data = build_pt_clusters(
        config.data, cache_dir=cache, descriptor=make_descriptor(Config(data=config.data))
    )
    rec = read(run_dir / "reconstructed.extxyz", index=":")
    relaxed = read(run_dir / "relaxed.extxyz", index=":")
    for a, b, r in zip(rec, relaxed, saved["rows"], strict=True):
        ref = data.structures[r["index"]].positions
        assert r["rmsd"] == pytest.approx(structure_rmsd(a.positions, ref), abs=1e-6)
        assert r["rmsd_after_relax"] == pytest.approx(structure_rmsd(b.positions, ref), abs=1e-6)
    for name, s in saved["summary"].items():
        rows = [r for r in saved["rows"] if r["representation"] == name]
        after = [r["rmsd_after_relax"] for r in rows]
        assert s["n"] == len(rows)
        assert s["median_rmsd"] == pytest.approx(np.median([r["rmsd"] for r in rows]))
        assert s["median_rmsd_after_relax"] == pytest.approx(np.median(after))
        assert s["recovered_lt_0.1A_after_relax"] == pytest.approx(np.mean(np.less(after, 0.1)))


def check_structures(run_dir, rows):
    """``reconstructed.extxyz`` and ``relaxed.extxyz`` read back with ase: one structure
    per row of ``results.json``, in its order, with the row's values in ``info``."""
    from ase.io import read

    rec = read(run_dir / "reconstructed.extxyz", index=":")
    relaxed = read(run_dir / "relaxed.extxyz", index=":")
    assert len(rec) == len(relaxed) == len(rows)
    for a, b, r in zip(rec, relaxed, rows, strict=True):
        for atoms in (a, b):
            assert len(atoms) == atoms.info["n_atoms"] == r["n"]
            assert set(atoms.get_chemical_symbols()) == {"Pt"}
            assert np.isfinite(atoms.positions).all()
            assert atoms.info["representation"] == r["representation"]
            assert atoms.info["index"] == r["index"]
            assert atoms.info["reference_energy_per_atom"] == pytest.approx(
                r["reference_energy_per_atom"]
            )
        assert a.info["rmsd"] == pytest.approx(r["rmsd"])
        assert a.info["fingerprint_error"] == pytest.approx(r["fingerprint_error"])
        assert b.info["rmsd"] == pytest.approx(r["rmsd_after_relax"])
        assert b.info["energy_per_atom"] == pytest.approx(r["energy_per_atom_after_relax"])
        assert b.info["relax_converged"] is r["relax_converged"]
        # EMT energies relative to bulk, as the data set's: positive for a cluster
        assert 0 < r["energy_per_atom_after_relax"] < 5 and np.isfinite(
            r["reference_energy_per_atom"]
        )


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--sizes", "70"], "outside the data set's range 10..60"),
        (["--tiny", "--sizes", "13"], "outside the data set's range 10..12"),
        (["--per-size", "0"], "per_size must be >= 1"),
        (["--n-quantiles", "0"], "n_quantiles must be >= 1"),
        (["--time-limit", "nan"], "time_limit must be > 0"),
        (["--methods", "step", "step"], "methods must be distinct"),
    ],
)
def test_bad_flags_exit_before_any_work(tmp_path, capsys, flags, match):
    with pytest.raises(SystemExit) as exc:
        cr.main([*flags, "--out-root", str(tmp_path / "runs"), "--cache-dir", str(tmp_path)])
    assert exc.value.code == 2 and match in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
