"""Pure ACSF kernel: per-centre symmetry functions from neighbour slots.

Feature layout is DScribe's: for each neighbour species ``s`` (ascending Z) the block
``[G1, G2..., G3...]``; then for each unordered species pair (a >= b, index a(a+1)/2 + b) the
block ``[G4..., G5...]``. The centre's own species is not encoded.

Speed comes from sharing work across parameter sets:
* the angular factor 2^(1-zeta) (1 + lambda cos)^zeta is computed once per distinct
  (zeta, lambda) pair per triplet, with integer zetas as exact repeated multiplication;
* the Gaussian factor of G4/G5 is separable, exp(-eta (r_ij^2 + r_ik^2 + r_jk^2)) =
  e_ij e_ik e_jk, so per distinct eta only one exponential per triplet (G4) or per pair (G5)
  is evaluated, and the sum over (j, k) becomes two batched matrix products
  (sum over k, then over j) that produce every (zeta, lambda) at once.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxsci.descriptors.acsf_moments import (
    combine,
    g4_power_sums_slots,
    g5_power_sums,
    harmonics,
    moment_ok,
)
from jaxsci.descriptors.cutoff import CUTOFFS
from jaxsci.geometry.neighbors import Slots

__all__ = ["KernelConfig", "acsf_from_slots", "validate_params"]

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static ACSF settings (hashable). Parameter tuples follow DScribe's meaning."""

    r_cut: float
    n_species: int
    g2: tuple[tuple[float, float], ...] = ()
    g3: tuple[float, ...] = ()
    g4: tuple[tuple[float, float, float], ...] = ()
    g5: tuple[tuple[float, float, float], ...] = ()
    cutoff: str = "cosine"

    @property
    def n_radial(self) -> int:
        return 1 + len(self.g2) + len(self.g3)

    @property
    def n_pairs(self) -> int:
        return self.n_species * (self.n_species + 1) // 2

    @property
    def n_features(self) -> int:
        return self.n_radial * self.n_species + (len(self.g4) + len(self.g5)) * self.n_pairs


def _power(base: Array, zeta: float) -> Array:
    """base^zeta for base >= 0 with finite gradients (exact products for integer zeta)."""
    if zeta == 0:
        return jnp.ones_like(base)
    if float(zeta).is_integer() and zeta <= 256:
        return jax.lax.integer_pow(base, int(zeta))
    pos = base > 0
    return jnp.where(pos, jnp.exp(zeta * jnp.log(jnp.where(pos, base, 1.0))), 0.0)


def _angular(cos: Array, zeta: float, lam: float) -> Array:
    """``2^(1-zeta) (1 + lambda cos)^zeta``. For zeta >= 64 as ``2 ((1 + lambda cos) / 2)^zeta``:
    the first form underflows ``2^(1-zeta)`` to 0 and overflows the power to inf in float32
    from zeta ~ 128 (0 * inf = NaN in every feature and gradient); below, the first form,
    bit for bit as before."""
    if zeta < 64:
        return 2.0 ** (1.0 - zeta) * _power(_base(1.0 + lam * cos, zeta), zeta)
    return 2.0 * _power(_base(0.5 + 0.5 * lam * cos, zeta), zeta)


def _base(base: Array, zeta: float) -> Array:
    """``1 + lambda cos`` as the power's base: kept as is for integer zeta (negative only for
    |lambda| > 1; then DScribe's sign, as the moment path for zeta <= 6 gives), clipped at 0
    for fractional zeta (a negative base has no real power)."""
    return base if float(zeta).is_integer() else jnp.maximum(base, 0.0)


def unique(values) -> tuple[list, list[int]]:
    """Distinct values in first-seen order, and each value's index among them."""
    uniq: list = []
    where: list[int] = []
    for v in values:
        if v not in uniq:
            uniq.append(v)
        where.append(uniq.index(v))
    return uniq, where


def _angular_sums(
    params: tuple[tuple[float, float, float], ...],
    cos: Array,
    pair_ok: Array,
    e_pair: dict | None,
    a_site: dict,
) -> Array:
    """Sum over ordered (j != k) of prefactor * angular * a_ij a_ik [* e_jk]: [C, S, S, P]."""
    etas, eta_of = unique([p[0] for p in params])
    zls, zl_of = unique([(p[1], p[2]) for p in params])
    ang = jnp.stack([_angular(cos, z, lam) for z, lam in zls], axis=-1)  # [C, K, K, A]
    ang = jnp.where(pair_ok[..., None], ang, 0.0)
    per_eta = []
    for eta in etas:
        x = ang if e_pair is None else ang * e_pair[eta][..., None]  # [C, K, K, A]
        a = a_site[eta]  # [C, K, S]
        y = jnp.einsum("ckla,cls->ckas", x, a)  # sum over k-neighbour
        per_eta.append(jnp.einsum("cjs,cjat->csta", a, y))  # sum over j-neighbour
    out = [per_eta[eta_of[p]][..., zl_of[p]] for p in range(len(params))]
    return jnp.stack(out, axis=-1)


def acsf_from_slots(slots: Slots, neighbour_species: Array, cfg: KernelConfig) -> Array:
    """ACSF features [C, F] for C centres from their neighbour slots.

    slots: disp [C, K, 3] (Angstrom), valid [C, K]; neighbour_species: [C, K] int indices
    into the species list (any value where invalid).
    """
    fc_fn = CUTOFFS[cfg.cutoff]
    rc = cfg.r_cut
    disp = slots.disp
    dtype = disp.dtype
    r2 = jnp.sum(disp * disp, axis=-1)  # [C, K]
    inside = slots.valid & (r2 <= rc * rc)
    pos = inside & (r2 > 0)
    r = jnp.where(pos, jnp.sqrt(jnp.where(pos, r2, 1.0)), 0.0)
    fc = jnp.where(inside, fc_fn(r, rc), 0.0)
    onehot = (neighbour_species[..., None] == jnp.arange(cfg.n_species)) & inside[..., None]
    onehot = onehot.astype(dtype)  # [C, K, S]

    blocks = [radial_block(r, fc, onehot, cfg)]
    if not (cfg.g4 or cfg.g5):
        return blocks[0]

    s = cfg.n_species
    inv_r = jnp.where(pos, 1.0 / jnp.where(pos, r, 1.0), 0.0)
    g5_moments = bool(cfg.g5) and moment_ok(cfg.g5)

    def site_factors(etas):
        return {eta: (jnp.exp(-eta * r2) * fc)[..., None] * onehot for eta in etas}

    sums = []
    if cfg.g4 or not g5_moments:
        k = disp.shape[1]
        gram = jnp.einsum("ckx,clx->ckl", disp, disp)  # d_ij . d_ik
        cos = jnp.clip(gram * inv_r[:, :, None] * inv_r[:, None, :], -1.0, 1.0)
        pair_ok = inside[:, :, None] & inside[:, None, :] & ~jnp.eye(k, dtype=bool)
    if cfg.g4:
        rjk2 = jnp.maximum(r2[:, :, None] + r2[:, None, :] - 2.0 * gram, 0.0)
        in_jk = pair_ok & (rjk2 <= rc * rc)
        pjk = in_jk & (rjk2 > 0)
        rjk = jnp.where(pjk, jnp.sqrt(jnp.where(pjk, rjk2, 1.0)), 0.0)
        fc_jk = jnp.where(in_jk, fc_fn(rjk, rc), 0.0)
        if moment_ok(cfg.g4):
            etas, which = unique([p[0] for p in cfg.g4])
            deg = int(max(p[1] for p in cfg.g4))
            harm4 = harmonics(disp * inv_r[..., None], deg)
            ps = jnp.stack(
                [
                    g4_power_sums_slots(
                        harm4, jnp.exp(-eta * r2) * fc, jnp.exp(-eta * rjk2) * fc_jk, onehot, deg
                    )
                    for eta in etas
                ]
            )
            sums.append(jnp.moveaxis(combine(cfg.g4, which, ps), 2, 0))
        else:
            etas4 = sorted({p[0] for p in cfg.g4})
            e_pair = {eta: jnp.exp(-eta * rjk2) * fc_jk for eta in etas4}
            sums.append(_angular_sums(cfg.g4, cos, in_jk, e_pair, site_factors(etas4)))
    if g5_moments:
        etas, which = unique([p[0] for p in cfg.g5])
        deg = int(max(p[1] for p in cfg.g5))
        harm = harmonics(disp * inv_r[..., None], deg)
        ps = jnp.stack([g5_power_sums(harm, jnp.exp(-eta * r2) * fc, onehot, deg) for eta in etas])
        sums.append(jnp.moveaxis(combine(cfg.g5, which, ps), 2, 0))
    elif cfg.g5:
        etas5 = sorted({p[0] for p in cfg.g5})
        sums.append(_angular_sums(cfg.g5, cos, pair_ok, None, site_factors(etas5)))
    full = jnp.concatenate(sums, axis=-1)  # [C, S, S, P4 + P5], ordered-pair sums
    blocks.append(pair_blocks(full, s))
    return jnp.concatenate(blocks, axis=-1)


def radial_block(r: Array, fc: Array, onehot: Array, cfg: KernelConfig) -> Array:
    """[G1, G2..., G3...] per neighbour species, flattened: [C, S * n_radial].

    r, fc: [C, K] distances and cutoff values (fc = 0 for empty slots); onehot [C, K, S].
    """
    radial = [fc]
    for eta, rs in cfg.g2:
        radial.append(jnp.exp(-eta * (r - rs) ** 2) * fc)
    for kappa in cfg.g3:
        radial.append(jnp.cos(kappa * r) * fc)
    rad = jnp.einsum("ckf,cks->csf", jnp.stack(radial, axis=-1), onehot)
    return rad.reshape(r.shape[0], -1)


def pair_blocks(full: Array, n_species: int) -> Array:
    """Ordered-pair sums [C, S, S, P] -> DScribe's unordered pair blocks [C, n_pairs * P].

    Pair (a, b), a >= b, sits at a(a+1)/2 + b; the j < k sum is half the ordered sum.
    """
    out = []
    for a in range(n_species):
        for b in range(a + 1):
            blk = full[:, a, a] if a == b else full[:, a, b] + full[:, b, a]
            out.append(0.5 * blk)
    return jnp.concatenate(out, axis=-1)


def chunked_centres(fn, n_centres: int, chunk: int, *arrays: Array) -> Array:
    """Apply ``fn(*arrays_chunk) -> [c, F]`` over centre chunks with lax.map (bounded memory)."""
    if n_centres <= chunk:
        return fn(*arrays)
    n_chunks = math.ceil(n_centres / chunk)
    pad = n_chunks * chunk - n_centres

    def split(a):
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape((n_chunks, chunk) + a.shape[1:])

    out = jax.lax.map(lambda xs: fn(*xs), tuple(split(a) for a in arrays))
    return out.reshape((n_chunks * chunk,) + out.shape[2:])[:n_centres]


def validate_params(
    g2_params, g3_params, g4_params, g5_params
) -> tuple[tuple, tuple, tuple, tuple]:
    """Check parameter arrays (DScribe shapes) and return them as tuples of floats."""

    def matrix(value, cols: int, name: str, colnames: str):
        if value is None:
            return ()
        arr = np.asarray(value, dtype=np.float64)
        if arr.size == 0:
            return ()
        if arr.ndim != 2 or arr.shape[1] != cols:
            raise ValueError(
                f"{name} must be a matrix with {cols} columns ({colnames}), got shape {arr.shape}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or inf")
        if np.any(arr[:, 0] < 0):
            raise ValueError(f"{name}: eta must be >= 0, got {arr[:, 0].tolist()}")
        return tuple(tuple(float(x) for x in row) for row in arr)

    g2 = matrix(g2_params, 2, "g2_params", "eta, Rs")
    g4 = matrix(g4_params, 3, "g4_params", "eta, zeta, lambda")
    g5 = matrix(g5_params, 3, "g5_params", "eta, zeta, lambda")
    for name, g in (("g4_params", g4), ("g5_params", g5)):
        if any(p[1] < 0 for p in g):
            raise ValueError(f"{name}: zeta must be >= 0, got {[p[1] for p in g]}")
    if g3_params is None:
        g3 = ()
    else:
        arr = np.asarray(g3_params, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"g3_params must be a vector of kappa values, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("g3_params contains NaN or inf")
        g3 = tuple(float(x) for x in arr)
    return g2, g3, g4, g5
