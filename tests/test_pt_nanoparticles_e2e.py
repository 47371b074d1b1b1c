"""Tiny end-to-end run of experiments/pt_nanoparticles (data -> CVAE -> reconstruct -> relax)."""

import json

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.io import read
from scipy.stats import spearmanr

from experiments.pt_nanoparticles.config import tiny_config
from experiments.pt_nanoparticles.pipeline import train_and_evaluate
from jaxsci.data.pt_clusters import bulk_energy_per_atom
from jaxsci.metrics import check_validity


@pytest.mark.slow
def test_tiny_end_to_end_run_writes_a_complete_run_folder(tmp_path):
    cfg = tiny_config(out_root=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"))
    metrics = train_and_evaluate(cfg)
    run_dir = tmp_path / "runs" / metrics["run_dir"].split("/")[-1]
    for name in (
        "generated.extxyz",
        "reconstructed.extxyz",
        "train.extxyz",
        "metrics.json",
        "config.json",
        "train_metrics.jsonl",
        "training_curves.png",
        "target_vs_obtained.png",
        "latent_space.png",
        "generated_clusters.png",
    ):
        assert (run_dir / name).stat().st_size > 0, name
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    n = cfg.n_targets * cfg.samples_per_target
    assert on_disk["n_generated"] == n
    for key in ("validity", "uniqueness", "novelty", "unique_and_novel"):
        assert 0.0 <= on_disk[key] <= 1.0
    assert on_disk["validity"] >= 0.75
    assert -1.0 <= on_disk["energy_spearman"] <= 1.0
    assert len(on_disk["targets"]) == cfg.n_targets

    generated = read(run_dir / "generated.extxyz", index=":")
    train = read(run_dir / "train.extxyz", index=":")
    assert len(generated) == n and len(train) == on_disk["n_dataset_structures"]
    e_bulk = bulk_energy_per_atom("Pt")
    for atoms in generated[:3]:
        assert {"target_energy", "energy_per_atom"} <= set(atoms.info)
        # the error belongs to the coordinates before relaxation, and says so
        assert "reconstruction_fingerprint_error" in atoms.info
        assert "fingerprint_error" not in atoms.info
        assert cfg.data.min_size <= len(atoms) <= cfg.data.max_size
        # obtained energy checked independently with ase's EMT
        atoms.calc = EMT()
        e = atoms.get_potential_energy() / len(atoms) - e_bulk
        assert abs(e - atoms.info["energy_per_atom"]) < 5e-3
        assert check_validity(atoms).valid == bool(atoms.info["valid"])
    # the scores recomputed from the structures' own records: validity against the
    # independent check above, the rest from their flags and energies (scipy's Spearman)
    info = {k: np.array([a.info[k] for a in generated]) for k in ("valid", "unique", "novel")}
    assert on_disk["validity"] == pytest.approx(info["valid"].mean())
    assert on_disk["uniqueness"] == pytest.approx(info["unique"].mean())
    assert on_disk["novelty"] == pytest.approx(info["novel"].mean())
    assert on_disk["unique_and_novel"] == pytest.approx((info["unique"] & info["novel"]).mean())
    got = np.array([a.info["energy_per_atom"] for a in generated], float)
    want = np.array([a.info["target_energy"] for a in generated], float)
    ok = np.isfinite(got)
    assert on_disk["energy_mae"] == pytest.approx(np.abs(got - want)[ok].mean(), rel=1e-6)
    rho = spearmanr(want[ok], got[ok]).statistic
    if np.isfinite(on_disk["energy_spearman"]) or np.isfinite(rho):
        assert on_disk["energy_spearman"] == pytest.approx(rho, abs=1e-9)
    targets = np.array([a.info["target_energy"] for a in generated])
    lo, hi = (
        min(a.info["energy_per_atom"] for a in train),
        max(a.info["energy_per_atom"] for a in train),
    )
    assert np.all((targets >= lo) & (targets <= hi))
