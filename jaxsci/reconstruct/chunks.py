"""A search round run a chunk of starts at a time, so that a time limit can stop it.

A round of the search is one compiled program over all starts. For periodic targets on a
CPU it is long: a start costs about ``N x K^2`` per step (K neighbour slots per atom,
:func:`jaxsci.geometry.neighbor_capacity`, ~104 for a metal at r_cut 6 A), and a 32-atom
Cu cell's round of 64 starts took 55 s of the 58 s default limit (66 s with compilation).
Split into chunks, the host checks the clock between them and skips the chunks that would
end past the search's deadline.

Internal: a stage of :func:`jaxsci.reconstruct.reconstruct`, not public API (empty
``__all__``); its names may change with the solver. Tests import them from this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsci.geometry import neighbor_capacity

__all__ = []

#: Slot pairs (``n_atoms x K^2`` per start) in one chunk of a periodic round on a CPU:
#: about 4 s per chunk of 60 steps on the 2-core CPU (measured: 16 starts of a 32-atom Cu
#: cell, K = 104, 0.25 s per step, i.e. 5.5e6 slot pairs in 15 s).
CHUNK_WORK = 1_400_000

#: Axis of the starts in each output of the round program (the loss history is
#: ``[steps, n_starts]``).
OUT_AXES = (0, 0, 0, 0, 0, 0, 1, 0, 0, 0)


def round_chunk(
    n_starts: int,
    n_atoms: int,
    cell: np.ndarray | None,
    r_cut: float,
    capacity: int | None = None,
) -> int:
    """Starts per call of the round program: all of them for free clusters and on
    accelerators; for a periodic ``cell`` [3, 3] (Angstrom) on the CPU, the largest divisor
    of ``n_starts`` whose work stays within :data:`CHUNK_WORK` (at least 1), with
    ``capacity`` neighbour slots per atom (None: :func:`neighbor_capacity`'s estimate)."""
    if cell is None or jax.default_backend() != "cpu":
        return n_starts
    k = neighbor_capacity(n_atoms, cell, r_cut) if capacity is None else int(capacity)
    most = max(1, CHUNK_WORK // (n_atoms * k * k))
    return max(d for d in range(1, min(most, n_starts) + 1) if n_starts % d == 0)


def run_round(
    round_fn: Callable,
    state: Sequence[jax.Array],
    per_start: Sequence[jax.Array],
    aux: dict,
    chunk: int,
    fits: Callable[[float], bool],
    chunk_time: float,
) -> tuple[tuple[jax.Array, ...], np.ndarray, float]:
    """One round of ``round_fn(*state, *per_start, aux)``, ``chunk`` starts per call.

    state: the six search-state arrays, leading axis the starts; per_start: the other
    per-start inputs (fresh starts, force flags, keys). Before every chunk but the first,
    ``fits(t)`` says whether a chunk of predicted duration ``t`` seconds may still run (the
    shortest chunk so far, ``chunk_time`` included). Starts of skipped chunks keep their
    state, with a NaN loss history and an infinite lowest loss (nothing is recorded of
    them). Returns the round's outputs for all starts, ``ran`` [n_starts] bool, and the
    shortest chunk duration (seconds, the program's execution; compile beforehand).
    """
    n_starts = per_start[0].shape[0]
    parts = []
    for lo in range(0, n_starts, chunk):
        if lo and not fits(chunk_time):
            break
        part = slice(lo, lo + chunk)
        args = [a if chunk == n_starts else a[part] for a in (*state, *per_start)]
        began = time.perf_counter()
        parts.append(jax.block_until_ready(round_fn(*args, aux)))
        chunk_time = min(chunk_time, time.perf_counter() - began)
    done = len(parts) * chunk
    if done == n_starts and len(parts) == 1:
        return parts[0], np.ones(n_starts, bool), chunk_time
    if done < n_starts:
        rest = [a[done:] for a in state]
        hist, feats = parts[0][6], parts[0][9]
        skipped = n_starts - done
        parts.append(
            (
                *rest,
                jnp.full((hist.shape[0], skipped), jnp.nan, hist.dtype),
                rest[1],  # lowest point: the start's best so far (its loss inf: not recorded)
                jnp.full((skipped,), jnp.inf, parts[0][8].dtype),
                jnp.zeros((skipped, *feats.shape[1:]), feats.dtype),
            )
        )
    out = tuple(
        jnp.concatenate([p[i] for p in parts], axis=axis) for i, axis in enumerate(OUT_AXES)
    )
    return out, np.arange(n_starts) < done, chunk_time
