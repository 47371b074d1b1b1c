"""Smoke test of experiments/data_parallel with the tiny configuration."""

import dataclasses
import json

import numpy as np
import pytest

from experiments.data_parallel import run
from experiments.data_parallel.config import tiny
from experiments.data_parallel.train import batch_indices, train_and_evaluate
from jaxsci.parallel import ProcessInfo


def test_tiny_run_trains_and_reports():
    # the last step is evaluated too, though not a multiple of eval_every
    config = dataclasses.replace(tiny(), steps=30, eval_every=20, devices=1)
    out = train_and_evaluate(config, info=ProcessInfo(0, 1, 1), progress=False)
    losses = np.array(out["losses"])
    assert losses.shape == (30,) and np.isfinite(losses).all()
    assert losses[-5:].mean() < losses[:5].mean()
    assert [e["step"] for e in out["evals"]] == [20, 30]
    # the reported accuracy is the last evaluation's, and training lifted it above chance
    # (digits: 10 classes; measured 0.15 at step 15, 0.42 at step 30)
    assert out["final_test_accuracy"] == out["evals"][-1]["test_accuracy"]
    assert out["evals"][-1]["test_accuracy"] > max(0.2, out["evals"][0]["test_accuracy"])


def test_batch_order_is_a_permutation_per_epoch():
    n, b = 20, 5
    epoch0 = np.concatenate([batch_indices(s, n, b, seed=3) for s in range(4)])
    assert sorted(epoch0) == list(range(n))
    again = np.concatenate([batch_indices(s, n, b, seed=3) for s in range(4)])
    np.testing.assert_array_equal(epoch0, again)
    assert not np.array_equal(batch_indices(4, n, b, seed=3), batch_indices(0, n, b, seed=3))
    # the seed sets the order
    assert not np.array_equal(batch_indices(0, 100, 10, seed=0), batch_indices(0, 100, 10, seed=5))


def test_cli_one_layout_reports_and_rejects_bad_steps(tmp_path, capsys):
    out = tmp_path / "curve.json"
    run.main(["--tiny", "--steps", "3", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "1 process(es): 3 steps" in printed and str(out) in printed
    assert len(json.loads(out.read_text())["losses"]) == 3
    root, curve = ["--root", str(tmp_path / "r")], str(tmp_path / "c.json")
    bad = [
        (["--all", "--steps", "0", *root], "--steps must be >= 1"),
        (["--all", "--steps", "-1", *root], "--steps must be >= 1"),
        (["--all", "--out", curve, *root], "--out writes one layout's curve"),  # was ignored
        (["--out", curve, *root], "--out-root is the parent of --all's run folder"),  # was ignored
        (["--out", str(tmp_path / "none" / "c.json")], "its folder does not exist"),
    ]
    for flags, match in bad:
        with pytest.raises(SystemExit) as exc:
            run.main(["--tiny", *flags])
        assert exc.value.code == 2 and match in capsys.readouterr().err
    # each failed before any run folder, curve or training
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.json", "curve.mllog"]


def test_a_layout_curve_is_strict_json_and_reads_back_with_nan(tmp_path, monkeypatch):
    """s28 review: the layout curve went through json.dumps (NaN written as NaN, not JSON);
    now null on disk, NaN again when --all reads it back."""
    from experiments.data_parallel import train as dp_train

    real = dp_train.train_and_evaluate

    def diverging(*args, **kwargs):
        result = real(*args, **kwargs)
        result["losses"][-1] = float("nan")  # a run that diverged at its last step
        return result

    monkeypatch.setattr(dp_train, "train_and_evaluate", diverging)
    out = tmp_path / "c.json"
    run.main(["--tiny", "--steps", "2", "--out", str(out), "--no-progress"])

    def refuse(name):
        raise AssertionError(f"non-JSON constant {name}")

    data = json.loads(out.read_text(), parse_constant=refuse)
    assert data["losses"][-1] is None
    back = run._null_as_nan(data)
    assert np.isnan(back["losses"][-1]) and back["losses"][0] == data["losses"][0]
