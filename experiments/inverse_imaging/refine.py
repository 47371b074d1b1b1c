"""The strongest classical baseline: ePIE's potential refined through the multislice model
(:func:`jaxsci.imaging.refine_potential`), the thickness not given but chosen by the fit.

Like the network, it does not know a specimen's thickness: it refines the first guess once
for every thickness in ``config.slices`` with identical slices and keeps the one whose CBED
stack fits best; then (``refine_per_slice``) every slice of it is refined on its own.
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np

from experiments.inverse_imaging.config import Config
from experiments.inverse_imaging.data import grid_of, lowpass, optics, probe_positions
from jaxsci.imaging import refine_potential

__all__ = ["refine_potentials"]


def refine_potentials(
    config: Config, patterns: np.ndarray, first_guess: np.ndarray, *, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, float]:
    """Refine ``first_guess`` (``[n, H, W]`` kV·Å, e.g. ePIE's) against ``patterns``
    (``[n, P, H, W]``) with ``config.refine_iters`` L-BFGS iterations per candidate
    thickness (identical slices), then, with ``config.refine_per_slice``, as many with
    every slice free at the thickness that fitted best.

    Returns the refined potentials (low-passed, mean-free, kV·Å, ``[n, H, W]``), the
    number of slices chosen for each specimen (``[n]``) and the wall seconds per specimen
    (every candidate thickness included; compilation excluded).
    """
    if not len(patterns):  # e.g. an MPI rank without specimens
        return np.zeros_like(first_guess, np.float32), np.zeros(0, np.int64), 0.0
    grid = grid_of(config)
    positions = probe_positions(config)
    candidates = range(config.slices[0], config.slices[1] + 1)

    def fit(i: int, n_slices: int, start=None, per_slice: bool = False):
        return refine_potential(
            1000.0 * first_guess[i] if start is None else start,
            patterns[i],
            positions,
            grid,
            config.energy,
            n_slices=n_slices,
            n_iter=config.refine_iters,
            per_slice=per_slice,
            **optics(config),
        )

    for k in candidates:  # one compilation per thickness and stage, outside the clock
        fit(0, k).potential.block_until_ready()
        if config.refine_per_slice:
            fit(0, k, per_slice=True).potential.block_until_ready()
    order = range(len(patterns))
    if progress:
        from tqdm.auto import tqdm

        order = tqdm(order, desc="multislice refinement", leave=False)
    out = np.empty(first_guess.shape, np.float32)
    chosen = np.empty(len(patterns), np.int64)
    t0 = time.perf_counter()
    for i in order:
        # (the misfit of the returned potential: never NaN, unlike losses.min() after a
        # NaN iterate, which Python's min would keep if it came first)
        fits = [(float(r.misfit), k, r.potential) for k in candidates for r in [fit(i, k)]]
        _, chosen[i], best = min(fits, key=lambda f: f[0])
        if config.refine_per_slice:  # then every slice its own image, at that thickness
            best = fit(i, int(chosen[i]), start=best, per_slice=True).potential
        out[i] = best
    seconds = (time.perf_counter() - t0) / max(len(patterns), 1)
    return np.asarray(lowpass(jnp.asarray(out), config)) / 1000.0, chosen, seconds
