"""MLPerf-HPC-style event logs and the time to train read back from them.

A run writes one ``:::MLLOG {json}`` line per event (the format of MLCommons'
``mlperf_logging``: ``namespace``, ``time_ms``, ``event_type``, ``key``, ``value``,
``metadata``), from the root process only. The keys that time a run are MLPerf HPC's:

* ``init_start`` / ``init_stop``: set-up before the clock (mesh, model, compilation);
* ``run_start`` / ``run_stop``: the timed run; ``run_stop`` carries
  ``metadata={"status": "success"}`` when the quality target was reached, else
  ``"aborted"``;
* ``staging_start`` / ``staging_stop``: moving the data set to where training reads it
  (host memory, devices), *inside* the timed run, as MLPerf HPC counts it;
* ``epoch_start`` / ``epoch_stop`` and ``eval_start`` / ``eval_stop``, with
  ``eval_accuracy`` points, each with ``metadata={"epoch_num": ...}``.

:func:`time_to_train` turns such a log into seconds: the score (run start to stop), and
its parts (staging, evaluation, training).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["MLLogger", "TimeToTrain", "read_mllog", "time_to_train"]

PREFIX = ":::MLLOG "
EVENT_TYPES = ("POINT_IN_TIME", "INTERVAL_START", "INTERVAL_END")


class MLLogger:
    """Append MLPerf-style events to ``path`` (root process only; other ranks write nothing;
    ``path=None``: events are checked, nothing is written).

    ``clock`` returns seconds (default ``time.time``); events store integer milliseconds
    as MLPerf does, and :func:`time_to_train` reads them back in seconds. ``echo`` also
    prints every line (MLPerf's submission logs are the job's stdout).
    """

    def __init__(
        self,
        path: str | Path | None,
        *,
        is_root: bool = True,
        clock: Callable[[], float] = time.time,
        echo: bool = False,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.is_root = is_root and self.path is not None
        self.clock = clock
        self.echo = echo
        # checked on every rank (a root-only raise would leave the others waiting later)
        if self.path is not None and not self.path.parent.is_dir():
            raise ValueError(f"MLLogger: the folder of {self.path} does not exist")
        if self.is_root:
            self.path.write_text("")  # a fresh log: a run is one file

    def event(
        self,
        key: str,
        value: Any = None,
        metadata: Mapping[str, Any] | None = None,
        event_type: str = "POINT_IN_TIME",
    ) -> None:
        """Log one event now (``value`` and ``metadata`` must be JSON-serialisable)."""
        if event_type not in EVENT_TYPES:
            raise ValueError(
                f"MLLogger: event_type must be one of {EVENT_TYPES}, got {event_type!r}"
            )
        if not isinstance(key, str) or not key:
            raise ValueError(f"MLLogger: key must be a non-empty string, got {key!r}")
        record = {
            "namespace": "",
            "time_ms": int(round(1e3 * self.clock())),
            "event_type": event_type,
            "key": key,
            "value": _plain(value),
            "metadata": {k: _plain(v) for k, v in (metadata or {}).items()},
        }
        # Serialised on every rank: a bad value fails everywhere (not on the root alone,
        # which would leave the other ranks waiting), and before the file is touched.
        line = PREFIX + json.dumps(record, allow_nan=False)
        if not self.is_root:
            return
        with self.path.open("a") as fh:
            fh.write(line + "\n")
        if self.echo:
            print(line, flush=True)

    def start(self, key: str, value: Any = None, metadata: Mapping[str, Any] | None = None) -> None:
        """``<key>_start`` (an ``INTERVAL_START``)."""
        self.event(f"{key}_start", value, metadata, "INTERVAL_START")

    def stop(self, key: str, value: Any = None, metadata: Mapping[str, Any] | None = None) -> None:
        """``<key>_stop`` (an ``INTERVAL_END``)."""
        self.event(f"{key}_stop", value, metadata, "INTERVAL_END")

    @contextmanager
    def interval(self, key: str, metadata: Mapping[str, Any] | None = None) -> Iterator[None]:
        """``<key>_start`` on entry, ``<key>_stop`` on exit (also when the body raises)."""
        self.start(key, metadata=metadata)
        try:
            yield
        finally:
            self.stop(key, metadata=metadata)


def _plain(value: Any) -> Any:
    """NumPy / JAX 0-d numbers as the Python numbers they hold (JSON has no float32)."""
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()
    return value


def read_mllog(path: str | Path) -> list[dict]:
    """The events of an MLPerf-style log (lines without the ``:::MLLOG`` prefix skipped)."""
    events = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.startswith(PREFIX):
            continue
        try:
            events.append(json.loads(line[len(PREFIX) :]))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: not a JSON event ({err})") from None
    return events


class TimeToTrain(NamedTuple):
    """An MLPerf-HPC-style score and its parts, in seconds."""

    time_to_train_s: float  # run_start -> run_stop: the score
    success: bool  # run_stop's status was "success" (the quality target reached)
    init_s: float  # init_start -> init_stop (outside the score); nan when not logged
    staging_s: float  # staging intervals (inside the score)
    eval_s: float  # eval intervals (inside the score)
    train_s: float  # the score less staging and evaluation (intervals that do not overlap)
    epochs: float  # run_stop's epoch_num when logged (the target may fall mid-epoch), else
    # the epoch_stop events inside the run
    last_eval_accuracy: float  # the last eval_accuracy value; nan when none


def _intervals(events: list[dict], key: str, lo: float, hi: float) -> float:
    """Total seconds of the ``<key>_start`` / ``<key>_stop`` pairs, clipped to [lo, hi]."""
    total, opened = 0.0, None
    for e in events:
        if e["key"] == f"{key}_start":
            if opened is not None:
                raise ValueError(f"time_to_train: {key}_start twice without {key}_stop")
            opened = e["time_ms"] / 1e3
        elif e["key"] == f"{key}_stop":
            if opened is None:
                raise ValueError(f"time_to_train: {key}_stop without {key}_start")
            total += max(0.0, min(e["time_ms"] / 1e3, hi) - max(opened, lo))
            opened = None
    if opened is not None:
        raise ValueError(f"time_to_train: {key}_start without {key}_stop")
    return total


def time_to_train(events: list[dict] | str | Path) -> TimeToTrain:
    """The time to train of a finished run's log (events or a log file).

    Raises ``ValueError`` when the log has not exactly one ``run_start`` followed by one
    ``run_stop``, or unbalanced intervals. A ``run_stop`` with no ``metadata`` (missing or
    ``null``) counts as unsuccessful, its epochs counted from the ``epoch_stop`` events.
    """
    if isinstance(events, str | Path):
        events = read_mllog(events)
    for i, e in enumerate(events):
        if not isinstance(e.get("key"), str) or not isinstance(e.get("time_ms"), int | float):
            raise ValueError(f"time_to_train: event {i} has no key or time_ms: {e!r}")
    starts = [i for i, e in enumerate(events) if e["key"] == "run_start"]
    stops = [i for i, e in enumerate(events) if e["key"] == "run_stop"]
    if len(starts) != 1 or len(stops) != 1:
        raise ValueError(
            f"time_to_train: a finished run logs one run_start and one run_stop, found "
            f"{len(starts)} and {len(stops)}"
        )
    i0, i1 = starts[0], stops[0]
    t0, t1 = events[i0]["time_ms"] / 1e3, events[i1]["time_ms"] / 1e3
    if i1 < i0 or t1 < t0:
        raise ValueError("time_to_train: run_stop is logged before run_start")
    stop_meta = events[i1].get("metadata") or {}  # a hand-written log may hold null
    if not isinstance(stop_meta, Mapping):
        raise ValueError(f"time_to_train: run_stop's metadata is not a mapping: {stop_meta!r}")
    init = [e for e in events if e["key"] in ("init_start", "init_stop")]
    init_s = math.nan
    if init:
        init_s = _intervals(events, "init", -math.inf, math.inf)
    staging = _intervals(events, "staging", t0, t1)
    evals = _intervals(events, "eval", t0, t1)
    inside = events[i0 : i1 + 1]  # by position: events in the run's last millisecond too
    accs = [e["value"] for e in inside if e["key"] == "eval_accuracy"]
    return TimeToTrain(
        time_to_train_s=t1 - t0,
        success=stop_meta.get("status") == "success",
        init_s=init_s,
        staging_s=staging,
        eval_s=evals,
        train_s=(t1 - t0) - staging - evals,
        epochs=float(
            stop_epoch
            if (stop_epoch := stop_meta.get("epoch_num")) is not None
            else sum(e["key"] == "epoch_stop" for e in inside)
        ),
        last_eval_accuracy=float(accs[-1]) if accs else math.nan,
    )
