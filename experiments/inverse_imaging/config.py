"""Configuration of the inverse-imaging experiment (CBED stacks -> projected potential)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from jaxsci._checks import is_int_at_least
from jaxsci.data.crystal_blocks import MATERIALS
from jaxsci.imaging import wavelength

__all__ = ["Config", "tiny_config"]


@dataclass(frozen=True)
class Config:
    """Everything the experiment does; ``validate()`` checks it before any work.

    Specimens: a random material from ``materials`` with a random low-index zone axis along
    the beam, a random rotation about it and a random thickness of ``n_slices`` slices of
    ``dz`` (``n_slices`` uniform in ``slices``), cut to a periodic ``extent x extent`` cell
    sampled by ``grid x grid`` pixels. Data: CBED patterns (multislice, ``energy``,
    ``semiangle``, ``defocus``) at a ``scan x scan`` grid of probe positions spread evenly
    over the cell, optionally with Poisson noise of ``dose`` electrons per pattern. Target:
    the specimen's total projected potential, low-passed to ``resolution`` x Nyquist, mean
    removed, in kV·Å. ePIE with the known probe (projection approximation) is the classical
    baseline; with ``refine_iters`` its potential is also refined through the multislice
    model, the thickness chosen by the fit (``ePIE+MS``, the strongest classical one). The
    FCN (U-Net) reads either the raw log CBED stack (``fcn_input="cbed"``, the paper's
    formulation; use ``bottleneck="dense"``: diffraction to real space is a global map) or
    the ePIE object (``"epie"``: a learned correction of the projection approximation, real
    space to real space, a local map; with ``residual`` the answer is ePIE's potential plus
    the network's output, so where ePIE is right nothing is learned).
    """

    out_root: str = "runs"
    run_name: str = "inverse_imaging"
    progress: bool = True
    seed: int = 0

    # optics and sampling
    energy: float = 200e3  # eV
    semiangle: float = 20.0  # mrad
    defocus: float = 100.0  # Å: a ~4 Å wide probe, so neighbouring positions overlap
    grid: int = 32  # pixels per side (real space and diffraction space)
    extent: float = 6.4  # Å, side of the periodic cell
    scan: int = 4  # scan x scan probe positions, spacing extent / scan
    dz: float = 2.0  # Å per slice
    slices: tuple[int, int] = (1, 10)  # thickness from 1 * dz to 10 * dz (2-20 Å)
    rms_displacement: float = 0.08  # Å, Debye-Waller blur of the atoms
    min_distance: float = 1.5  # Å: merge atoms the periodic cell's seams bring closer
    resolution: float = 0.5  # target low-pass, fraction of the Nyquist frequency
    dose: float | None = None  # electrons per pattern (Poisson noise); None: noise-free
    materials: tuple[str, ...] = MATERIALS

    # data set and model
    n_train: int = 2048
    n_test: int = 256
    fcn_input: str = "epie"  # "epie": the ePIE object; "cbed": the log CBED stack
    residual: bool = True  # with "epie": the network predicts ePIE's error (answer = ePIE + it)
    features: tuple[int, ...] = (16, 32, 64)
    bottleneck: str = "conv"  # "dense" for fcn_input="cbed"
    dense_channels: int = 4

    # training (Adam, cosine decay) and the baseline
    batch_size: int = 32
    epochs: int = 24
    lr: float = 2e-3
    epie_iters: int = 100
    refine_iters: int = 30  # L-BFGS iterations of the multislice refinement per thickness; 0: off
    refine_per_slice: bool = True  # then refine every slice on its own at the chosen thickness
    n_examples: int = 4  # test samples drawn in examples.png

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first problem (nothing is built or written)."""
        if not self.run_name or "/" in self.run_name or self.run_name in (".", ".."):
            raise ValueError(f"run_name must be a plain folder name, got {self.run_name!r}")
        if not is_int_at_least(self.seed, 0):
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if self.min_distance >= 1.9:
            raise ValueError(
                f"min_distance ({self.min_distance} Å) must stay below the shortest bond of "
                "the materials (Ti-O, 1.95 Å) so that only seam pairs are merged"
            )
        for name in ("grid", "scan", "n_train", "n_test", "batch_size", "epochs", "epie_iters"):
            value = getattr(self, name)
            if not is_int_at_least(value, 1):
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.refine_per_slice, bool):
            raise ValueError(f"refine_per_slice must be a bool, got {self.refine_per_slice!r}")
        if not is_int_at_least(self.refine_iters, 0):
            raise ValueError(f"refine_iters must be an int >= 0, got {self.refine_iters!r}")
        for name in ("energy", "semiangle", "extent", "dz", "lr"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive and finite, got {value!r}")
        if not (math.isfinite(self.defocus) and math.isfinite(self.rms_displacement)):
            raise ValueError("defocus and rms_displacement must be finite")
        if not (math.isfinite(self.min_distance) and self.min_distance > 0):
            raise ValueError(f"min_distance must be positive (Å), got {self.min_distance}")
        if self.rms_displacement < 0:
            raise ValueError(f"rms_displacement must be >= 0, got {self.rms_displacement}")
        lo, hi = self.slices
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            raise ValueError(
                f"slices must be (min, max) ints with 1 <= min <= max, got {self.slices}"
            )
        if not 0 < self.resolution <= 2 / 3:
            raise ValueError(
                f"resolution must be in (0, 2/3] (the band limit), got {self.resolution}"
            )
        if self.dose is not None and not (math.isfinite(self.dose) and self.dose > 0):
            raise ValueError(
                f"dose must be positive (electrons per pattern) or None, got {self.dose}"
            )
        unknown = set(self.materials) - set(MATERIALS)
        if not self.materials or unknown:
            raise ValueError(
                f"materials must be a non-empty subset of {MATERIALS}, got {self.materials}"
            )
        if self.n_train < self.batch_size:
            raise ValueError(
                f"n_train ({self.n_train}) must be at least batch_size ({self.batch_size})"
            )
        if not self.features or not all(is_int_at_least(f, 1) for f in self.features):
            raise ValueError(f"features must be ints >= 1, got {self.features}")
        # the probe's aperture must lie inside the simulation's 2/3 band limit
        k_nyquist = self.grid / (2 * self.extent)  # 1/Å
        top = 1e3 * float(wavelength(self.energy)) * (2 / 3) * k_nyquist  # mrad
        if self.semiangle > top:
            raise ValueError(
                f"semiangle {self.semiangle} mrad exceeds the band limit of this sampling "
                f"({top:.1f} mrad): use more pixels per Å (grid / extent)"
            )
        levels = len(self.features) - 1
        if not self.features or self.grid % 2**levels:
            raise ValueError(
                f"grid ({self.grid}) must be divisible by 2**(len(features) - 1) = {2**levels}"
            )
        if self.fcn_input not in ("epie", "cbed"):
            raise ValueError(f"fcn_input must be 'epie' or 'cbed', got {self.fcn_input!r}")
        if self.bottleneck not in ("conv", "dense"):
            raise ValueError(f"bottleneck must be 'conv' or 'dense', got {self.bottleneck!r}")
        if not 0 <= self.n_examples <= self.n_test:
            raise ValueError(f"n_examples must be in [0, n_test], got {self.n_examples}")

    @property
    def n_positions(self) -> int:
        """Probe positions per specimen (input channels of the FCN)."""
        return self.scan * self.scan


def tiny_config() -> Config:
    """Smoke-test size (seconds)."""
    return Config(
        progress=False,
        grid=32,
        extent=8.0,
        scan=2,
        slices=(1, 3),
        n_train=16,
        n_test=8,
        features=(8, 16),
        dense_channels=2,
        batch_size=8,
        epochs=2,
        epie_iters=5,
        refine_iters=3,
        n_examples=2,
    )
