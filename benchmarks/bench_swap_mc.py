"""Swap Monte Carlo throughput: jaxsci's parallel tempering vs a NumPy loop, same run.

The model is MoNbTaW on BCC (6 shells of effective pair interactions, equimolar, the
VAE-order-parameter paper's alloy). jaxsci runs ``R`` replicas in one jitted program (a
``lax.scan`` over swap attempts, ``vmap`` over temperatures, an exchange round after every
sweep, energies recomputed each sweep); the anchor is the per-attempt Python loop of a
one-off NumPy script (the swap energy from the same neighbour tables, one replica at a
time, no exchanges). Both attempt uniformly random site pairs with the Metropolis rule.
The figure is attempted swaps per second over all replicas; compilation is excluded
(a warm-up call), medians of ``--repeats``. Before timing, jaxsci's swap energies are
checked against full-energy differences and against the anchor's, on random and on
neighbouring pairs.

    python benchmarks/bench_swap_mc.py                        # n_cells 6 (432 sites), 24 T
    python benchmarks/bench_swap_mc.py --n-cells 8 --replicas 32 --sweeps 50
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np


def _numpy_delta(o, nbr, vc, cols, i, j) -> float:
    """The anchor's swap energy (eV): the bonds of sites i and j, as a NumPy script has it."""
    a, b = o[i], o[j]
    ki, kj = o[nbr[i]], o[nbr[j]]
    d = (vc[cols, b, ki] - vc[cols, a, ki]).sum() + (vc[cols, a, kj] - vc[cols, b, kj]).sum()
    bond = nbr[i] == j
    return d - np.where(bond, vc[cols, a, a] + vc[cols, b, b] - 2 * vc[cols, a, b], 0).sum()


def _numpy_sweeps(occ, nbr, vc, betas, n_sweeps, rng):
    """The anchor: R replicas one after another, one attempt per Python iteration."""
    n = occ.shape[1]
    cols = np.arange(nbr.shape[1])
    for r, beta in enumerate(betas):
        o = occ[r]
        for _ in range(n_sweeps * n):
            i, j = rng.integers(0, n, 2)
            a, b = o[i], o[j]
            if a == b:
                continue
            if np.log(rng.random()) < -beta * _numpy_delta(o, nbr, vc, cols, i, j):
                o[i], o[j] = b, a
    return occ


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--n-cells",
        type=int,
        default=6,
        help="BCC cells per edge, >= 5 (2 n^3 sites; default: %(default)s)",
    )
    p.add_argument(
        "--replicas", type=int, default=24, help="temperatures, >= 1 (default: %(default)s)"
    )
    p.add_argument(
        "--sweeps", type=int, default=20, help="sweeps per jaxsci call (default: %(default)s)"
    )
    p.add_argument(
        "--anchor-sweeps",
        type=int,
        default=1,
        help="sweeps per replica, NumPy (default: %(default)s)",
    )
    p.add_argument(
        "--repeats", type=int, default=5, help="timed repeats, median (default: %(default)s)"
    )
    args = p.parse_args(argv)
    for name, low in (("n_cells", 5), ("replicas", 1), ("sweeps", 1), ("anchor_sweeps", 1)):
        if getattr(args, name) < low:  # n_cells: the 6 MoNbTaW shells need a 5^3 cell
            p.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")

    import jax
    import jax.numpy as jnp

    from jaxsci.alloys import (
        K_B,
        MONBTAW,
        bcc_lattice,
        pair_hamiltonian,
        pt_init,
        pt_sweeps,
        random_occupation,
    )

    lat = bcc_lattice(args.n_cells)
    ham = pair_hamiltonian(lat, MONBTAW.pair_energies)
    temps = np.geomspace(100.0, 2000.0, args.replicas)
    betas = 1.0 / (K_B * temps)
    occ = np.asarray(random_occupation(jax.random.PRNGKey(0), lat.n_sites, MONBTAW.composition))
    occ_r = np.tile(occ, (args.replicas, 1))
    vc = MONBTAW.pair_energies[lat.shell]

    rng = np.random.default_rng(0)
    worst_full = worst_anchor = 0.0
    cols = np.arange(lat.neighbors.shape[1])
    for c in range(60):  # random pairs, and pairs of neighbours (the bond correction)
        i = int(rng.integers(0, lat.n_sites))
        j = int(lat.neighbors[i, c]) if c % 2 else int(rng.integers(0, lat.n_sites))
        o2 = occ.copy()
        o2[[i, j]] = occ[[j, i]]
        d_jax = float(ham.swap_delta(occ, i, j))
        worst_full = max(worst_full, abs(d_jax - float(ham.energy(o2) - ham.energy(occ))))
        worst_anchor = max(
            worst_anchor, abs(d_jax - _numpy_delta(occ, lat.neighbors, vc, cols, i, j))
        )
    print(
        f"swap energies: jaxsci vs its full-energy difference max |error| {worst_full:.2e} eV, "
        f"vs the NumPy anchor's {worst_anchor:.2e} eV"
    )
    if worst_anchor > 1e-4:
        raise SystemExit("the NumPy anchor computes other swap energies: not comparable")

    state = pt_init(ham, jnp.asarray(occ_r))
    run = jax.jit(lambda s, k: pt_sweeps(ham, s, jnp.asarray(betas, jnp.float32), k, args.sweeps))
    state = run(state, jax.random.PRNGKey(1))
    jax.block_until_ready(state)
    keys = jax.block_until_ready([jax.random.PRNGKey(2 + rep) for rep in range(args.repeats)])
    t_jax, t_np = [], []
    for rep in range(args.repeats):
        t0 = time.perf_counter()
        state = run(state, keys[rep])
        jax.block_until_ready(state)  # every output of the call, not only the energies
        t_jax.append((time.perf_counter() - t0) / (args.sweeps * args.replicas * lat.n_sites))
        t0 = time.perf_counter()
        _numpy_sweeps(occ_r.copy(), lat.neighbors, vc, betas, args.anchor_sweeps, rng)
        t_np.append((time.perf_counter() - t0) / (args.anchor_sweeps * args.replicas * lat.n_sites))
    jx, npy = statistics.median(t_jax), statistics.median(t_np)
    print(
        f"machine: {platform.processor() or platform.machine()}, jax {jax.__version__}, "
        f"backend {jax.default_backend()}"
    )
    print(
        f"lattice: BCC {args.n_cells}^3 cells ({lat.n_sites} sites, 6 shells), "
        f"{args.replicas} replicas, {args.sweeps} sweeps per jaxsci call"
    )
    print(f"jaxsci parallel tempering: {1 / jx:,.0f} attempts/s ({jx * 1e6:.3f} us each)")
    print(f"NumPy loop (anchor):       {1 / npy:,.0f} attempts/s ({npy * 1e6:.3f} us each)")
    print(f"ratio (jaxsci / NumPy attempts per second): {npy / jx:.1f}x")


if __name__ == "__main__":
    import sys
    from pathlib import Path

    # the repository root, for experiments._cli when run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from experiments._cli import interruptible

    interruptible(main)
