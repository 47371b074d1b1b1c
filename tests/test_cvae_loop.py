"""Tests for the generic fit loop and run-folder helpers (jaxsci.train.loop / run_dir)."""

import json

import numpy as np
import pytest

from jaxsci.train.loop import every, fit, read_jsonl
from jaxsci.train.run_dir import make_run_dir, plot_curves, plot_scatter, write_metrics


def _epoch_fn(state, epoch):
    # deterministic, depends on (state, epoch) only
    new = state * 0.5 + epoch
    return new, {"loss": new, "half": np.float32(0.5)}


def test_fit_runs_logs_and_resumes_exactly(tmp_path):
    log = tmp_path / "m.jsonl"
    full = fit(1.0, _epoch_fn, num_epochs=6, metrics_path=log, progress=False)
    assert full.epochs_done == 6 and not full.stopped_early
    assert [r["epoch"] for r in read_jsonl(log)] == list(range(6))

    # The "checkpoint" holds the state after epoch 3 (4 epochs done); the run that crashed
    # had logged epochs 0-5 (the full run just rewrote the log so): 4 and 5 are dropped.
    part = fit(1.0, _epoch_fn, num_epochs=4, progress=False)
    assert [r["epoch"] for r in read_jsonl(log)] == list(range(6))
    resumed = fit(
        part.state, _epoch_fn, num_epochs=6, start_epoch=4, metrics_path=log, progress=False
    )
    assert resumed.state == full.state
    records = read_jsonl(log)
    assert [r["epoch"] for r in records] == list(range(6))
    assert [r["loss"] for r in records] == [r["loss"] for r in full.history]


def test_resume_after_a_crash_mid_record(tmp_path):
    """A run killed while writing a record leaves half a line: resuming drops it (with a
    warning) and keeps the finished records, NaN metrics included; a bad line before the
    last is an error naming it."""
    log = tmp_path / "m.jsonl"
    nan_at_1 = lambda s, e: (s + 1, {"loss": float("nan") if e == 1 else float(e)})
    full = fit(0, nan_at_1, num_epochs=3, metrics_path=log, progress=False)
    log.write_text(log.read_text() + '{"epoch": 3, "lo')
    with pytest.warns(UserWarning, match="unfinished last line 4"):
        resumed = fit(
            full.state, nan_at_1, num_epochs=5, start_epoch=3, metrics_path=log, progress=False
        )
    assert [r["epoch"] for r in read_jsonl(log)] == [0, 1, 2, 3, 4]
    assert np.isnan(resumed.history[1]["loss"]) and resumed.history[4]["loss"] == 4.0
    log.write_text('{"epoch": 0}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(ValueError, match="line 2: not JSON"):
        read_jsonl(log)
    with pytest.raises(ValueError, match="'epoch' or 'time_s'"):
        fit(0.0, lambda s, e: (s, {"epoch": 1.0}), num_epochs=1, progress=False)


def test_callbacks_every_and_early_stop(tmp_path):
    seen = []
    stop = lambda epoch, state, m: epoch == 4
    res = fit(
        0.0,
        _epoch_fn,
        num_epochs=10,
        progress=False,
        callbacks=[every(2, lambda e, s, m: seen.append(e)), stop],
    )
    assert res.stopped_early and res.epochs_done == 5
    assert seen == [1, 3]
    with pytest.raises(ValueError, match="start_epoch"):
        fit(0.0, _epoch_fn, num_epochs=3, start_epoch=5, progress=False)
    with pytest.raises(ValueError, match="scalars"):
        fit(0.0, lambda s, e: (s, {"v": np.ones(3)}), num_epochs=1, progress=False)


def test_run_dir_and_plots(tmp_path):
    a = make_run_dir(tmp_path, "demo")
    b = make_run_dir(tmp_path, "demo")
    assert a != b and a.is_dir() and b.is_dir()
    path = write_metrics(
        a, {"x": np.float32(1.5), "nan": float("nan"), "v": np.arange(3), "nested": {"t": (1, 2)}}
    )
    data = json.loads(path.read_text())
    assert data == {"x": 1.5, "nan": None, "v": [0, 1, 2], "nested": {"t": [1, 2]}}
    hist = [{"epoch": i, "loss": 1.0 / (i + 1)} for i in range(5)]
    assert plot_curves(hist, ["loss"], a / "c.png").stat().st_size > 1000
    assert (
        plot_scatter([1, 2], [1, 3], a / "s.png", xlabel="t", ylabel="o", diagonal=True)
        .stat()
        .st_size
        > 1000
    )
    with pytest.raises(ValueError, match="plain folder name"):
        make_run_dir(tmp_path, "a/b")


def test_jsonl_logger_records_hold_nan_for_missing_values_everywhere(tmp_path):
    """Records kept from an earlier run held NaN for a null while records logged now held
    None; the file must stay strict JSON (null, never a bare NaN), NumPy NaN included."""
    import math

    from jaxsci.train.loop import JsonlLogger

    path = tmp_path / "m.jsonl"
    logger = JsonlLogger(path)
    logger.log({"epoch": 0, "loss": float("nan"), "big": float("inf"), "x": 1.5})
    assert math.isnan(logger.records[0]["loss"])  # was None here, NaN once resumed
    logger.log({"epoch": 1, "loss": np.float32("nan"), "big": np.float64(2.0), "x": None})
    strict = [
        json.loads(line, parse_constant=pytest.fail) for line in path.read_text().splitlines()
    ]
    assert strict[0] == {"epoch": 0, "loss": None, "big": None, "x": 1.5}
    assert strict[1] == {"epoch": 1, "loss": None, "big": 2.0, "x": None}
    resumed = JsonlLogger(path, resume_from=2)
    for records in (logger.records, resumed.records):
        assert [r["epoch"] for r in records] == [0, 1]
        assert all(math.isnan(r["loss"]) for r in records)
        assert math.isnan(records[0]["big"]) and records[1]["big"] == 2.0
        assert records[0]["x"] == 1.5 and math.isnan(records[1]["x"])
        assert all(type(v) in (int, float) for r in records for v in r.values())
