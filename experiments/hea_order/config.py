"""Configuration of the HEA order-parameter experiment (units: K, eV, Angstrom)."""

from __future__ import annotations

import dataclasses
import functools
import numbers
from dataclasses import dataclass

import numpy as np

from jaxsci._checks import is_int_at_least
from jaxsci.alloys import MONBTAW, bcc_lattice

__all__ = ["ANCHORS", "Config", "min_n_cells", "tiny_config", "window_tag"]

#: Reference numbers of Yin et al., "VAE order parameter", Nat. Comput. Sci. 2021
#: (arXiv 2109.05598), as summarised in shared/ANCHORS.md: MoNbTaW, JAX swap Monte Carlo
#: with parallel tempering on 8^3 and 10^3 BCC supercells (1024 and 2000 sites).
ANCHORS = {
    "source": "Yin et al., Nat. Comput. Sci. 2021 (arXiv 2109.05598); shared/ANCHORS.md",
    "lattices": "BCC 8^3 and 10^3 conventional cells (1024 and 2000 sites)",
    "heat_capacity_T2_K": (880.0, 960.0),  # B2 ordering
    "heat_capacity_T1_K": (240.0, 260.0),  # second, low-temperature transition
    "susceptibility_peaks_K": (238.0, 964.0),  # MLP VAE, latent dimension 3
}


@functools.cache
def min_n_cells(n_shells: int) -> int:
    """The smallest ``n_cells`` whose BCC supercell holds ``n_shells`` neighbour shells
    (each seeing distinct sites): 5 for MoNbTaW's 6 shells."""
    if not is_int_at_least(n_shells, 1):
        raise ValueError(f"n_shells must be an int >= 1, got {n_shells!r}")
    for n_cells in range(1, 65):
        try:
            bcc_lattice(n_cells, int(n_shells))
        except ValueError:
            continue
        return n_cells
    raise ValueError(f"no supercell of up to 64 cells per edge holds {n_shells} shells")


@dataclass(frozen=True)
class Config:
    """Everything the experiment does; ``validate()`` checks it before any work.

    The alloy is MoNbTaW (``jaxsci.alloys.MONBTAW``, equimolar, 6 BCC shells of pair
    energies); ``n_shells < 6`` keeps only the first shells' interactions (smoke tests).
    """

    out_root: str = "runs"
    run_name: str = "hea_order"
    progress: bool = True
    seed: int = 0

    # lattice: 2 n_cells^3 BCC sites; lattice constant only for the written structures
    n_cells: int = 6
    n_shells: int = 6
    lattice_constant: float = 3.2  # Angstrom

    # temperature ladder: n_temperatures geometric steps t_min..t_max (denser at low T),
    # unless ``temperatures`` lists them explicitly (K, increasing)
    t_min: float = 100.0
    t_max: float = 2000.0
    n_temperatures: int = 24
    temperatures: tuple[float, ...] | None = None

    # parallel tempering (a sweep = n_sites swap attempts per replica + one exchange round)
    n_burn: int = 20000  # sweeps discarded (5,000 left the 114 K chain ordering: RESULTS.md)
    n_samples: int = 1000  # samples kept per temperature
    sample_every: int = 10  # sweeps between samples
    n_blocks: int = 10  # blocks of consecutive samples for error bars (standard errors)
    # Geweke |z| above which a temperature's chain counts as still drifting: 10 batch means
    # per share make z t-like (~9 dof): at 4, a false alarm among 24 temperatures has a 7%
    # chance (30% at 3)
    max_drift_z: float = 4.0

    # VAE on one-hot occupations [n_sites * n_species] (jaxsci.models.CVAE, no condition)
    latent_dim: int = 3
    hidden: tuple[int, ...] = (256, 64)
    beta: float = 1.0  # KL weight
    learning_rate: float = 1e-3
    batch_size: int = 128
    epochs: int = 60
    val_fraction: float = 0.1  # the last samples of every chain, held out (validation loss)
    # more VAEs, each trained on the ladder temperatures inside a window (K) only; default
    # 500-2000 K, the B2 transition's range and that of the paper's MoNbTaW latent plot
    vae_windows: tuple[tuple[float, float], ...] = ((500.0, 2000.0),)

    # analysis
    peak_prominence: float = 0.1  # fraction of a curve's range (jaxsci.metrics.thermo)
    wc_pair: tuple[str, str] = ("Mo", "Ta")  # Warren-Cowley pair highlighted (B2 ordering)
    save_samples: bool = True  # write samples.npz (occupations int8, energies, latent means)

    def ladder(self) -> np.ndarray:
        """``[R]`` temperatures (K), increasing."""
        if self.temperatures is not None:
            return np.asarray(self.temperatures, np.float64)
        return np.geomspace(self.t_min, self.t_max, self.n_temperatures)

    @property
    def min_n_samples(self) -> int:
        """The fewest ``n_samples`` the error blocks and the drift diagnostic allow."""
        return 10 * self.n_blocks

    def window_counts(self) -> list[int]:
        """Ladder temperatures inside each of ``vae_windows`` (each needs >= 3)."""
        ladder = self.ladder()
        return [int(np.sum((ladder >= lo) & (ladder <= hi))) for lo, hi in self.vae_windows]

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first problem (nothing is built or written).

        :meth:`validate_fields` first (each field on its own), then :meth:`validate_limits`
        (limits that fields set for each other)."""
        self.validate_fields()
        self.validate_limits()

    def validate_fields(self) -> None:
        """The checks of each field on its own (types, signs, finite values, ordering)."""
        if not self.run_name or "/" in self.run_name or self.run_name in (".", ".."):
            raise ValueError(f"run_name must be a plain folder name, got {self.run_name!r}")
        ints = {
            "n_cells": (self.n_cells, 1),
            "n_shells": (self.n_shells, 1),
            "n_temperatures": (self.n_temperatures, 2),
            "n_burn": (self.n_burn, 0),
            "n_samples": (self.n_samples, 2),
            "sample_every": (self.sample_every, 1),
            "n_blocks": (self.n_blocks, 2),
            "latent_dim": (self.latent_dim, 1),
            "batch_size": (self.batch_size, 1),
            "epochs": (self.epochs, 1),
        }
        for name, (value, low) in ints.items():
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not is_int_at_least(self.seed, 0) or self.seed >= 2**32:  # jax.random.key's range
            raise ValueError(f"seed must be an int in [0, 2**32), got {self.seed!r}")
        reals = ["max_drift_z", "lattice_constant", "beta", "learning_rate", "val_fraction"]
        reals += ["peak_prominence"] + (["t_min", "t_max"] if self.temperatures is None else [])
        for name in reals:  # numbers first: np.isfinite("3.2") raised a NumPy TypeError
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise ValueError(f"{name} must be a number, got {value!r}")
        n_model_shells = MONBTAW.pair_energies.shape[0]
        if self.n_shells > n_model_shells:
            raise ValueError(
                f"n_shells must be <= {n_model_shells} (MoNbTaW's), got {self.n_shells}"
            )
        if not self.max_drift_z > 0:
            raise ValueError(f"max_drift_z must be > 0, got {self.max_drift_z}")
        if not (np.isfinite(self.lattice_constant) and self.lattice_constant > 0):
            raise ValueError(f"lattice_constant must be > 0 Angstrom, got {self.lattice_constant}")
        if self.temperatures is None:
            if not (np.isfinite(self.t_min) and 0 < self.t_min):
                raise ValueError(f"t_min must be > 0 K and finite, got {self.t_min}")
            if not np.isfinite(self.t_max):
                raise ValueError(f"t_max must be finite (K), got {self.t_max}")
            if not self.t_max > self.t_min:
                raise ValueError(f"t_max ({self.t_max}) must exceed t_min ({self.t_min})")
        else:
            t = np.asarray(self.temperatures, np.float64)
            if t.ndim != 1 or t.size < 2 or not np.all(np.isfinite(t)) or np.any(t <= 0):
                raise ValueError(f"temperatures must be >= 2 positive values (K), got {t}")
            if np.any(np.diff(t) <= 0):
                raise ValueError("temperatures must be strictly increasing")
        if (
            not isinstance(self.hidden, tuple | list)
            or not self.hidden
            or not all(is_int_at_least(h, 1) for h in self.hidden)
        ):
            raise ValueError(f"hidden must be a tuple of ints >= 1, got {self.hidden!r}")
        if not (np.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta must be >= 0 and finite, got {self.beta}")
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0 and finite, got {self.learning_rate}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.peak_prominence <= 1.0:
            raise ValueError(f"peak_prominence must be in [0, 1], got {self.peak_prominence}")
        if not isinstance(self.vae_windows, tuple | list):
            raise ValueError(
                f"vae_windows must be a tuple of (low, high) K pairs, got {self.vae_windows!r}"
            )
        for w in self.vae_windows:
            ok = isinstance(w, tuple | list) and len(w) == 2
            ok = ok and all(  # NumPy numbers too
                not isinstance(v, bool | np.bool_) and isinstance(v, numbers.Real) for v in w
            )
            if not (ok and np.isfinite(w[0]) and np.isfinite(w[1]) and w[0] < w[1]):
                raise ValueError(
                    f"vae_windows: each window is a finite (low, high) pair in K, low < high, "
                    f"got {w!r}"
                )
        tags = [window_tag(w) for w in self.vae_windows]
        if len(set(tags)) != len(tags):  # their files would overwrite each other's
            raise ValueError(
                f"vae_windows: two windows round to the same whole kelvins ({tags}); their "
                "files would overwrite each other"
            )
        unknown = [s for s in self.wc_pair if s not in MONBTAW.species]
        if len(self.wc_pair) != 2 or unknown:
            raise ValueError(f"wc_pair must be two of {MONBTAW.species}, got {self.wc_pair}")

    def validate_limits(self) -> None:
        """The limits fields set for each other; call after :meth:`validate_fields`."""
        if self.n_samples < 2 * self.n_blocks:
            raise ValueError(
                f"n_samples ({self.n_samples}) must be >= 2 * n_blocks ({self.n_blocks}): "
                "each error block needs two samples"
            )
        if self.n_samples < self.min_n_samples:
            raise ValueError(
                f"n_samples ({self.n_samples}) must be >= 10 * n_blocks ({self.n_blocks}): the "
                "drift diagnostic compares n_blocks batches of the first tenth of the chain"
            )
        for w, count in zip(self.vae_windows, self.window_counts(), strict=True):
            if count < 3:
                raise ValueError(f"vae_windows: window {w} K holds fewer than 3 temperatures")
        try:  # a supercell too small for the shells (cheap: no energies, no JAX)
            bcc_lattice(int(self.n_cells), int(self.n_shells))
        except ValueError as err:
            raise ValueError(f"n_cells/n_shells: {err}") from None


def window_tag(window: tuple[float, float]) -> str:
    """The tag of a VAE window in its file names, e.g. ``"500-2000K"`` (whole kelvins)."""
    lo, hi = window
    return f"{lo:.0f}-{hi:.0f}K"


def tiny_config(**changes) -> Config:
    """A seconds-scale config for smoke tests: 250 sites, 6 temperatures, short runs."""
    base = Config(
        n_cells=5,
        n_shells=6,
        temperatures=(150.0, 300.0, 600.0, 900.0, 1400.0, 2500.0),
        n_burn=150,
        n_samples=40,
        sample_every=2,
        n_blocks=4,
        hidden=(64,),
        batch_size=16,
        epochs=40,
        vae_windows=((600.0, 2500.0),),
        progress=False,
    )
    return dataclasses.replace(base, **changes)
