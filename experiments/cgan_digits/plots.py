"""Figures of the cgan_digits run: sample grids (one row per label) and loss curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure


def sample_grid(
    images: np.ndarray, labels: np.ndarray, path: Path, *, title: str, per_row: int = 12
) -> Path:
    """One row per label of ``images [N, H, W]`` (0..16 scale); saves a PNG.

    The grid is one mosaic image (one axes: a figure of 120 small axes took ~4 s to lay out).
    """
    classes = np.unique(labels)
    h, w = images.shape[1:3]
    mosaic = np.full((len(classes) * (h + 1) - 1, per_row * (w + 1) - 1), np.nan)
    for r, lab in enumerate(classes):
        for j, img in enumerate(images[labels == lab][:per_row]):
            mosaic[r * (h + 1) : r * (h + 1) + h, j * (w + 1) : j * (w + 1) + w] = img
    fig = Figure(figsize=(per_row * 0.6, len(classes) * 0.6 + 0.4), layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["gray_r"].with_extremes(bad="white")
    ax.imshow(mosaic, cmap=cmap, vmin=0.0, vmax=16.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks(np.arange(len(classes)) * (h + 1) + (h - 1) / 2, [str(c) for c in classes])
    ax.tick_params(left=False)
    for side in ax.spines.values():
        side.set_visible(False)
    fig.suptitle(title)
    fig.savefig(path, dpi=80)
    return path


def loss_curves(history: dict[str, np.ndarray], path: Path, *, title: str) -> Path:
    """Discriminator/critic and generator losses per step; per-label runs show each label
    thin and the label mean thick. ``history[name]`` is ``[n_steps]`` or ``[L, n_steps]``."""
    names = sorted(history)
    fig = Figure(figsize=(4.0 * len(names), 3.2), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        h = np.atleast_2d(history[name])
        steps = np.arange(1, h.shape[-1] + 1)
        if h.shape[0] > 1:
            for row in h:
                ax.plot(steps, row, lw=0.4, alpha=0.4)
        ax.plot(steps, h.mean(0), lw=1.5, color="k", label="mean" if h.shape[0] > 1 else name)
        ax.set_xlabel("generator update")
        ax.set_title(name)
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    return path
