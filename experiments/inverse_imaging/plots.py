"""Figures of the inverse-imaging run (matplotlib's object API, no global state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_error_vs_thickness", "plot_examples", "plot_training"]


def plot_training(history: dict[str, list[float]], path: Path) -> Path:
    """Training loss and held-out median relative error per epoch."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.semilogy(history["epoch"], history["train_loss"], "o-")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training MSE (kV·Å)²")
    ax2.plot(history["epoch"], history["test_median_error"], "o-")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("test median relative error")
    ax2.set_ylim(0, None)
    fig.savefig(path, dpi=110)
    return path


def plot_examples(
    log_cbed: np.ndarray,
    truth: np.ndarray,
    predictions: dict[str, np.ndarray],
    titles: list[str],
    path: Path,
) -> Path:
    """One row per specimen: a CBED pattern (log), the true potential, each method's."""
    from matplotlib.figure import Figure

    cols = 2 + len(predictions)
    fig = Figure(figsize=(2.6 * cols, 2.6 * len(truth)), layout="constrained")
    axes = fig.subplots(len(truth), cols, squeeze=False)
    for r in range(len(truth)):
        lo, hi = float(truth[r].min()), float(truth[r].max())
        panels = [("CBED, position 1 (log)", log_cbed[r], None)]
        panels.append((f"truth\n{titles[r]}", truth[r], (lo, hi)))
        for name, pred in predictions.items():
            err = np.linalg.norm(pred[r] - truth[r]) / np.linalg.norm(truth[r])
            panels.append((f"{name} (rel. err. {err:.2f})", pred[r], (lo, hi)))
        for ax, (title, img, lim) in zip(axes[r], panels, strict=True):
            kw = {} if lim is None else {"vmin": lim[0], "vmax": lim[1]}
            ax.imshow(img, cmap="magma" if lim is None else "viridis", **kw)
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.savefig(path, dpi=100)
    return path


def plot_error_vs_thickness(
    thickness: np.ndarray, errors: dict[str, np.ndarray], path: Path
) -> Path:
    """Relative error of every test specimen against its thickness, median per thickness."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.0), layout="constrained")
    ax = fig.subplots()
    ts = np.unique(thickness)
    for name, err in errors.items():
        jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(err))
        points = ax.scatter(thickness + jitter, err, s=6, alpha=0.35)
        med = [np.median(err[thickness == t]) for t in ts]
        ax.plot(ts, med, "-o", color=points.get_facecolor()[0][:3], label=f"{name} (median)")
    ax.set_xlabel("specimen thickness (Å)")
    ax.set_ylabel("relative error of the projected potential")
    ax.set_ylim(0, None)
    ax.legend()
    fig.savefig(path, dpi=110)
    return path
