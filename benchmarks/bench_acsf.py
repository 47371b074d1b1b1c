"""ACSF throughput and memory: jaxsci vs DScribe in the same run.

Case (a): N rattled Pt55 icosahedra, 8 G2 + 12 G4, r_cut 6 A. Times DScribe ``create``
(one core, n_jobs=1), jaxsci ``create`` (end to end from ase.Atoms) and the jitted batched
pure function on pre-padded arrays, plus value-and-gradient of a scalar loss with respect to
positions. Repeats are interleaved and medians reported; compilation is excluded (warm-up).
The pure-function timings are throughput: the chunks are sliced and on the device before
the timer, every chunk's call is dispatched and the timer stops after one wait on all the
outputs (so on a GPU the calls queue back to back; waiting on each chunk in turn would
time one call's latency). ``--chunk 4 16 64`` sweeps the forward chunk size.

Case (b): periodic fcc Pt supercells (500 ... 32,000 atoms): time and peak resident memory
per size, each measured in a fresh subprocess (jaxsci uses its cell list; median of
``--repeats`` calls after a first one, which for jaxsci compiles), with the time ratio.
``--pbc TTF`` makes them slabs (15 A of vacuum above, no periodicity along z), ``--pbc TFF``
wires (periodic along x only, 15 A of vacuum around); the cell list serves both.

DScribe computes in float64; jaxsci in JAX's default float32 unless ``--x64`` (the dtype of
each side is printed with the results). Speedups are time ratios on the same structures:
jaxsci's padding to whole chunks is a cost, not counted as throughput. DScribe runs on one
core; XLA uses every core it may: ``--cores 1`` pins the whole run (and case b's workers)
to one core, for a like-for-like ratio. The agreement figure is the largest difference
relative to each feature's own scale (column maximum), not to the largest feature.

    python benchmarks/bench_acsf.py                      # both cases, with DScribe
    python benchmarks/bench_acsf.py --case a --n-structures 200 --repeats 3
    python benchmarks/bench_acsf.py --case b --sizes 500 4000 32000 --dscribe-max-atoms 4000
    python benchmarks/bench_acsf.py --case b --sizes 4800 --pbc TTF   # a slab with vacuum
    python benchmarks/bench_acsf.py --x64 --case a       # jaxsci in float64 too
    python benchmarks/bench_acsf.py --skip-dscribe       # e.g. on a GPU box without DScribe
    python benchmarks/bench_acsf.py --case a --cores 1   # one core each, like for like
    python benchmarks/bench_acsf.py --case a --skip-dscribe --chunk 16 4 64 256  # GPU sweep
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import numpy as np

G2 = [[eta, rs] for eta in (0.01, 0.1, 0.5, 1.0) for rs in (0.0, 3.0)]
G4 = [[eta, zeta, lam] for eta in (0.001, 0.01, 0.05) for zeta in (1, 4) for lam in (1, -1)]
R_CUT = 6.0


def _clusters(n: int, rattle: float = 0.1):
    from ase.cluster import Icosahedron

    base = Icosahedron("Pt", 3)  # 55 atoms
    out = []
    for i in range(n):
        a = base.copy()
        a.rattle(rattle, seed=i)
        out.append(a)
    return out


def _timeit(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def case_a(args) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxsci.descriptors import ACSF

    structs = _clusters(args.n_structures)
    n_atoms = sum(len(a) for a in structs)
    ours = ACSF(["Pt"], R_CUT, g2_params=G2, g4_params=G4)
    batch = ours.batch(structs)
    chunks, gchunk = args.chunk, args.grad_chunk  # several forward chunks: a sweep
    chunk = chunks[0]
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    arrays = (
        np.asarray(batch.positions, dtype=dtype),
        np.asarray(batch.species),
        np.asarray(batch.mask),
    )

    def split(c: int) -> tuple[list, int]:
        """Whole chunks of ``c`` structures (the last padded with copies of the last
        structure: one compiled shape), sliced and on the device before any timer."""
        pad = (-len(structs)) % c
        a = [np.concatenate([x, np.repeat(x[-1:], pad, 0)]) if pad else x for x in arrays]
        out = [tuple(jnp.asarray(x[k : k + c]) for x in a) for k in range(0, len(a[0]), c)]
        return jax.block_until_ready(out), pad

    fwd = jax.jit(ours.batch_fn)

    def loss(p, s, m):
        return jnp.sum(ours.batch_fn(p, s, m) ** 2)

    vg = jax.jit(jax.value_and_grad(loss))

    def run_all(fn, parts):
        """Dispatch every chunk, then wait once on all outputs: the chunks queue on the
        device back to back (throughput, not one call's latency)."""
        jax.block_until_ready([fn(*c) for c in parts])

    # forward configurations: name -> chunk size (the first --chunk is "fn", as before)
    fwd_cfg = {"fn": chunk}
    for c in [*chunks[1:], gchunk]:
        if c not in fwd_cfg.values():
            fwd_cfg["fn@grad_chunk" if c == gchunk else f"fn@chunk={c}"] = c
    parts, n_pad = {}, {}
    for c in sorted(set(fwd_cfg.values()) | {gchunk}):
        parts[c], n_pad[c] = split(c)
    runs = {k: (lambda c=c: run_all(fwd, parts[c])) for k, c in fwd_cfg.items()}
    runs["fn+grad"] = lambda: run_all(vg, parts[gchunk])
    for r in runs.values():  # compile every timed shape
        r()
    ours.create(structs)

    ref = None
    if not args.skip_dscribe:
        from dscribe.descriptors import ACSF as DScribeACSF

        ref = DScribeACSF(r_cut=R_CUT, g2_params=G2, g4_params=G4, species=["Pt"])
        # agreement check (jaxsci's dtype vs float64 DScribe) on a few structures
        a = np.asarray(ours.create(structs[:8]))
        b = ref.create(structs[:8])
        scale = np.abs(b).max(axis=(0, 1))  # per feature: small features at their own scale
        agree = float(np.max(np.abs(a - b).max(axis=(0, 1)) / np.maximum(scale, 1e-300)))
    times: dict[str, list[float]] = {"dscribe": [], "create": []}
    times.update({k: [] for k in runs})
    for _ in range(args.repeats):
        if ref is not None:
            times["dscribe"].append(_timeit(lambda: ref.create(structs, n_jobs=1)))
        times["create"].append(_timeit(lambda: ours.create(structs)))
        for k, r in runs.items():
            times[k].append(_timeit(r))
    med = {k: statistics.median(v) for k, v in times.items() if v}
    # The fn timings evaluate whole chunks: copies of the last structure pad the last one
    # (real work, counted as such: 8 structures at chunk 16 are 16 evaluated).
    cfg_chunk = {**fwd_cfg, "fn+grad": gchunk}
    done = {k: (len(structs), n_atoms) for k in med}
    for k, c in cfg_chunk.items():
        done[k] = (len(structs) + n_pad[c], n_atoms + n_pad[c] * len(structs[-1]))
    fastest_fwd = min(med[k] / done[k][0] for k in fwd_cfg)  # s per evaluated structure
    res = {
        "case": "a",
        "jaxsci_dtype": np.dtype(dtype).name,
        "dscribe_dtype": "float64",
        "n_structures": len(structs),
        "n_atoms": n_atoms,
        "chunk": chunk,
        "chunks": cfg_chunk,
        "grad_chunk": gchunk,
        "repeats": args.repeats,
        "timing": "chunks sliced on the device before the timer; every chunk dispatched, "
        "then one wait on all outputs",
        "median_s": med,
        "all_s": times,
        "n_padded_for_fn": int(n_pad[chunk]),
        "n_padded": {k: int(n_pad[c]) for k, c in cfg_chunk.items()},
        "structures_per_s": {k: done[k][0] / v for k, v in med.items()},
        "atoms_per_s": {k: done[k][1] / v for k, v in med.items()},
        # value-and-grad time per evaluated structure over the fastest forward's
        "grad_over_fn": med["fn+grad"] / done["fn+grad"][0] / fastest_fwd,
    }
    if ref is not None:  # time ratios on the same structures (fn's padding is jaxsci's cost)
        res["speedup_vs_dscribe"] = {
            k: med["dscribe"] / med[k] for k in ("create", *fwd_cfg, "fn+grad")
        }
        res["max_rel_diff_per_feature_vs_dscribe"] = agree
    return res


def _supercell(n_atoms: int, pbc: str = "TTT"):
    """Rattled fcc Pt of about ``n_atoms``; ``pbc`` "TTT" bulk, "TTF" slab, "TFF" wire (the
    open axes get 15 A of vacuum in the cell, which the features ignore)."""
    from ase.build import bulk

    reps = round((n_atoms / 4) ** (1 / 3))
    a = bulk("Pt", "fcc", a=3.92, cubic=True) * (reps, reps, reps)
    a.rattle(0.05, seed=0)
    periodic = [c == "T" for c in pbc]
    for axis, p in enumerate(periodic):
        if not p:
            a.cell[axis, axis] += 15.0
    a.pbc = periodic
    return a


def worker_b(tool: str, size: int, repeats: int, pbc: str = "TTT") -> dict:
    """Runs in a fresh process: a first create() (jaxsci compiles in it), then the median of
    ``repeats`` more, and the peak RSS."""
    import resource

    atoms = _supercell(size, pbc)
    if tool == "dscribe":
        from dscribe.descriptors import ACSF as DScribeACSF

        d = DScribeACSF(r_cut=R_CUT, g2_params=G2, g4_params=G4, species=["Pt"], periodic=True)
        create = lambda: d.create(atoms)  # noqa: E731
    else:
        from jaxsci.descriptors import ACSF

        ours = ACSF(["Pt"], R_CUT, g2_params=G2, g4_params=G4, periodic=True)
        create = lambda: ours.create(atoms)  # noqa: E731
    first = _timeit(create)
    times = [_timeit(create) for _ in range(repeats)]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "tool": tool,
        "n_atoms": len(atoms),
        "pbc": pbc,
        "time_s": statistics.median(times),
        "all_s": times,
        "first_call_s": first,
        "peak_rss_mb": peak_mb,
    }


def case_b(args) -> dict:
    rows = []
    for size in args.sizes:
        tools = ["jaxsci"]
        if not args.skip_dscribe and size <= args.dscribe_max_atoms:
            tools.append("dscribe")
        done = {}
        for tool in tools:
            cmd = [sys.executable, __file__, "--worker-b", tool, str(size), str(args.repeats)]
            cmd += ["--pbc", args.pbc]
            if args.x64:
                cmd.append("--x64")
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                rows.append({"tool": tool, "requested_atoms": size, "error": out.stderr[-500:]})
            else:
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                done[tool] = rows[-1]
            print(json.dumps(rows[-1]), flush=True)
        if len(done) == 2:
            ratio = done["dscribe"]["time_s"] / done["jaxsci"]["time_s"]
            print(json.dumps({"n_atoms": done["jaxsci"]["n_atoms"], "speedup": ratio}), flush=True)
    return {"case": "b", "rows": rows}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=re.sub(r"(?::\w+:)?`{1,2}([^`]+)`{1,2}", r"\1", __doc__),
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument(
        "--case",
        choices=["a", "b", "both"],
        default="both",
        help="which case to run (default: %(default)s)",
    )
    p.add_argument(
        "--n-structures",
        type=int,
        default=1000,
        help="case a: Pt55 structures (default: %(default)s)",
    )
    p.add_argument(
        "--chunk",
        type=int,
        nargs="+",
        default=[16],
        help="structures per jitted forward call; several values sweep it (the first is\n"
        "reported as fn, the others as fn@chunk=C) (default: %(default)s)",
    )
    p.add_argument(
        "--grad-chunk",
        type=int,
        default=4,
        help="structures per jitted value-and-grad call (default: %(default)s)",
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="timed repeats, medians (default: %(default)s)"
    )
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[500, 4000, 13500, 32000],
        help="case b: atoms per supercell, >= 4 (default: %(default)s)",
    )
    p.add_argument(
        "--dscribe-max-atoms",
        type=int,
        default=32000,
        help="case b: run DScribe up to this size (default: %(default)s)",
    )
    p.add_argument("--skip-dscribe", action="store_true", help="time jaxsci only")
    p.add_argument(
        "--pbc",
        choices=["TTT", "TTF", "TFF"],
        default="TTT",
        help="case b's periodic axes: bulk, slab, wire (default: %(default)s)",
    )
    p.add_argument("--x64", action="store_true", help="jaxsci in float64 (DScribe's dtype)")
    p.add_argument(
        "--cores", type=int, default=None, help="pin the run to this many cores (default: all)"
    )
    p.add_argument("--worker-b", nargs=3, metavar=("TOOL", "SIZE", "N"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    small = {k: getattr(args, k) for k in ("n_structures", "grad_chunk", "repeats")}
    small["chunk"] = min(args.chunk)
    if any(v < 1 for v in small.values()) or any(s < 4 for s in args.sizes):
        p.error(f"need counts >= 1 and sizes >= 4 atoms, got {small}, sizes {args.sizes}")
    if args.cores is not None:  # before jax starts its thread pools; workers inherit it
        allowed = sorted(os.sched_getaffinity(0))
        if not 1 <= args.cores <= len(allowed):
            p.error(f"--cores must lie in [1, {len(allowed)}], got {args.cores}")
        os.sched_setaffinity(0, allowed[: args.cores])
    import jax

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    if args.worker_b:
        tool, size, n = args.worker_b
        print(json.dumps(worker_b(tool, int(size), int(n), args.pbc)))
        return

    header = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus ({len(os.sched_getaffinity(0))} used), jax {jax.__version__} "
        f"on {jax.devices()[0].platform}",
        "load": os.getloadavg(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }
    print(json.dumps(header))
    if args.case in ("a", "both"):
        print(json.dumps(case_a(args), indent=1), flush=True)
    if args.case in ("b", "both"):
        case_b(args)
    print(json.dumps({"load_after": os.getloadavg()}))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from experiments._cli import interruptible

    interruptible(main)
