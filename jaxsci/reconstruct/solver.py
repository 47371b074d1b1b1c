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
Optional search aids, off by default because they did not measurably help
(benchmarks/RESULTS.md): a coarse-to-fine continuation of the feature weights, directed
moves of the worst atoms to the best of many candidate sites, an entropic
optimal-transport set loss next to the sorted columns, and rounds that start from
single-atom relocations of a near miss (``repair_below``).

Limits (benchmarks/RESULTS.md, issue 3): motif-like clusters (complete icosahedra,
decahedra of any elongation and truncated octahedra, and cuts of them) up to 55 atoms are
recovered within a minute on a 2-core CPU, random packings of 10-25 atoms mostly (held-out
EMT-relaxed Pt clusters of 10-40 atoms, four seeds: 101 of 120; random packings of 10-25
atoms 12 of 16, of 30-40 atoms 0 of 12; 97 of 120 with seed 2 rerun on a day the CPU ran 2x
slower: fewer rounds per minute; two seeds since the Frank-Wolfe matchings of the polish and
the background compilation: 51 of 60, every motif-like cluster of 30-40 atoms, no random
packing of 30-40 atoms), icosahedral cuts that EMT moves 0.4-0.6 A from
their ideal cut only when a relaxed motif start lands in their minimum, and rattled but
unrelaxed symmetric clusters (MD snapshots) not reliably.
For those the row-matched loss *with the right atom labels* descends to the target from
most random compact starts, but no labeling found without the answer does
(``experiments/reconstruct_pt/labels.py``), and the label-free sorted-column loss has
no funnel towards the target.

The compiled round/score functions are cached by shapes and static options,
so repeated calls with targets of the same size do not recompile; a first call compiles the
round and the polish in a background thread while it builds its starts.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ase.data import covalent_radii

from jaxsci.descriptors import POOL_OPS
from jaxsci.geometry import (
    image_shifts,
    max_neighbor_count,
    neighbor_capacity,
    wrap_positions,
)
from jaxsci.metrics.structure import match_rows
from jaxsci.reconstruct.chunks import round_chunk, run_round
from jaxsci.reconstruct.crossover import Population, child
from jaxsci.reconstruct.losses import (
    feature_etas,
    feature_scales,
    min_image,
    morse,
    ot_loss,
    per_atom_sorted_error,
    pooled_loss,
    pooled_scale,
    repulsion,
    sort_by_species,
    sorted_loss,
    species_groups,
    tether,
)
from jaxsci.reconstruct.polish import fingerprint_fn, polish, precompile
from jaxsci.reconstruct.relocate import relocations
from jaxsci.reconstruct.starts import EMT_ELEMENTS, RELAX_SECONDS, MotifQueue, emt_relax

Array = jax.Array

#: Atomic volume used for random compact starts when no cell is given (Angstrom^3 per atom);
#: derived from covalent radii at a close-packing fraction (see ``_packing_radius``).
PACKING_FRACTION = 0.74

#: Free clusters: an atom whose nearest neighbour is farther than this many bond lengths
#: (sums of covalent radii) is pulled back (:func:`jaxsci.reconstruct.losses.tether`).
TETHER_STRETCH = 1.3

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

    positions: [n_atoms, 3] best positions found (Angstrom; free clusters centred at 0).
    error: relative fingerprint error of ``positions`` (rows matched, see
        :func:`jaxsci.metrics.fingerprint_error`; pooled targets compared directly).
    success: whether ``error < tol``.
    start_positions: [n_starts, n_atoms, 3] best positions of every start.
    start_losses: [n_starts] final (best) search loss of every start.
    start_errors: [n_starts] relative fingerprint error of every start's best positions.
    start_success: [n_starts] bool, which starts met ``tol`` (after polishing).
    history: [n_steps, n_starts] search loss at every optimizer step.
    n_rounds: rounds run; wall_time: seconds spent (including compilation).
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


@functools.cache
def default_optimizer(steps_per_round: int) -> optax.GradientTransformation:
    """Search optimizer: L-BFGS (memory 10) with unit step and no line search.

    Chosen by measurement (see benchmarks/RESULTS.md): from 0.6 A perturbations of an
    EMT-relaxed Pt20 it brings more starts back near the solution than Adam (lr 0.05,
    cosine decay) on the sorted L1 loss, at one gradient per step (a line search under
    ``vmap`` cost ~15x more per step on CPU). Steps are clipped to 0.5 A per atom and the
    state is reset at every round. ``steps_per_round`` is accepted so that schedules can
    depend on it.
    """
    del steps_per_round
    return optax.lbfgs(learning_rate=1.0, memory_size=10, linesearch=None)


def _value_and_grad(f, state):
    """``x -> ((value, aux), grad)`` for ``f(x) -> (value, aux)``; reuses a line search's
    stored value and gradient when the optimizer state has them (then ``aux`` costs one
    more evaluation of ``f``)."""
    if optax.tree_utils.tree_get(state, "value") is None:
        return jax.value_and_grad(f, has_aux=True)
    vg = optax.value_and_grad_from_state(lambda x: f(x)[0])

    def stored(x):
        value, grad = vg(x, state=state)
        return (value, f(x)[1]), grad

    return stored


def _clip_per_atom(update: Array, max_step: Array) -> Array:
    """Scale each atom's displacement down to at most ``max_step`` (Angstrom)."""
    norm = jnp.linalg.norm(update, axis=-1, keepdims=True)
    return update * jnp.minimum(1.0, max_step / jnp.maximum(norm, 1e-12))


# --------------------------------------------------------------------------- input checks
def _check_inputs(target, species, descriptor, cell, loss, pool_ops):
    t = np.asarray(target, dtype=np.float64)
    if t.size == 0 or (t.ndim == 2 and t.shape[0] == 0):
        raise ValueError("reconstruct: empty structure (target has no atoms)")
    if not np.all(np.isfinite(t)):
        raise ValueError("reconstruct: target contains NaN or inf")
    n_species = len(species)
    if n_species == 0:
        raise ValueError("reconstruct: empty structure (species is empty)")
    if n_species == 1:
        raise ValueError("reconstruct: one atom has no neighbours (any position reproduces it)")
    n_f = descriptor.n_features
    if loss is None:
        loss = "sorted" if t.ndim == 2 else "pooled"
    if loss not in ("sorted", "pooled"):
        raise ValueError(f"reconstruct: loss must be 'sorted' or 'pooled', got {loss!r}")
    if t.ndim == 2:
        if t.shape[1] != n_f:
            raise ValueError(
                f"reconstruct: target width {t.shape[1]} does not match the descriptor's "
                f"n_features {n_f}"
            )
        if t.shape[0] != n_species:
            raise ValueError(
                f"reconstruct: species lists {n_species} atoms but the target has {t.shape[0]} rows"
            )
        if loss == "pooled":
            raise ValueError(
                "reconstruct: loss='pooled' takes a pooled (1-D) target; pool the per-atom "
                "target first (jaxsci.descriptors.pool) or use loss='sorted'"
            )
    elif t.ndim == 1:
        if not pool_ops or any(op not in POOL_OPS for op in pool_ops):
            raise ValueError(
                f"reconstruct: pool_ops must be a non-empty sequence of {POOL_OPS}, "
                f"got {pool_ops!r}"
            )
        if t.shape[0] != n_f * len(pool_ops):
            raise ValueError(
                f"reconstruct: pooled target width {t.shape[0]} does not match "
                f"n_features {n_f} x {len(pool_ops)} pool ops {tuple(pool_ops)}"
            )
        if loss == "sorted":
            raise ValueError("reconstruct: a pooled (1-D) target needs loss='pooled'")
    else:
        raise ValueError(f"reconstruct: target must be 1-D or 2-D, got shape {t.shape}")
    species_idx = descriptor.encode_species(list(species))
    z = np.asarray(descriptor.species_z)[species_idx]
    if cell is not None:
        cell = np.asarray(cell, dtype=np.float64)
        if cell.shape != (3, 3) or not np.all(np.isfinite(cell)):
            raise ValueError(f"reconstruct: cell must be a finite [3, 3] array, got {cell.shape}")
        if abs(np.linalg.det(cell)) < 1e-9:
            raise ValueError("reconstruct: cell is singular")
        if not getattr(descriptor, "periodic", False):
            raise ValueError("reconstruct: a cell was given but the descriptor is not periodic")
    return t, np.asarray(species_idx, np.int32), z, cell, loss


def _check_options(
    integers: dict[str, tuple[Any, int]], reals: dict[str, tuple[Any, float, float, bool]]
) -> None:
    """Raise ValueError for an option of the wrong type or out of range.

    integers: name -> (value, lowest allowed); a float such as ``4.0`` is refused (it
    would be truncated or fail deep inside). reals: name -> (value, low, high, whether
    ``low`` itself is excluded); they must be finite (NaN, inf and non-numbers refused).
    """
    for name, (value, low) in integers.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"reconstruct: need an integer {name} >= {low} (got {value!r})")
    for name, (value, low, high, open_low) in reals.items():
        number = isinstance(value, int | float | np.integer | np.floating)
        if isinstance(value, bool) or not number:
            raise ValueError(f"reconstruct: {name} must be a real number (got {value!r})")
        above = value > low if open_low else value >= low
        if not (above and value <= high and np.isfinite(value)):
            bounds = f"{'>' if open_low else '>='} {low}" + (
                f" and <= {high}" if np.isfinite(high) else ""
            )
            raise ValueError(f"reconstruct: need {name} {bounds} (got {value!r})")


def _check_key(key: Any) -> None:
    """Raise ValueError unless ``key`` is a ``jax.random`` key (typed, or raw uint32 [2])."""
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
    raw = dtype == np.uint32 and getattr(key, "shape", None) == (2,)
    if not ((typed and key.shape == ()) or raw):
        raise ValueError(
            f"reconstruct: key must be one jax.random key, e.g. jax.random.key(0) (got {key!r})"
        )


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


# --------------------------------------------------------------------------- compiled parts
class _Spec(NamedTuple):
    """Static, hashable description of one compiled solver."""

    descriptor: Any
    n_atoms: int
    groups: tuple[tuple[int, ...], ...]
    cell: tuple[float, ...] | None
    loss: str
    pool_ops: tuple[str, ...]
    optimizer: Any
    n_starts: int
    steps_per_round: int
    n_kick: int
    polish_steps: int
    n_polish: int
    norm: str
    compact_steps: int
    n_sites: int
    ot_weight: float
    coarse: bool
    temperature: float


@functools.lru_cache(maxsize=64)
def _compile(spec: _Spec, species_key: tuple[int, ...]):
    """Build the jitted round, features and starts functions for one static spec."""
    species_idx = np.asarray(species_key, np.int32)
    groups = [np.asarray(g) for g in spec.groups]
    cell = None if spec.cell is None else np.asarray(spec.cell).reshape(3, 3)
    fp = fingerprint_fn(spec.descriptor, species_idx, cell)
    opt = spec.optimizer
    n = spec.n_atoms

    def search_loss(x, aux, col_w=None):
        """Search loss at ``x`` and the features it compared (aux output)."""
        feats = fp(x)
        if spec.loss == "sorted":
            val = sorted_loss(feats, aux["t_sorted"], aux["scale"], groups, spec.norm, col_w)
            if spec.ot_weight > 0:
                val = val + spec.ot_weight * ot_loss(
                    feats, aux["t_scaled"], aux["scale"], species_idx, aux["ot_eps"]
                )
        else:
            val = pooled_loss(feats, aux["t_pooled"], aux["pscale"], spec.pool_ops)
        rep = repulsion(x, aux["dmin"], cell)
        if cell is None:
            rep = rep + tether(x, aux["r0"], TETHER_STRETCH)
        return val + aux["w_rep"] * rep, feats

    def optimize(x, aux, steps, age):
        """``steps`` optimizer steps from ``x``: the loss history [steps], and the lowest
        point visited (the end point included), its loss and its features [n, F].

        The scan evaluates ``steps + 1`` points and discards the last update, so the end
        point's loss and features come from the same program as the steps' (one copy of
        the descriptor's forward pass in the compiled round, not three: its compilation
        is most of a first call's)."""

        def body(carry, step):
            x, st, low_x, low_val, low_feats = carry
            col_w = None
            if spec.coarse:
                # Coarse-to-fine continuation: a start's first ``coarse_rounds`` rounds weight
                # feature f by exp(-eta_f L^2), L shrinking linearly from ``coarse_length``
                # to 0, so the smooth long-range features fix the shape before the sharp ones.
                # The end point is scored unweighted, comparable with other rounds.
                frac = (age * steps + step) / jnp.maximum(aux["coarse_steps"], 1.0)
                ell = aux["coarse_length"] * jnp.maximum(0.0, 1.0 - frac)
                col_w = jnp.exp(-aux["etas"] * jnp.where(step == steps, 0.0, ell * ell))
            f = functools.partial(search_loss, aux=aux, col_w=col_w)
            (val, feats), g = _value_and_grad(f, st)(x)
            upd, st = opt.update(g, st, x, value=val, grad=g, value_fn=lambda y: f(y)[0])
            x_new = x + _clip_per_atom(upd, aux["max_step"])
            x_new = jnp.where(jnp.all(jnp.isfinite(x_new)), x_new, x)
            # The lowest point visited, the first (e.g. a guess) and the last included.
            # Under the continuation the weighted losses are not comparable across steps:
            # the end point only (its weights are all 1 by then).
            last = step == steps
            if spec.coarse:
                lower = last
            else:  # NaN never is lower; the end point wins a tie
                lower = (val < low_val) | (last & (val <= low_val))
            low_x = jnp.where(lower, x, low_x)
            low_feats = jnp.where(lower, feats, low_feats)
            low_val = jnp.where(lower, val, low_val)
            return (x_new, st, low_x, low_val, low_feats), val

        feats0 = jnp.zeros((n, spec.descriptor.n_features), x.dtype)
        init = (x, opt.init(x), x, jnp.asarray(jnp.inf, x.dtype), feats0)
        steps_axis = jnp.arange(steps + 1, dtype=jnp.float32)
        (_, _, low_x, low_val, low_feats), hist = jax.lax.scan(body, init, steps_axis)
        return hist[:steps], low_x, low_val, low_feats

    def per_atom_error(feats, aux):
        if spec.loss == "sorted":
            return per_atom_sorted_error(feats, aux["t_sorted"], aux["scale"], groups)
        return jnp.zeros(n, feats.dtype)

    def one_round(x, best_x, best_loss, best_err, stale, age, fresh, force, key, aux):
        """One round for one start; returns the state for the next round, the loss
        history, and the round's lowest point with its loss and features.

        ``best_err [n]`` is the per-atom error of ``best_x`` (which atoms are kicked). The
        start begins again from ``fresh`` after ``patience`` stale rounds, or now when
        ``force`` (a crossover child takes its place)."""
        # The round's outcome is the lowest point it visited: L-BFGS without a line search
        # can leave a minimum it reached (measured: from the exact Pt13, loss 9e-14, it
        # ended a 30-step round at 1.1).
        hist, x, val, feats = optimize(x, aux, spec.steps_per_round, age)
        improved = val < best_loss
        k_kick, k_who, k_jit = jax.random.split(key, 3)  # the stream of temperature 0
        if spec.temperature > 0:
            # Metropolis acceptance at a temperature relative to the current loss.
            u = jax.random.uniform(jax.random.fold_in(key, 1), (), x.dtype)
            worse = (val - best_loss) / (spec.temperature * best_loss + 1e-30)
            accept = improved | (u < jnp.exp(-jnp.where(improved, 0.0, worse)))
        else:
            accept = improved
        best_x = jnp.where(accept, x, best_x)
        best_loss = jnp.where(accept, val, best_loss)
        err = jnp.where(accept, per_atom_error(feats, aux), best_err)
        stale = jnp.where(improved, 0, stale + 1)
        # Kick: the n_kick worst-matching atoms (with a random tie-break) move up to
        # kick_size; every atom jitters a little.
        noise = jax.random.uniform(k_who, (n,), x.dtype) * (jnp.max(err) + 1e-12) * 0.5
        worst = jax.lax.top_k(err + noise, spec.n_kick)[1]
        direction = jax.random.normal(k_kick, (spec.n_kick, 3), x.dtype)
        step = aux["kick_size"] * direction / jnp.sqrt(3.0)
        if spec.n_sites > 0:
            # Directed moves: each of the worst atoms in turn goes to the best of n_sites
            # candidate sites at bond length from a random atom (one batched evaluation).
            def f0(y):
                return search_loss(y, aux)[0]

            def relocate(i, carry):
                y, k = carry
                k, ka, kd = jax.random.split(k, 3)
                w = worst[i]
                anchor = jax.random.randint(ka, (spec.n_sites,), 0, n)
                d = jax.random.normal(kd, (spec.n_sites, 3), x.dtype)
                d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
                sites = y[anchor] + aux["r0"][w, anchor][:, None] * d
                trials = jax.vmap(lambda p: y.at[w].set(p))(sites)
                vals = jax.vmap(f0)(trials)
                return trials[jnp.argmin(vals)], k

            kicked, _ = jax.lax.fori_loop(0, spec.n_kick, relocate, (best_x, k_kick))
        else:
            kicked = best_x.at[worst].add(step)
        kicked = kicked + 0.05 * aux["kick_size"] * jax.random.normal(k_jit, (n, 3), x.dtype)
        restart = (stale >= aux["patience"]) | force
        x_next = jnp.where(restart, fresh, kicked)
        best_loss = jnp.where(restart, jnp.inf, best_loss)
        best_x = jnp.where(restart, fresh, best_x)
        best_err = jnp.where(restart, 0.0, err)  # a fresh start's is set by its first round
        stale = jnp.where(restart, 0, stale)
        age = jnp.where(restart, 0, age + 1)
        return x_next, best_x, best_loss, best_err, stale, age, hist, x, val, feats

    in_axes = (0, 0, 0, 0, 0, 0, 0, 0, 0, None)
    out_axes = (0, 0, 0, 0, 0, 0, 1, 0, 0, 0)
    round_fn = jax.jit(jax.vmap(one_round, in_axes=in_axes, out_axes=out_axes))

    def features(x):
        return fp(x)

    features_fn = jax.jit(jax.vmap(features))

    def compact_one(key, aux):
        """A random start relaxed in a Morse pair potential with minima at the bond lengths."""
        if cell is None:
            k1, k2 = jax.random.split(key)
            d = jax.random.normal(k1, (n, 3))
            d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
            x = d * aux["radius"] * jax.random.uniform(k2, (n, 1)) ** (1.0 / 3.0)
        else:
            x = jax.random.uniform(key, (n, 3)) @ jnp.asarray(cell, jnp.float32)
        off = 1.0 - jnp.eye(n, dtype=jnp.float32)

        def energy(x):
            d = min_image(x[:, None, :] - x[None, :, :], cell)
            r = jnp.sqrt(jnp.sum(d * d, -1) + (1.0 - off))
            return 0.5 * jnp.sum(morse(r, aux["r0"]) * off)

        cp = optax.adam(optax.cosine_decay_schedule(0.1, max(spec.compact_steps, 1), alpha=0.05))
        g = jax.grad(energy)

        def body(carry, _):
            x, st = carry
            upd, st = cp.update(g(x), st, x)
            return (x + _clip_per_atom(upd, 0.3), st), None

        (x, _), _ = jax.lax.scan(body, (x, cp.init(x)), None, length=spec.compact_steps)
        return x

    starts_fn = jax.jit(jax.vmap(compact_one, in_axes=(0, None)))
    return round_fn, features_fn, starts_fn


# --------------------------------------------------------------------------- host helpers
def _batched(features_fn: Callable, cands: np.ndarray, batch: int) -> np.ndarray:
    """Features ``[k, n, F]`` of candidates ``[k, n, 3]``, ``batch`` at a time (the
    compiled batch size; the last batch is padded)."""
    pad = -len(cands) % batch
    padded = np.concatenate([cands, np.repeat(cands[:1], pad, 0)])
    feats = [
        np.asarray(features_fn(jnp.asarray(padded[i : i + batch], jnp.float32)))
        for i in range(0, len(padded), batch)
    ]
    return np.concatenate(feats)[: len(cands)]


def _rel_error(feats: np.ndarray, target: np.ndarray, perm: np.ndarray | None, ops) -> float:
    if perm is None:
        from jaxsci.descriptors import pool

        p = np.asarray(pool(jnp.asarray(feats), ops=tuple(ops)), dtype=np.float64)
        return float(np.linalg.norm(p - target) / max(np.linalg.norm(target), 1e-300))
    return float(np.linalg.norm(feats[perm] - target) / max(np.linalg.norm(target), 1e-300))


def _errors(feats: np.ndarray, target: np.ndarray, species_idx: np.ndarray, pooled: bool, ops):
    """Relative fingerprint error of each structure's features ``[k, n, F]`` against
    ``target``: rows matched by the Hungarian algorithm, pooled targets compared directly."""
    return np.array(
        [
            _rel_error(f, target, None if pooled else match_rows(f, target, species_idx), ops)
            for f in np.asarray(feats, np.float64)
        ]
    )


def _crowded(positions: np.ndarray, cell: np.ndarray, r_cut: float) -> bool:
    """Whether an atom of ``positions [N, 3]`` (periodic ``cell``) has more neighbours within
    ``r_cut`` than the search kept (:func:`jaxsci.geometry.neighbor_capacity`)."""
    pos = wrap_positions(positions, cell)
    most = max_neighbor_count(pos, cell, image_shifts(cell, r_cut), r_cut)
    return most > neighbor_capacity(len(positions), cell, r_cut)


def _check_guesses(initial_positions: Any | None, n: int) -> np.ndarray:
    """``initial_positions`` as a finite ``[k, n, 3]`` float64 array (``k = 0`` for None)."""
    if initial_positions is None:
        return np.zeros((0, n, 3))
    try:
        g = np.asarray(initial_positions, dtype=np.float64)
    except (TypeError, ValueError) as err:  # ragged lists, non-numbers
        raise ValueError(
            f"reconstruct: initial_positions must be a numeric [k, {n}, 3] array ({err})"
        ) from None
    if g.ndim == 2:
        g = g[None]
    if g.ndim != 3 or g.shape[1:] != (n, 3):
        raise ValueError(
            f"reconstruct: initial_positions must have shape [k, {n}, 3], got {g.shape}"
        )
    if not np.all(np.isfinite(g)):
        raise ValueError("reconstruct: initial_positions contain NaN or inf")
    return g


def _initial_state(x: Array, n_starts: int) -> tuple[Array, ...]:
    """Search state of starts ``x [n_starts, n, 3]``: positions, best positions, best
    loss, per-atom error of the best [n_starts, n], rounds without improvement, age."""
    n = x.shape[1]
    state = (
        x,
        x,
        jnp.full((n_starts,), jnp.inf, jnp.float32),
        jnp.zeros((n_starts, n), jnp.float32),
        jnp.zeros((n_starts,), jnp.int32),
        jnp.zeros((n_starts,), jnp.int32),
    )
    return _shard(state, n_starts)


def _shard(x, n_starts):
    n_dev = jax.device_count()
    if n_dev <= 1 or n_starts % n_dev:
        return x
    mesh = jax.make_mesh((n_dev,), ("starts",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("starts"))
    return jax.tree.map(lambda a: jax.device_put(a, sharding), x)


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
    repair_below: float = 0.0,
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
            and wires are not supported); ``None`` for a free cluster.
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
            start and step (K = :func:`jaxsci.geometry.neighbor_capacity`, ~104 for a
            metal at r_cut 6 A); on a CPU their rounds run in chunks of starts
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
        repair_below: free clusters with per-atom targets (0 = off, the default; try
            2e-2): when the best error so far is new (5% below the last one treated so),
            below this and above ``tol``, and no round has lowered it for
            :data:`REPAIR_AFTER` rounds, every atom of that structure is moved to every
            hollow site (:func:`jaxsci.reconstruct.relocate.relocations`, at most
            :data:`REPAIR_MOVES_PER_START` x ``n_starts`` moves), the moves are ranked
            by the sorted-column loss, and the ``n_starts`` best replace the starts of
            highest loss after the next rounds, :data:`REPAIR_SHARE` of them a round. A
            search can end with one or two atoms 1.7-1.9 A from their sites and the rest
            within ~0.4 A, where no descent or matching reaches the target (measured: a
            held-out random Pt20 and icosahedral Pt25 cut, each recovered this way: the
            right move ranked 3rd-48th of 762-1088). Off by default: on three held-out
            seeds a form that replaced every start at once recovered those two and lost
            two others (74 of 90 either way, benchmarks/RESULTS.md).
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
            the target, NaN/inf in the target, an empty structure, a bad cell or option.
    """
    t0 = time.perf_counter()
    pool_ops = (pool_ops,) if isinstance(pool_ops, str) else tuple(pool_ops)
    time_limit = None if time_limit == np.inf else time_limit  # inf: no limit, as None
    t, species_idx, z, cell_np, loss = _check_inputs(
        target, species, descriptor, cell, loss, pool_ops
    )
    _check_options(
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
    _check_key(key)
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
    guesses = _check_guesses(initial_positions, n)
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
    spec = _Spec(
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
    )
    round_fn, features_fn, starts_fn = _compile(spec, tuple(int(s) for s in species_idx))

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
    chunk = round_chunk(n_starts, n, cell_np, descriptor.r_cut)
    zeros = jnp.zeros((chunk, n, 3), jnp.float32)
    example = (
        *_initial_state(zeros, chunk),
        _shard(zeros, chunk),
        _shard(jnp.zeros(chunk, bool), chunk),
        jax.random.split(key, chunk),
        aux,
    )
    round_ready = compiling.submit(lambda: round_fn.lower(*example).compile())
    polish_ready = None
    if not pooled and (polish_below > 0 or refine_steps > 0):
        polish_ready = compiling.submit(precompile, descriptor, species_idx, cell_np)
    compiling.shutdown(wait=False)  # the thread ends after these two
    x = starts_fn(jax.random.split(k0, n_starts), aux)
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
            feats = _batched(features_fn, cands, n_starts)
            return _errors(feats, t, species_idx, pooled, pool_ops)

        queue = MotifQueue(z, score, rng_motif)
        motifs, picked = queue.peek(min(n_motif, n_starts - len(guesses)))
        queue.used(picked)
        guesses = np.concatenate([guesses, motifs])
    if len(guesses):
        x = x.at[: len(guesses)].set(jnp.asarray(guesses, x.dtype))
    state = _initial_state(x, n_starts)

    record_x = np.zeros((n_starts, n, 3))
    record_loss = np.full(n_starts, np.inf)
    record_err = np.full(n_starts, np.inf)
    polished_err = np.full(n_starts, np.inf)  # error each start's last polish reached
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

    while rounds < max_rounds and not done:
        round_start = time.perf_counter()
        key, k_fresh, k_round = jax.random.split(key, 3)
        fresh = starts_fn(jax.random.split(k_fresh, n_starts), aux)
        motif_slot = np.full(n_starts, -1)  # queue index of the motif a slot offers
        force = np.zeros(n_starts, bool)
        if queue is not None:
            # A start that begins again does so from the next motif of the queue with the
            # share of motif starts in the first round; unused ones go back to the queue.
            who = rng_motif.choice(n_starts, n_motif, replace=False)
            if inject:  # relaxed motifs just joined: the starts of highest loss take them now
                who = np.argsort(-np.asarray(state[2], np.float64), kind="stable")[:n_motif]
                force[who] = True
                inject = False
            motifs, picked = queue.peek(n_motif)
            fresh = fresh.at[who].set(jnp.asarray(motifs, fresh.dtype))
            motif_slot[who] = picked
        if len(moved):  # relocations of the best begin again the starts of highest loss
            # (after this round: fresh starts take effect in the next one)
            take, moved = moved[:n_repair], moved[n_repair:]
            who = np.argsort(-np.asarray(state[2], np.float64), kind="stable")[: len(take)]
            fresh = fresh.at[who].set(jnp.asarray(take, fresh.dtype))
            force[who] = True
            motif_slot[who] = -1
        if rng is not None and len(population) >= 2:
            # Generational step: the n_children starts of highest best-so-far loss among
            # those at least two rounds old begin again from cut-and-splice children.
            cur = np.asarray(state[2], np.float64)
            old = np.flatnonzero(np.asarray(state[5]) >= 2)
            who = old[np.argsort(-cur[old], kind="stable")[:n_children]]
            if len(who):
                kids = [child(population, species_idx, rng, twist) for _ in who]
                fresh = fresh.at[who].set(jnp.asarray(np.stack(kids), fresh.dtype))
                force[who] = True
                motif_slot[who] = -1
        fresh = _shard(fresh, n_starts)
        keys = jax.random.split(k_round, n_starts)
        prep_time = min(prep_time, time.perf_counter() - round_start)
        round_ready.result()  # (no second compilation of it here)
        per_start = (fresh, _shard(jnp.asarray(force), n_starts), keys)
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
        # The record keeps every start's best so far, across restarts, from the lowest
        # point of each round: rows are matched for the starts whose search loss improved,
        # and a point replaces the record only if its matched error is lower too (a
        # polished record, lower in error than its search loss says, is not overwritten by
        # a worse point of lower search loss).
        idx = np.flatnonzero(low_loss < record_loss)
        if idx.size:
            errs = _errors(np.asarray(low_feats)[idx], t, species_idx, pooled, pool_ops)
            lower = errs < record_err[idx]
            sel = idx[lower]
            record_loss[sel] = low_loss[sel]
            record_x[sel] = reached[sel]
            record_err[sel] = errs[lower]
        state = (x_next, best_x, best_loss, best_err, stale, age)
        if use_crossover:
            for s in np.argsort(low_loss)[: 2 * population_size]:
                population.add(reached[s], float(low_loss[s]))
        # Polish only the overall best start(s) (n_polish, default 1), and only when never
        # polished or now below the error their last polish reached.
        if not pooled:
            top = np.argsort(record_err, kind="stable")[: spec.n_polish]
            order = [int(s) for s in top if record_err[s] < min(polish_below, polished_err[s])]
            if order and polish_ready is not None:
                polish_ready.result()
            for i, s in enumerate(order):
                y, err = polish(
                    record_x[s],
                    t,
                    species_idx,
                    descriptor,
                    cell=cell_np,
                    scale=scale,
                    steps_per_cycle=spec.polish_steps,
                    seed=rounds,
                    tol=tol,
                    hops=8 if i == 0 else 0,
                    deadline=search_end,
                )
                if err < record_err[s]:
                    record_err[s] = err
                    record_x[s] = y
                polished_err[s] = record_err[s]
        if best is None or np.min(record_err) < best[0]:
            s = int(np.argmin(record_err))
            best = (float(record_err[s]), record_x[s].copy())
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
                feats = _batched(features_fn, cands, n_starts)
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
        if not (ran.all() and fits(prep_time + chunk_time)):
            break
    if bar is not None:
        bar.close()
    if polish_ready is not None:  # no compilation left running after the call
        polish_ready.result()
    assert best is not None
    if not np.isfinite(best[0]):
        raise FloatingPointError(
            "reconstruct: the search loss was NaN at every point of every start; check the "
            "optimizer and the loss options"
        )
    if refine_steps > 0 and best[0] < tol and not pooled:
        # The lowest-error starts, not only the best: a different structure can also meet
        # tol (measured: an EMT-relaxed Pt13 cuboctahedron, 6.8e-4 at 0.61 A, ranked first;
        # six starts of the right one at 7.1e-4-7.7e-4 refine to 2e-6-6e-6, it stalls).
        # First the matched descents alone for each (cheap), then swaps and Gauss-Newton
        # matchings for the winner, none started after the deadline.
        # Under a time limit: REFINE_SECONDS, within the rest of the budget (at least 1 s).
        # Without one, no wall clock: the call stays a function of its key (a refinement
        # cut short by the clock of a loaded machine would end elsewhere).
        end = None
        if time_limit is not None:
            now = time.perf_counter()
            end = min(now + REFINE_SECONDS, max(t0 + time_limit, now + 1.0))

        def late() -> bool:
            return end is not None and time.perf_counter() > end

        refine = functools.partial(
            polish,
            target=t,
            species_idx=species_idx,
            descriptor=descriptor,
            cell=cell_np,
            scale=scale,
            sorted_steps=0,
            steps_per_cycle=refine_steps,
            tol=tol / 100,
            hops=0,
            deadline=end,
        )
        for i, s in enumerate(np.argsort(record_err, kind="stable")[:N_REFINE]):
            if i > 0 and late():
                break
            y, err = refine(record_x[s], max_swaps=0, gauss_newton_trials=0)
            if err < best[0]:
                best = (err, y)
            if best[0] < tol / 100:
                break
        if best[0] >= tol / 100 and not late():
            y, err = refine(best[1])
            if err < best[0]:
                best = (err, y)
    positions, error = best[1], best[0]
    if cell_np is None:
        positions = positions - positions.mean(0)
    elif _crowded(positions, cell_np, descriptor.r_cut):
        # The search kept a density-sized neighbour count (polish.fingerprint_fn) and these
        # positions have more neighbours: their error with all of them.
        with jax.enable_x64(True):
            feats = descriptor.fn(jnp.asarray(positions), jnp.asarray(species_idx), cell=cell_np)
            feats = np.asarray(feats, np.float64)
        perm = None if pooled else match_rows(feats, t, species_idx)
        error = _rel_error(feats, t, perm, pool_ops)
    return ReconstructResult(
        positions=positions[back],
        error=error,
        success=bool(error < tol),
        start_positions=record_x[:, back],
        start_losses=record_loss,
        start_errors=record_err,
        start_success=record_err < tol,
        history=np.concatenate(history, axis=0),
        n_rounds=rounds,
        wall_time=time.perf_counter() - t0,
    )
