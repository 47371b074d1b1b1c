"""Smoke tests of experiments/data_filtering (one tiny run, shared by the tests)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.data_filtering import run as run_module
from experiments.data_filtering.config import Config, tiny_config
from experiments.data_filtering.run import (
    REFERENCE,
    format_table,
    method_labels,
    train_and_evaluate,
)
from experiments.data_filtering.train import TrainState, train_run

STREAMS: list[np.ndarray] = []  # the index sets of tiny_run's training streams, in order


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("filtering") / "run"
    config = tiny_config()
    with pytest.MonkeyPatch.context() as mp:  # record the examples each run is fed from
        real = run_module.batch_stream

        def recorded(indices, *args, **kwargs):
            STREAMS.append(np.asarray(indices).copy())
            return real(indices, *args, **kwargs)

        mp.setattr(run_module, "batch_stream", recorded)
        results = train_and_evaluate(config, folder)
    return config, results, folder


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
    # the summary recomputed from the runs: mean accuracy, paired difference to full
    full = res["runs"]["full"]
    for label, per_seed in res["runs"].items():
        acc = [r["final_test_accuracy"] for r in per_seed.values()]
        diff = [
            r["final_test_accuracy"] - full[k]["final_test_accuracy"] for k, r in per_seed.items()
        ]
        assert res["summary"][label]["mean"] == pytest.approx(np.mean(acc))
        assert res["summary"][label]["diff_vs_full_mean"] == pytest.approx(np.mean(diff))
    # each pruned run was fed from its own kept examples only (seed by seed, labels in order)
    streams = iter(STREAMS)
    for seed in config.seeds:
        for label in labels:
            fed = next(streams)
            assert len(fed) == res["runs"][label][str(seed)]["n_train_used"]
            assert len(np.unique(fed)) == len(fed) and fed.min() >= 0
            assert (len(fed) == res["n_train"]) is (label == "full")
        if REFERENCE in res["runs"]:  # the small-batch reference: every example
            assert len(next(streams)) == res["n_train"]
    assert next(streams, None) is None
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
        {"base_batch": 128},  # > batch_size 64: the "small-batch" reference would be larger
        {"seeds": (-1,)},
        {"seeds": (0.5,)},
        {"seeds": (0, True)},
        {"hidden": (16.5,)},
        {"hidden": (True,)},
        {"hidden": (0,)},
    ],
)
def test_bad_config_raises_before_writing(tmp_path, change):
    config = dataclasses.replace(tiny_config(), **change)
    with pytest.raises(ValueError):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    Config().validate()  # the default is valid


@pytest.mark.parametrize(
    "change, match",
    [
        # these passed validation: config.json was written, then NumPy failed
        ({"seeds": (-1,)}, "seeds"),
        ({"seeds": (0, 0.5)}, "seeds"),
        ({"seeds": (False,)}, "seeds"),
        ({"hidden": (16.5,)}, "hidden"),
        ({"hidden": (16, True)}, "hidden"),
        # trained twice under one label, the second run overwrote the first
        ({"drop_fractions": (0.2, 0.2)}, "distinct"),
        ({"drop_fractions": (0.1, 0.1000001)}, "distinct"),
    ],
)
def test_seeds_and_hidden_must_be_ints(change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(tiny_config(), **change).validate()
    dataclasses.replace(tiny_config(), seeds=(0, np.int64(3)), hidden=(np.int64(8),)).validate()


def test_reference_batch_must_not_exceed_the_batch():
    # base_batch > eval_every * batch_size made the reference run's evaluation interval 0:
    # a crash after the first seed's training, with a partial run folder
    with pytest.raises(ValueError, match=r"base_batch \(256\) must be <= batch_size \(64\)"):
        dataclasses.replace(tiny_config(), base_batch=256).validate()
    dataclasses.replace(tiny_config(), base_batch=64).validate()  # equal is fine
    # without the reference run base_batch only scales the learning rate
    dataclasses.replace(tiny_config(), base_batch=256, reference_small_batch=False).validate()


def test_train_run_executes_every_step_of_the_stream_once():
    """A fake trainer whose scanned step logs each batch it executes (a host callback):
    the compile warm-up must not run any segment."""
    executed = []

    def step(count, idx):
        jax.debug.callback(lambda i: executed.append(int(i)), idx[0], ordered=True)
        return count + 1, jnp.float32(1.0)

    @jax.jit
    def segment(state, idx):
        count, losses = jax.lax.scan(step, state.params, idx)
        return TrainState(count, state.opt_state), losses.mean()

    def init(key):
        return TrainState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    accuracy = jax.jit(lambda count: count.astype(jnp.float32))  # "accuracy" = steps done
    stream = np.arange(40 * 2).reshape(40, 2)  # 40 steps of batch 2; segments 15, 15, 10
    run = train_run((init, segment, accuracy, None), jax.random.key(0), stream, 15)
    assert executed == stream[:, 0].tolist()  # each step once, in order
    assert run["steps"] == [0, 15, 30, 40] and run["test_accuracy"] == [0.0, 15.0, 30.0, 40.0]
    assert run["train_loss"] == [1.0, 1.0, 1.0] and run["final_test_accuracy"] == 40.0
