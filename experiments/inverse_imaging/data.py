"""Simulated 4D-STEM data: random crystal specimens -> CBED stacks and target potentials.

Each specimen is a :func:`jaxsci.data.crystal_blocks.crystal_block` of a random material,
zone axis, rotation and thickness (``n`` slices of ``dz``, ``n`` uniform in
``config.slices``; seams merged for the periodic cell, ``config.min_distance``), binned into
slices and zero-padded to the largest thickness: trailing empty slices are vacuum, whose
propagation is a pure phase in diffraction space, so the padding leaves every CBED pattern
exactly as it is. One jitted, vmapped program per chunk of specimens computes each slice's
projected potential, the multislice CBED stack and the target (the total projected
potential low-passed to ``config.resolution`` x Nyquist, mean removed, kV·Å).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments.inverse_imaging.config import Config
from jaxsci.data.crystal_blocks import ZONE_AXES, crystal_block, material_cell, slice_block
from jaxsci.imaging import Grid, band_limit_mask, cbed_stack, projected_potential

__all__ = [
    "BAND_LIMIT",
    "ImagingSet",
    "LOG_FLOOR",
    "TEST_SEED_OFFSET",
    "grid_of",
    "log_patterns",
    "lowpass",
    "optics",
    "probe_positions",
    "simulate",
    "species_of",
]

LOG_FLOOR = 1e-6  # added to intensities (total 1 per pattern) before the log
CHUNK = 32  # specimens per call of the simulator
BAND_LIMIT = 2 / 3  # anti-aliasing of the simulation; ePIE and the refinement assume the same
TEST_SEED_OFFSET = 10_000  # the held-out specimens come from config.seed + this


class ImagingSet(NamedTuple):
    """Simulated specimens.

    Attributes:
      patterns: ``[n, P, H, W]`` float32 CBED intensities (noise-free, each pattern sums to
        <= 1, the band limit losing a little; with ``config.dose``, electron counts / dose).
      targets: ``[n, H, W]`` float32 projected potential, low-passed, mean removed, kV·Å.
      thickness: ``[n]`` specimen thickness, Å.
      material: ``[n]`` index into ``config.materials``.
      zone_axis: ``[n]`` index into :data:`jaxsci.data.crystal_blocks.ZONE_AXES`.
    """

    patterns: np.ndarray
    targets: np.ndarray
    thickness: np.ndarray
    material: np.ndarray
    zone_axis: np.ndarray


def grid_of(config: Config) -> Grid:
    """The square periodic cell of the simulation."""
    return Grid((config.grid, config.grid), (config.extent, config.extent))


def probe_positions(config: Config) -> np.ndarray:
    """``[scan * scan, 2]`` probe positions ``(x, y)`` in Å, centred in a regular grid of
    cells of side ``extent / scan`` (row-major: y outer, x inner)."""
    g = (np.arange(config.scan) + 0.5) * (config.extent / config.scan)
    y, x = np.meshgrid(g, g, indexing="ij")
    return np.stack([x.ravel(), y.ravel()], axis=1).astype(np.float32)


def optics(config: Config) -> dict:
    """The probe, slicing and band limit that the simulation and the multislice refinement
    share (keyword arguments of :func:`cbed_stack` and :func:`refine_potential`)."""
    return {
        "semiangle": config.semiangle,
        "defocus": config.defocus,
        "dz": config.dz,
        "band_limit": BAND_LIMIT,
    }


def species_of(config: Config) -> tuple[int, ...]:
    """The atomic numbers of ``config.materials`` (static for the potential's sum)."""
    return tuple(sorted({int(z) for m in config.materials for z in material_cell(m).numbers}))


def lowpass(image: jax.Array, config: Config) -> jax.Array:
    """``image`` (``[..., H, W]``) low-passed to ``config.resolution`` x Nyquist, mean
    removed: the form in which the FCN, ePIE and the truth are compared."""
    mask = band_limit_mask(grid_of(config), config.resolution)
    out = jnp.fft.ifft2(jnp.fft.fft2(image) * mask).real
    return out - out.mean(axis=(-2, -1), keepdims=True)


def log_patterns(patterns: np.ndarray) -> np.ndarray:
    """FCN input ``[n, H, W, P]`` from ``[n, P, H, W]`` intensities: ``log(I + floor)``,
    channels last (standardise with the training set's statistics)."""
    return np.log(np.moveaxis(patterns, 1, -1) + LOG_FLOOR).astype(np.float32)


def _simulator(config: Config):
    grid = grid_of(config)
    positions = jnp.asarray(probe_positions(config))
    species = species_of(config)

    def one(pos, numbers):
        def potential(p, z):
            return projected_potential(
                p, z, grid, rms_displacement=config.rms_displacement, species=species
            )

        slices = jax.vmap(potential)(pos, numbers)  # [S, H, W] V·Å
        patterns = cbed_stack(slices, positions, grid, config.energy, **optics(config))
        return patterns, lowpass(slices.sum(0), config) / 1000.0  # kV·Å

    return jax.jit(jax.vmap(one))


def _specimens(config: Config, n: int, rng: np.random.Generator):
    """Host side: ``n`` sliced specimens, padded to the thickest and the fullest slice."""
    lo, hi = config.slices
    blocks, meta = [], []
    for _ in range(n):
        m = int(rng.integers(len(config.materials)))
        n_slices = int(rng.integers(lo, hi + 1))
        block = None
        while block is None or block.n_atoms == 0:  # a thin cut can miss every atom plane
            block = crystal_block(
                config.materials[m],
                extent=(config.extent, config.extent),
                thickness=n_slices * config.dz,
                zone_axis=None,
                rng=rng,
                min_distance=config.min_distance,
            )
        blocks.append(slice_block(block, n_slices))
        meta.append((n_slices * config.dz, m, ZONE_AXES.index(block.zone_axis)))
    width = max(1, max(b.numbers.shape[1] for b in blocks))
    pos = np.zeros((n, hi, width, 2), np.float32)
    num = np.zeros((n, hi, width), np.int32)
    for i, b in enumerate(blocks):
        s, w = b.numbers.shape
        pos[i, :s, :w] = b.positions
        num[i, :s, :w] = b.numbers
    thickness, material, axis = (np.array(v) for v in zip(*meta, strict=True))
    return pos, num, thickness.astype(np.float32), material, axis


def simulate(config: Config, n: int, seed: int, *, progress: bool = False) -> ImagingSet:
    """``n`` specimens from ``seed`` (deterministic) through the forward model.

    With ``config.dose`` set, each pattern gets Poisson noise of that many electrons.
    """
    rng = np.random.default_rng(seed)
    pos, num, thickness, material, axis = _specimens(config, n, rng)
    sim = _simulator(config)
    patterns, targets = [], []
    starts = range(0, n, CHUNK)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="simulating CBED", leave=False)
    for s in starts:
        p, t = sim(jnp.asarray(pos[s : s + CHUNK]), jnp.asarray(num[s : s + CHUNK]))
        patterns.append(np.asarray(p, np.float32))
        targets.append(np.asarray(t, np.float32))
    patterns = np.concatenate(patterns)
    if config.dose is not None:
        patterns = (rng.poisson(patterns * config.dose) / config.dose).astype(np.float32)
    return ImagingSet(patterns, np.concatenate(targets), thickness, material, axis)
