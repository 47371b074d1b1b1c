"""Smoke tests of experiments/data_filtering (one tiny run, shared by the tests)."""

import dataclasses
import json

import numpy as np
import pytest

from experiments.data_filtering.config import Config, tiny_config
from experiments.data_filtering.run import (
    REFERENCE,
    format_table,
    method_labels,
    train_and_evaluate,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("filtering") / "run"
    config = tiny_config()
    return config, train_and_evaluate(config, folder), folder


def test_run_folder_has_every_file(tiny_run):
    _, results, folder = tiny_run
    assert results["run_dir"] == str(folder)
    for name in ("config.json", "results.json", "test_accuracy.png"):
        assert (folder / name).stat().st_size > 0


def test_results_are_finite_and_shaped(tiny_run):
    config, _, folder = tiny_run
    res = json.loads((folder / "results.json").read_text())
    labels = method_labels(config)
    assert set(res["runs"]) == {*labels, REFERENCE}
    assert len(labels) == 1 + len(config.drop_fractions) * (len(config.scores) + 1)
    n_kept = res["kept"]["0.2"]
    assert n_kept == round(0.8 * res["n_train"])
    n_evals = -(-config.steps // config.eval_every) + 1
    for label in labels:
        per_seed = res["runs"][label]
        assert set(per_seed) == {str(s) for s in config.seeds}
        for run in per_seed.values():
            acc = np.array(run["test_accuracy"])
            assert acc.shape == (n_evals,) and run["steps"][-1] == config.steps
            assert np.all((acc >= 0) & (acc <= 1))
            assert run["final_test_accuracy"] == acc[-1]
            assert np.all(np.isfinite(run["train_loss"])) and run["time_s"] > 0
            assert run["n_train_used"] == (res["n_train"] if label == "full" else n_kept)
    for s in res["summary"].values():
        assert all(np.isfinite(v) for v in s.values())
    assert res["summary"]["full"]["diff_vs_full_mean"] == 0.0
    assert "final test acc" in format_table(res["summary"], len(config.seeds))


@pytest.mark.parametrize(
    "change",
    [
        {"seeds": ()},
        {"batch_size": 0},
        {"drop_fractions": (0.0,)},
        {"drop_fractions": (1.0,)},
        {"scores": ("loss",)},
        {"base_lr": float("nan")},
        {"momentum": 1.0},
        {"hidden": ()},
        {"run_name": "a/b"},
    ],
)
def test_bad_config_raises_before_writing(tmp_path, change):
    config = dataclasses.replace(tiny_config(), **change)
    with pytest.raises(ValueError):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    Config().validate()  # the default is valid
