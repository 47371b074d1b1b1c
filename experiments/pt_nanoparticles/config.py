"""Configuration of the Pt nanoparticle generation experiment (units: Angstrom, eV, K)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from jaxsci.data.pt_clusters import PtClusterConfig

__all__ = ["Config", "tiny_config"]

# Radial G2 Gaussians (eta 1/A^2, Rs A) over the first four Pt neighbour shells, one broad
# coordination-like term, and two G4 angular terms (eta 1/A^2, zeta, lambda = +-1).
DEFAULT_G2 = tuple((3.0, rs) for rs in (2.6, 3.0, 3.5, 3.9, 4.4, 4.8, 5.3)) + ((0.3, 0.0),)
DEFAULT_G4 = ((0.01, 1.0, 1.0), (0.01, 1.0, -1.0))


@dataclass(frozen=True)
class Config:
    """Everything the experiment does; ``validate()`` checks it before any work."""

    data: PtClusterConfig = field(default_factory=PtClusterConfig)
    cache_dir: str | None = None  # data cache root (default .cache/jaxsci/pt_clusters)
    out_root: str = "runs"
    run_name: str = "pt_nanoparticles"
    n_workers: int | None = None  # EMT worker processes (default min(2, cpu count))
    progress: bool = True

    # descriptor: jaxsci.descriptors.ACSF (DScribe parameter meaning)
    r_cut: float = 6.0
    g2_params: tuple[tuple[float, float], ...] = DEFAULT_G2
    g4_params: tuple[tuple[float, float, float], ...] = DEFAULT_G4

    # representation: sorted per-feature columns read at n_quantiles levels (nearest rank);
    # None = the largest cluster size, which makes the representation exact for every size
    n_quantiles: int | None = None

    # conditional VAE (Fung et al. 2022: ELU MLP 3 x 128, latent 10, Adam 1e-3)
    latent_dim: int = 10
    hidden: tuple[int, ...] = (128, 128, 128)
    beta: float = 1.0  # KL weight
    learning_rate: float = 1e-3
    batch_size: int = 64
    epochs: int = 400
    val_fraction: float = 0.1  # seeds (with their MD snapshots) held out for validation
    checkpoint_every: int = 100  # epochs

    # generation
    n_targets: int = 12  # target energies, evenly spaced over target_range
    samples_per_target: int = 3
    target_range: tuple[float, float] = (0.05, 0.95)  # quantiles of relaxed training energies
    # sizes generated at: n_generation_sizes values evenly spaced over the data's size range;
    # a target energy gets the size whose mean relaxed training energy is nearest to it.
    # Few distinct sizes keep reconstruction cheap (it compiles once per size).
    n_generation_sizes: int = 6
    reconstruct_starts: int = 8  # parallel starts per structure
    reconstruct_rounds: int = 10  # basin-hopping rounds (jaxsci.reconstruct max_rounds)
    reconstruct_steps_per_round: int = 40
    reconstruct_time_limit: float = 60.0  # s per structure: a safety cap (includes compiling)
    relax_fmax: float = 0.05  # eV/A
    relax_steps: int = 1000
    novelty_tol: float = 0.02  # A, mean |sorted pair distance difference|
    n_plot_clusters: int = 6
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first problem (nothing is built or written)."""
        self.data.validate()
        if self.n_workers is not None and self.n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {self.n_workers}")
        if self.r_cut <= 0:
            raise ValueError(f"r_cut must be > 0 Angstrom, got {self.r_cut}")
        if not self.g2_params and not self.g4_params:
            raise ValueError("the descriptor needs at least one G2 or G4 term")
        if self.n_quantiles is not None and self.n_quantiles < 1:
            raise ValueError(f"n_quantiles must be >= 1 or None, got {self.n_quantiles}")
        positive = {
            "latent_dim": self.latent_dim,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "checkpoint_every": self.checkpoint_every,
            "n_targets": self.n_targets,
            "samples_per_target": self.samples_per_target,
            "n_generation_sizes": self.n_generation_sizes,
            "reconstruct_starts": self.reconstruct_starts,
            "reconstruct_rounds": self.reconstruct_rounds,
            "reconstruct_steps_per_round": self.reconstruct_steps_per_round,
            "relax_steps": self.relax_steps,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden layer widths must be >= 1, got {self.hidden}")
        if not (0 <= self.beta < math.inf and 0 < self.learning_rate < math.inf):  # nan too
            raise ValueError(
                f"beta must be a finite number >= 0 and learning_rate a finite number > 0, got "
                f"{self.beta} and {self.learning_rate}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        lo, hi = self.target_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"target_range must be quantiles 0 <= lo <= hi <= 1, got {lo, hi}")
        if not self.reconstruct_time_limit > 0:  # nan too; inf: no limit, as reconstruct's
            raise ValueError(
                f"reconstruct_time_limit must be > 0 s (inf: no limit), got "
                f"{self.reconstruct_time_limit}"
            )
        if not (0 < self.relax_fmax < math.inf and 0 < self.novelty_tol < math.inf):
            raise ValueError(
                f"relax_fmax and novelty_tol must be finite numbers > 0, got {self.relax_fmax} "
                f"and {self.novelty_tol}"
            )
        if not self.run_name or "/" in self.run_name:
            raise ValueError(f"run_name must be a plain folder name, got {self.run_name!r}")


def tiny_config(**changes) -> Config:
    """A seconds-scale config for smoke tests: a few sizes, few epochs, few targets."""
    data = PtClusterConfig(
        min_size=10,
        max_size=12,
        shapes=("icosahedron", "random"),
        md_temperatures=(600.0,),
        md_snapshots=2,
        md_interval=10,
    )
    base = Config(
        data=data,
        hidden=(32, 32),
        latent_dim=4,
        epochs=20,
        batch_size=16,
        checkpoint_every=20,
        n_targets=4,
        samples_per_target=2,
        n_generation_sizes=1,
        reconstruct_starts=2,
        reconstruct_rounds=2,
        n_plot_clusters=2,
        n_workers=1,
        progress=False,
    )
    return dataclasses.replace(base, **changes)
