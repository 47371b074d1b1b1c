"""Smoke test of experiments/cgan_digits with a tiny config."""

import dataclasses
import json

import numpy as np

from experiments.cgan_digits.config import tiny
from experiments.cgan_digits.run import main
from experiments.cgan_digits.train import train_and_evaluate


def test_tiny_run_writes_the_run_folder(tmp_path):
    config = dataclasses.replace(tiny(), models=("perlabel_wcgan", "baseline_dcgan"))
    run_dir, metrics = train_and_evaluate(config, tmp_path / "run", progress=False)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert set(saved["models"]) == {"perlabel_wcgan", "baseline_dcgan"}
    assert "definition" in saved["equal_compute"]
    ec = saved["equal_compute"]
    assert (
        ec["perlabel_wcgan"]["generator_examples_total"]
        == ec["baseline_dcgan"]["generator_examples_total"]
    )
    for name in ("perlabel_wcgan", "baseline_dcgan"):
        d = np.load(run_dir / f"samples_{name}.npz")
        assert d["images"].shape == (10 * config.samples_per_label, 8, 8)
        assert 0.0 <= d["images"].min() and d["images"].max() <= 16.0
        assert np.bincount(d["labels"]).tolist() == [config.samples_per_label] * 10
        assert (run_dir / f"samples_{name}.png").stat().st_size > 0
        assert (run_dir / f"losses_{name}.png").stat().st_size > 0
        m = saved["models"][name]
        assert np.isfinite(m["fid"]) and 1.0 <= m["inception_score"] <= 10.0
        assert len(m["per_label"]) == 10
    assert (
        saved["reference_fid"]["real_heldout_vs_train"]
        < saved["reference_fid"]["uniform_noise_vs_train"]
    )


def test_main_prints_run_folder_last(tmp_path, capsys):
    main(
        [
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--samples-per-label",
            "3",
            "--models",
            "baseline_dcgan",
            "--out-root",
            str(tmp_path),
            "--no-progress",
        ]
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(str(tmp_path)) and "cgan_digits-" in last
