"""jaxsci.alloys: lattice alloys (BCC shells, effective pair interactions) and swap Monte
Carlo with parallel tempering, for order-disorder transitions in high-entropy alloys."""

from jaxsci.alloys.hamiltonian import (
    MONBTAW,
    RYDBERG_EV,
    AlloyModel,
    PairHamiltonian,
    epi_from_rydberg,
    pair_hamiltonian,
)
from jaxsci.alloys.lattice import Lattice, bcc_lattice
from jaxsci.alloys.montecarlo import (
    K_B,
    PTResult,
    PTState,
    parallel_tempering,
    pt_init,
    pt_sweeps,
    random_occupation,
    site_counts,
)

__all__ = [
    "K_B",
    "MONBTAW",
    "RYDBERG_EV",
    "AlloyModel",
    "Lattice",
    "PTResult",
    "PTState",
    "PairHamiltonian",
    "bcc_lattice",
    "epi_from_rydberg",
    "pair_hamiltonian",
    "parallel_tempering",
    "pt_init",
    "pt_sweeps",
    "random_occupation",
    "site_counts",
]
