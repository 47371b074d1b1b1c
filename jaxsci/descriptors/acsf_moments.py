"""Angular sums of G4/G5 through a spherical-harmonic expansion (integer zeta).

For integer zeta, (1 + lambda cos)^zeta = sum_l c_l P_l(cos) (Legendre, l <= zeta), and by
the addition theorem P_l(u_ij . u_ik) = sum_m Y_lm(u_ij) Y_lm(u_ik) with real harmonics
scaled by sqrt(4 pi / (2l + 1)) (u = unit vectors). Hence

    sum_{j != k} E_ij E_ik [E_jk] P_l(cos_ijk) = sum_m (V_lm E V_lm^T)_ii,  V_lm = E_ij Y_lm(u_ij)

G5 (no E_jk factor) needs only the per-atom moments sum_j V_lm[i, j]: O(N K) work. G4 in a
free cluster uses the shared pair table E (diagonal zero, so j = k drops out): one matrix
product per harmonic component (sum_l (2l+1) = (L+1)^2 of them) and eta instead of a loop
over triplets.

Internal: used by ``acsf_kernel`` and ``acsf_cluster``, not public API (empty
``__all__``); tests import its names from this module.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from numpy.polynomial import legendre

__all__ = []

Array = jnp.ndarray

#: the moment path is used when every zeta is an integer no larger than this.
MAX_MOMENT_ZETA = 6


def moment_ok(params: tuple[tuple[float, float, float], ...]) -> bool:
    """True when all zetas are small non-negative integers (moment expansion is exact)."""
    return all(float(p[1]).is_integer() and 0 <= p[1] <= MAX_MOMENT_ZETA for p in params)


def harmonics(unit: Array, max_l: int) -> Array:
    """Scaled real spherical harmonics of unit vectors [..., 3]: [(max_l + 1)^2, ...].

    Component order: degree by degree, within a degree m = 0, then (cos, sin) for m = 1..l.
    Scaling: sum over the 2l+1 components of degree l of Y(u) Y(v) = P_l(u . v). Built from
    the associated-Legendre recurrence in z and Re/Im (x + i y)^m (a few products each).
    Zero vectors (empty slots) give finite values; callers multiply by a zero weight.
    """
    x, y, z = unit[..., 0], unit[..., 1], unit[..., 2]
    cos_m, sin_m = [jnp.ones_like(x)], [jnp.zeros_like(x)]
    for _ in range(max_l):  # Re/Im of (x + i y)^m
        c, s_ = cos_m[-1], sin_m[-1]
        cos_m.append(x * c - y * s_)
        sin_m.append(x * s_ + y * c)
    # q[m][l]: polynomial part of the associated Legendre function P_l^m(z)
    q: list[dict[int, Array]] = []
    for m in range(max_l + 1):
        qm = {m: jnp.full_like(z, float(np.prod(np.arange(1, 2 * m, 2))))}
        if m + 1 <= max_l:
            qm[m + 1] = (2 * m + 1) * z * qm[m]
        for ell in range(m + 2, max_l + 1):
            qm[ell] = ((2 * ell - 1) * z * qm[ell - 1] - (ell + m - 1) * qm[ell - 2]) / (ell - m)
        q.append(qm)
    out = []
    for ell in range(max_l + 1):
        out.append(q[0][ell])
        for m in range(1, ell + 1):
            norm = math.sqrt(2.0 * math.factorial(ell - m) / math.factorial(ell + m))
            out.append(norm * q[m][ell] * cos_m[m])
            out.append(norm * q[m][ell] * sin_m[m])
    return jnp.stack(out)


def combine(
    params: tuple[tuple[float, float, float], ...], eta_index: list[int], power_sums: Array
) -> Array:
    """G values [..., P] from Legendre sums [E, L+1, ...] = sum_{j != k} ... P_l(cos).

    Applies 2^(1-zeta) (1 + lambda cos)^zeta = 2^(1-zeta) sum_l c_l P_l (ordered-pair sums).
    For |lambda| <= 1 every term is >= 0, and the expansion's cancellation round-off below 0
    is clipped (measured: -8e-8 in float32 for a linear Pt3, whose true value is 0), so that
    e.g. a log of the features stays finite.
    """
    out = []
    for p, (_, zeta, lam) in enumerate(params):
        z = int(zeta)
        poly = [math.comb(z, m) * lam**m for m in range(z + 1)]  # powers of cos
        coef = legendre.poly2leg(poly)
        s = power_sums[eta_index[p]]
        val = sum(float(coef[ell]) * s[ell] for ell in range(z + 1))
        g = 2.0 ** (1.0 - zeta) * val
        out.append(jnp.maximum(g, 0.0) if abs(lam) <= 1 else g)
    return jnp.stack(out, axis=-1)


def degree_sums(per_component: Array, max_l: int) -> Array:
    """Sum harmonic components of equal degree: [(L+1)^2, ...] -> [L + 1, ...]."""
    return jnp.stack(
        [jnp.sum(per_component[ell * ell : (ell + 1) ** 2], axis=0) for ell in range(max_l + 1)]
    )


def g5_power_sums(harm: Array, site: Array, onehot: Array, max_degree: int) -> Array:
    """sum_{j != k} E_ij E_ik P_l(cos) per species pair: [L+1, S, S, C].

    harm: [H >= (max_degree+1)^2, C, K] :func:`harmonics` of the unit vectors i -> j; site:
    [C, K] factors E_ij = exp(-eta
    r^2) fc (0 for empty slots); onehot: [C, K, S] neighbour species.
    """
    v = harm[: (max_degree + 1) ** 2] * site[None]  # [H, C, K]
    moments = jnp.einsum("mck,cks->mcs", v, onehot)
    diag = jnp.einsum("mck,cks->mcs", v * v, onehot)  # the j == k terms
    full = moments[:, :, :, None] * moments[:, :, None, :]  # [M, C, S, T]
    s = onehot.shape[-1]
    full = full - diag[..., None] * jnp.eye(s, dtype=v.dtype)
    return jnp.moveaxis(degree_sums(full, max_degree), 1, -1)  # [D+1, S, T, C]


def g4_power_sums_table(harm: Array, site: Array, onehot: Array, max_degree: int) -> Array:
    """sum_{j != k} E_ij E_ik E_jk P_l(cos) for a free cluster: [L+1, S, S, N].

    harm: [H, N, N] :func:`harmonics` of the unit vectors i -> j; site: [N, N] symmetric
    pair table E (zero diagonal and zero beyond r_cut); onehot: [N, N, S] species of j,
    zero where the pair is invalid.
    """
    h = harm[: (max_degree + 1) ** 2]
    n_species = onehot.shape[-1]
    if n_species == 1:  # site is already zero for invalid pairs
        return degree_sums(quad_diag(h, site)[:, None, None], max_degree)
    v = h * site[None]  # [H, N, N]
    vs = v[:, None] * jnp.moveaxis(onehot, -1, 0)[None]  # [H, S, N, N]
    m, s, n, _ = vs.shape
    w = (vs.reshape(m * s * n, n) @ site).reshape(m, s, n, n)  # sum_j V[i, j] E[j, k]
    full = jnp.stack(
        [jnp.stack([jnp.sum(w[:, a] * vs[:, b], axis=-1) for b in range(s)], 1) for a in range(s)],
        axis=1,
    )  # [H, S, T, N]
    return degree_sums(full, max_degree)


@jax.custom_vjp
def quad_diag(h: Array, e: Array) -> Array:
    """T[c, i] = sum_jk V[c, i, j] E[j, k] V[c, i, k] with V = h * E (E symmetric [N, N]).

    h: [C, N, N]. A custom VJP uses the symmetry of E: dT/dV = 2 V E (already computed in
    the forward pass) and dT/dE = V^T V, so the backward pass costs one matrix product.
    """
    return _quad_diag_fwd(h, e)[0]


def _quad_diag_fwd(h, e):
    c, n, _ = h.shape
    v = h * e[None]
    w = (v.reshape(c * n, n) @ e).reshape(c, n, n)
    return jnp.sum(w * v, axis=-1), (h, e, v, w)


def _quad_diag_bwd(res, g):
    h, e, v, w = res
    c, n, _ = h.shape
    dv = 2.0 * g[..., None] * w
    gv = (g[..., None] * v).reshape(c * n, n)
    de = gv.T @ v.reshape(c * n, n) + jnp.sum(dv * h, axis=0)
    return dv * e[None], de


quad_diag.defvjp(_quad_diag_fwd, _quad_diag_bwd)


def g4_power_sums_slots(
    harm: Array, site: Array, pair: Array, onehot: Array, max_degree: int
) -> Array:
    """sum_{j != k} E_ij E_ik E_jk P_l(cos) from neighbour slots: [L+1, S, S, C].

    harm: [H, C, K] harmonics of the slot unit vectors; site: [C, K] E_ij; pair: [C, K, K]
    E_jk between slots (zero on the diagonal, for empty slots and beyond r_cut); onehot:
    [C, K, S]. One batched matrix product per centre instead of per-triplet powers.
    """
    h = harm[: (max_degree + 1) ** 2]
    v = jnp.moveaxis(h * site[None], 0, 1)  # [C, H, K]
    c, nh, k = v.shape
    s = onehot.shape[-1]
    if s == 1:
        vs = v
    else:
        vs = (v[:, :, None, :] * jnp.moveaxis(onehot, -1, 1)[:, None]).reshape(c, nh * s, k)
    w = (vs @ pair).reshape(c, nh, s, k)  # sum_j V[i, j] E[j, k]
    vs = vs.reshape(c, nh, s, k)
    if s == 1:
        full = jnp.moveaxis(jnp.sum(w * vs, axis=-1), 0, -1)[:, :, None, :]  # [H, 1, 1, C]
    else:
        full = jnp.einsum("chsk,chtk->hstc", w, vs)
    return degree_sums(full, max_degree)
