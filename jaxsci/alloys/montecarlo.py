"""Swap Monte Carlo with parallel tempering for lattice alloys (canonical ensemble).

A sweep attempts ``n_sites`` swaps of two sites drawn uniformly at random (a symmetric
proposal: the composition is conserved exactly and the Metropolis rule
``min(1, exp(-dE / k_B T))`` satisfies detailed balance). After every sweep, replicas at
neighbouring temperatures exchange configurations with probability
``min(1, exp((1/k_B T_r - 1/k_B T_r+1)(E_r - E_r+1)))`` (even pairs on even sweeps, odd
pairs on odd ones), which lets low-temperature replicas leave metastable states. Energies
are recomputed from scratch after every sweep (no drift from summed swap energies).

:func:`pt_sweeps` is the pure, jittable kernel; :func:`parallel_tempering` drives it from
the host with a progress bar and collects samples.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsci._checks import is_int_at_least
from jaxsci.alloys.hamiltonian import PairHamiltonian

__all__ = [
    "K_B",
    "PTResult",
    "PTState",
    "parallel_tempering",
    "pt_init",
    "pt_sweeps",
    "random_occupation",
    "site_counts",
]

K_B = 8.617333262e-5  # Boltzmann constant, eV/K


class PTState(NamedTuple):
    """State of the replicas, one row per temperature slot (lowest first).

    Attributes:
      occupations: ``[R, n_sites]`` int32 species index per site.
      energies: ``[R]`` energy of each slot's configuration (eV).
      accepted: ``[R]`` int32 swaps accepted at each temperature (since the last reset).
      exchanged: ``[R - 1]`` int32 accepted exchanges between slots ``r`` and ``r + 1``.
      sweep: int32 sweeps done.
    """

    occupations: jax.Array
    energies: jax.Array
    accepted: jax.Array
    exchanged: jax.Array
    sweep: jax.Array


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=(
        "temperatures",
        "energies",
        "samples",
        "swap_acceptance",
        "exchange_acceptance",
        "timings",
        "final_state",
    ),
    meta_fields=("n_sweeps", "n_burn"),
)
@dataclasses.dataclass(frozen=True, eq=False)  # identity: array fields do not compare
class PTResult:
    """Samples of a parallel-tempering run.

    A pytree: its leaves are the five arrays, the two ``timings`` values (measurements,
    not settings: results of runs that took different times still share a structure) and
    the arrays of ``final_state``; ``n_sweeps`` and ``n_burn`` are static (Python ints).

    Attributes:
      temperatures: ``[R]`` K, increasing.
      energies: ``[n_samples, R]`` total energy of each sample (eV).
      samples: ``[n_samples, R, n_sites]`` occupations (int8; int16 beyond 127 species).
      swap_acceptance: ``[R]`` fraction of swap attempts accepted while sampling.
      exchange_acceptance: ``[R - 1]`` fraction of exchange attempts accepted per pair;
        NaN for a pair never tried while sampling (pairs alternate by sweep: with one
        sampled sweep the odd pairs are not tried), not 0, which reads as a ladder gap.
      n_sweeps: sweeps per replica while sampling (burn-in excluded).
      n_burn: burn-in sweeps done (``n_burn`` rounded up to whole ``sample_every``).
      timings: wall seconds of the burn-in (``burn_s``, compilation included) and of the
        sampling (``sampling_s``).
      final_state: the replicas at the end (pass it back as ``occupation`` to continue;
        its acceptance counters are zero: the run's counts are summed on the host, in
        int64, into ``swap_acceptance`` and ``exchange_acceptance``).
    """

    temperatures: np.ndarray
    energies: np.ndarray
    samples: np.ndarray
    swap_acceptance: np.ndarray
    exchange_acceptance: np.ndarray
    n_sweeps: int
    n_burn: int
    timings: dict[str, float]
    final_state: PTState


def random_occupation(key: jax.Array, n_sites: int, composition: Sequence[float]) -> jax.Array:
    """A random occupation ``[n_sites]`` int32 with ``composition`` (fractions summing to 1)
    rounded to whole site counts (largest remainders)."""
    counts = site_counts(n_sites, composition)
    species = np.repeat(np.arange(len(counts)), counts)
    return jax.random.permutation(key, jnp.asarray(species, jnp.int32))


def site_counts(n_sites: int, composition: Sequence[float]) -> np.ndarray:
    """Whole numbers of sites per species for ``composition`` (largest remainders)."""
    c = np.asarray(composition, np.float64)
    if c.ndim != 1 or c.size < 1 or not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError(f"composition must be non-negative fractions, got {composition!r}")
    if abs(c.sum() - 1.0) > 1e-6:
        raise ValueError(f"composition must sum to 1, got {c.sum():.6g}")
    if not is_int_at_least(n_sites, 1):
        raise ValueError(f"n_sites must be an int >= 1, got {n_sites!r}")
    n_sites = int(n_sites)
    raw = c / c.sum() * n_sites
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n_sites - counts.sum()]] += 1
    assert counts.sum() == n_sites
    return counts


def _check_temperatures(temperatures: Sequence[float]) -> np.ndarray:
    if isinstance(temperatures, str) or any(
        isinstance(v, str | bytes) for v in np.ravel(np.asarray(temperatures, object))
    ):
        raise ValueError(f"temperatures must be numbers (K), got {temperatures!r}")
    t = np.asarray(temperatures, np.float64)
    if t.ndim != 1 or t.size < 1:
        raise ValueError(
            f"temperatures must be a 1-D sequence of at least one value (K), got shape "
            f"{t.shape}: {temperatures!r}"
        )
    # 1 / (k_B T) must stay finite in float32 (the chains' dtype): T >= 1e-30 K
    if not np.all(np.isfinite(t)) or np.any(t < _T_MIN):
        raise ValueError(
            f"temperatures must be positive and finite, >= {_T_MIN:g} K (1/(k_B T) finite in "
            f"float32), got {temperatures!r}"
        )
    if np.any(np.diff(t) <= 0):
        raise ValueError("temperatures must be strictly increasing")
    return t


_T_MIN = 1e-30  # K: k_B T = 8.6e-35 eV, 1 / (k_B T) = 1.2e34 < float32 max 3.4e38


def _log_uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``log U`` of the Metropolis and exchange rules, as ``log(1 - U) = -Exponential(1)``:
    always finite. ``log(U)`` is -inf for a draw of exactly 0 (1 in 2^23 in float32), which
    accepted a move whatever its cost."""
    return -jax.random.exponential(key, shape)


def pt_init(hamiltonian: PairHamiltonian, occupations: jax.Array) -> PTState:
    """State of ``R`` replicas from ``occupations`` ``[R, n_sites]``."""
    if not isinstance(occupations, jax.core.Tracer):
        host = np.asarray(occupations)
        if host.ndim != 2 or host.shape[1] != hamiltonian.n_sites:
            raise ValueError(
                f"occupations must be [R, n_sites={hamiltonian.n_sites}], got {host.shape}"
            )
        if not np.issubdtype(host.dtype, np.integer):  # bool is not either
            raise ValueError(
                f"occupations must be integer species indices, got dtype {host.dtype} "
                "(a float occupation would be truncated)"
            )
        if host.size and (host.min() < 0 or host.max() >= hamiltonian.n_species):
            raise ValueError(
                f"occupations must hold species indices 0..{hamiltonian.n_species - 1}"
            )
    occ = jnp.asarray(occupations, jnp.int32)
    r = occ.shape[0]
    return PTState(
        occ,
        jax.vmap(hamiltonian.energy)(occ),
        jnp.zeros((r,), jnp.int32),
        jnp.zeros((max(r - 1, 0),), jnp.int32),
        jnp.zeros((), jnp.int32),
    )


def pt_sweeps(
    hamiltonian: PairHamiltonian, state: PTState, betas: jax.Array, key: jax.Array, n: int
) -> PTState:
    """``n`` sweeps of every replica, each followed by an exchange round (pure; jit with
    ``n`` static). ``betas``: ``[R]`` 1 / (k_B T) in 1/eV, decreasing."""
    n_sites = hamiltonian.n_sites

    def sweep_one(occ, beta, key):
        ki, kj, ku = jax.random.split(key, 3)
        i = jax.random.randint(ki, (n_sites,), 0, n_sites)
        j = jax.random.randint(kj, (n_sites,), 0, n_sites)
        log_u = _log_uniform(ku, (n_sites,))

        def attempt(carry, x):
            occ, acc = carry
            i, j, lu = x
            delta = hamiltonian.swap_delta(occ, i, j)
            ok = (occ[i] != occ[j]) & (lu < -beta * delta)
            a, b = occ[i], occ[j]
            occ = occ.at[i].set(jnp.where(ok, b, a)).at[j].set(jnp.where(ok, a, b))
            return (occ, acc + ok.astype(jnp.int32)), None

        (occ, acc), _ = jax.lax.scan(attempt, (occ, jnp.zeros((), jnp.int32)), (i, j, log_u))
        return occ, acc

    def exchange(occ, energies, key, parity):
        r = occ.shape[0]
        if r < 2:
            return occ, energies, jnp.zeros((0,), bool)
        lo = jnp.arange(r - 1)
        log_p = (betas[lo] - betas[lo + 1]) * (energies[lo] - energies[lo + 1])
        try_pair = lo % 2 == parity
        ok = try_pair & (_log_uniform(key, (r - 1,)) < log_p)
        # pairs tried in one round are disjoint, so the exchanges form a permutation
        up = jnp.concatenate([ok, jnp.zeros((1,), bool)])  # slot r swaps with r + 1
        down = jnp.concatenate([jnp.zeros((1,), bool), ok])  # slot r swaps with r - 1
        idx = jnp.arange(r)
        perm = jnp.where(up, idx + 1, jnp.where(down, idx - 1, idx))
        return occ[perm], energies[perm], ok

    def one(state, key):
        k_sweep, k_ex = jax.random.split(key)
        keys = jax.random.split(k_sweep, state.occupations.shape[0])
        occ, acc = jax.vmap(sweep_one)(state.occupations, betas, keys)
        energies = jax.vmap(hamiltonian.energy)(occ)
        occ, energies, ok = exchange(occ, energies, k_ex, state.sweep % 2)
        return PTState(
            occ,
            energies,
            state.accepted + acc,
            state.exchanged + ok.astype(jnp.int32),
            state.sweep + 1,
        ), None

    state, _ = jax.lax.scan(one, state, jax.random.split(key, n))
    return state


# One compiled program per (shapes, n): repeated or continued runs reuse it, and so does
# another hamiltonian of the same shapes (its tables are arguments, not constants).
_advance = jax.jit(pt_sweeps, static_argnums=(4,))


def parallel_tempering(
    key: jax.Array,
    hamiltonian: PairHamiltonian,
    occupation: jax.Array | PTState,
    temperatures: Sequence[float],
    *,
    n_samples: int,
    sample_every: int = 1,
    n_burn: int = 0,
    progress: bool = True,
) -> PTResult:
    """Sample the canonical ensemble of ``hamiltonian`` at ``temperatures`` (K, increasing).

    Every replica starts from ``occupation`` (``[n_sites]`` int, or ``[R, n_sites]`` with the
    same composition in every row), runs ``n_burn`` sweeps (rounded up to whole
    ``sample_every``), then records one sample every ``sample_every`` sweeps until it has
    ``n_samples``. To continue a run, pass its ``final_state`` as ``occupation`` (with the
    same temperatures and a new key). ``progress``: a bar over all sweeps.
    """
    t = _check_temperatures(temperatures)
    start = occupation if isinstance(occupation, PTState) else None
    occ = np.asarray(occupation.occupations if start is not None else occupation)
    given = occ.shape
    if start is not None and occ.shape[0] != len(t):
        raise ValueError(
            f"final_state holds {occ.shape[0]} replicas but {len(t)} temperatures were given: "
            "continue a run with the temperatures it was made with"
        )
    if occ.ndim == 1:
        occ = np.broadcast_to(occ, (len(t), occ.shape[0]))
    if occ.shape != (len(t), hamiltonian.n_sites):
        raise ValueError(
            f"occupation must be [n_sites={hamiltonian.n_sites}] or "
            f"[{len(t)}, {hamiltonian.n_sites}], got shape {given}"
        )
    if not np.issubdtype(occ.dtype, np.integer) or np.issubdtype(occ.dtype, np.bool_):
        raise ValueError(f"occupation must hold integer species indices, got dtype {occ.dtype}")
    if occ.min() < 0 or occ.max() >= hamiltonian.n_species:
        raise ValueError(f"occupation must hold species indices 0..{hamiltonian.n_species - 1}")
    counts = np.stack([np.bincount(row, minlength=hamiltonian.n_species) for row in occ])
    if np.any(counts != counts[0]):
        raise ValueError(
            "occupation: every replica must have the same composition (exchanges swap whole "
            f"configurations between temperatures), got species counts {counts.tolist()}"
        )
    for name, v, low in (
        ("n_samples", n_samples, 1),
        ("sample_every", sample_every, 1),
        ("n_burn", n_burn, 0),
    ):
        if not is_int_at_least(v, low):
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    dt = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    betas = jnp.asarray(1.0 / (K_B * t), dt)
    state = pt_init(hamiltonian, occ) if start is None else start
    key_burn, key_run = jax.random.split(key)
    n_burn_calls = -(-n_burn // sample_every)  # burn-in in calls of sample_every sweeps
    energies = np.empty((n_samples, len(t)))
    # int8 holds up to 127 species; more (no alloy, but nothing forbids it) need int16
    samples = np.empty((n_samples, len(t), hamiltonian.n_sites), _species_dtype(hamiltonian))
    timings = {"burn_s": 0.0, "sampling_s": 0.0}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = (n_burn_calls + n_samples) * sample_every
        bar = tqdm(total=total, desc="parallel tempering (sweeps)", leave=False)
    t0 = time.perf_counter()
    for k in jax.random.split(key_burn, n_burn_calls):
        state = _advance(hamiltonian, state, betas, k, int(sample_every))
        if bar is not None:
            state.energies.block_until_ready()
            bar.update(sample_every)
    state.energies.block_until_ready()
    timings["burn_s"] = time.perf_counter() - t0
    # statistics of the sampling phase only; exchange rounds alternate from an even sweep
    zero = jnp.zeros_like
    state = state._replace(
        accepted=zero(state.accepted), exchanged=zero(state.exchanged), sweep=zero(state.sweep)
    )
    # counts summed on the host in int64: the state's int32 counters restart every call (a
    # long run of a large lattice would overflow them: 2^31 swaps)
    accepted = np.zeros(state.accepted.shape, np.int64)
    exchanged = np.zeros(state.exchanged.shape, np.int64)
    t0 = time.perf_counter()
    for s, k in enumerate(jax.random.split(key_run, n_samples)):
        state = _advance(hamiltonian, state, betas, k, int(sample_every))
        energies[s] = np.asarray(state.energies)
        samples[s] = np.asarray(state.occupations)
        accepted += np.asarray(state.accepted)
        exchanged += np.asarray(state.exchanged)
        state = state._replace(accepted=zero(state.accepted), exchanged=zero(state.exchanged))
        if bar is not None:
            bar.update(sample_every)
    timings["sampling_s"] = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    n_sweeps = n_samples * sample_every
    tries = np.array([(n_sweeps + (1 - r % 2)) // 2 for r in range(len(t) - 1)])  # per pair
    return PTResult(
        temperatures=t,
        energies=energies,
        samples=samples,
        swap_acceptance=accepted / (n_sweeps * hamiltonian.n_sites),
        exchange_acceptance=np.where(tries > 0, exchanged / np.maximum(tries, 1), np.nan),
        n_sweeps=int(n_sweeps),
        n_burn=int(n_burn_calls * sample_every),
        timings=timings,
        final_state=state,
    )


def _species_dtype(hamiltonian: PairHamiltonian) -> np.dtype:
    """The smallest of int8 / int16 / int32 that holds every species index."""
    return np.dtype(np.min_scalar_type(-max(hamiltonian.n_species, 1)))
