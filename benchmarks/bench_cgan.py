"""Per-label CGAN training: stacked (vmap) vs one model at a time, and MPI weak scaling.

1. Throughput (in-process): ``--labels`` per-label W-CGANs trained ``--steps`` generator
   updates each, (a) stacked and vmapped in one compiled call, (b) one model at a time with
   one compiled single-model trainer reused for every label (the anchor). Compilation is
   excluded (warm-up call first); repeats are interleaved; medians and the ratio printed.
2. Weak scaling (subprocesses): ``mpirun -n 1`` and ``mpirun -n 2`` runs of this script in
   ``--worker`` mode, each rank training ``--labels-per-rank`` labels (so 2 ranks train twice
   as many labels in total), one XLA thread per rank. Timed per rank between barriers: the
   training steps plus the final gather of the parameters; efficiency = t(1 rank) / t(2 ranks)
   (1.0 is perfect weak scaling). Repeats alternate 1 and 2 ranks.

    python benchmarks/bench_cgan.py                      # defaults: CPU-sized
    python benchmarks/bench_cgan.py --labels 10 --steps 40 --batch-size 64 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _setup(args, label_set):
    import jax
    import optax

    from jaxsci.data.digits import load_digits_split
    from jaxsci.models.gan import w_cgan
    from jaxsci.parallel.per_label import label_keys
    from jaxsci.train.gan import init_gan_state, make_gan_trainer, per_label_pools

    d = load_digits_split()
    cgan = w_cgan(g_features=args.features, d_features=args.features, n_critic=args.n_critic)
    opt = optax.adam(2e-4, 0.5, 0.9)
    pools = per_label_pools(d.train_images, d.train_labels, label_set)
    keys = label_keys(jax.random.PRNGKey(0), label_set)
    states = jax.vmap(lambda k: init_gan_state(cgan, opt, opt, k))(keys)
    run = make_gan_trainer(cgan, opt, opt, args.batch_size)
    return run, states, pools


def throughput(args) -> dict:
    """Stacked vs sequential per-label training on this process's default device."""
    import jax

    label_set = list(range(args.labels))
    run, states, pools = _setup(args, label_set)
    stacked = jax.jit(jax.vmap(run, in_axes=(0, 0, None)), static_argnums=2)
    single = jax.jit(run, static_argnums=2)
    take = lambda tree, i: jax.tree.map(lambda x: x[i], tree)

    def run_stacked():
        out = stacked(states, pools, args.steps)
        jax.block_until_ready(out)

    def run_sequential():
        for i in range(len(label_set)):
            out = single(take(states, i), take(pools, i), args.steps)
        jax.block_until_ready(out)

    t_compile = time.perf_counter()
    run_stacked()
    run_sequential()
    t_compile = time.perf_counter() - t_compile
    times = {"stacked": [], "sequential": []}
    for _ in range(args.repeats):
        for name, fn in (("stacked", run_stacked), ("sequential", run_sequential)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    examples = args.labels * args.steps * args.batch_size
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "device": str(jax.devices()[0]),
        "examples_per_run": examples,
        "times_s": times,
        "median_s": med,
        "images_per_s": {k: examples / v for k, v in med.items()},
        "speedup_stacked_over_sequential": med["sequential"] / med["stacked"],
        "warmup_incl_compile_s": t_compile,
    }


def worker(args) -> None:
    """One rank of the weak-scaling run (under mpirun): train my labels, gather, time it."""
    import jax

    from jaxsci.parallel.bootstrap import bootstrap
    from jaxsci.parallel.per_label import gather_over_ranks, rank_labels

    info = bootstrap()
    label_set = list(range(args.labels_per_rank * info.size))
    mine = rank_labels(label_set, info)
    run, states, pools = _setup(args, mine)
    stacked = jax.jit(jax.vmap(run, in_axes=(0, 0, None)), static_argnums=2)
    jax.block_until_ready(stacked(states, pools, args.steps))  # compile + warm-up
    info.barrier()
    t0 = time.perf_counter()
    states, _ = stacked(states, pools, args.steps)
    jax.block_until_ready(states)
    t_train = time.perf_counter() - t0
    gathered = gather_over_ranks(states.g_params, info)
    t_total = time.perf_counter() - t0
    n_models = jax.tree.leaves(gathered)[0].shape[0]
    times = info.comm.allgather((t_train, t_total)) if info.comm else [(t_train, t_total)]
    if info.is_root:
        print(json.dumps({"ranks": info.size, "models": n_models, "per_rank_s": times}))


def weak_scaling(args) -> dict:
    mpirun = Path(sys.executable).parent / "mpirun"
    env = dict(os.environ, XLA_FLAGS=ONE_THREAD, JAX_PLATFORMS="cpu")
    base = [
        sys.executable, __file__, "--worker", "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--features", str(args.features),
        "--n-critic", str(args.n_critic), "--labels-per-rank", str(args.labels_per_rank),
    ]  # fmt: skip
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for n in (1, 2):
            out = subprocess.run(
                [str(mpirun), "-n", str(n), *base], env=env, capture_output=True, text=True,
                check=True, cwd=ROOT,
            )  # fmt: skip
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            if rec["models"] != n * args.labels_per_rank:
                raise RuntimeError(f"gathered {rec['models']} models, expected more: {rec}")
            times[n].append(max(t_total for _, t_total in rec["per_rank_s"]))
    med = {n: statistics.median(v) for n, v in times.items()}
    return {
        "labels_per_rank": args.labels_per_rank,
        "times_s": {str(n): v for n, v in times.items()},
        "median_s": {str(n): v for n, v in med.items()},
        "efficiency_2_ranks": med[1] / med[2],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=int, default=10, help="models in the throughput test")
    p.add_argument("--labels-per-rank", type=int, default=2, help="weak scaling: labels/rank")
    p.add_argument("--steps", type=int, default=20, help="generator updates per model")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--n-critic", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-weak-scaling", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return
    print(f"load average before: {os.getloadavg()}")
    results = {"args": vars(args)}
    if not args.skip_throughput:
        r = throughput(args)
        results["throughput"] = r
        print(
            f"throughput, {args.labels} W-CGANs x {args.steps} steps x batch {args.batch_size} "
            f"on {r['device']}: stacked {r['median_s']['stacked']:.3f} s "
            f"({r['images_per_s']['stacked']:.0f} img/s), one at a time "
            f"{r['median_s']['sequential']:.3f} s ({r['images_per_s']['sequential']:.0f} img/s)"
            f" -> stacked speed-up {r['speedup_stacked_over_sequential']:.2f}x"
        )
    if not args.skip_weak_scaling:
        r = weak_scaling(args)
        results["weak_scaling"] = r
        print(
            f"weak scaling, {args.labels_per_rank} labels/rank, 1 thread/rank: 1 rank "
            f"{r['median_s']['1']:.3f} s, 2 ranks {r['median_s']['2']:.3f} s -> efficiency "
            f"{r['efficiency_2_ranks']:.3f}  (all: {r['times_s']})"
        )
    print(f"load average after: {os.getloadavg()}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
