"""Per-label CGAN training: stacked (vmap) vs one model at a time, and MPI weak scaling.

1. Throughput (in-process): ``--labels`` per-label W-CGANs trained ``--steps`` generator
   updates each, (a) stacked and vmapped in one compiled call, (b) one model at a time with
   one compiled single-model trainer reused for every label (the anchor). Compilation is
   excluded (warm-up call first); repeats are interleaved; medians and the ratio printed,
   with images per second counted two ways and labelled so (:func:`image_rates`): the
   generator updates' generated images, and all images through generator and critic.
2. Weak scaling (subprocesses): ``mpirun -bind-to core -n r`` runs of this script in
   ``--worker`` mode for r = 1 and every ``--ranks``, each rank training
   ``--labels-per-rank`` labels (so r ranks train r times as many labels in total), each rank
   pinned to its own core (checked: the run fails unless the ranks' cpu sets are disjoint
   and of equal size). Timed per rank after a barrier: the training steps plus the final
   gather of the parameters; the slowest rank counts; efficiency = t(1 rank) / t(r ranks)
   (1.0 is perfect weak scaling). Each launch times ``--inner-repeats`` runs (same models
   from the same init, a barrier before each), after one untimed warm-up run; ``--repeats``
   launches cycle through the rank counts. A persistent compile cache spares the launches
   after the first a compile (the timed runs exclude compilation either way): by default a
   temporary folder, removed when the benchmark ends, so nothing is written into the source
   tree or the user's cache; set ``JAX_COMPILATION_CACHE_DIR`` to keep it elsewhere (e.g.
   ``~/.cache/jaxsci/jax``, reused by later invocations).

    python benchmarks/bench_cgan.py                      # defaults: CPU-sized
    python benchmarks/bench_cgan.py --labels 10 --steps 40 --batch-size 64 --repeats 5
    python benchmarks/bench_cgan.py --skip-throughput --ranks 2 4 8 --steps 60  # many cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: Each rank is pinned to one core (``mpirun -bind-to core``): XLA's CPU client keeps a thread
#: pool whatever the flags say, so an unpinned single rank spreads over every idle core and
#: makes the 1-rank baseline of a weak-scaling run use twice the hardware of each rank of
#: the 2-rank run (measured here: 2.0 s of CPU in 1.16 s of wall time).
XLA_CPU_FLAGS = "--xla_cpu_multi_thread_eigen=false"
BIND = ["-bind-to", "core"]


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
    # per-label inputs sliced once, outside the timer (the slicing is not training)
    alone = jax.block_until_ready(
        [(take(states, i), take(pools, i)) for i in range(len(label_set))]
    )

    def run_stacked():
        out = stacked(states, pools, args.steps)
        jax.block_until_ready(out)

    def run_sequential():
        outs = [single(st, pool, args.steps) for st, pool in alone]
        jax.block_until_ready(outs)  # every model, not only the last

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
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "device": str(jax.devices()[0]),
        **image_rates(args, med),
        "times_s": times,
        "median_s": med,
        "speedup_stacked_over_sequential": med["sequential"] / med["stacked"],
        "warmup_incl_compile_s": t_compile,
    }


def image_rates(args, median_s: dict[str, float]) -> dict:
    """Images per run and per second, by what each counts (the W-CGAN step of
    :func:`jaxsci.train.gan.make_gan_step`, per model and generator update):

    * ``generator_images``: ``batch`` generated images of the generator update;
    * ``critic_images``: real + generated images of the ``n_critic`` critic updates,
      ``2 * n_critic * batch`` (plus as many interpolates through the gradient penalty,
      not counted);
    * ``all_images``: the two together, ``(2 * n_critic + 1) * batch``.

    Each is multiplied by ``labels * steps`` and divided by the median time of a run.
    """
    per_step = {
        "generator_images": args.batch_size,
        "critic_images": 2 * args.n_critic * args.batch_size,
        "all_images": (2 * args.n_critic + 1) * args.batch_size,
    }
    runs = args.labels * args.steps
    return {
        "images_per_run": {k: runs * v for k, v in per_step.items()},
        "images_per_s": {
            k: {name: runs * v / t for name, t in median_s.items()} for k, v in per_step.items()
        },
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
    recs = []
    for _ in range(args.inner_repeats):  # every run trains the same models from their init
        info.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        trained, metrics = stacked(states, pools, args.steps)
        jax.block_until_ready((trained, metrics))  # every output of the call
        t_train = time.perf_counter() - t0
        gathered = gather_over_ranks(trained.g_params, info)
        t_total, cpu = time.perf_counter() - t0, time.process_time() - c0
        recs.append((t_train, t_total, cpu))
    n_models = jax.tree.leaves(gathered)[0].shape[0]
    rec = (recs, sorted(os.sched_getaffinity(0)))
    per_rank = info.comm.allgather(rec) if info.comm else [rec]
    if info.is_root:
        print(json.dumps({"ranks": info.size, "models": n_models, "per_rank": per_rank}))


def _mpirun() -> str:
    """The ``mpirun`` of this interpreter's environment (the venv's mpich), else the PATH's."""
    local = Path(sys.executable).parent / "mpirun"
    found = str(local) if local.exists() else shutil.which("mpirun")
    if found is None:
        raise RuntimeError("weak scaling needs mpirun (install the 'mpi' extra)")
    return found


def weak_scaling(args) -> dict:
    """Time ``mpirun -n r`` runs for every r in ``args.ranks``; efficiency t(1) / t(r)."""
    env = dict(os.environ, XLA_FLAGS=XLA_CPU_FLAGS, JAX_PLATFORMS="cpu")
    # every rank compiles the same program (same labels per rank): compile it once, not per
    # launch, in the caller's JAX_COMPILATION_CACHE_DIR or else a folder of this invocation
    if env.get("JAX_COMPILATION_CACHE_DIR"):
        return _weak_scaling(args, env)
    with tempfile.TemporaryDirectory(prefix="bench_cgan-jax-cache-") as cache:
        return _weak_scaling(args, {**env, "JAX_COMPILATION_CACHE_DIR": cache})


def _weak_scaling(args, env: dict[str, str]) -> dict:
    base = [
        sys.executable, __file__, "--worker", "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--features", str(args.features),
        "--n-critic", str(args.n_critic), "--labels-per-rank", str(args.labels_per_rank),
        "--inner-repeats", str(args.inner_repeats),
    ]  # fmt: skip
    ranks = sorted(set([1, *args.ranks]))
    launcher = args.mpirun or _mpirun()
    times: dict[int, list[float]] = {n: [] for n in ranks}
    cpu: dict[int, list[float]] = {n: [] for n in ranks}
    cpu_sets: dict[int, list[list[int]]] = {}
    for _ in range(args.repeats):
        for n in ranks:
            out = subprocess.run(
                [launcher, *BIND, "-n", str(n), *base], env=env,
                capture_output=True, text=True, cwd=ROOT,
            )  # fmt: skip
            if out.returncode != 0:
                tail = out.stdout[-2000:] + out.stderr[-4000:]
                raise RuntimeError(f"mpirun -n {n} failed:\n{tail}")
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            if rec["models"] != n * args.labels_per_rank:
                raise RuntimeError(f"gathered {rec['models']} models, expected more: {rec}")
            per_rank = rec["per_rank"]
            cores = [set(r[1]) for r in per_rank]  # a core may hold several hardware threads
            if len(set().union(*cores)) != sum(map(len, cores)) or len(set(map(len, cores))) > 1:
                raise RuntimeError(f"ranks not pinned to disjoint, equal sets of cpus: {cores}")
            cpu_sets[n] = [sorted(c) for c in cores]
            for i in range(args.inner_repeats):  # the slowest rank of each timed run counts
                times[n].append(max(r[0][i][1] for r in per_rank))
                cpu[n].append(max(r[0][i][2] for r in per_rank))
            runs = ", ".join(f"{t:.3f}" for t in times[n][-args.inner_repeats :])
            print(f"  {n} rank(s): {runs} s (CPU of the last {cpu[n][-1]:.3f} s)", flush=True)
    from jaxsci.metrics import scaling_efficiency

    med = {n: statistics.median(v) for n, v in times.items()}
    return {
        "labels_per_rank": args.labels_per_rank,
        "cores": os.cpu_count(),
        "cpu_sets": {str(n): v for n, v in cpu_sets.items()},
        "times_s": {str(n): v for n, v in times.items()},
        "cpu_s": {str(n): v for n, v in cpu.items()},
        "median_s": {str(n): v for n, v in med.items()},
        "efficiency": {str(n): e for n, e in scaling_efficiency(med, "weak").items()},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--labels",
        type=int,
        default=10,
        help="models in the throughput test (default: %(default)s)",
    )
    p.add_argument(
        "--labels-per-rank",
        type=int,
        default=2,
        help="weak scaling: labels/rank (default: %(default)s)",
    )
    p.add_argument(
        "--steps", type=int, default=20, help="generator updates per model (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default: %(default)s)")
    p.add_argument(
        "--features",
        type=int,
        default=32,
        help="generator and critic features (default: %(default)s)",
    )
    p.add_argument(
        "--n-critic",
        type=int,
        default=5,
        help="critic updates per generator update (default: %(default)s)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="launches (weak scaling) / runs (default: %(default)s)",
    )
    p.add_argument(
        "--inner-repeats",
        type=int,
        default=3,
        help="weak scaling: timed runs per launch (default: %(default)s)",
    )
    p.add_argument(
        "--ranks",
        type=int,
        nargs="+",
        default=[2],
        help="weak scaling: rank counts, 1 added (default: %(default)s)",
    )
    p.add_argument("--mpirun", help="launcher (default: the venv's mpich mpirun, else PATH's)")
    p.add_argument("--skip-throughput", action="store_true", help="skip the throughput test")
    p.add_argument("--skip-weak-scaling", action="store_true", help="skip the weak-scaling runs")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    counts = ("labels", "labels_per_rank", "steps", "batch_size", "features", "n_critic")
    for name in counts + ("repeats", "inner_repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.worker:
        worker(args)
        return
    print(f"load average before: {os.getloadavg()}")
    results = {"args": vars(args)}
    if not args.skip_throughput:
        r = throughput(args)
        results["throughput"] = r
        rate = r["images_per_s"]
        print(
            f"throughput, {args.labels} W-CGANs x {args.steps} steps x batch {args.batch_size} "
            f"(n_critic {args.n_critic}) on {r['device']}, images/s as generator updates' "
            f"generated images / all images through generator and critic updates: "
            f"stacked {r['median_s']['stacked']:.3f} s "
            f"({rate['generator_images']['stacked']:.0f} / {rate['all_images']['stacked']:.0f}), "
            f"one at a time {r['median_s']['sequential']:.3f} s "
            f"({rate['generator_images']['sequential']:.0f} / "
            f"{rate['all_images']['sequential']:.0f}) "
            f"-> stacked speed-up {r['speedup_stacked_over_sequential']:.2f}x"
        )
    if not args.skip_weak_scaling:
        r = weak_scaling(args)
        results["weak_scaling"] = r
        for n, t in r["median_s"].items():
            print(
                f"weak scaling, {args.labels_per_rank} labels/rank, one core/rank: {n} rank(s) "
                f"{t:.3f} s (median of {len(r['times_s'][n])} runs) -> efficiency "
                f"{r['efficiency'][n]:.3f}"
            )
    print(f"load average after: {os.getloadavg()}")
    print(json.dumps(results))


if __name__ == "__main__":
    from experiments._cli import interruptible

    interruptible(main)
