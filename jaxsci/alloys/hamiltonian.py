"""Effective pair interactions (EPIs) of a substitutional alloy on a lattice.

The energy of an occupation ``sigma`` (species index per site) is a sum over bonds::

    E(sigma) = sum_s sum_{bonds (i, j) in shell s} V_s[sigma_i, sigma_j]        (eV)

with ``V`` of shape ``[n_shells, n_species, n_species]`` (symmetric in the species). A
swap of two sites changes only the bonds that touch them, so :func:`pair_hamiltonian`
returns the exact change of a swap from the two sites' neighbourhoods (``2 z`` lookups)
besides the full energy.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsci.alloys.lattice import Lattice

__all__ = [
    "AlloyModel",
    "MONBTAW",
    "PairHamiltonian",
    "RYDBERG_EV",
    "epi_from_rydberg",
    "pair_hamiltonian",
]

RYDBERG_EV = 13.605693122994  # eV per Rydberg


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=("table", "neighbors"),
    meta_fields=("n_sites", "n_species"),
)
@dataclasses.dataclass(frozen=True, eq=False)  # identity: array fields do not compare
class PairHamiltonian:
    """Pair energies on one lattice (see module doc): a pytree, so jitted code takes its
    tables as arguments (another table of the same shapes compiles nothing new).

    The occupation must hold species indices ``0..n_species - 1``; under ``jit`` they cannot
    raise: an index out of range makes :meth:`energy` NaN, while :meth:`swap_delta` (the
    Monte Carlo hot loop) gathers plainly (clamped, or wrapped if negative;
    ``parallel_tempering`` and ``pt_init`` check their input, and swaps keep it valid).

    Attributes:
      table: ``[z, n_species, n_species]`` eV per bond of each neighbour column's shell.
      neighbors: ``[n_sites, z]`` int site indices of each site's neighbours.
      n_sites, n_species: sizes of the occupation and of the species axis.
    """

    table: jax.Array
    neighbors: jax.Array
    n_sites: int
    n_species: int

    def energy(self, occupation: jax.Array) -> jax.Array:
        """``occupation [n_sites] int -> E`` (eV); NaN for a species out of range
        (``ValueError`` for another shape: static, so also under ``jit``; ``vmap`` for a
        batch)."""
        occ = jnp.asarray(occupation)
        if occ.shape != (self.n_sites,):
            raise ValueError(f"occupation must be [n_sites={self.n_sites}], got shape {occ.shape}")
        cols = jnp.arange(self.neighbors.shape[1])
        # negative indices would wrap (-1 reads the last species): send them out of range
        a, b = (jnp.where(x < 0, self.n_species, x) for x in (occ[:, None], occ[self.neighbors]))
        pairs = self.table.at[cols[None, :], a, b].get(mode="fill", fill_value=jnp.nan)
        return 0.5 * jnp.sum(pairs)

    def swap_delta(self, occupation: jax.Array, i: jax.Array, j: jax.Array) -> jax.Array:
        """``E(after swapping sites i and j) - E`` (eV), from the two sites' bonds."""
        occ = jnp.asarray(occupation)
        vc, nbr = self.table, self.neighbors
        cols = jnp.arange(nbr.shape[1])
        a, b = occ[i], occ[j]
        ki, kj = occ[nbr[i]], occ[nbr[j]]
        # the hot loop of Monte Carlo: plain (clamping) gathers, 1.45x faster than checked
        # ones; a bad species still shows, as NaN in the energy of the same sweep
        di = jnp.sum(vc[cols, b, ki] - vc[cols, a, ki])  # site i: a -> b
        dj = jnp.sum(vc[cols, a, kj] - vc[cols, b, kj])  # site j: b -> a
        # If j neighbours i, the bond (i, j) keeps its pair {a, b}; the two sums above
        # counted it as changing to (b, b) and (a, a): take that back.
        bond = nbr[i] == j
        kept = vc[cols, a, a] + vc[cols, b, b] - 2 * vc[cols, a, b]
        back = jnp.sum(jnp.where(bond, kept, 0))
        return di + dj - back


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=("pair_energies",),
    meta_fields=("species", "composition", "source"),
)
@dataclasses.dataclass(frozen=True, eq=False)  # identity: array fields do not compare
class AlloyModel:
    """A named alloy: species, default composition and pair energies per bond (eV).

    A pytree: ``pair_energies`` is its leaf (e.g. to fit or differentiate with respect to
    them); species, composition and source are static.

    Attributes:
      species: chemical symbols, in the order of the species index.
      composition: default atomic fractions (sum 1).
      pair_energies: ``[n_shells, n_species, n_species]`` eV per bond.
      source: where the interactions come from.
    """

    species: tuple[str, ...]
    composition: tuple[float, ...]
    pair_energies: np.ndarray
    source: str


def _check_pair_energies(pair_energies: np.ndarray, n_shells: int) -> np.ndarray:
    v = np.asarray(pair_energies, np.float64)
    if v.ndim != 3 or v.shape[1] != v.shape[2] or v.shape[1] < 1:
        raise ValueError(
            f"pair_energies must be [n_shells, n_species, n_species], got shape {v.shape}"
        )
    if v.shape[0] != n_shells:
        raise ValueError(f"pair_energies has {v.shape[0]} shells but the lattice has {n_shells}")
    if not np.all(np.isfinite(v)):
        raise ValueError("pair_energies must be finite")
    if not np.allclose(v, np.swapaxes(v, 1, 2), rtol=0.0, atol=1e-12):
        raise ValueError("pair_energies must be symmetric in the two species of a bond")
    return v


def pair_hamiltonian(lattice: Lattice, pair_energies: np.ndarray) -> PairHamiltonian:
    """The pair Hamiltonian of ``pair_energies`` (eV per bond, ``[n_shells, n_species,
    n_species]``) on ``lattice``."""
    v = _check_pair_energies(pair_energies, lattice.n_shells)
    dt = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    return PairHamiltonian(
        table=jnp.asarray(v[lattice.shell], dt),  # [z, S, S]: each neighbour column's shell
        neighbors=jnp.asarray(lattice.neighbors),
        n_sites=lattice.n_sites,
        n_species=int(v.shape[1]),
    )


def epi_from_rydberg(couplings: Sequence, coordination: Sequence[int]) -> np.ndarray:
    """Pair energies per bond (eV) from EPIs ``J_s`` in Rydberg in the alloy-thermo-skill
    convention ``E = sum_s sum_{a < b} W^s_ab J^s_ab / z_s``, where ``W^s_ab`` counts the
    unlike ``a-b`` bonds of shell ``s`` from both ends and ``z_s`` is the shell's
    coordination: ``V_s = 2 J_s / z_s`` off the diagonal. Like that code, the diagonal
    ``J_aa`` is ignored (like pairs contribute nothing)."""
    j = np.array(couplings, np.float64)
    z = np.asarray(coordination, np.float64)
    if j.ndim != 3 or j.shape[0] != len(z) or j.shape[1] != j.shape[2]:
        raise ValueError(f"couplings must be [{len(z)}, S, S], got shape {j.shape}")
    j[:, np.arange(j.shape[1]), np.arange(j.shape[1])] = 0.0
    return 2.0 * j * RYDBERG_EV / z[:, None, None]


# EPIs of MoNbTaW on BCC, 6 shells (Rydberg; off-diagonal, J_aa = 0), from the example
# input of the alloy-thermo-skill Monte Carlo code (github.com/jqyin/alloy-thermo-skill,
# examples/MoNbTaW/spec.json), the model behind Yin et al., "VAE order parameter",
# Nat. Comput. Sci. 2021 (arXiv 2109.05598). That input's composition is 0.36/0.22/0.22/0.20;
# MONBTAW's default is the paper's equimolar alloy.
_MONBTAW_J_RY = [
    [[0.0, -0.0104916645, -0.0226029893, -0.00478937025],
     [-0.0104916645, 0.0, -0.00274579744, -0.00365032259],
     [-0.0226029893, -0.00274579744, 0.0, -0.00850713169],
     [-0.00478937025, -0.00365032259, -0.00850713169, 0.0]],
    [[0.0, -0.00282050854, -0.00447913643, -0.00121451818],
     [-0.00282050854, 0.0, -0.000546276242, -0.00253567],
     [-0.00447913643, -0.000546276242, 0.0, -0.00252228684],
     [-0.00121451818, -0.00253567, -0.00252228684, 0.0]],
    [[0.0, 0.000281365296, 0.0019837305, 0.00123430316],
     [0.000281365296, 0.0, 0.000407628494, -0.000313096731],
     [0.0019837305, 0.000407628494, 0.0, -0.000427894679],
     [0.00123430316, -0.000313096731, -0.000427894679, 0.0]],
    [[0.0, 0.000913059729, 0.00330016512, 0.00121299385],
     [0.000913059729, 0.0, 0.000244493794, 0.000291732393],
     [0.00330016512, 0.000244493794, 0.0, 0.000602658604],
     [0.00121299385, 0.000291732393, 0.000602658604, 0.0]],
    [[0.0, -0.000605194177, 0.000524596094, 0.00059501093],
     [-0.000605194177, 0.0, 0.000163460057, -0.000933251056],
     [0.000524596094, 0.000163460057, 0.0, -0.000754173014],
     [0.00059501093, -0.000933251056, -0.000754173014, 0.0]],
    [[0.0, 0.000191360869, 0.000236351583, 9.3381938e-05],
     [0.000191360869, 0.0, 9.14803e-06, 0.000170173707],
     [0.000236351583, 9.14803e-06, 0.0, 0.000105938587],
     [9.3381938e-05, 0.000170173707, 0.000105938587, 0.0]],
]  # fmt: skip

MONBTAW = AlloyModel(
    species=("Mo", "Nb", "Ta", "W"),
    composition=(0.25, 0.25, 0.25, 0.25),
    pair_energies=epi_from_rydberg(_MONBTAW_J_RY, (8, 6, 12, 24, 8, 6)),
    source="EPIs: jqyin/alloy-thermo-skill examples/MoNbTaW (Yin et al. 2021), BCC, 6 "
    "shells; composition: equimolar (the paper's; that input uses 0.36/0.22/0.22/0.20)",
)
