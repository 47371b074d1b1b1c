"""PNG plots of the HEA order-parameter run (headless matplotlib, no pyplot state).

Temperature axes are logarithmic (the ladder is geometric); the paper's transition
ranges (``config.ANCHORS``) are shaded grey for comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.hea_order.config import ANCHORS
from jaxsci.train import plot_curves

__all__ = [
    "heat_capacity",
    "latent_means",
    "order_parameter",
    "susceptibility",
    "training_curves",
    "warren_cowley",
]


def _axes(figsize: tuple[float, float] = (5.5, 4.0), ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _log_t_axis(ax, t) -> None:
    """Log temperature axis with plain-number ticks (100, 200, 500, 1000, ...)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    lo, hi = float(np.min(t)), float(np.max(t))
    ticks = [v * 10**k for k in range(0, 6) for v in (1, 2, 3, 5)]
    ax.xaxis.set_major_locator(FixedLocator([v for v in ticks if lo / 1.2 <= v <= hi * 1.2]))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("T (K)")


def _shade_anchors(ax, *, chi: bool = False) -> None:
    for key in ("heat_capacity_T1_K", "heat_capacity_T2_K"):
        lo, hi = ANCHORS[key]
        ax.axvspan(lo, hi, color="0.85", zorder=0)
    if chi:
        for t in ANCHORS["susceptibility_peaks_K"]:
            ax.axvline(t, color="0.6", ls=":", lw=1, zorder=0)


def _curve_with_peaks(
    t: np.ndarray,
    y: np.ndarray,
    err: np.ndarray,
    peaks: Sequence[float],
    path: Path,
    *,
    ylabel: str,
    title: str,
    chi: bool = False,
    label: str | None = None,
    extra: tuple[np.ndarray, str] | None = None,
) -> Path:
    fig, (ax,) = _axes()
    _shade_anchors(ax, chi=chi)
    ax.errorbar(t, y, yerr=err, fmt="o-", ms=3, lw=1, capsize=2, label=label)
    if extra is not None:
        ax.plot(t, extra[0], "s--", ms=3, lw=1, color="0.5", label=extra[1])
    for p in peaks:
        ax.axvline(p, color="C3", ls="--", lw=1)
        ax.annotate(f"{p:.0f} K", (p, 1.0), xycoords=("data", "axes fraction"),
                    ha="center", va="top", fontsize=8, color="C3")  # fmt: skip
    _log_t_axis(ax, t)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if label is not None or extra is not None:
        ax.legend(fontsize=8, loc="upper right")
    fig.savefig(path, dpi=110)
    return Path(path)


def heat_capacity(t, c, c_err, peaks: Sequence[float], path: Path) -> Path:
    """``C(T)`` per site (k_B) with block errors, found peaks (red) and the paper's ranges."""
    return _curve_with_peaks(
        np.asarray(t), np.asarray(c), np.asarray(c_err), peaks, path,
        ylabel="C / (N k_B)", title="heat capacity (grey: paper's T1, T2 ranges)",
    )  # fmt: skip


def susceptibility(t, chi, chi_err, peaks: Sequence[float], path: Path, *, chi_hot=None) -> Path:
    """``chi(T) = N Var(M) / k_B T`` (1/eV) with found peaks and the paper's (dotted);
    ``chi_hot``: the same with M measured from the hottest temperature's centroid (grey)."""
    extra = None if chi_hot is None else (np.asarray(chi_hot), "M from hot centroid")
    return _curve_with_peaks(
        np.asarray(t), np.asarray(chi), np.asarray(chi_err), peaks, path,
        ylabel="chi = N Var(M) / k_B T (1/eV)",
        title="VAE order-parameter susceptibility (dotted: paper's peaks)", chi=True,
        label="M = sum |mu_i|", extra=extra,
    )  # fmt: skip


def order_parameter(t, m_mean, m_err, eta, path: Path, *, m_hot=None) -> Path:
    """``<M>(T)`` (left axis; ``m_hot``: measured from the hot centroid) and the B2
    long-range order ``<eta>(T)`` (right axis)."""
    fig, (ax,) = _axes()
    _shade_anchors(ax)
    ax.errorbar(t, m_mean, yerr=m_err, fmt="o-", ms=3, lw=1, capsize=2, label="<M> (VAE)")
    if m_hot is not None:
        ax.plot(t, m_hot, "^:", ms=3, lw=1, color="C2", label="<M> from hot centroid")
    _log_t_axis(ax, t)
    ax.set_ylabel("<M> = <sum_i |mu_i|>")
    ax2 = ax.twinx()
    ax2.plot(t, eta, "s--", ms=3, lw=1, color="C1", label="<eta> (B2 LRO)")
    ax2.set_ylabel("B2 order <eta>", color="C1")
    ax2.set_ylim(0, max(1.0, float(np.max(eta)) * 1.05))
    ax.legend(loc="upper right", fontsize=8)
    ax2.legend(loc="lower left", fontsize=8)
    ax.set_title("order parameters", fontsize=9)
    fig.savefig(path, dpi=110)
    return Path(path)


def latent_means(mu: np.ndarray, temperatures: np.ndarray, path: Path) -> Path:
    """Encoder means ``[n, L]`` in pairs of latent axes, coloured by temperature (log)."""
    from matplotlib.colors import LogNorm

    mu = np.asarray(mu, float)
    if mu.shape[1] == 1:
        mu = np.concatenate([mu, np.zeros_like(mu)], axis=1)
    pairs = [(0, 1), (0, 2), (1, 2)][: 1 if mu.shape[1] == 2 else 3]
    fig, axes = _axes((4.0 * len(pairs) + 1.0, 3.8), len(pairs))
    temperatures = np.asarray(temperatures, float)
    order = np.argsort(-temperatures)  # hot first, cold drawn on top
    norm = LogNorm(temperatures.min(), temperatures.max())
    sc = None
    for ax, (i, j) in zip(axes, pairs, strict=True):
        sc = ax.scatter(mu[order, i], mu[order, j], c=temperatures[order], s=3, cmap="coolwarm",
                        norm=norm, alpha=0.6, linewidths=0)  # fmt: skip
        ax.set_xlabel(f"mu_{i + 1}")
        ax.set_ylabel(f"mu_{j + 1}")
    fig.colorbar(sc, ax=list(axes), label="T (K)")
    fig.suptitle("VAE latent means of all samples", fontsize=9)
    fig.savefig(path, dpi=110)
    return Path(path)


def warren_cowley(t, wc: np.ndarray, species: Sequence[str], path: Path) -> Path:
    """First-shell Warren-Cowley ``alpha_ab(T)`` of every unlike pair (``wc`` ``[R, S, S]``)."""
    fig, (ax,) = _axes()
    _shade_anchors(ax)
    s = len(species)
    for a in range(s):
        for b in range(a + 1, s):
            ax.plot(t, wc[:, a, b], "o-", ms=3, lw=1, label=f"{species[a]}-{species[b]}")
    ax.axhline(0, color="k", lw=0.5)
    _log_t_axis(ax, t)
    ax.set_ylabel("alpha (first shell)")
    ax.legend(fontsize=8, ncols=2)
    ax.set_title("Warren-Cowley short-range order", fontsize=9)
    fig.savefig(path, dpi=110)
    return Path(path)


def training_curves(history: Sequence[dict], path: Path) -> Path:
    """VAE train/validation loss, reconstruction and KL per epoch."""
    keys = [k for k in ("loss", "val_loss", "recon", "kl") if history and k in history[-1]]
    return plot_curves(history, keys, path, logy=True, title="VAE training")
