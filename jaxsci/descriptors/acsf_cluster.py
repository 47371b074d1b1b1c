"""ACSF of a free cluster from dense pair tables (no periodic images).

Radial terms come from [N, N] pair tables; G4 and G5 with integer zeta use the moment
expansion (``acsf_moments``) so the triplet sum becomes matrix products on the shared pair
table E_jk. Other zetas fall back to the per-triplet kernel of ``acsf_kernel``.

Internal: the free-cluster path of :class:`jaxsci.descriptors.ACSF`, not public API
(empty ``__all__``); tests import :func:`acsf_cluster` from this module.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxsci.descriptors.acsf_kernel import (
    KernelConfig,
    acsf_from_slots,
    pair_blocks,
    radial_block,
    unique,
)
from jaxsci.descriptors.acsf_moments import (
    combine,
    g4_power_sums_table,
    g5_power_sums,
    harmonics,
    moment_ok,
)
from jaxsci.descriptors.cutoff import CUTOFFS
from jaxsci.geometry.neighbors import dense_slots

__all__ = []

Array = jnp.ndarray


def acsf_cluster(positions: Array, species: Array, mask: Array, cfg: KernelConfig) -> Array:
    """Features [N, F] of a free cluster; positions [N, 3] (Angstrom), species [N] indices,
    mask [N] bool (padding rows come out zero)."""
    n = positions.shape[0]
    rc = cfg.r_cut
    fc_fn = CUTOFFS[cfg.cutoff]
    if not (moment_ok(cfg.g4) and moment_ok(cfg.g5)):
        slots = dense_slots(positions, None, None, mask)
        out = acsf_from_slots(slots, species[slots.index], cfg)
        return jnp.where(mask[:, None], out, 0.0)

    d = positions[None, :, :] - positions[:, None, :]  # R_j - R_i
    r2 = jnp.sum(d * d, axis=-1)
    valid = mask[:, None] & mask[None, :] & ~jnp.eye(n, dtype=bool) & (r2 <= rc * rc)
    pos = valid & (r2 > 0)
    r = jnp.where(pos, jnp.sqrt(jnp.where(pos, r2, 1.0)), 0.0)
    fc = jnp.where(valid, fc_fn(r, rc), 0.0)
    onehot = (species[None, :, None] == jnp.arange(cfg.n_species)) & valid[..., None]
    onehot = onehot.astype(d.dtype)  # [N, N, S]
    blocks = [radial_block(r, fc, onehot, cfg)]
    if not (cfg.g4 or cfg.g5):
        return jnp.where(mask[:, None], blocks[0], 0.0)

    inv_r = jnp.where(pos, 1.0 / jnp.where(pos, r, 1.0), 0.0)
    unit = d * inv_r[..., None]
    harm = harmonics(unit, int(max(p[1] for p in cfg.g4 + cfg.g5)))
    per_pair = []
    if cfg.g4:
        etas, which = unique([p[0] for p in cfg.g4])
        deg = int(max(p[1] for p in cfg.g4))
        sums = jnp.stack(
            [g4_power_sums_table(harm, jnp.exp(-eta * r2) * fc, onehot, deg) for eta in etas]
        )
        per_pair.append(combine(cfg.g4, which, sums))  # [S, T, N, P4], ordered sums
    if cfg.g5:
        etas, which = unique([p[0] for p in cfg.g5])
        deg = int(max(p[1] for p in cfg.g5))
        sums = jnp.stack(
            [g5_power_sums(harm, jnp.exp(-eta * r2) * fc, onehot, deg) for eta in etas]
        )
        per_pair.append(combine(cfg.g5, which, sums))
    full = jnp.moveaxis(jnp.concatenate(per_pair, axis=-1), 2, 0)  # [N, S, T, P]
    blocks.append(pair_blocks(full, cfg.n_species))
    return jnp.where(mask[:, None], jnp.concatenate(blocks, axis=-1), 0.0)
