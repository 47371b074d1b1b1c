"""Multi-start basin-hopping reconstruction of coordinates from a target ACSF fingerprint.

The search runs ``n_starts`` independent starts in parallel (``vmap``; the starts
axis is sharded over devices when there are several). Each *round* runs
``steps_per_round`` optimizer steps on fingerprint loss + short-range repulsion
(+ for free clusters a tether on each atom's nearest-neighbour distance, which keeps the
cluster in one piece but leaves its shape free: rods and plates too), then, per start,
keeps the best positions found so far (monotonic basin hopping on the lowest point of each
round, not its end: L-BFGS without a line search can leave a minimum), and kicks the atoms
whose fingerprint rows match worst; a start that has not improved for ``patience``
rounds begins again from a fresh random compact packing or, with the share of the
``motif_starts``, from an ideal cluster motif (every complete icosahedron, decahedron or
truncated octahedron of the target's size, then every distinct cut of icosahedra,
decahedra, octahedra, Wulff shapes and fcc balls, ranked against the target; the first
round's starts include such motifs too).
After every round the starts are scored by the exact, order-independent fingerprint
error (rows matched by the Hungarian algorithm); the overall best one is polished in
float64 on the host (:func:`jaxsci.reconstruct.polish.polish`: L-BFGS-B on the
sorted-column loss, then alternating row matching and L-BFGS-B on the row-matched loss,
swaps of wrongly matched atoms and Gauss-Newton matchings), and the search stops as
soon as one meets ``tol``; that structure is then refined by longer matched descents.
When the best structure has been stuck near the target for a few rounds, half the starts
begin again from single-atom relocations of it to hollow sites (``repair_below``).
Optional search aids, off by default because they did not measurably help
(benchmarks/RESULTS.md): a coarse-to-fine continuation of the feature weights, directed
moves of the worst atoms to the best of many candidate sites, and an entropic
optimal-transport set loss next to the sorted columns.

Limits (benchmarks/RESULTS.md, issue 3): motif-like clusters (complete icosahedra,
decahedra of any elongation and truncated octahedra, and cuts of them) up to 55 atoms are
recovered within a minute on a 2-core CPU, random packings of 10-25 atoms mostly (held-out
EMT-relaxed Pt clusters of 10-40 atoms, four seeds: 101 of 120; random packings of 10-25
atoms 12 of 16, of 30-40 atoms 0 of 12; 97 of 120 with seed 2 rerun on a day the CPU ran 2x
slower: fewer rounds per minute; two seeds since the Frank-Wolfe matchings of the polish and
the background compilation: 51 of 60, every motif-like cluster of 30-40 atoms, no random
packing of 30-40 atoms; four seeds with the relocations: 106 of 120, every motif-like
cluster, random packings of 10-25 atoms 14 of 16, none of 30-40), icosahedral cuts that EMT
moves 0.4-0.6 A from their ideal cut only when a relaxed motif start lands in their minimum,
and rattled but unrelaxed symmetric clusters (MD snapshots) not reliably.
For those the row-matched loss *with the right atom labels* descends to the target from
most random compact starts, but no labeling found without the answer does
(``experiments/reconstruct_pt/labels.py``), and the label-free sorted-column loss has
no funnel towards the target.

This module is the host loop; the compiled round is
:func:`jaxsci.reconstruct.program.compile_search`, cached by shapes and static options, so
repeated calls with targets of the same size do not recompile (a first call compiles the
round and the polish in a background thread while it builds its starts), and the input
checks are in :mod:`jaxsci.reconstruct.checks`.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ase.data import covalent_radii

from jaxsci.geometry import (
    neighbor_capacity,
)
from jaxsci.metrics.structure import match_rows
from jaxsci.reconstruct.capacity import grown, initial_capacity, most_neighbors
from jaxsci.reconstruct.checks import check_guesses, check_inputs, check_key, check_options
from jaxsci.reconstruct.chunks import round_chunk, run_round
from jaxsci.reconstruct.crossover import Population, child
from jaxsci.reconstruct.losses import (
    feature_etas,
    feature_scales,
    pooled_scale,
    sort_by_species,
    sorted_loss,
    species_groups,
)
from jaxsci.reconstruct.polish import features64, polish, precompile, relative_error
from jaxsci.reconstruct.program import (
    Spec,
    batched,
    compile_search,
    default_optimizer,
    initial_state,
    shard,
)
from jaxsci.reconstruct.relocate import relocations
from jaxsci.reconstruct.starts import EMT_ELEMENTS, RELAX_SECONDS, MotifQueue, emt_relax

__all__ = ["ReconstructResult", "reconstruct"]

Array = jax.Array

#: Atomic volume used for random compact starts when no cell is given (Angstrom^3 per atom);
#: derived from covalent radii at a close-packing fraction (see ``_packing_radius``).
PACKING_FRACTION = 0.74

#: Starts of lowest error refined once the search has met ``tol`` (see ``refine_steps``),
#: and the seconds after which no new refinement, swap or matching trial starts.
N_REFINE = 4
REFINE_SECONDS = 5.0

#: Relocation rounds (``repair_below``): moves scored per start slot at most, the factor
#: by which the best error must fall before its structure is relocated again...
REPAIR_MOVES_PER_START = 32
REPAIR_GAIN = 0.95
#: ... the rounds without a better best before a structure is relocated, and the share
#: of the starts that take relocations in a round (the others search on: replacing all
#: of them cost a motif cut that the search was about to finish).
REPAIR_AFTER = 3
REPAIR_SHARE = 0.5


class ReconstructResult(NamedTuple):
    """Outcome of :func:`reconstruct`.

    positions: [n_atoms, 3] best positions found (Angstrom; free clusters centred at 0;
        for a per-atom target, atom ``i`` is the one whose fingerprint best matches
        target row ``i`` (rows matched within species, :func:`jaxsci.metrics.match_rows`);
        periodic ones are not wrapped into the cell: an atom may lie outside it, e.g.
        where its initial position did; wrap them with
        :func:`jaxsci.geometry.wrap_positions` or ase's ``Atoms.wrap``).
    error: relative fingerprint error of ``positions`` (rows matched, see
        :func:`jaxsci.metrics.fingerprint_error`; pooled targets compared directly),
        after the final refinement (``refine_steps``), so it can lie below
        ``start_errors.min()``.
    success: whether ``error < tol``.
    start_positions: [n_starts, n_atoms, 3] best positions of every start (not wrapped;
        atoms in the search's own labelling, not matched to the target's rows).
    start_losses: [n_starts] final (best) search loss of every start.
    start_errors: [n_starts] relative fingerprint error of every start's best positions
        as the search (and its polish) left them, before the final refinement.
    start_success: [n_starts] bool, which starts met ``tol`` (after polishing; before the
        final refinement).
    history: [n_steps, n_starts] search loss at every optimizer step (the loss at each
        round's end point is not in it, so ``start_losses`` can lie below a column's
        minimum).
    n_rounds: rounds run; wall_time: seconds spent (including compilation).
    capacity: periodic targets: neighbour slots per atom the search kept at its end
        (:mod:`jaxsci.reconstruct.capacity`: at least what ``initial_positions`` need,
        grown whenever a structure the search kept had more neighbours); None for free
        clusters.
    """

    positions: np.ndarray
    error: float
    success: bool
    start_positions: np.ndarray
    start_losses: np.ndarray
    start_errors: np.ndarray
    start_success: np.ndarray
    history: np.ndarray
    n_rounds: int
    wall_time: float
    capacity: int | None = None


def _canonical_order(target: np.ndarray, species_idx: np.ndarray) -> np.ndarray:
    """Permutation [n_atoms] that lists atoms by species, then by fingerprint row.

    Rows are compared lexicographically (first feature first); a pooled (1-D) target
    orders by species alone (stable). :func:`reconstruct` solves in this order, so a
    target whose (row, species) pairs come in another order gives bitwise the same
    structure, its atoms listed in the caller's order.
    """
    if target.ndim == 1:
        return np.argsort(species_idx, kind="stable")
    return np.lexsort((*target.T[::-1], species_idx))


def _radius(z: np.ndarray) -> np.ndarray:
    return np.array([covalent_radii[int(a)] for a in z])


def _packing_radius(z: np.ndarray) -> float:
    """Radius (Angstrom) of a sphere holding the atoms at close packing."""
    volume = (4.0 / 3.0) * np.pi * np.sum(_radius(z) ** 3) / PACKING_FRACTION
    return float((3.0 * volume / (4.0 * np.pi)) ** (1.0 / 3.0))


# --------------------------------------------------------------------------- host helpers
def _rel_error(feats: np.ndarray, target: np.ndarray, perm: np.ndarray | None, ops) -> float:
    if perm is None:
        from jaxsci.descriptors import pool

        feats = np.asarray(pool(jnp.asarray(feats), ops=tuple(ops)), dtype=np.float64)
    else:
        feats = feats[perm]
    return relative_error(np.linalg.norm(feats - target), np.linalg.norm(target))


def _errors(feats: np.ndarray, target: np.ndarray, species_idx: np.ndarray, pooled: bool, ops):
    """Relative fingerprint error of each structure's features ``[k, n, F]`` against
    ``target``: rows matched by the Hungarian algorithm, pooled targets compared directly."""
    return np.array(
        [
            _rel_error(f, target, None if pooled else match_rows(f, target, species_idx), ops)
            for f in np.asarray(feats, np.float64)
        ]
    )


def _crowded(
    positions: np.ndarray, cell: np.ndarray, r_cut: float, capacity: int | None = None
) -> bool:
    """Whether an atom of ``positions [N, 3]`` (periodic ``cell``) has more neighbours within
    ``r_cut`` than the search kept: ``capacity`` slots (None: the density estimate,
    :func:`jaxsci.geometry.neighbor_capacity`)."""
    if capacity is None:
        capacity = neighbor_capacity(len(positions), cell, r_cut)
    return most_neighbors(np.asarray(positions)[None], cell, r_cut) > capacity


class _Record:
    """Every start's best structure so far, across restarts (host side, float64).

    x: [n_starts, n_atoms, 3] positions (Angstrom); loss: [n_starts] their search loss;
    err: [n_starts] their matched fingerprint error; polish_err: [n_starts] the error each
    start's last polish reached (inf: never polished).
    """

    def __init__(self, n_starts: int, n_atoms: int) -> None:
        self.x = np.zeros((n_starts, n_atoms, 3))
        self.loss = np.full(n_starts, np.inf)
        self.err = np.full(n_starts, np.inf)
        self.polish_err = np.full(n_starts, np.inf)

    def update(
        self,
        low_loss: np.ndarray,
        reached: np.ndarray,
        feats: Any,
        errors: Callable[[np.ndarray], np.ndarray],
    ) -> None:
        """Take a round's lowest points ``reached [n_starts, n, 3]`` (search loss
        ``low_loss``, features ``feats [n_starts, n, F]``) where the search loss improved
        and the matched error (``errors`` of their features) is lower too: a polished
        record, lower in error than its search loss says, is not overwritten by a worse
        point of lower search loss. Rows are matched only for the improved starts."""
        idx = np.flatnonzero(low_loss < self.loss)
        if idx.size:
            errs = errors(np.asarray(feats)[idx])
            lower = errs < self.err[idx]
            sel = idx[lower]
            self.loss[sel] = low_loss[sel]
            self.x[sel] = reached[sel]
            self.err[sel] = errs[lower]

    def due_for_polish(self, n_polish: int, below: float) -> list[int]:
        """The ``n_polish`` starts of lowest error, those below ``below`` and never polished
        or now below the error their last polish reached, lowest first."""
        top = np.argsort(self.err, kind="stable")[:n_polish]
        return [int(s) for s in top if self.err[s] < min(below, self.polish_err[s])]

    def rescored(self, idx: np.ndarray, errs: np.ndarray) -> None:
        """Starts ``idx`` were scored with features that missed neighbours: their errors
        are now ``errs``; their loss and last polish are forgotten (the next lower-error
        point of the search replaces them, and they are due for polishing again)."""
        self.err[idx] = errs
        self.loss[idx] = np.inf
        self.polish_err[idx] = np.inf

    def polished(self, s: int, y: np.ndarray, err: float) -> None:
        """Start ``s``'s polish ended at ``y`` with error ``err``: kept if lower."""
        if err < self.err[s]:
            self.err[s] = err
            self.x[s] = y
        self.polish_err[s] = self.err[s]

    def best(self) -> tuple[float, np.ndarray]:
        """The lowest error and a copy of its positions."""
        s = int(np.argmin(self.err))
        return float(self.err[s]), self.x[s].copy()


def _refine(
    best: tuple[float, np.ndarray],
    record: _Record,
    refine: Callable[..., tuple[np.ndarray, float]],
    end: float | None,
    goal: float,
) -> tuple[float, np.ndarray]:
    """Refine a search that met ``tol``: the lowest-error starts, not only the best, since
    another structure can also meet it (measured: an EMT-relaxed Pt13 cuboctahedron,
    6.8e-4 at 0.61 A, ranked first; six starts of the right one at 7.1e-4-7.7e-4 refine to
    2e-6-6e-6, it stalls). First the matched descents alone for each of the
    :data:`N_REFINE` starts of lowest error (cheap) until one reaches ``goal``, then swaps
    and Gauss-Newton matchings for the winner; none starts after ``end`` (perf_counter
    seconds; None: no clock) but the first. ``refine(x, **limits) -> (positions, error)``.
    """

    def late() -> bool:
        return end is not None and time.perf_counter() > end

    for i, s in enumerate(np.argsort(record.err, kind="stable")[:N_REFINE]):
        if i > 0 and late():
            break
        y, err = refine(record.x[s], max_swaps=0, gauss_newton_trials=0)
        if err < best[0]:
            best = (err, y)
        if best[0] < goal:
            break
    if best[0] >= goal and not late():
        y, err = refine(best[1])
        if err < best[0]:
            best = (err, y)
    return best


# --------------------------------------------------------------------------- public API
def reconstruct(
    target: Any,
    species: Sequence[str | int],
    descriptor: Any,
    *,
    key: Array,
    cell: Any | None = None,
    loss: str | None = None,
    pool_ops: Sequence[str] = ("max", "min"),
    optimizer: optax.GradientTransformation | None = None,
    n_starts: int = 64,
    steps_per_round: int = 60,
    max_rounds: int = 1000,
    time_limit: float | None = 58.0,
    tol: float = 1e-3,
    kick_size: float = 1.0,
    kick_fraction: float = 0.15,
    patience: int = 4,
    repulsion_scale: float = 0.7,
    polish_below: float = 1e-2,
    repair_below: float = 2e-2,
    polish_steps: int = 150,
    n_polish: int = 1,
    search_norm: str = "l2",
    compact_steps: int = 200,
    coarse_length: float = 0.0,
    coarse_rounds: int = 1,
    n_sites: int = 0,
    ot_weight: float = 0.0,
    ot_eps: float = 0.05,
    crossover: float = 0.0,
    temperature: float = 0.0,
    population_size: int = 16,
    twist: float = 0.0,
    motif_starts: int = 16,
    motif_relax: str | Callable[[np.ndarray, np.ndarray], np.ndarray] | None = "emt",
    initial_positions: Any | None = None,
    refine_steps: int = 200,
    progress: bool = False,
) -> ReconstructResult:
    """Find positions whose ACSF fingerprint matches ``target``.

    Args:
        target: per-atom fingerprint ``[n_atoms, n_features]`` as made by
            ``descriptor.create`` (compared as a set: the search runs in a canonical row
            order, so the result does not depend on the order of the (row, species)
            pairs, bit for bit; positions come back in the caller's atom order), or a
            pooled fingerprint ``[n_features * len(pool_ops)]``.
        species: one chemical symbol or atomic number per atom.
        descriptor: the :class:`jaxsci.descriptors.ACSF` that made the target.
        key: ``jax.random`` key (starts, kicks).
        cell: ``[3, 3]`` lattice vectors (rows, Angstrom) for a periodic target
            (the descriptor must be periodic; periodic along all three vectors: slabs
            and wires are not supported); ``None`` for a free cluster (the descriptor must
            not be periodic: ValueError otherwise).
        loss: ``"sorted"`` (per-atom targets, the default for them) or ``"pooled"`` (L1 on
            pooled fingerprints; 1-D targets only, and their default).
        pool_ops: pooling of a 1-D target (see :func:`jaxsci.descriptors.pool`).
        optimizer: any optax transformation for the search (default:
            :func:`default_optimizer`, L-BFGS without line search); its state is
            reset every round.
        n_starts: parallel starts; steps_per_round: optimizer steps between kicks
            (defaults 64 x 60, measured against 16 x 150 and 128 x 50 on EMT-relaxed
            random Pt clusters, see benchmarks/RESULTS.md);
        max_rounds: rounds at most; time_limit: seconds (compilation included) within
            which the call returns, give or take one L-BFGS-B iteration (``None`` or inf: no
            limit): no round starts whose search phase would end (predicted by the
            shortest one so far) later than ``min(3 s, 10%)`` before it, the search's
            polish stops there, and the final refinement gets the rest (at least 1 s). By
            default the time limit ends the search. Periodic cells cost about N x K^2 per
            start and step (K neighbour slots per atom: from the cell's mean density,
            :func:`jaxsci.geometry.neighbor_capacity`, ~104 for a metal at r_cut 6 A, or
            more for ``initial_positions`` or kept structures that have more neighbours,
            e.g. a slab or cluster in a cell with vacuum, see
            :mod:`jaxsci.reconstruct.capacity` and ``ReconstructResult.capacity``; each
            growth recompiles the round and the polish, a few seconds); on a CPU their
            rounds run in chunks of starts
            (:func:`jaxsci.reconstruct.chunks.round_chunk`, ~4 s each on the 2-core CPU)
            and the chunks that would end past that point are skipped (measured, 64
            starts: a 32-atom Cu cell ran 14 of 16 chunks of 4 starts in its first round
            and returned in 55 s; in one piece, the round took 66 s). The first chunk
            always runs (a warning says when the first round alone overran the limit).
        tol: relative fingerprint error below which a start counts as recovered; the
            search stops at the first one.
        kick_size: kick length (Angstrom) for the worst-matching atoms;
            kick_fraction: fraction of atoms kicked (at least one);
            patience: rounds without improvement before a start is replaced by a fresh one.
        repulsion_scale: pairs closer than this times the sum of covalent radii are
            pushed apart.
        polish_below: starts whose matched fingerprint error is below this are polished
            (float64 L-BFGS-B, see :func:`jaxsci.reconstruct.polish.polish`; at most
            ``polish_steps`` iterations per matching cycle). Each round polishes only the
            ``n_polish`` starts of lowest error, each only if never polished or now below
            the error its last polish reached.
        repair_below: free clusters with per-atom targets (0 = off): when the best error
            so far is new (5% below the last one treated so), below this and above
            ``tol``, and no round has lowered it for :data:`REPAIR_AFTER` rounds, every
            atom of that structure is moved to every hollow site
            (:func:`jaxsci.reconstruct.relocate.relocations`, at most
            :data:`REPAIR_MOVES_PER_START` x ``n_starts`` moves), the moves are ranked
            by the sorted-column loss, and the ``n_starts`` best replace the starts of
            highest loss after the next rounds, :data:`REPAIR_SHARE` of them a round. A
            search can end with one or two atoms 1.7-1.9 A from their sites and the rest
            within ~0.4 A, where no descent or matching reaches the target (measured: a
            held-out random Pt20 and icosahedral Pt25 cut, each recovered this way: the
            right move ranked 3rd-48th of 762-1088). Held-out EMT-relaxed Pt clusters of
            10-40 atoms, on against off, four seeds run the same day: 106 of 120 against
            102 (two random Pt20 and icosahedral Pt25 and Pt30 cuts gained, none lost;
            benchmarks/RESULTS.md).
        search_norm: ``"l2"`` or ``"l1"`` (pseudo-Huber) on the sorted columns.
        compact_steps: Morse-relaxation steps that make the random starts compact with
            bond lengths near the sums of covalent radii (0: plain random in a sphere).
        coarse_length: coarse-to-fine continuation (Angstrom; 0 = off): during a start's
            first ``coarse_rounds`` rounds every feature column is weighted by
            ``exp(-eta_f L^2)`` (eta_f from :func:`jaxsci.reconstruct.losses.feature_etas`),
            with ``L`` shrinking linearly from ``coarse_length`` to 0, so the smooth,
            long-range features shape the start before the sharp ones count.
        n_sites: directed moves (0 = off, then the worst atoms get random kicks): each
            kicked atom in turn moves to the best of ``n_sites`` random sites at bond
            length from a random atom, chosen by the search loss in one batched call.
        ot_weight, ot_eps: weight and temperature of an entropic optimal-transport set
            loss (:func:`jaxsci.reconstruct.losses.ot_loss`) added to the sorted-column
            loss; it couples each atom's features (the sorted columns do not).
        temperature: Metropolis acceptance of a round's end point that is worse than the
            start's current one, with probability ``exp(-(loss - current) / (temperature *
            current))`` (0 = monotonic basin hopping). The record of every start's best is
            kept regardless.
        crossover: genetic search (0 = off; free clusters only, ignored with a cell):
            every round, ``round(crossover * n_starts)`` of the starts at least two rounds
            old, those of highest best-so-far loss, begin again from cut-and-splice
            children (:func:`jaxsci.reconstruct.crossover.cut_and_splice`, Deaven & Ho
            1995) of two rank-weighted members of the population.
        population_size: size of that population: the lowest-loss structures reached by
            any start at the end of any round, no two alike (sorted pair distances).
        twist: fraction (0-1) of those children that are instead a twist of one member
            (:func:`jaxsci.reconstruct.crossover.twist`: the half above a random plane
            rotated about its normal, radii from the centre kept).
        motif_starts: free clusters only (0 = off): this many of the first round's starts
            begin from ideal cluster motifs of ``n_atoms``
            (:class:`jaxsci.reconstruct.starts.MotifQueue`): first every complete
            ``ase.cluster`` shape of exactly that size
            (:func:`jaxsci.geometry.motifs.complete_motifs`: Mackay icosahedra, Ino and
            Marks decahedra, truncated octahedra), then every distinct cut of an
            icosahedron, decahedron, octahedron, Wulff shape or fcc ball
            (:func:`jaxsci.geometry.motifs.motif_cuts`), each at its best uniform scaling
            (0.94-1.02) and ranked by its fingerprint error against the target; with the
            lattice constant of the element's fcc reference state (else from the sum of
            covalent radii), species assigned at random, plus 0.05 A of noise. A start
            that begins again later does so from the next motif of that queue with the
            same probability (``motif_starts / n_starts``); once all were used the queue
            begins again. Motif-like targets thus start inside their basin in the first
            rounds (measured: most complete shapes and cuts of 8-55 atoms in round 1);
            the other starts are random compact packings.
        motif_relax: when the first round has not met ``tol``, the 12 best-ranked motif
            starts, each rattled 0.1 A twice, are relaxed and ranked into the motif queue
            (:meth:`jaxsci.reconstruct.starts.MotifQueue.add_relaxed`; at most 4 s,
            once), and the ``motif_starts`` starts of highest loss begin again from the
            front of the queue in the second round: ``"emt"`` (default)
            relaxes with ase's EMT when every element is one of its fcc metals (Al, Ni,
            Cu, Pd, Ag, Pt, Au) and does nothing otherwise, ``None`` is off, or a callable
            ``(positions [n, 3], atomic numbers [n]) -> positions``. Relaxation can move a
            cluster 0.6 A from its ideal cut (measured: EMT-relaxed icosahedral Pt cuts),
            out of the ideal start's basin.
        initial_positions: ``[k, n_atoms, 3]`` (or ``[n_atoms, 3]``) guesses (Angstrom),
            e.g. from a generative model; they take the first ``k`` starts (before the
            motif starts) of the first round.
        refine_steps: once a start meets ``tol`` (0 = off): the :data:`N_REFINE` starts of
            lowest error are refined by float64 L-BFGS-B on the row-matched loss,
            re-matching the rows between at most 8 descents of this many iterations, until
            one is 100x below ``tol``; the lowest error wins and, if still above that, gets
            the polish's swaps of wrongly matched atoms and Gauss-Newton matchings (under
            a time limit, no start but the first, swap or matching begins
            :data:`REFINE_SECONDS` after the search or after ``time_limit``; without one
            the refinement is bounded by its iteration counts only, so that the call is a
            function of its key; at 55 atoms a start takes 2-5 s). A
            structure that has just crossed ``tol`` can lie 0.05-0.25 A from the target,
            near-equivalent atoms of a symmetric cluster matched to each other's rows, or
            be another structure (measured: an EMT-relaxed Pt25 decahedron at 7.8e-4 and
            0.24 A refined in 1.1 s to 9e-5 and 0.03 A; for a Pt13 cuboctahedron an
            impostor at 6.8e-4 and 0.61 A ranked first, the result is 3e-7 and 0.000 A).
        progress: show a tqdm progress bar over rounds.

    Returns:
        :class:`ReconstructResult`.

    Raises:
        ValueError: target width not matching the descriptor, species count not matching
            the target, NaN/inf in the target, an empty structure, a bad cell or option,
            a cell with a non-periodic descriptor or a periodic descriptor without one.
    """
    t0 = time.perf_counter()
    pool_ops = (pool_ops,) if isinstance(pool_ops, str) else tuple(pool_ops)
    time_limit = None if time_limit == np.inf else time_limit  # inf: no limit, as None
    t, species_idx, z, cell_np, loss = check_inputs(
        target, species, descriptor, cell, loss, pool_ops
    )
    check_options(
        integers={
            "n_starts": (n_starts, 1),
            "steps_per_round": (steps_per_round, 1),
            "max_rounds": (max_rounds, 1),
            "patience": (patience, 1),
            "polish_steps": (polish_steps, 1),
            "n_polish": (n_polish, 1),
            "compact_steps": (compact_steps, 0),
            "coarse_rounds": (coarse_rounds, 0),
            "n_sites": (n_sites, 0),
            "population_size": (population_size, 2),
            "motif_starts": (motif_starts, 0),
            "refine_steps": (refine_steps, 0),
        },
        reals={  # name: (value, low, high, low excluded)
            "tol": (tol, 0.0, np.inf, True),
            "kick_size": (kick_size, 0.0, np.inf, False),
            "kick_fraction": (kick_fraction, 0.0, 1.0, False),
            "repulsion_scale": (repulsion_scale, 0.0, np.inf, False),
            "polish_below": (polish_below, 0.0, np.inf, False),
            "repair_below": (repair_below, 0.0, np.inf, False),
            "coarse_length": (coarse_length, 0.0, np.inf, False),
            "ot_weight": (ot_weight, 0.0, np.inf, False),
            "ot_eps": (ot_eps, 0.0, np.inf, True),
            "crossover": (crossover, 0.0, 1.0, False),
            "twist": (twist, 0.0, 1.0, False),
            "temperature": (temperature, 0.0, np.inf, False),
        }
        | ({} if time_limit is None else {"time_limit": (time_limit, 0.0, np.inf, True)}),
    )
    check_key(key)
    if search_norm not in ("l2", "l1"):
        raise ValueError(f"reconstruct: search_norm must be 'l2' or 'l1', got {search_norm!r}")
    if twist > 0 and crossover == 0:
        raise ValueError("reconstruct: twist is a share of crossover's children: set crossover > 0")
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(
            "reconstruct: optimizer must be an optax transformation (e.g. optax.adam(0.05)) "
            f"or None, got {optimizer!r}"
        )
    if not (motif_relax is None or motif_relax == "emt" or callable(motif_relax)):
        raise ValueError(
            f"reconstruct: motif_relax must be 'emt', None or a callable (got {motif_relax!r})"
        )
    n = len(species_idx)
    guesses = check_guesses(initial_positions, n)
    # Solve in a canonical atom order (the result is a function of the set of rows, bit
    # for bit: per-feature scales sum over rows, and float32 sums depend on their order);
    # the positions are handed back in the caller's order.
    order = _canonical_order(t, species_idx)
    if t.ndim == 2:
        t = t[order]
    species_idx, z, guesses = species_idx[order], z[order], guesses[:, order]
    back = np.argsort(order)
    if len(guesses) > n_starts:
        raise ValueError(
            f"reconstruct: {len(guesses)} initial_positions but only n_starts={n_starts} starts"
        )
    opt = default_optimizer(steps_per_round) if optimizer is None else optimizer
    if not isinstance(opt, optax.GradientTransformationExtraArgs):
        opt = optax.with_extra_args_support(opt)
    n_polish = max(1, min(n_polish, n_starts))
    r_cut = float(descriptor.r_cut)
    # Periodic: neighbour slots per atom of the search and the polish (free clusters keep
    # every neighbour: None), at least what the initial positions need; grown below when a
    # structure the search keeps has more neighbours.
    capacity = None if cell_np is None else initial_capacity(n, cell_np, r_cut, guesses)
    spec = Spec(
        descriptor=descriptor,
        n_atoms=n,
        groups=tuple(tuple(int(i) for i in g) for g in species_groups(species_idx)),
        cell=None if cell_np is None else tuple(cell_np.ravel().tolist()),
        loss=loss,
        pool_ops=tuple(pool_ops),
        optimizer=opt,
        n_starts=n_starts,
        steps_per_round=steps_per_round,
        n_kick=max(1, int(round(kick_fraction * n))) if n > 1 else 1,
        polish_steps=polish_steps,
        n_polish=n_polish,
        norm=search_norm,
        compact_steps=compact_steps,
        n_sites=n_sites,
        ot_weight=float(ot_weight),
        coarse=coarse_length > 0,
        temperature=float(temperature),
        capacity=capacity,
    )
    species_key = tuple(int(s) for s in species_idx)
    round_fn, features_fn, starts_fn = compile_search(spec, species_key)

    radius = _packing_radius(z)
    rcov = _radius(z)
    aux: dict[str, Any] = {
        "dmin": jnp.asarray(repulsion_scale * (rcov[:, None] + rcov[None, :]), jnp.float32),
        "w_rep": jnp.float32(1.0),
        "kick_size": jnp.float32(kick_size),
        "patience": jnp.int32(patience),
        "max_step": jnp.float32(0.5),
        "etas": jnp.asarray(feature_etas(descriptor), jnp.float32),
        "coarse_length": jnp.float32(coarse_length),
        "coarse_steps": jnp.float32(coarse_rounds * steps_per_round),
        "ot_eps": jnp.float32(ot_eps),
    }
    pooled = t.ndim == 1
    if pooled:
        aux["t_pooled"] = jnp.asarray(t, jnp.float32)
        aux["pscale"] = jnp.asarray(pooled_scale(t), jnp.float32)
        scale = np.ones(descriptor.n_features)
    else:
        scale = feature_scales(t)
        groups = [np.asarray(g) for g in spec.groups]
        aux["scale"] = jnp.asarray(scale, jnp.float32)
        aux["t_sorted"] = sort_by_species(jnp.asarray(t / scale, jnp.float32), groups)
        aux["t_scaled"] = jnp.asarray(t / scale, jnp.float32)

    key, k0 = jax.random.split(key)
    aux["radius"] = jnp.float32(radius * 1.2)
    aux["r0"] = jnp.asarray(rcov[:, None] + rcov[None, :], jnp.float32)
    # The round's and the polish's compilations (at 35 atoms ~8 s and ~6 s of a first
    # call's minute) run in a background thread while this one builds the starts and the
    # motif queue and runs the first round: XLA releases the GIL while it compiles.
    compiling = ThreadPoolExecutor(1, thread_name_prefix="reconstruct-compile")
    # Periodic targets on a CPU run a round in chunks of starts (the clock is checked
    # between them); free clusters in one call.
    chunk = round_chunk(n_starts, n, cell_np, r_cut, capacity)

    def compile_round(fn: Callable, size: int) -> Callable[[], Any]:
        """Compiles ``fn`` for chunks of ``size`` starts (for a background thread)."""
        zeros = jnp.zeros((size, n, 3), jnp.float32)
        example = (
            *initial_state(zeros, size),
            shard(zeros, size),
            shard(jnp.zeros(size, bool), size),
            jax.random.split(key, size),
            aux,
        )
        return lambda: fn.lower(*example).compile()

    round_ready: Future | None = compiling.submit(compile_round(round_fn, chunk))
    use_polish = not pooled and (polish_below > 0 or refine_steps > 0)
    polish_ready = None
    if use_polish:
        polish_ready = compiling.submit(precompile, descriptor, species_idx, cell_np, capacity)
    compiling.shutdown(wait=False)  # the thread ends after these two
    # every background compilation, waited for before the call returns (none left running)
    compiles = [f for f in (round_ready, polish_ready) if f is not None]
    x = starts_fn(jax.random.split(k0, n_starts), aux)

    def score_feats(feats: np.ndarray) -> np.ndarray:
        """Fingerprint error of structures with features [k, n, F] against the target."""
        return _errors(feats, t, species_idx, pooled, pool_ops)

    n_motif = min(motif_starts, n_starts) if cell_np is None and n >= 4 else 0
    queue = None
    inject = False
    relax = motif_relax
    if relax == "emt":
        relax = emt_relax if set(int(v) for v in z) <= EMT_ELEMENTS else None
    if n_motif:
        key, k_motif = jax.random.split(key)
        rng_motif = np.random.default_rng(int(jax.random.randint(k_motif, (), 0, 2**31 - 1)))

        def score(cands: np.ndarray) -> np.ndarray:
            """Fingerprint error of candidate structures [k, n, 3] against the target."""
            return score_feats(batched(features_fn, cands, n_starts))

        queue = MotifQueue(z, score, rng_motif)
        motifs, picked = queue.peek(min(n_motif, n_starts - len(guesses)))
        queue.used(picked)
        guesses = np.concatenate([guesses, motifs])
    if len(guesses):
        x = x.at[: len(guesses)].set(jnp.asarray(guesses, x.dtype))
    state = initial_state(x, n_starts)

    record = _Record(n_starts, n)
    history: list[np.ndarray] = []
    done = False
    rounds = 0
    best: tuple[float, np.ndarray] | None = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_rounds, desc=f"reconstruct N={n}", leave=False)
    use_crossover = crossover > 0 and cell_np is None and n > 1
    population = Population(population_size)
    rng = None
    if use_crossover:  # the key stream is untouched without crossover
        key, k_ga = jax.random.split(key)
        rng = np.random.default_rng(int(jax.random.randint(k_ga, (), 0, 2**31 - 1)))
    n_children = int(round(crossover * n_starts))
    use_repair = repair_below > 0 and not pooled and cell_np is None and n >= 4
    bond = 2.0 * float(np.median(rcov))  # hollow sites lie this far from three atoms
    repaired = np.inf  # the best error whose structure was last relocated
    best_round = 0  # the round that found the best so far
    repair_time = 0.0  # seconds the last relocation took
    moved = np.zeros((0, n, 3))  # relocations queued for the next rounds
    n_repair = max(1, int(REPAIR_SHARE * n_starts))  # ... at most this many a round
    # The search ends early enough to leave the final refinement a reserve.
    search_end = None if time_limit is None else t0 + time_limit - min(3.0, 0.1 * time_limit)
    # Predictions of a round's search phase: the shortest host preparation and the
    # shortest call of the round program (compiled beforehand, so the first counts too).
    prep_time, chunk_time = np.inf, np.inf

    def fits(seconds: float) -> bool:
        return search_end is None or time.perf_counter() + seconds <= search_end

    def grow(cands: np.ndarray) -> bool:
        """Periodic targets: when a structure of ``cands [k, n, 3]`` (the search keeps them)
        has more neighbours than the ``capacity`` slots per atom, whose features miss the
        farthest ones, grow the capacity (:func:`jaxsci.reconstruct.capacity.grown`),
        compile the round and the polish for it in the background, and rescore what the
        search kept with the old one. Returns whether it grew."""
        nonlocal capacity, spec, round_fn, features_fn, chunk, chunk_time
        nonlocal round_ready, polish_ready, state
        if cell_np is None or not len(cands):
            return False
        new = grown(capacity, most_neighbors(cands, cell_np, r_cut), n, cell_np, r_cut)
        if new == capacity:
            return False
        old, capacity = capacity, new
        spec = spec._replace(capacity=new)
        round_fn, features_fn, _ = compile_search(spec, species_key)  # (starts: no capacity)
        size = round_chunk(n_starts, n, cell_np, r_cut, new)
        chunk_time *= (size / chunk) * (new / old) ** 2  # a start's work goes with K^2
        chunk = size
        for f in compiles:  # compilations for the old capacity not begun yet: not needed
            f.cancel()
        # The polish first (the rescoring below and this round's polish need it at once);
        # the round only if another round can still fit before the search's end.
        background = ThreadPoolExecutor(1, thread_name_prefix="reconstruct-compile")
        if use_polish:
            polish_ready = background.submit(precompile, descriptor, species_idx, cell_np, new)
            compiles.append(polish_ready)
        round_ready = None
        if fits(prep_time + chunk_time):
            round_ready = background.submit(compile_round(round_fn, chunk))
            compiles.append(round_ready)
        background.shutdown(wait=False)
        # The record's structures with more neighbours than the old capacity were scored
        # without some: rescored with the new one (those with more still: dropped, inf).
        counts = np.array([most_neighbors(x[None], cell_np, r_cut) for x in record.x])
        lost = np.flatnonzero((counts > old) & np.isfinite(record.err))
        if lost.size:
            if polish_ready is not None:
                polish_ready.result()
            fits_now = lost[counts[lost] <= new]
            errs = np.full(lost.size, np.inf)
            if fits_now.size:
                feats = features64(record.x[fits_now], descriptor, species_idx, cell_np, new)
                errs[counts[lost] <= new] = score_feats(feats)
            record.rescored(lost, errs)
        # Starts whose best so far lost neighbours take their next round's lowest point.
        searched = np.asarray(state[1], np.float64)
        over = np.array([most_neighbors(x[None], cell_np, r_cut) > old for x in searched])
        if over.any():
            state = (state[0], state[1], state[2].at[np.flatnonzero(over)].set(jnp.inf), *state[3:])
        return True

    while rounds < max_rounds and not done:
        round_start = time.perf_counter()
        key, k_fresh, k_round = jax.random.split(key, 3)
        fresh = starts_fn(jax.random.split(k_fresh, n_starts), aux)
        motif_slot = np.full(n_starts, -1)  # queue index of the motif a slot offers
        force = np.zeros(n_starts, bool)
        # Starts by best-so-far loss, highest first: those that begin again from relaxed
        # motifs, relocations or crossover children.
        by_loss = np.argsort(-np.asarray(state[2], np.float64), kind="stable")
        if queue is not None:
            # A start that begins again does so from the next motif of the queue with the
            # share of motif starts in the first round; unused ones go back to the queue.
            who = rng_motif.choice(n_starts, n_motif, replace=False)
            if inject:  # relaxed motifs just joined: the starts of highest loss take them now
                who = by_loss[:n_motif]
                force[who] = True
                inject = False
            motifs, picked = queue.peek(n_motif)
            fresh = fresh.at[who].set(jnp.asarray(motifs, fresh.dtype))
            motif_slot[who] = picked
        if len(moved):  # relocations of the best begin again the starts of highest loss
            # (after this round: fresh starts take effect in the next one)
            take, moved = moved[:n_repair], moved[n_repair:]
            who = by_loss[: len(take)]
            fresh = fresh.at[who].set(jnp.asarray(take, fresh.dtype))
            force[who] = True
            motif_slot[who] = -1
        if rng is not None and len(population) >= 2:
            # Generational step: the n_children starts of highest best-so-far loss among
            # those at least two rounds old begin again from cut-and-splice children.
            who = by_loss[np.asarray(state[5])[by_loss] >= 2][:n_children]
            if len(who):
                kids = [child(population, species_idx, rng, twist) for _ in who]
                fresh = fresh.at[who].set(jnp.asarray(np.stack(kids), fresh.dtype))
                force[who] = True
                motif_slot[who] = -1
        fresh = shard(fresh, n_starts)
        keys = jax.random.split(k_round, n_starts)
        prep_time = min(prep_time, time.perf_counter() - round_start)
        if round_ready is not None:
            round_ready.result()  # (no second compilation of it here)
        per_start = (fresh, shard(jnp.asarray(force), n_starts), keys)
        out, ran, chunk_time = run_round(round_fn, state, per_start, aux, chunk, fits, chunk_time)
        x_next, best_x, best_loss, best_err, stale, age, hist, x_low, low_loss, low_feats = out
        history.append(np.asarray(hist))
        if rounds == 0 and time_limit is not None and time.perf_counter() - t0 > time_limit:
            warnings.warn(
                f"reconstruct: the first round (compilation included) took "
                f"{time.perf_counter() - t0:.0f} s, over time_limit={time_limit} s; the call "
                "searches no further and returns once its best start is polished (a few "
                f"seconds more). Fewer n_starts (now {n_starts}) or steps_per_round (now "
                f"{steps_per_round}) make a round shorter.",
                stacklevel=2,
            )
        rounds += 1
        if queue is not None:  # the starts that began again (age 0) took their slot's motif
            began = (np.asarray(age) == 0) & (motif_slot >= 0) & ran
            queue.used([int(i) for i in motif_slot[began]])
        low_loss = np.asarray(low_loss, np.float64)
        reached = np.asarray(x_low, np.float64)
        record.update(low_loss, reached, low_feats, score_feats)
        state = (x_next, best_x, best_loss, best_err, stale, age)
        grew = False
        if cell_np is not None:  # the best and the structures about to be polished
            kept = [] if pooled else record.due_for_polish(spec.n_polish, polish_below)
            kept += [int(s) for s in np.argsort(record.err)[:1] if np.isfinite(record.err[s])]
            grew = grow(record.x[kept])
        if use_crossover:
            for s in np.argsort(low_loss)[: 2 * population_size]:
                population.add(reached[s], float(low_loss[s]))
        if not pooled:
            due = record.due_for_polish(spec.n_polish, polish_below)
            if due and polish_ready is not None:
                polish_ready.result()
            for i, s in enumerate(due):
                record.polished(
                    s,
                    *polish(
                        record.x[s],
                        t,
                        species_idx,
                        descriptor,
                        cell=cell_np,
                        capacity=capacity,
                        scale=scale,
                        steps_per_cycle=spec.polish_steps,
                        seed=rounds,
                        tol=tol,
                        hops=8 if i == 0 else 0,
                        deadline=search_end,
                    ),
                )
            if cell_np is not None and due:  # the polish may have crowded them further
                grew = grow(record.x[due]) or grew
        if best is None or grew or np.min(record.err) < best[0]:
            best = record.best()
            best_round = rounds
        done = best[0] < tol
        if rounds == 1 and not done and queue is not None and relax is not None:
            # The ideal motifs did not do it: add relaxed copies of the best-ranked ones,
            # which the next round starts from at once. Their wall-clock budget applies only
            # under a time limit: without one, a call is a function of its key alone (a
            # loaded machine relaxed fewer copies and changed the search from round 3 on).
            # Not past the search's end either: no round would use them (a Pt40 whose first
            # round and polish ended at 55 s relaxed for 4 s more and returned at 60.8 s).
            budget = np.inf
            if search_end is not None:
                budget = min(RELAX_SECONDS, search_end - time.perf_counter())
            if budget > 0:
                inject = queue.add_relaxed(relax, seconds=budget) > 0
        if (
            use_repair
            and not done
            and not inject
            and best[0] < min(repair_below, REPAIR_GAIN * repaired)
            and rounds - best_round >= REPAIR_AFTER
            and rounds + 2 <= max_rounds  # they are set in the next round, run in the one after
            and fits(repair_time + 2.0 * (prep_time + chunk_time))
        ):
            # The best structure with one atom moved to a hollow site, every atom to
            # every site; the starts of highest loss begin again from the moves of lowest
            # search loss (the search's own sorted-column loss), half of them a round.
            began = time.perf_counter()
            seed = int(jax.random.randint(jax.random.fold_in(k_round, 1), (), 0, 2**31 - 1))
            cands = relocations(
                best[1], bond, np.random.default_rng(seed), REPAIR_MOVES_PER_START * n_starts
            )
            if len(cands):
                feats = batched(features_fn, cands, n_starts)
                losses = np.asarray(
                    jax.vmap(
                        lambda f: sorted_loss(f, aux["t_sorted"], aux["scale"], groups, spec.norm)
                    )(jnp.asarray(feats))
                )
                moved = cands[np.argsort(losses, kind="stable")[:n_starts]]  # 2 rounds
            repaired = best[0]
            repair_time = time.perf_counter() - began
        if bar is not None:
            bar.update(1)
            bar.set_postfix(best_error=f"{best[0]:.2e}")
        # No round starts whose search (its first chunk) would end after search_end (its
        # polish stops there by itself), nor after a round cut short.
        if round_ready is None:  # grown too late for another round
            break
        if grew and not done:  # a grown capacity's round compiles first
            round_ready.result()
        if not (ran.all() and fits(prep_time + chunk_time)):
            break
    if bar is not None:
        bar.close()
    for f in compiles:  # no compilation left running after the call
        if not f.cancelled():
            f.result()
    assert best is not None
    if not np.isfinite(best[0]):
        raise FloatingPointError(
            "reconstruct: the search loss was NaN at every point of every start; check the "
            "optimizer and the loss options"
        )
    if refine_steps > 0 and best[0] < tol and not pooled:
        # Under a time limit: REFINE_SECONDS, within the rest of the budget (at least 1 s).
        # Without one, no wall clock: the call stays a function of its key (a refinement
        # cut short by the clock of a loaded machine would end elsewhere).
        end = None
        if time_limit is not None:
            now = time.perf_counter()
            end = min(now + REFINE_SECONDS, max(t0 + time_limit, now + 1.0))
        refine = functools.partial(
            polish,
            target=t,
            species_idx=species_idx,
            descriptor=descriptor,
            cell=cell_np,
            capacity=capacity,
            scale=scale,
            sorted_steps=0,
            steps_per_cycle=refine_steps,
            tol=tol / 100,
            hops=0,
            deadline=end,
        )
        best = _refine(best, record, refine, end, tol / 100)
    positions, error = best[1], best[0]
    if cell_np is None:
        positions = positions - positions.mean(0)
    elif _crowded(positions, cell_np, r_cut, capacity):
        # The search kept ``capacity`` neighbours per atom (polish.fingerprint_fn) and these
        # positions (e.g. moved by the final refinement) have more: their error with all.
        with jax.enable_x64(True):
            feats = descriptor.fn(jnp.asarray(positions), jnp.asarray(species_idx), cell=cell_np)
            feats = np.asarray(feats, np.float64)
        perm = None if pooled else match_rows(feats, t, species_idx)
        error = _rel_error(feats, t, perm, pool_ops)
    if not pooled:  # row i of the result is the atom whose fingerprint is target row i
        feats = batched(features_fn, positions[None], n_starts)[0]
        positions = positions[match_rows(feats, t, species_idx)]
    return ReconstructResult(
        positions=positions[back],
        error=error,
        success=bool(error < tol),
        start_positions=record.x[:, back],
        start_losses=record.loss,
        start_errors=record.err,
        start_success=record.err < tol,
        history=np.concatenate(history, axis=0),
        n_rounds=rounds,
        wall_time=time.perf_counter() - t0,
        capacity=capacity,
    )
