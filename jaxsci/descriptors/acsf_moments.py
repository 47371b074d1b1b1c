"""Angular sums of G4/G5 through Cartesian moments (integer zeta), with matrix products.

For integer zeta, (1 + lambda cos)^zeta = sum_m C(zeta, m) lambda^m cos^m and
cos^m = sum_{|a| = m} m!/a! u_ij^a u_ik^a (u = unit vectors, a = (ax, ay, az)), so

    sum_{j != k} E_ij E_ik [E_jk] cos^m = sum_a m!/a! (V_a E V_a^T)_ii,   V_a[i, j] = E_ij u_ij^a

G5 (no E_jk factor) needs only the per-atom moments sum_j V_a[i, j]: O(N K) work. G4 in a
free cluster uses the shared pair table E (diagonal zero, so j = k drops out): one matrix
product per moment component and eta instead of a loop over triplets.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray

#: the moment path is used when every zeta is an integer no larger than this.
MAX_MOMENT_ZETA = 6


def moment_ok(params: tuple[tuple[float, float, float], ...]) -> bool:
    """True when all zetas are small non-negative integers (moment expansion is exact)."""
    return all(float(p[1]).is_integer() and 0 <= p[1] <= MAX_MOMENT_ZETA for p in params)


def monomials(max_degree: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exponents [M, 3], degree [M] and multinomial weight m!/a! [M] for degrees 0..max."""
    exps, deg, wts = [], [], []
    for m in range(max_degree + 1):
        for a in range(m, -1, -1):
            for b in range(m - a, -1, -1):
                c = m - a - b
                exps.append((a, b, c))
                deg.append(m)
                wts.append(
                    math.factorial(m) / (math.factorial(a) * math.factorial(b) * math.factorial(c))
                )
    return np.array(exps), np.array(deg), np.array(wts)


def unit_monomials(unit: Array, max_degree: int) -> Array:
    """Monomials u^a of unit vectors [..., 3] for all |a| <= max_degree: [M, ...]."""
    exps, _, _ = monomials(max_degree)
    powers = []
    for axis in range(3):
        p = [jnp.ones_like(unit[..., axis])]
        for _ in range(max_degree):
            p.append(p[-1] * unit[..., axis])
        powers.append(p)
    return jnp.stack([powers[0][a] * powers[1][b] * powers[2][c] for a, b, c in exps])


def combine(
    params: tuple[tuple[float, float, float], ...], eta_index: list[int], power_sums: Array
) -> Array:
    """G values [..., P] from power sums [E, D+1, ...] = sum_{j != k} ... cos^m (ordered pairs).

    Applies 2^(1-zeta) sum_m C(zeta, m) lambda^m S_m (still ordered-pair sums).
    """
    out = []
    for p, (_, zeta, lam) in enumerate(params):
        z = int(zeta)
        s = power_sums[eta_index[p]]
        val = sum(math.comb(z, m) * lam**m * s[m] for m in range(z + 1))
        out.append(2.0 ** (1.0 - zeta) * val)
    return jnp.stack(out, axis=-1)


def degree_sums(per_monomial: Array, max_degree: int) -> Array:
    """Weighted sum over monomials of equal degree: [M, ...] -> [max_degree + 1, ...]."""
    _, deg, wts = monomials(max_degree)
    w = jnp.asarray(wts, dtype=per_monomial.dtype).reshape((-1,) + (1,) * (per_monomial.ndim - 1))
    weighted = per_monomial * w
    return jnp.stack([jnp.sum(weighted[deg == m], axis=0) for m in range(max_degree + 1)])


def g5_power_sums(unit: Array, site: Array, onehot: Array, max_degree: int) -> Array:
    """sum_{j != k} E_ij E_ik cos^m per species pair: [D+1, S, S, C].

    unit: [C, K, 3] unit vectors (0 for empty slots); site: [C, K] factors E_ij = exp(-eta
    r^2) fc (0 for empty slots); onehot: [C, K, S] neighbour species.
    """
    v = unit_monomials(unit, max_degree) * site[None]  # [M, C, K]
    moments = jnp.einsum("mck,cks->mcs", v, onehot)
    diag = jnp.einsum("mck,cks->mcs", v * v, onehot)  # the j == k terms
    full = moments[:, :, :, None] * moments[:, :, None, :]  # [M, C, S, T]
    s = onehot.shape[-1]
    full = full - diag[..., None] * jnp.eye(s, dtype=v.dtype)
    return jnp.moveaxis(degree_sums(full, max_degree), 1, -1)  # [D+1, S, T, C]


def g4_power_sums_table(unit: Array, site: Array, onehot: Array, max_degree: int) -> Array:
    """sum_{j != k} E_ij E_ik E_jk cos^m for a free cluster: [D+1, S, S, N].

    unit: [N, N, 3] unit vectors i -> j; site: [N, N] symmetric pair table E (zero diagonal
    and zero beyond r_cut); onehot: [N, N, S] species of j, zero where the pair is invalid.
    """
    v = unit_monomials(unit, max_degree) * site[None]  # [M, N, N]
    n_species = onehot.shape[-1]
    if n_species == 1:
        vs = (v * onehot[None, :, :, 0])[:, None]
    else:
        vs = v[:, None] * jnp.moveaxis(onehot, -1, 0)[None]  # [M, S, N, N]
    m, s, n, _ = vs.shape
    w = (vs.reshape(m * s * n, n) @ site).reshape(m, s, n, n)  # sum_j V[i, j] E[j, k]
    full = jnp.stack(
        [jnp.stack([jnp.sum(w[:, a] * vs[:, b], axis=-1) for b in range(s)], 1) for a in range(s)],
        axis=1,
    )  # [M, S, T, N]
    return degree_sums(full, max_degree)
