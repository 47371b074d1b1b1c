"""MLPerf-HPC-style event logs (jaxsci.train.mllog) and scaling efficiency (jaxsci.metrics)."""

import json
import math
import time

import jax
import pytest

from jaxsci.metrics import scaling_efficiency
from jaxsci.train import MLLogger, read_mllog, time_to_train

RUN_KEYS = ("run_start", "run_stop")


class Clock:
    """A clock the test advances by hand (seconds)."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _scripted_run(path, clock, *, reach: bool = True) -> MLLogger:
    log = MLLogger(path, clock=clock)
    log.start("init")
    clock.t += 5.0  # compile: outside the score
    log.stop("init")
    log.start("run")
    log.start("staging")
    clock.t += 2.0
    log.stop("staging")
    for epoch, acc in enumerate((0.6, 0.97), 1):
        log.start("epoch", metadata={"epoch_num": epoch})
        clock.t += 3.0
        log.stop("epoch", metadata={"epoch_num": epoch})
        with log.interval("eval", metadata={"epoch_num": epoch}):
            clock.t += 0.5
            log.event("eval_accuracy", acc, {"epoch_num": epoch})
    log.stop("run", metadata={"status": "success" if reach else "aborted"})
    return log


def test_time_to_train_of_a_scripted_run(tmp_path):
    clock = Clock()
    _scripted_run(tmp_path / "log.txt", clock)
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert all(line.startswith(":::MLLOG {") for line in lines)
    first = json.loads(lines[0][len(":::MLLOG ") :])
    assert first == {
        "namespace": "",
        "time_ms": 1_000_000,
        "event_type": "INTERVAL_START",
        "key": "init_start",
        "value": None,
        "metadata": {},
    }
    ttt = time_to_train(tmp_path / "log.txt")
    # run: staging 2 + 2 x (epoch 3 + eval 0.5) = 9 s; init 5 s outside it
    assert ttt.time_to_train_s == pytest.approx(9.0)
    assert ttt.success and ttt.epochs == 2
    assert ttt.init_s == pytest.approx(5.0)
    assert ttt.staging_s == pytest.approx(2.0)
    assert ttt.eval_s == pytest.approx(1.0)
    assert ttt.train_s == pytest.approx(6.0)
    assert ttt.last_eval_accuracy == pytest.approx(0.97)
    assert not time_to_train(_aborted(tmp_path)).success
    # a target reached mid-epoch: run_stop's fractional epoch_num is the count
    log = MLLogger(tmp_path / "mid.txt", clock=clock)
    log.start("run")
    log.start("epoch", metadata={"epoch_num": 1})
    log.stop("epoch", metadata={"epoch_num": 1})
    log.stop("run", metadata={"status": "success", "epoch_num": 0.25})
    assert time_to_train(tmp_path / "mid.txt").epochs == 0.25
    log = MLLogger(tmp_path / "zero.txt", clock=clock)
    log.start("run")
    log.start("epoch", metadata={"epoch_num": 1})
    log.stop("epoch", metadata={"epoch_num": 1})
    log.stop("run", metadata={"status": "success", "epoch_num": 0.0})  # at the very start
    assert time_to_train(tmp_path / "zero.txt").epochs == 0.0


def _aborted(tmp_path):
    _scripted_run(tmp_path / "aborted.txt", Clock(), reach=False)
    return read_mllog(tmp_path / "aborted.txt")


def test_read_mllog_skips_other_output_and_non_root_writes_nothing(tmp_path):
    path = tmp_path / "job.out"
    log = MLLogger(path, clock=Clock())
    log.event("global_batch_size", 64)
    with path.open("a") as fh:
        fh.write("some other stdout line\n")
    log.event("number_of_ranks", 2)
    assert [(e["key"], e["value"]) for e in read_mllog(path)] == [
        ("global_batch_size", 64),
        ("number_of_ranks", 2),
    ]
    other = MLLogger(tmp_path / "rank1.txt", is_root=False)
    other.start("run")
    assert not (tmp_path / "rank1.txt").exists()
    MLLogger(None).start("run")  # a disabled log checks its events, writes nothing
    with pytest.raises(ValueError):  # on every rank, not only where it is written
        other.event("eval_accuracy", math.nan)
    with pytest.raises(ValueError, match="key"):
        MLLogger(None).event("")


def test_numpy_values_events_after_run_stop_and_folders_on_every_rank(tmp_path):
    import numpy as np

    clock = Clock()
    log = MLLogger(tmp_path / "log.txt", clock=clock)
    log.start("run")
    clock.t += 1.0
    log.event("eval_accuracy", np.float32(0.5), {"epoch_num": np.int64(1)})
    log.stop("run", metadata={"status": "success"})
    log.event("eval_accuracy", 0.9)  # the same millisecond, after the run: not counted
    events = read_mllog(tmp_path / "log.txt")
    assert events[1]["value"] == 0.5 and events[1]["metadata"] == {"epoch_num": 1}
    assert time_to_train(events).last_eval_accuracy == 0.5
    with pytest.raises(ValueError, match="no key"):
        time_to_train([{"time_ms": 0}, *events])
    with pytest.raises(ValueError, match="does not exist"):  # not only where it is written
        MLLogger(tmp_path / "missing" / "log.txt", is_root=False)


def test_interval_is_closed_when_its_body_raises(tmp_path):
    log = MLLogger(tmp_path / "log.txt", clock=Clock())
    with pytest.raises(RuntimeError), log.interval("eval"):
        raise RuntimeError("boom")
    assert [e["key"] for e in read_mllog(tmp_path / "log.txt")] == ["eval_start", "eval_stop"]


def test_bad_events_and_logs_raise_and_write_nothing(tmp_path):
    path = tmp_path / "log.txt"
    log = MLLogger(path, clock=Clock())
    log.start("run")
    before = path.read_text()
    with pytest.raises(ValueError):
        log.event("eval_accuracy", math.nan)  # not JSON
    with pytest.raises(ValueError, match="event_type"):
        log.event("x", event_type="START")
    with pytest.raises(ValueError, match="key"):
        log.event("")
    assert path.read_text() == before
    with pytest.raises(ValueError, match="one run_start and one run_stop"):
        time_to_train(path)  # no run_stop
    log.start("staging")
    log.stop("run")
    with pytest.raises(ValueError, match="staging_start without staging_stop"):
        time_to_train(path)
    with pytest.raises(ValueError, match="does not exist"):
        MLLogger(tmp_path / "missing" / "log.txt")
    (tmp_path / "broken.txt").write_text(':::MLLOG {"key": \n')
    with pytest.raises(ValueError, match="broken.txt:1"):
        read_mllog(tmp_path / "broken.txt")


def test_scaling_efficiency_strong_and_weak():
    times = {1: 12.0, 2: 7.5, 4: 5.0}
    strong = scaling_efficiency(times, "strong")
    assert list(strong) == [1, 2, 4]
    assert strong == pytest.approx({1: 1.0, 2: 12.0 / 15.0, 4: 12.0 / 20.0})
    weak = scaling_efficiency({4: 2.0, 2: 1.6}, "weak")  # base: the smallest count given
    assert weak == pytest.approx({2: 1.0, 4: 0.8})
    perfect = scaling_efficiency({1: 8.0, 2: 4.0, 8: 1.0}, "strong")
    assert perfect == pytest.approx({1: 1.0, 2: 1.0, 8: 1.0})
    # a base of 2 workers: ideal time halves again at 4 (t_base * base / (t_n * n))
    assert scaling_efficiency({2: 10.0, 4: 5.0}, "strong") == pytest.approx({2: 1.0, 4: 1.0})
    assert scaling_efficiency({2: 10.0, 8: 5.0}, "strong") == pytest.approx({2: 1.0, 8: 0.5})
    for bad, match in (
        ({}, "no times"),
        ({0: 1.0}, "integers >= 1"),
        ({1: 0.0}, "> 0"),
        ({1: math.inf}, "> 0"),
        ({True: 1.0}, "integers >= 1"),
    ):
        with pytest.raises(ValueError, match=match):
            scaling_efficiency(bad, "strong")
    with pytest.raises(ValueError, match="mode"):
        scaling_efficiency(times, "linear")


@pytest.mark.parametrize("target, success", [(0.0, True), (1.01, False)])
def test_data_parallel_experiment_logs_its_time_to_train(tmp_path, target, success):
    import dataclasses

    from experiments.data_parallel.config import tiny
    from experiments.data_parallel.train import train_and_evaluate
    from jaxsci.parallel import ProcessInfo

    config = dataclasses.replace(tiny(), steps=12, eval_every=6, devices=1, target_accuracy=target)
    log = MLLogger(tmp_path / "run.mllog")
    compiles = []  # wall-clock ends of tracing, lowering, compiling (cached or not)

    def listener(event: str, duration: float, **_) -> None:
        if event.startswith("/jax/core/compile/"):
            compiles.append(time.time())

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        out = train_and_evaluate(config, info=ProcessInfo(0, 1, 1), progress=False, mllog=log)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    events = read_mllog(tmp_path / "run.mllog")
    t0, t1 = (next(e["time_ms"] for e in events if e["key"] == k) / 1e3 for k in RUN_KEYS)
    assert compiles and not [t for t in compiles if t0 <= t <= t1]  # compiled in init only
    keys = [e["key"] for e in events]
    assert keys[:2] == ["init_start", "submission_benchmark"] and "init_stop" in keys
    assert keys.index("init_stop") < keys.index("run_start") < keys.index("staging_start")
    accs = [e["value"] for e in events if e["key"] == "eval_accuracy"]
    assert accs == [ev["test_accuracy"] for ev in out["evals"]]  # both evaluations logged
    ttt = time_to_train(events)
    assert ttt.success is success
    stop = next(e for e in events if e["key"] == "run_stop")
    # reached: the run stops at the first evaluation (step 6); else after the last step
    assert stop["metadata"]["step"] == (6 if success else 12)
    assert 0 <= ttt.staging_s < ttt.time_to_train_s and 0 <= ttt.eval_s < ttt.time_to_train_s
    assert {"train_samples", "eval_samples", "epoch_start"} <= set(keys)
    value = {e["key"]: e["value"] for e in events if e["value"] is not None}
    per_epoch = value["train_samples"] // value["global_batch_size"]  # steps
    # fractional epochs either way: the target came mid-epoch, or the run stopped after its
    # 12 steps (the aborted run_stop carries epoch_num too, not the epoch_stop count)
    assert ttt.epochs == pytest.approx((6 if success else 12) / per_epoch)
    assert keys.count("epoch_start") == keys.count("epoch_stop")  # balanced, also at the end


def test_intervals_are_clipped_to_the_run():
    """Only the part of an eval or staging interval inside [run_start, run_stop] counts:
    an eval running past run_stop, and staging begun before run_start."""
    ok = {"status": "success"}
    past = [
        {"key": "run_start", "time_ms": 0},
        {"key": "eval_start", "time_ms": 500},
        {"key": "run_stop", "time_ms": 1000, "metadata": ok},
        {"key": "eval_stop", "time_ms": 2000},
    ]
    ttt = time_to_train(past)
    assert (ttt.time_to_train_s, ttt.eval_s, ttt.train_s) == pytest.approx((1.0, 0.5, 0.5))
    before = [
        {"key": "staging_start", "time_ms": -300},
        {"key": "run_start", "time_ms": 0},
        {"key": "staging_stop", "time_ms": 200},
        {"key": "run_stop", "time_ms": 1000, "metadata": ok},
    ]
    ttt = time_to_train(before)
    assert (ttt.staging_s, ttt.train_s) == pytest.approx((0.2, 0.8))
