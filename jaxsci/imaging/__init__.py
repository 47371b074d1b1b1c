"""jaxsci.imaging: a differentiable electron-scattering forward model (4D-STEM CBED) and
the classical ptychography baseline, for inverse imaging (Laanait et al. 2019).

Optics (:mod:`~jaxsci.imaging.optics`): ``wavelength``, ``interaction_constant``,
``Grid``, ``probe``, ``transmission``, ``propagator``, ``propagate``, ``fourier_shift``,
``shift_phase``, ``band_limit_mask``.
Potential (:mod:`~jaxsci.imaging.potential`): ``projected_potential`` (Wentzel atoms,
Fourier sum, Debye-Waller blur), ``screening_radius``.
Multislice (:mod:`~jaxsci.imaging.scattering`): ``multislice``, ``cbed``, ``cbed_stack``.
Ptychography (:mod:`~jaxsci.imaging.ptycho`): ``epie`` -> ``EPIEResult``,
``potential_from_object``.
Multislice inversion (:mod:`~jaxsci.imaging.inversion`): ``refine_potential`` ->
``RefineResult`` (L-BFGS through the multislice model from a first guess).

Units: Å, eV, V·Å (projected potential), mrad (semi-angle). Positions are ``(x, y)``;
arrays are ``[ny, nx]``. Conventions are in the :mod:`~jaxsci.imaging.optics` docstring.
"""

from jaxsci.imaging.inversion import RefineResult, refine_potential
from jaxsci.imaging.optics import (
    BOHR_A,
    COULOMB_VA,
    Grid,
    band_limit_mask,
    fourier_shift,
    interaction_constant,
    probe,
    propagate,
    propagator,
    shift_phase,
    transmission,
    wavelength,
)
from jaxsci.imaging.potential import projected_potential, screening_radius
from jaxsci.imaging.ptycho import EPIEResult, epie, potential_from_object
from jaxsci.imaging.scattering import cbed, cbed_stack, multislice

__all__ = [
    "BOHR_A",
    "COULOMB_VA",
    "EPIEResult",
    "RefineResult",
    "Grid",
    "band_limit_mask",
    "cbed",
    "cbed_stack",
    "epie",
    "fourier_shift",
    "interaction_constant",
    "multislice",
    "potential_from_object",
    "probe",
    "projected_potential",
    "propagate",
    "propagator",
    "refine_potential",
    "screening_radius",
    "shift_phase",
    "transmission",
    "wavelength",
]
