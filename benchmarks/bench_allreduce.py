"""Data-parallel SGD step of a 200-leaf model: per-leaf all-reduce vs buckets vs flat state.

Run under MPI (the anchor is the same jitted step with one mpi4jax all-reduce per leaf), each
rank pinned to its own core as in ``benchmarks/bench_cgan.py``:

    .venv/bin/mpirun -bind-to core -n 2 .venv/bin/python -m benchmarks.bench_allreduce
    .venv/bin/mpirun -bind-to core -n 1 .venv/bin/python -m benchmarks.bench_allreduce  # size 1
    .venv/bin/mpirun -n 1 .venv/bin/python -m benchmarks.bench_allreduce --gpu  # one GPU
    python -m benchmarks.bench_allreduce --gpu --no-mpi   # no mpi4jax: tree vs flat step only

Variants (all one jitted SGD step on this rank's batch of ``--batch`` samples):

* ``no_allreduce``: tree step without communication (compute floor);
* ``dp_no_allreduce``: the ``data_parallel`` step without communication (flat-state floor);
* ``per_leaf``: tree step + one ``mpi4jax.allreduce`` per gradient leaf (the anchor);
* ``tree_bucket_<B>``: tree step + :func:`tree_allreduce` with buckets of B bytes;
* ``tree_flat``: tree step + one packed message (pack, reduce, unpack: "the trap");
* ``dp_flat`` / ``dp_bucket_<B>``: the step built by :func:`jaxsci.parallel.data_parallel`
  (flat parameter and optimizer buffers, one message or buckets of B bytes).

Rounds interleave the variants; each round times ``--steps`` steps per variant; the report is
the median over rounds of each round's slowest rank (per-step time) and its ratio to
``per_leaf``. Every step donates its parameters or state (the tree steps as the
``data_parallel`` step does), so ``tree`` vs ``dp`` compares layout and messages only.
With 2+ ranks it also times the ``dp_flat`` step of rank 0 alone (size-1 communicator, the
other ranks sleeping) to report throughput and weak-scaling efficiency
``t(1 rank) / t(N ranks)`` at a fixed per-rank batch.
On CPU that 1-rank baseline must use the hardware of one rank of the N-rank run, no more: XLA
runs single-threaded (``--xla_cpu_multi_thread_eigen=false``, added to ``XLA_FLAGS``) and, with
2+ ranks, the run fails unless the launcher pinned the ranks to disjoint, equal sets of cpus
(``mpirun -bind-to core``); an unpinned rank 0 spreads over the sleeping ranks' idle cores
and the efficiency reads low. The cpu sets and the baseline's CPU time per wall second are
reported. Parameters after 10 steps of ``dp_flat`` are compared with ``per_leaf``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

# the repository root, for experiments._cli when run as a script
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: As in ``benchmarks/bench_cgan.py``: XLA's CPU client keeps a thread pool whatever the flags
#: say, so ranks are pinned to one core each by the launcher (checked in :func:`_cpu_sets`)
#: and run XLA single-threaded; the 1-rank baseline then uses one rank's hardware.
XLA_CPU_FLAGS = "--xla_cpu_multi_thread_eigen=false"
BIND = ["-bind-to", "core"]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=re.sub(r"(?::\w+:)?`{1,2}([^`]+)`{1,2}", r"\1", __doc__),
        formatter_class=argparse.RawTextHelpFormatter,
    )
    ap.add_argument(
        "--layers", type=int, default=100, help="dense layers, 2 leaves each (default: %(default)s)"
    )
    ap.add_argument("--width", type=int, default=32, help="hidden width (default: %(default)s)")
    ap.add_argument(
        "--batch", type=int, default=64, help="samples per rank per step (default: %(default)s)"
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=50,
        help="timed steps per variant per round (default: %(default)s)",
    )
    ap.add_argument(
        "--rounds", type=int, default=7, help="interleaved rounds (default: %(default)s)"
    )
    ap.add_argument(
        "--buckets",
        type=str,
        default="4096,65536,1048576",
        help="bucket bytes, comma-separated (default: %(default)s)",
    )
    ap.add_argument("--lr", type=float, default=1e-3, help="SGD step size (default: %(default)s)")
    ap.add_argument("--gpu", action="store_true", help="run on the default (GPU) backend")
    ap.add_argument(
        "--no-mpi", action="store_true", help="without mpi4py/mpi4jax: tree vs flat step only"
    )
    ap.add_argument(
        "--json",
        type=str,
        default=None,
        help="write results to this JSON file, on rank 0 (default: none written)",
    )
    return ap


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = _parser()
    args = ap.parse_args(argv)
    counts = {k: getattr(args, k) for k in ("layers", "width", "batch", "steps", "rounds")}
    if any(v < 1 for v in counts.values()):
        ap.error(f"counts must be >= 1, got {counts}")
    try:
        if any(int(b) < 0 for b in args.buckets.split(",")):
            raise ValueError
    except ValueError:
        ap.error(f"--buckets must be comma-separated byte counts >= 0, got {args.buckets!r}")
    return args


def _check_json(path: str | None, rank: int, world) -> None:
    """Before any work: can rank 0, which writes ``--json``, write it? Else every rank exits
    (status 2), rank 0 with argparse's one-line ``error:``, so no rank waits on the others."""
    from experiments._cli import root_check
    from jaxsci.train.run_dir import check_output_file

    if path:
        root_check(_parser(), lambda: check_output_file(path), is_root=rank == 0, comm=world)


def _model(layers: int, width: int, key: jax.Array) -> list[dict[str, jax.Array]]:
    params = []
    for _ in range(layers):
        key, sub = jax.random.split(key)
        w = jax.random.normal(sub, (width, width)) * (1.0 / np.sqrt(width))
        params.append({"w": w, "b": jnp.zeros((width,))})
    return params


def _loss(params: list[dict[str, jax.Array]], batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    h = x
    for p in params:
        h = h + 0.1 * jnp.tanh(h @ p["w"] + p["b"])  # damped residual: 100 stable layers
    return jnp.mean((h - y) ** 2)


def _cpu_sets(world) -> list[list[int]]:
    """Every rank's cpus; RuntimeError unless they are disjoint and of equal size (pinned)."""
    mine = sorted(os.sched_getaffinity(0))
    cores = world.allgather(mine) if world is not None else [mine]
    sets = [set(c) for c in cores]  # a core may hold several hardware threads
    if len(set().union(*sets)) != sum(map(len, sets)) or len(set(map(len, sets))) > 1:
        raise RuntimeError(
            f"ranks not pinned to disjoint, equal sets of cpus: {cores}; launch with "
            f"`mpirun {' '.join(BIND)} -n N` (the 1-rank baseline would use the idle cores)"
        )
    return cores


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    if not args.gpu:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        # before the backend starts (it reads XLA_FLAGS once); the caller's flags are kept
        flags = os.environ.get("XLA_FLAGS", "")
        if XLA_CPU_FLAGS not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {XLA_CPU_FLAGS}".strip()
    from jaxsci.metrics import scaling_efficiency
    from jaxsci.parallel import ProcessInfo, data_parallel, make_mesh, tree_allreduce

    world = None
    if not args.no_mpi:
        import mpi4jax
        from mpi4py import MPI

        world = MPI.COMM_WORLD
    rank, size = (world.Get_rank(), world.Get_size()) if world is not None else (0, 1)
    _check_json(args.json, rank, world)
    cpu_sets = _cpu_sets(world) if size > 1 and not args.gpu else None
    comm = world.Clone() if world is not None else None  # device collectives
    tx = optax.sgd(args.lr)
    params0 = _model(args.layers, args.width, jax.random.key(0))
    n_leaves = len(jax.tree.leaves(params0))
    n_params = sum(x.size for x in jax.tree.leaves(params0))
    kx, ky = jax.random.split(jax.random.fold_in(jax.random.key(1), rank))
    batch = (
        jax.random.normal(kx, (args.batch, args.width)),
        jax.random.normal(ky, (args.batch, args.width)),
    )
    mesh = make_mesh(1)

    def tree_step(reduce):
        # Donates the parameters as the data_parallel step donates its state, so that
        # tree vs dp compares the layout and the messages, not buffer reuse.
        def step(params, batch):
            loss, grads = jax.value_and_grad(_loss)(params, batch)
            grads = reduce(grads)
            return jax.tree.map(lambda p, g: p - args.lr * g, params, grads), loss

        return jax.jit(step, donate_argnums=0)

    def per_leaf(grads):
        return jax.tree.map(lambda g: mpi4jax.allreduce(g, op=MPI.SUM, comm=comm) / size, grads)

    buckets = [int(b) for b in args.buckets.split(",") if b]
    variants: dict[str, tuple] = {}
    variants["no_allreduce"] = ("tree", tree_step(lambda g: g))
    no_comm = ProcessInfo(rank=0, size=1, local_device_count=1, comm=None)
    variants["dp_no_allreduce"] = ("dp", data_parallel(_loss, tx, info=no_comm, mesh=mesh))
    if world is not None:
        variants["per_leaf"] = ("tree", tree_step(per_leaf))
        for b in buckets:
            red = lambda g, b=b: tree_allreduce(g, comm=comm, bucket_bytes=b)  # noqa: E731
            variants[f"tree_bucket_{b}"] = ("tree", tree_step(red))
        variants["tree_flat"] = (
            "tree",
            tree_step(lambda g: tree_allreduce(g, comm=comm, bucket_bytes=None)),
        )
        info = ProcessInfo(rank=rank, size=size, local_device_count=1, comm=world)
        for name, bb in [("dp_flat", None)] + [(f"dp_bucket_{b}", b) for b in buckets]:
            dp = data_parallel(_loss, tx, info=info, mesh=mesh, bucket_bytes=bb)
            variants[name] = ("dp", dp)
    anchor = "per_leaf" if world is not None else "no_allreduce"

    def run(kind, obj, state, n):
        loss = None
        for _ in range(n):
            if kind == "tree":
                state, loss = obj(state, batch)
            else:
                state, loss = obj.step(state, batch)
        jax.block_until_ready((state, loss))
        return state

    def fresh(kind, obj):
        if kind == "tree":
            return jax.tree.map(jnp.array, params0)
        return obj.init(params0)

    # correctness: same parameters after 10 steps
    states = {name: run(kind, obj, fresh(kind, obj), 10) for name, (kind, obj) in variants.items()}
    ref = states[anchor]
    diffs = {}
    for name, (kind, obj) in variants.items():
        if name == anchor:
            continue
        got = states[name] if kind == "tree" else obj.params(states[name])
        diffs[name] = max(
            float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True)
        )

    # single-rank dp step on rank 0 (others sleep) for weak scaling
    solo = None
    if size > 1 and rank == 0:
        solo_info = ProcessInfo(rank=0, size=1, local_device_count=1, comm=MPI.COMM_SELF)
        solo = data_parallel(_loss, tx, info=solo_info, mesh=mesh, bucket_bytes=None)
        states["solo"] = run("dp", solo, solo.init(params0), 3)

    def barrier():
        if world is not None:
            world.Barrier()

    def sleep_until_rank0_done():
        req = world.Ibarrier()
        while not req.Test():
            time.sleep(0.002)

    times: dict[str, list[float]] = {name: [] for name in variants}
    times["dp_flat_1rank"] = []
    solo_cpu_per_wall: list[float] = []
    for _ in range(args.rounds):
        for name, (kind, obj) in variants.items():
            barrier()
            t0 = time.perf_counter()
            states[name] = run(kind, obj, states[name], args.steps)
            times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
        if size > 1:
            world.Barrier()
            if rank == 0:
                t0, c0 = time.perf_counter(), time.process_time()
                states["solo"] = run("dp", solo, states["solo"], args.steps)
                wall = time.perf_counter() - t0
                times["dp_flat_1rank"].append(wall / args.steps * 1e3)
                solo_cpu_per_wall.append((time.process_time() - c0) / wall)
                world.Ibarrier().Wait()
            else:
                sleep_until_rank0_done()

    # A step is as slow as its slowest rank: per round, the largest time over the ranks,
    # then the median over rounds (the largest of the per-rank medians is kept alongside).
    gathered = world.allgather(times) if world is not None else [times]
    med, max_rank_median = {}, {}
    for k in times:
        per_rank = [g[k] for g in gathered if g[k]]  # dp_flat_1rank: rank 0 only
        if per_rank:
            med[k] = statistics.median(max(r) for r in zip(*per_rank, strict=True))
            max_rank_median[k] = max(statistics.median(r) for r in per_rank)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()} {jax.devices()[0].device_kind}",
        "load": os.getloadavg(),
        "ranks": size,
        "layers": args.layers,
        "width": args.width,
        "leaves": n_leaves,
        "params": n_params,
        "batch_per_rank": args.batch,
        "steps": args.steps,
        "rounds": args.rounds,
        "median_ms": med,
        "median_ms_is": "median over rounds of each round's slowest rank",
        "max_over_ranks_of_median_ms": max_rank_median,
        "anchor": anchor,
        "ratio_vs_anchor": {k: med[anchor] / v for k, v in med.items()},
        "max_param_diff_after_10_steps_vs_anchor": diffs,
    }
    if size > 1:
        t1, tn = med["dp_flat_1rank"], med["dp_flat"]
        result["throughput_samples_per_s"] = {
            "1 rank": args.batch / t1 * 1e3,
            f"{size} ranks": size * args.batch / tn * 1e3,
        }
        result["weak_scaling_efficiency"] = scaling_efficiency({1: t1, size: tn}, "weak")[size]
        result["cpu_sets"] = cpu_sets
        if rank == 0 and solo_cpu_per_wall:  # ~1 when pinned: one core's worth of CPU
            result["dp_flat_1rank_cpu_per_wall"] = statistics.median(solo_cpu_per_wall)
    if rank == 0:
        _print(result)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
    return result


def _print(r: dict) -> None:
    print(
        f"{r['date']}  {r['machine']}  load {r['load']}  ranks {r['ranks']}  "
        f"{r['layers']} layers x {r['width']} ({r['leaves']} leaves, {r['params']} params), "
        f"batch {r['batch_per_rank']}/rank, {r['rounds']} rounds x {r['steps']} steps"
    )
    a = r["anchor"]
    diff_head = f"max|p - p_{a}|"
    print("ms/step: median over rounds of each round's slowest rank")
    print(f"{'variant':<22}{'median ms/step':>16}  {a + ' / this':>20}  {diff_head:>24}")
    for k, v in r["median_ms"].items():
        d = r["max_param_diff_after_10_steps_vs_anchor"].get(k)
        ds = f"{d:.2e}" if d is not None else "-"
        print(f"{k:<22}{v:>16.3f}  {r['ratio_vs_anchor'][k]:>20.2f}  {ds:>24}")
    if "weak_scaling_efficiency" in r:
        tp = ", ".join(f"{k}: {v:.0f}" for k, v in r["throughput_samples_per_s"].items())
        print(f"throughput (samples/s, dp_flat): {tp}")
        print(f"weak-scaling efficiency t(1)/t({r['ranks']}): {r['weak_scaling_efficiency']:.2f}")
        if r.get("cpu_sets") is not None:
            cpw = r.get("dp_flat_1rank_cpu_per_wall")
            cpw_s = f", 1-rank baseline CPU s per wall s {cpw:.2f}" if cpw is not None else ""
            print(f"cpu sets per rank: {r['cpu_sets']}{cpw_s}")


if __name__ == "__main__":
    from experiments._cli import interruptible

    interruptible(main)
