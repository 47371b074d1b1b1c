"""PNG plots of the Pt nanoparticle run (headless matplotlib, no pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

from jaxsci.train import plot_curves, plot_scatter

__all__ = ["clusters", "latent_space", "target_vs_obtained", "training_curves"]


def training_curves(history: Sequence[dict], path: Path) -> Path:
    """Train/validation loss, reconstruction and KL terms per epoch."""
    keys = [
        k for k in ("loss", "val_loss", "recon", "val_recon", "kl") if history and k in history[-1]
    ]
    return plot_curves(history, keys, path, logy=True, title="CVAE training")


def target_vs_obtained(target, obtained, sizes, path: Path) -> Path:
    """Obtained (relaxed) vs target energy per atom, coloured by cluster size."""
    return plot_scatter(
        target,
        obtained,
        path,
        xlabel="target energy (eV/atom above bulk)",
        ylabel="obtained energy after EMT relax (eV/atom)",
        color=np.asarray(sizes, float),
        color_label="N atoms",
        diagonal=True,
        title="generated Pt clusters",
    )


def latent_space(z_mean: np.ndarray, energies: np.ndarray, path: Path) -> Path:
    """First two principal components of the posterior means, coloured by energy."""
    z = np.asarray(z_mean, float)
    z = z - z.mean(0)
    if z.shape[1] >= 2:
        _, _, vt = np.linalg.svd(z, full_matrices=False)
        xy = z @ vt[:2].T
    else:
        xy = np.concatenate([z, np.zeros_like(z)], axis=1)
    return plot_scatter(
        xy[:, 0],
        xy[:, 1],
        path,
        xlabel="latent PC 1",
        ylabel="latent PC 2",
        color=energies,
        color_label="energy (eV/atom)",
        title="CVAE latent space (training set)",
    )


def clusters(structures: Sequence[Atoms], path: Path) -> Path:
    """A row of generated clusters drawn with ase.visualize.plot.plot_atoms."""
    from ase.visualize.plot import plot_atoms
    from matplotlib.figure import Figure

    n = max(1, len(structures))
    fig = Figure(figsize=(2.6 * n, 3.0), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, atoms in zip(axes, structures, strict=False):
        a = atoms.copy()
        a.center()
        plot_atoms(a, ax, radii=0.6, rotation="10x,20y,0z")
        title = f"Pt{len(a)}"
        if "energy_per_atom" in a.info:
            title += f"\nE={a.info['energy_per_atom']:.3f}"
        if "target_energy" in a.info:
            title += f" (target {a.info['target_energy']:.3f})"
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    fig.savefig(path, dpi=110)
    return Path(path)
