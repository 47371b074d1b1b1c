"""Fixed-length, order-free representation of a cluster's per-atom fingerprints.

A cluster of ``N`` atoms has per-atom fingerprints ``[N, F]``. Sorting every feature
column over the atoms gives a representation independent of atom order that keeps every
value (unlike max/min pooling). To give all sizes the same length, each sorted column is
read at ``Q`` fixed quantile levels ``(j + 1/2) / Q``: ``[N, F] -> [Q, F]``;
:func:`from_quantiles` maps back to any ``N``: ``[Q, F] -> [N, F]`` (columns sorted), the
per-atom target a set-based reconstruction loss compares against.

``method="step"`` (default) reads the value of the atom whose rank interval holds the level
(nearest rank) in both directions: for ``N <= Q`` the round trip is exact, so ``Q`` = the
largest cluster size loses nothing. ``method="linear"`` interpolates linearly between the
atoms' levels ``(i + 1/2) / N`` (smoother for ``N > Q``, but not exact).
"""

from __future__ import annotations

import numpy as np

__all__ = ["from_quantiles", "pooled_max_min", "to_quantiles"]


def _levels(n: int) -> np.ndarray:
    return (np.arange(n) + 0.5) / n


def _resample_columns(sorted_cols: np.ndarray, n_out: int, method: str) -> np.ndarray:
    n_in = sorted_cols.shape[0]
    if method == "step":
        rank = np.minimum((_levels(n_out) * n_in).astype(np.int64), n_in - 1)
        return sorted_cols[rank]
    if method != "linear":
        raise ValueError(f"method must be 'step' or 'linear', got {method!r}")
    x_in, x_out = _levels(n_in), _levels(n_out)
    return np.stack(
        [np.interp(x_out, x_in, sorted_cols[:, f]) for f in range(sorted_cols.shape[1])], axis=1
    )


def to_quantiles(features: np.ndarray, n_quantiles: int, method: str = "step") -> np.ndarray:
    """``[N, F]`` per-atom fingerprints -> ``[Q, F]`` sorted-column quantiles."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be [n_atoms >= 1, n_features], got {features.shape}")
    if n_quantiles < 1:
        raise ValueError(f"n_quantiles must be >= 1, got {n_quantiles}")
    return _resample_columns(np.sort(features, axis=0), n_quantiles, method)


def from_quantiles(quantiles: np.ndarray, n_atoms: int, method: str = "step") -> np.ndarray:
    """``[Q, F]`` quantiles (columns sorted first) -> ``[n_atoms, F]`` per-atom set target."""
    quantiles = np.asarray(quantiles, dtype=np.float64)
    if quantiles.ndim != 2 or quantiles.shape[0] == 0:
        raise ValueError(f"quantiles must be [Q >= 1, n_features], got {quantiles.shape}")
    if n_atoms < 1:
        raise ValueError(f"n_atoms must be >= 1, got {n_atoms}")
    return _resample_columns(np.sort(quantiles, axis=0), n_atoms, method)


def pooled_max_min(features: np.ndarray) -> np.ndarray:
    """Seed-paper pooling: ``[N, F] -> [2F]`` (column max, then column min)."""
    features = np.asarray(features, dtype=np.float64)
    return np.concatenate([features.max(axis=0), features.min(axis=0)])
