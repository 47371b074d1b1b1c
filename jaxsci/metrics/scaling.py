"""Scaling efficiency of a run measured at several worker counts (MLPerf-HPC style)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal


def scaling_efficiency(
    times_s: Mapping[int, float], mode: Literal["strong", "weak"]
) -> dict[int, float]:
    """Parallel efficiency of each worker count against the smallest one measured.

    Args:
      times_s: seconds of the same work (strong scaling: the same global problem; weak:
        the same problem *per worker*) keyed by the number of workers (ranks, devices).
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
    for n, t in times_s.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"scaling_efficiency: worker counts must be integers >= 1, got {n!r}")
        if not (isinstance(t, int | float) and math.isfinite(t) and t > 0):
            raise ValueError(f"scaling_efficiency: time for {n} workers must be > 0, got {t!r}")
    base = min(times_s)
    t_b = float(times_s[base])
    if mode == "weak":
        return {n: t_b / float(times_s[n]) for n in sorted(times_s)}
    return {n: t_b * base / (float(times_s[n]) * n) for n in sorted(times_s)}
