"""A generic fit loop: epochs, callbacks, a tqdm progress bar and JSON-lines metrics.

The loop owns no numerics. The caller supplies ``epoch_fn(state, epoch) -> (state, metrics)``,
typically a jitted function whose data order and random keys are a pure function of
``(seed, epoch)``, so that a run resumed from a checkpoint at epoch ``k`` (``start_epoch=k``)
continues exactly as the uninterrupted run would have.

Example::

    result = fit(state, epoch_fn, num_epochs=100, metrics_path=run / "metrics.jsonl",
                 callbacks=[every(10, save_checkpoint)])
    result.state, result.history
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
from tqdm.auto import tqdm

from jaxsci.train.run_dir import to_jsonable

__all__ = ["Callback", "FitResult", "JsonlLogger", "every", "fit", "read_jsonl"]


class Callback(Protocol):
    """Called after every epoch; return ``True`` (anything truthy) to stop training early.

    Mind what a callback returns: :meth:`jaxsci.train.Checkpointer.save` returns ``True``
    when it wrote a checkpoint, so ``lambda e, s, m: ckpt.save(e + 1, s)`` stops training
    after the first checkpoint. Wrap such a function in a ``def`` that returns ``None``, or
    in :func:`every` (which ignores the return value).
    """

    def __call__(self, epoch: int, state: Any, metrics: Mapping[str, float]) -> bool | None: ...


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    ``state``: the final state; ``history``: one dict per epoch (``epoch`` is the 0-based
    epoch index, plus the floats that ``epoch_fn`` returned and ``time_s``), including
    records logged by an earlier, interrupted run when resuming from the same metrics file;
    ``epochs_done``: number of completed epochs; ``stopped_early``: a callback asked to stop.
    """

    state: Any
    history: list[dict]
    epochs_done: int
    stopped_early: bool


def _to_float(value: Any) -> float:
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"metric values must be scalars, got shape {arr.shape}")
    return float(arr.reshape(()))


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSON-lines file into a list of dicts (an empty list if the file is absent).

    A last line cut short (a run killed while writing it) is dropped with a warning; a bad
    line anywhere else raises ``ValueError`` naming it.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    records = []
    for k, (i, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if k == len(lines) - 1:
                warnings.warn(f"{path}: dropped its unfinished last line {i}", stacklevel=2)
                break
            raise ValueError(f"{path}, line {i}: not JSON ({err})") from err
    return records


def _as_read(value: Any) -> Any:
    """A written value as :attr:`JsonlLogger.records` hold it: null (a NaN, inf or missing
    metric) as NaN, recursively."""
    if value is None:
        return float("nan")
    if isinstance(value, Mapping):
        return {k: _as_read(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_read(v) for v in value]
    return value


class JsonlLogger:
    """Append one JSON object per line to ``path`` (flushed after every record).

    ``resume_from``: keep only the records of epochs ``< resume_from`` already in the file
    (the ones a checkpoint at that epoch covers) and drop later ones, so that a resumed run
    does not log an epoch twice. ``None`` starts a fresh file (a ``UserWarning`` names the
    file and the records dropped when it held some).

    The file is strict JSON: a NaN or inf value is written as ``null``. :attr:`records`
    holds every record as the file reads back with ``null`` as NaN, the same for records
    kept from an earlier run and records logged now.
    """

    def __init__(self, path: str | Path, *, resume_from: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_from is not None:
            kept = [r for r in read_jsonl(self.path) if r.get("epoch", -1) < resume_from]
        else:
            _warn_dropped(self.path, "JsonlLogger(resume_from=None)", stacklevel=3)
        kept = [to_jsonable(r) for r in kept]  # a bare NaN in the old file: null from now on
        with self.path.open("w") as fh:
            for record in kept:
                fh.write(json.dumps(record, allow_nan=False) + "\n")
        self.records: list[dict] = [_as_read(r) for r in kept]

    def log(self, record: Mapping[str, Any]) -> None:
        """Write one record (values must be JSON-serialisable; NaN/inf become null)."""
        clean = to_jsonable(record)
        line = json.dumps(clean, allow_nan=False)
        with self.path.open("a") as fh:
            fh.write(line + "\n")
        self.records.append(_as_read(clean))


def _warn_dropped(path: Path, what: str, *, stacklevel: int) -> None:
    """Warn when ``path`` holds records that a fresh run is about to drop."""
    if not path.exists():
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a cut last line: counted as dropped anyway
        n = len(read_jsonl(path))
    if n:
        warnings.warn(
            f"{path} holds {n} metrics records of an earlier run: {what} starts it anew and "
            f"drops them (use another file to keep them)",
            UserWarning,
            stacklevel=stacklevel + 1,
        )


def every(
    n: int, fn: Callable[[int, Any, Mapping[str, float]], Any], *, last: int | None = None
) -> Callable[[int, Any, Mapping[str, float]], Any]:
    """Wrap ``fn`` so it runs after epochs whose 1-based count is a multiple of ``n``.

    ``last``: also run after the final epoch (pass ``num_epochs``). The wrapper never stops
    training; ``fn``'s return value is ignored.
    """
    if n < 1:
        raise ValueError(f"every(n): n must be >= 1, got {n}")

    def callback(epoch: int, state: Any, metrics: Mapping[str, float]) -> None:
        done = epoch + 1
        if done % n == 0 or (last is not None and done == last):
            fn(epoch, state, metrics)

    return callback


def fit(
    state: Any,
    epoch_fn: Callable[[Any, int], tuple[Any, Mapping[str, Any]]],
    *,
    num_epochs: int,
    start_epoch: int = 0,
    callbacks: Iterable[Callback] = (),
    metrics_path: str | Path | None = None,
    progress: bool = True,
    desc: str = "train",
    postfix_keys: Sequence[str] | None = None,
) -> FitResult:
    """Run ``epoch_fn`` for epochs ``start_epoch .. num_epochs - 1``.

    Args:
      state: any pytree (parameters, optimizer state, step counter...).
      epoch_fn: ``(state, epoch) -> (new_state, metrics)``; metrics are scalars
        (JAX or NumPy), converted to Python floats once per epoch.
      num_epochs: total number of epochs of the full run (not the number still to do).
      start_epoch: epochs already done (e.g. restored from a checkpoint).
      callbacks: called as ``cb(epoch, state, metrics)`` after each epoch, in order;
        any returning a truthy value stops training after that epoch. Beware of
        ``Checkpointer.save``, which returns ``True`` when it writes: wrap it (see
        :class:`Callback`).
      metrics_path: JSON-lines file; when resuming, records of epochs ``>= start_epoch``
        already in it are dropped (a fresh run, ``start_epoch=0``, drops them all, with a
        ``UserWarning`` naming the file and the count when there were some). The file is
        read before the first epoch (a corrupt one fails then) but rewritten only once the
        first epoch's metrics passed their checks, so a metric named ``epoch`` or
        ``time_s`` (fit's own) or a non-scalar one leaves it untouched.
      progress: show a tqdm bar (with the last metrics as postfix).
      postfix_keys: metrics shown in the bar (default: all).

    Under MPI every rank runs ``fit``; give ``metrics_path`` and ``progress=True`` on one
    rank only (``info.is_root``), or each rank writes every record.
    """
    if num_epochs < 0 or start_epoch < 0:
        raise ValueError(f"num_epochs ({num_epochs}) and start_epoch ({start_epoch}) must be >= 0")
    if start_epoch > num_epochs:
        raise ValueError(f"start_epoch ({start_epoch}) is past num_epochs ({num_epochs})")
    callbacks = list(callbacks)
    if metrics_path is not None:  # a corrupt file fails now, before any epoch runs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # JsonlLogger warns about a cut last line below
            read_jsonl(metrics_path)
        if start_epoch == 0:
            _warn_dropped(Path(metrics_path), "a fresh fit (start_epoch=0)", stacklevel=2)
    # opened (which rewrites the file) once the first metrics passed their checks
    logger: JsonlLogger | None = None
    history: list[dict] = []
    stopped = False
    epoch = start_epoch - 1
    bar = tqdm(
        range(start_epoch, num_epochs),
        total=num_epochs,
        initial=start_epoch,
        desc=desc,
        disable=not progress,
        dynamic_ncols=True,
    )
    for epoch in bar:
        t0 = time.perf_counter()
        state, raw = epoch_fn(state, epoch)
        if "epoch" in raw or "time_s" in raw:
            raise ValueError("epoch_fn's metrics may not be named 'epoch' or 'time_s' (fit's)")
        metrics = {k: _to_float(v) for k, v in raw.items()}
        record = {"epoch": epoch, **metrics, "time_s": time.perf_counter() - t0}
        if logger is None and metrics_path is not None:
            logger = JsonlLogger(metrics_path, resume_from=start_epoch)
            history = list(logger.records)
        history.append(record)
        if logger is not None:
            logger.log(record)
        if progress:
            keys = postfix_keys if postfix_keys is not None else list(metrics)
            bar.set_postfix({k: f"{metrics[k]:.4g}" for k in keys if k in metrics})
        for cb in callbacks:
            if cb(epoch, state, metrics):
                stopped = True
        if stopped:
            break
    bar.close()
    if logger is None and metrics_path is not None:  # no epoch ran: still drop later records
        logger = JsonlLogger(metrics_path, resume_from=start_epoch)
        history = list(logger.records)
    return FitResult(state=state, history=history, epochs_done=epoch + 1, stopped_early=stopped)
