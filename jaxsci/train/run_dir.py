"""Run folders: creation, ``metrics.json`` writing and small headless plotting helpers.

A run folder is ``<root>/<name>-<UTC timestamp>[-k]``; it is never reused, so two runs
started in the same second get different folders. Plots use ``matplotlib.figure.Figure``
directly (no pyplot global state, no display needed).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "check_output_dir",
    "check_output_file",
    "make_run_dir",
    "plot_curves",
    "plot_scatter",
    "to_jsonable",
    "write_json",
    "write_metrics",
]


def nearest_existing(path: str | Path) -> Path:
    """``path`` itself if it exists, else its nearest existing ancestor (what a ``mkdir``
    of ``path`` would have to create the rest under)."""
    probe = Path(path)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return probe


def check_output_dir(path: str | Path) -> Path:
    """Check, before any work, that run folders can be written under ``path``; return it.

    ``path`` need not exist yet (it is not created): its nearest existing ancestor must be
    a folder in which a folder can really be made (tried with a temporary folder, removed
    at once, so read-only mounts and permission rules are caught as they will be later).
    Raises ``ValueError`` with a one-line reason otherwise, for ``parser.error``."""
    path = Path(path)
    probe = nearest_existing(path)
    if not probe.is_dir():
        raise ValueError(f"cannot write under {path}: {probe} is not a folder")
    try:
        made = tempfile.mkdtemp(prefix=".jaxsci-write-check-", dir=probe)
    except OSError as exc:
        raise ValueError(f"cannot write under {path}: {exc.strerror or exc} ({probe})") from None
    os.rmdir(made)
    return path


def check_output_file(path: str | Path) -> Path:
    """Check, before any work, that the file ``path`` can be written later; return it.

    ``path`` must not be a folder or an existing read-only file, and its folder must pass
    ``check_output_dir``.
    Raises ``ValueError`` with a one-line reason otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"cannot write {path}: the file is read-only")
    check_output_dir(path.parent)
    return path


def make_run_dir(root: str | Path = "runs", name: str = "run", *, timestamp: bool = True) -> Path:
    """Create and return a fresh run folder ``root/name-YYYYmmdd-HHMMSS`` (suffix if taken).

    Under MPI call it on rank 0 only and broadcast the path (``info.comm.bcast``), as
    ``experiments/cgan_digits`` does: each rank calling it gets a folder of its own."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"run name must be a plain folder name, got {name!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}" if timestamp else name
    for k in range(1000):
        path = root / (base if k == 0 else f"{base}-{k}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RuntimeError(f"could not create a fresh run folder under {root}")


def _is_float(dtype: np.dtype) -> bool:
    """NumPy floats and ml_dtypes' (bfloat16, float8: NumPy kind "V"; NaN/inf in a bf16
    array reached ``json.dumps`` as floats and failed the strict write)."""
    if np.issubdtype(dtype, np.floating):
        return True
    if dtype.kind != "V":
        return False
    import ml_dtypes  # a JAX dependency, light; only for these types

    try:
        ml_dtypes.finfo(dtype)
    except ValueError:
        return False
    return True


def to_jsonable(obj: Any) -> Any:
    """Convert NumPy/JAX scalars and arrays, tuples and paths to JSON types; NaN/inf -> None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, bool | str) or obj is None:
        return obj
    if isinstance(obj, int) and not isinstance(obj, bool):
        return obj
    if hasattr(obj, "__array__") or isinstance(obj, float | np.generic):
        arr = np.asarray(obj)
        if arr.dtype == bool:
            return arr.tolist()
        if np.issubdtype(arr.dtype, np.integer):
            return arr.tolist()
        if _is_float(arr.dtype):
            if arr.ndim == 0:
                v = float(arr)
                return v if math.isfinite(v) else None
            return [to_jsonable(v) for v in arr]
        return arr.tolist()
    raise TypeError(f"cannot convert {type(obj).__name__} to JSON")


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` (see :func:`to_jsonable`) as indented JSON; returns the path."""
    path = Path(path)
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)
    return path


def write_metrics(run_dir: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write ``run_dir/metrics.json``."""
    return write_json(Path(run_dir) / "metrics.json", metrics)


def _new_axes(figsize: tuple[float, float] = (5.0, 4.0)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def plot_curves(
    history: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    path: str | Path,
    *,
    x_key: str = "epoch",
    logy: bool = False,
    title: str | None = None,
) -> Path:
    """Plot ``keys`` of a list of per-epoch records against ``x_key``; save a PNG.

    ``KeyError`` listing the keys the records hold, before anything is written, when
    ``x_key`` or one of ``keys`` is in none of them (a misspelt key drew an empty plot).
    A key present only as ``None`` (NaN metrics) draws no line. An empty ``history``
    draws empty axes.
    """
    if history:
        present = sorted({k for r in history for k in r})
        missing = [k for k in (x_key, *keys) if k not in present]
        if missing:
            raise KeyError(
                f"plot_curves: no record holds {', '.join(map(repr, missing))}; the records "
                f"hold {', '.join(map(repr, present))}"
            )
    fig, ax = _new_axes()
    for key in keys:
        pts = [(r[x_key], r[key]) for r in history if r.get(key) is not None and x_key in r]
        if pts:
            x, y = zip(*pts, strict=True)
            ax.plot(x, y, label=key)
    ax.set_xlabel(x_key)
    if logy:
        ax.set_yscale("symlog", linthresh=1e-3)
    if title:
        ax.set_title(title)
    ax.legend()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_scatter(
    x: Any,
    y: Any,
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    color: Any = None,
    color_label: str | None = None,
    diagonal: bool = False,
    title: str | None = None,
) -> Path:
    """Scatter ``y`` against ``x`` (optionally coloured, with a y = x line); save a PNG."""
    fig, ax = _new_axes()
    x, y = np.asarray(x, float), np.asarray(y, float)
    sc = ax.scatter(x, y, c=color, s=18, cmap="viridis" if color is not None else None)
    if color is not None:
        fig.colorbar(sc, ax=ax, label=color_label)
    if diagonal and x.size:
        finite = np.isfinite(x) & np.isfinite(y)
        lo = min(x[finite].min(), y[finite].min()) if finite.any() else 0.0
        hi = max(x[finite].max(), y[finite].max()) if finite.any() else 1.0
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    fig.savefig(path, dpi=110)
    return Path(path)
