"""Validation of :func:`jaxsci.reconstruct.reconstruct`'s inputs and options.

Each check raises ``ValueError`` naming the argument and what it must be, before the
search compiles or allocates anything.

Internal: a stage of :func:`jaxsci.reconstruct.reconstruct`, not public API (empty
``__all__``); its names may change with the solver.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsci.descriptors import POOL_OPS

__all__ = []


def check_inputs(target, species, descriptor, cell, loss, pool_ops):
    """The target as float64, species indices and atomic numbers [n_atoms], the cell
    (float64 [3, 3] or None) and the loss name, after checking that they agree."""
    try:
        t = np.asarray(target, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"reconstruct: target must be an array of numbers ({exc})") from None
    if t.size == 0 or (t.ndim == 2 and t.shape[0] == 0):
        raise ValueError("reconstruct: empty structure (target has no atoms)")
    if not np.all(np.isfinite(t)):
        raise ValueError("reconstruct: target contains NaN or inf")
    if isinstance(species, str) or not hasattr(species, "__len__"):
        raise ValueError(
            f"reconstruct: species must list one symbol or atomic number per atom, got "
            f"{type(species).__name__}"
        )
    n_species = len(species)
    if n_species == 0:
        raise ValueError("reconstruct: empty structure (species is empty)")
    if n_species == 1:
        raise ValueError("reconstruct: one atom has no neighbours (any position reproduces it)")
    n_f = descriptor.n_features
    if loss is None:
        loss = "sorted" if t.ndim == 2 else "pooled"
    if loss not in ("sorted", "pooled"):
        raise ValueError(f"reconstruct: loss must be 'sorted' or 'pooled', got {loss!r}")
    if t.ndim == 2:
        if t.shape[1] != n_f:
            raise ValueError(
                f"reconstruct: target width {t.shape[1]} does not match the descriptor's "
                f"n_features {n_f}"
            )
        if t.shape[0] != n_species:
            raise ValueError(
                f"reconstruct: species lists {n_species} atoms but the target has {t.shape[0]} rows"
            )
        if loss == "pooled":
            raise ValueError(
                "reconstruct: loss='pooled' takes a pooled (1-D) target; pool the per-atom "
                "target first (jaxsci.descriptors.pool) or use loss='sorted'"
            )
    elif t.ndim == 1:
        if not pool_ops or any(op not in POOL_OPS for op in pool_ops):
            raise ValueError(
                f"reconstruct: pool_ops must be a non-empty sequence of {POOL_OPS}, "
                f"got {pool_ops!r}"
            )
        if t.shape[0] != n_f * len(pool_ops):
            raise ValueError(
                f"reconstruct: pooled target width {t.shape[0]} does not match "
                f"n_features {n_f} x {len(pool_ops)} pool ops {tuple(pool_ops)}"
            )
        if loss == "sorted":
            raise ValueError("reconstruct: a pooled (1-D) target needs loss='pooled'")
    else:
        raise ValueError(f"reconstruct: target must be 1-D or 2-D, got shape {t.shape}")
    species_idx = descriptor.encode_species(list(species))
    z = np.asarray(descriptor.species_z)[species_idx]
    if cell is not None:
        cell = np.asarray(cell, dtype=np.float64)
        if cell.shape != (3, 3) or not np.all(np.isfinite(cell)):
            raise ValueError(f"reconstruct: cell must be a finite [3, 3] array, got {cell.shape}")
        if abs(np.linalg.det(cell)) < 1e-9:
            raise ValueError("reconstruct: cell is singular")
        if not getattr(descriptor, "periodic", False):
            raise ValueError("reconstruct: a cell was given but the descriptor is not periodic")
    elif getattr(descriptor, "periodic", False):
        # It searched a free cluster in silence (a periodic target's atoms then missed the
        # neighbours of every image).
        raise ValueError(
            "reconstruct: the descriptor is periodic: pass cell= ([3, 3] lattice vectors) "
            "for a periodic target, or use a descriptor with periodic=False for a free "
            "cluster"
        )
    return t, np.asarray(species_idx, np.int32), z, cell, loss


def check_options(
    integers: dict[str, tuple[Any, int]], reals: dict[str, tuple[Any, float, float, bool]]
) -> None:
    """Raise ValueError for an option of the wrong type or out of range.

    integers: name -> (value, lowest allowed); a float such as ``4.0`` is refused (it
    would be truncated or fail deep inside). reals: name -> (value, low, high, whether
    ``low`` itself is excluded); they must be finite (NaN, inf and non-numbers refused).
    """
    for name, (value, low) in integers.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"reconstruct: need an integer {name} >= {low} (got {value!r})")
    for name, (value, low, high, open_low) in reals.items():
        number = isinstance(value, int | float | np.integer | np.floating)
        if isinstance(value, bool) or not number:
            raise ValueError(f"reconstruct: {name} must be a real number (got {value!r})")
        above = value > low if open_low else value >= low
        if not (above and value <= high and np.isfinite(value)):
            bounds = f"{'>' if open_low else '>='} {low}" + (
                f" and <= {high}" if np.isfinite(high) else ""
            )
            raise ValueError(f"reconstruct: need {name} {bounds} (got {value!r})")


def check_key(key: Any) -> None:
    """Raise ValueError unless ``key`` is a ``jax.random`` key (typed, or raw uint32 [2])."""
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
    raw = dtype == np.uint32 and getattr(key, "shape", None) == (2,)
    if not ((typed and key.shape == ()) or raw):
        raise ValueError(
            f"reconstruct: key must be one jax.random key, e.g. jax.random.key(0) (got {key!r})"
        )


def check_guesses(initial_positions: Any | None, n: int) -> np.ndarray:
    """``initial_positions`` as a finite ``[k, n, 3]`` float64 array (``k = 0`` for None)."""
    if initial_positions is None:
        return np.zeros((0, n, 3))
    try:
        g = np.asarray(initial_positions, dtype=np.float64)
    except (TypeError, ValueError) as err:  # ragged lists, non-numbers
        raise ValueError(
            f"reconstruct: initial_positions must be a numeric [k, {n}, 3] array ({err})"
        ) from None
    if g.ndim == 2:
        g = g[None]
    if g.ndim != 3 or g.shape[1:] != (n, 3):
        raise ValueError(
            f"reconstruct: initial_positions must have shape [k, {n}, 3], got {g.shape}"
        )
    if not np.all(np.isfinite(g)):
        raise ValueError("reconstruct: initial_positions contain NaN or inf")
    return g
