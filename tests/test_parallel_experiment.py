"""Smoke test of experiments/data_parallel with the tiny configuration."""

import dataclasses

import numpy as np

from experiments.data_parallel.config import tiny
from experiments.data_parallel.train import batch_indices, train_and_evaluate
from jaxsci.parallel import ProcessInfo


def test_tiny_run_trains_and_reports():
    config = dataclasses.replace(tiny(), steps=30, eval_every=15, devices=1)
    out = train_and_evaluate(config, info=ProcessInfo(0, 1, 1), progress=False)
    losses = np.array(out["losses"])
    assert losses.shape == (30,) and np.isfinite(losses).all()
    assert losses[-5:].mean() < losses[:5].mean()
    assert [e["step"] for e in out["evals"]] == [15, 30]
    assert 0.0 <= out["final_test_accuracy"] <= 1.0


def test_batch_order_is_a_permutation_per_epoch():
    n, b = 20, 5
    epoch0 = np.concatenate([batch_indices(s, n, b, seed=3) for s in range(4)])
    assert sorted(epoch0) == list(range(n))
    again = np.concatenate([batch_indices(s, n, b, seed=3) for s in range(4)])
    np.testing.assert_array_equal(epoch0, again)
    assert not np.array_equal(batch_indices(4, n, b, seed=3), batch_indices(0, n, b, seed=3))
