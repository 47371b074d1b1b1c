"""Scaling efficiency of a run measured at several worker counts (MLPerf-HPC style)."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Mapping
from typing import Literal

import numpy as np

__all__ = ["scaling_efficiency"]


def scaling_efficiency(
    times_s: Mapping[int, float], mode: Literal["strong", "weak"]
) -> dict[int, float]:
    """Parallel efficiency of each worker count against the smallest one measured.

    Args:
      times_s: seconds of the same work (strong scaling: the same global problem; weak:
        the same problem *per worker*) keyed by the number of workers (ranks, devices).
        Times are real scalars (Python, NumPy or 0-d JAX/NumPy arrays; not bools), finite
        and > 0; worker counts integers >= 1 (Python or NumPy integers).
      mode: ``"strong"``: ``E(n) = t(b) b / (t(n) n)`` (perfect: ``t`` falls as ``1/n``);
        ``"weak"``: ``E(n) = t(b) / t(n)`` (perfect: ``t`` stays flat). ``b`` is the
        smallest worker count given, whose efficiency is 1.

    Returns:
      ``{n: E(n)}`` for every worker count given, in increasing ``n``.
    """
    if mode not in ("strong", "weak"):
        raise ValueError(f"scaling_efficiency: mode must be 'strong' or 'weak', got {mode!r}")
    if not times_s:
        raise ValueError("scaling_efficiency: no times given")
    times: dict[int, float] = {}
    for n, t in times_s.items():
        workers = _workers(n)
        seconds = _seconds(t, workers)
        if workers in times:
            raise ValueError(f"scaling_efficiency: worker count {workers} given twice")
        times[workers] = seconds
    base = min(times)
    t_b = times[base]
    if mode == "weak":
        return {n: t_b / times[n] for n in sorted(times)}
    return {n: t_b * base / (times[n] * n) for n in sorted(times)}


def _is_bool(x: object) -> bool:
    return isinstance(x, bool | np.bool_) or (
        hasattr(x, "dtype") and np.ndim(x) == 0 and np.dtype(x.dtype) == np.bool_
    )


def _workers(n: object) -> int:
    """A worker count: a Python/NumPy/JAX integer (not a bool) >= 1."""
    if _is_bool(n):
        raise ValueError(
            f"scaling_efficiency: worker counts must be integers >= 1, not bools: got {n!r}"
        )
    try:
        workers = operator.index(n)  # int, np.integer
    except TypeError:
        raise ValueError(
            f"scaling_efficiency: worker counts must be integers >= 1, got {type(n).__name__} {n!r}"
        ) from None
    if workers < 1:
        raise ValueError(f"scaling_efficiency: worker counts must be integers >= 1, got {workers}")
    return workers


def _seconds(t: object, workers: int) -> float:
    """A time: a real Python/NumPy/JAX scalar (not a bool), finite and > 0."""
    what = f"scaling_efficiency: time for {workers} workers"
    if _is_bool(t):
        raise ValueError(f"{what} must be a number of seconds, got the bool {t!r}")
    dtype = np.dtype(t.dtype) if hasattr(t, "dtype") and np.ndim(t) == 0 else None
    # 0-d integer or floating arrays (bfloat16 too: ml_dtypes' kind is "V")
    real = isinstance(t, numbers.Real) or (
        dtype is not None and (dtype.kind in "iuf" or "float" in dtype.name)
    )
    if not real:
        raise ValueError(f"{what} must be a real number of seconds, got {type(t).__name__} {t!r}")
    seconds = float(t)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{what} must be finite and > 0, got {seconds!r}")
    return seconds
