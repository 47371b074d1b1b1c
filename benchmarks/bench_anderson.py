"""Per-step overhead of Anderson acceleration over its inner optimizer, and study ratios.

    python benchmarks/bench_anderson.py                        # 100k and 1M params, m = 5, 10
    python benchmarks/bench_anderson.py --sizes 1000000 --repeats 9
    python benchmarks/bench_anderson.py --sizes 1000000 --batch 1024 --memories 5
    python benchmarks/bench_anderson.py --results runs/anderson/study-<stamp>/results.json
    python benchmarks/bench_anderson.py --results <...>/results.json --time-to-target --repeats 21
    python benchmarks/bench_anderson.py --sizes 1000000 --memories 5 --profile 12  # per kernel

Times a full training step (forward, backward, optimizer update, apply) of an MLP with
about 100k and 1M parameters, batch 64 and 1024 (``--batch``; the overhead is a fixed cost per
step, so its ratio is largest at small batches), for the inner optimizer alone (the anchor) and
for ``anderson(inner, memory=m)``; and the optimizer update alone, on a separable quadratic
whose gradient is one elementwise pass (with counters of what it did: accelerated...).
Each timing runs ``--steps`` steps inside one jitted ``lax.scan``, at two step counts (20
and 100 by default): the per-step time is the slope between them, so the fixed cost of a
call (dispatch, launch; large against a GPU step) is not spread over the steps, and
``t/n`` (one call / its steps, the fixed cost included) is printed beside it. The
update-alone column includes the quadratic's value and gradient (one elementwise pass), so
its ratio understates the update's own. Configurations are interleaved in every repeat and
the median over repeats is reported, with the ratio Anderson / inner optimizer measured in
the same repeat loop. ``--profile K`` then traces one
call of each (``jax.profiler``) and prints kernels per step, their busy time and span, and
the ``K`` costliest kernels (GPU: the kernels on the streams; CPU: XLA's thunks).
``--results`` prints the iteration and wall-time ratios of a finished
``experiments.anderson.run`` study.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxsci.optim import anderson  # noqa: E402


def mlp_sizes(n_params: int) -> list[int]:
    """Layer widths of a 3-layer MLP with about ``n_params`` parameters (input = hidden)."""
    h = int((n_params / 1.2) ** 0.5)
    return [h, h, h // 5, 10]


def init_mlp(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def loss_fn(params, x, y):
    h = x
    for layer in params[:-1]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"])
    logits = h @ params[-1]["w"] + params[-1]["b"]
    return jnp.mean(
        jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0]
    )


def make_train(opt, x, y, steps, with_value):
    def step(carry, _):
        p, s = carry
        v, g = jax.value_and_grad(loss_fn)(p, x, y)
        u, s = opt.update(g, s, p, value=v) if with_value else opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), v

    return jax.jit(
        lambda p, s: jax.lax.scan(step, (p, s), None, length=steps), donate_argnums=(0, 1)
    )


def separable_quadratic(params, key):
    """``0.5 sum h (p - p0)^2`` over every parameter, curvatures ``h`` in [0.01, 1]: a real
    problem for timing the update alone, whose gradient is one elementwise pass (its
    directions turn as the stiff coordinates converge first, and its loss is that of the
    point the step reached; a gradient rescaled each step, with made-up losses, gave a
    collinear history and held acceleration off on most steps)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    h = [
        10.0 ** jax.random.uniform(k, p.shape, p.dtype, -2.0, 0.0)
        for k, p in zip(keys, leaves, strict=True)
    ]
    h = jax.tree_util.tree_unflatten(treedef, h)
    p0 = jax.tree_util.tree_map(jnp.copy, params)

    def loss(p):
        terms = jax.tree_util.tree_map(lambda a, b, c: jnp.sum(a * (b - c) ** 2), h, p, p0)
        return 0.5 * sum(jax.tree_util.tree_leaves(terms))

    return loss, jax.tree_util.tree_map(lambda p: p + 1.0, params)


def make_update_only(opt, loss, steps, with_value):
    """``steps`` updates of ``opt`` on ``loss`` (:func:`separable_quadratic`) in one jitted
    scan: the optimizer's cost plus one elementwise gradient pass, not a model's."""

    def step(carry, _):
        p, s = carry
        v, g = jax.value_and_grad(loss)(p)
        u, s = opt.update(g, s, p, value=v) if with_value else opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    return jax.jit(
        lambda p, s: jax.lax.scan(step, (p, s), None, length=steps)[0], donate_argnums=(0, 1)
    )


def counters(state) -> dict:
    """Anderson's step counters from an ``anderson(...)`` state, else ``{}``."""
    aa = getattr(state, "anderson_state", None)
    if aa is None:
        return {}
    names = ("n_accelerated", "n_rejected", "n_noisy", "n_stretched", "n_averaged")
    return {k.removeprefix("n_"): int(getattr(aa, k)) for k in names}


_CONTAINERS = ("while", "cond", "call")  # CPU thunks holding others (cond*: conditional)


def kernel_profile(fn, args, steps: int) -> dict:
    """Where one call of ``fn(*args)`` (``steps`` scanned steps) spends its device time.

    Traces the call with ``jax.profiler`` and reads the trace back (``ProfileData``). GPU:
    every event on the device's streams (kernels, copies). CPU: XLA's thunks (events with
    an ``hlo_op``), without the loops and conditionals that contain others. Returns
    ``kernels`` (per step), ``busy_us`` (summed durations per step), ``span_us`` (first
    start to last end, per step) and ``top``: ``(name, per step, mean us)``, costliest first.
    """
    from jax.profiler import ProfileData

    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            jax.block_until_ready(fn(*args))
        (path,) = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
        data = ProfileData.from_file(path)
    events = []  # (name, start ns, duration ns)
    for plane in data.planes:
        device = plane.name.startswith("/device:")
        if not device and plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if device and "Stream" not in line.name:
                continue  # aggregate lines (XLA modules, ops) repeat the stream events
            for ev in line.events:
                if not device and (
                    "hlo_op" not in dict(ev.stats) or ev.name.startswith(_CONTAINERS)
                ):
                    continue
                events.append((ev.name, ev.start_ns, ev.duration_ns))
    if not events:
        return {"kernels": 0.0, "busy_us": 0.0, "span_us": 0.0, "top": []}
    per = collections.defaultdict(lambda: [0, 0.0])
    for name, _, dur in events:
        per[name][0] += 1
        per[name][1] += dur
    start = min(e[1] for e in events)
    end = max(e[1] + e[2] for e in events)
    top = sorted(per.items(), key=lambda kv: -kv[1][1])
    return {
        "kernels": len(events) / steps,
        "busy_us": sum(e[2] for e in events) / steps / 1e3,
        "span_us": (end - start) / steps / 1e3,
        "top": [(name, c / steps, d / c / 1e3) for name, (c, d) in top],
    }


def bench_size(
    n_params,
    inner_name,
    memories,
    steps,
    repeats,
    batch=64,
    layouts=("auto",),
    profile=0,
):
    """``steps``: one count (time per call / steps) or two, ``n1 < n2``: the per-step time
    is then the slope ``(t(n2) - t(n1)) / (n2 - n1)`` of the median call times, free of the
    fixed cost per call (dispatch, launch, the scan's set-up), which is reported apart."""
    steps = sorted(set([steps] if isinstance(steps, int) else steps))
    n1, n2 = steps[0], steps[-1]
    key = jax.random.PRNGKey(0)
    sizes = mlp_sizes(n_params)
    params = init_mlp(key, sizes)
    n = sum(p.size for p in jax.tree_util.tree_leaves(params))
    x = jax.random.normal(key, (batch, sizes[0]))
    y = jax.random.randint(key, (batch,), 0, 10)
    quad, quad_start = separable_quadratic(params, jax.random.PRNGKey(1))
    inner = {"sgd": lambda: optax.sgd(1e-2), "adam": lambda: optax.adam(1e-3)}[inner_name]
    configs = {inner_name: (inner(), False)}
    for m in memories:
        for lay in layouts:
            name = f"anderson(m={m})" if lay == "auto" else f"AA(m={m},{lay})"
            configs[name] = (anderson(inner(), m, layout=lay), True)
    kinds = ("train", "update")
    fns = {}
    for name, (opt, wv) in configs.items():
        fns[name] = {
            "train": {k: make_train(opt, x, y, k, wv) for k in steps},
            "update": {k: make_update_only(opt, quad, k, wv) for k in steps},
            "opt": opt,
        }

    start = {"train": params, "update": quad_start}

    def fresh(opt, kind):  # donated by every call: a new copy and state each time
        p = jax.tree_util.tree_map(jnp.copy, start[kind])
        return jax.block_until_ready((p, opt.init(p)))

    def timed(f, kind, k):
        """Seconds for one call of ``k`` scanned steps."""
        p, s = fresh(f["opt"], kind)  # the copy and init stay outside the timer
        t0 = time.perf_counter()
        jax.block_until_ready(f[kind][k](p, s))
        return time.perf_counter() - t0

    for f in fns.values():  # compile
        for kind in kinds:
            for k in steps:
                timed(f, kind, k)
        # What the update-alone scan did (a harness that never extrapolates times no AA).
        f["counters"] = counters(f["update"][n2](*fresh(f["opt"], "update"))[1])
    times = {name: {(kind, k): [] for kind in kinds for k in steps} for name in fns}
    for _ in range(repeats):  # interleaved
        for name, f in fns.items():
            for kind in kinds:
                for k in steps:
                    times[name][kind, k].append(timed(f, kind, k))
    med = {name: {kk: float(np.median(v)) for kk, v in t.items()} for name, t in times.items()}

    def per_step(name, kind):
        """Seconds per step: the slope between the two counts, else per call / steps."""
        t = med[name]
        if n2 == n1:
            return t[kind, n1] / n1
        return (t[kind, n2] - t[kind, n1]) / (n2 - n1)

    print(
        f"\n{n} parameters (MLP {sizes}), batch {batch}, inner {inner_name},"
        f" {'/'.join(map(str, steps))} steps x {repeats} repeats"
    )
    if n2 > n1:
        print(
            f"  per step: slope (t({n2}) - t({n1})) / {n2 - n1} of median call times;"
            f" t/{n2}: one {n2}-step call / {n2} (fixed cost per call included)"
        )
    else:
        print(f"  per step: one {n1}-step call / {n1} (fixed cost per call included)")
    print(
        "  update+grad: the optimizer update plus the quadratic's value and gradient (one"
        " elementwise pass); ratios: Anderson / inner"
    )
    hdr = ("config", "train [ms/step]", "AA/inner", "update+grad [ms/step]", "AA/inner")
    line = f"  {hdr[0]:16s} {hdr[1]:>16s} {hdr[2]:>8s} {hdr[3]:>22s} {hdr[4]:>8s}"
    if n2 > n1:
        line += f" {f'train t/{n2}':>12s} {f'upd+grad t/{n2}':>15s}"
    print(line)
    rows = {}
    for name in med:
        tt, tu = per_step(name, "train"), per_step(name, "update")
        rt = tt / per_step(inner_name, "train")
        ru = tu / per_step(inner_name, "update")
        line = f"  {name:16s} {1e3 * tt:16.3f} {rt:8.2f} {1e3 * tu:22.3f} {ru:8.2f}"
        if n2 > n1:
            ct, cu = (med[name][kind, n2] / n2 for kind in kinds)
            line += f" {1e3 * ct:12.3f} {1e3 * cu:15.3f}"
        print(line)
        rows[name] = {
            "train_ms": 1e3 * tt,
            "train_ratio": rt,
            "update_ms": 1e3 * tu,  # update + the quadratic's value and gradient
            "update_ratio": ru,
            "per_step_is": "slope" if n2 > n1 else "per_call",
            "train_ms_per_call_over_steps": 1e3 * med[name]["train", n2] / n2,
            "update_ms_per_call_over_steps": 1e3 * med[name]["update", n2] / n2,
            "call_ms": {f"{kind}@{k}": 1e3 * v for (kind, k), v in med[name].items()},
            "update_counters": fns[name]["counters"],
        }
        if fns[name]["counters"]:
            c = ", ".join(f"{k} {v}" for k, v in fns[name]["counters"].items())
            print(f"  {'':16s} update alone, {n2} steps: {c}")
    for name, f in fns.items() if profile else ():
        for kind in kinds:
            prof = kernel_profile(f[kind][n2], fresh(f["opt"], kind), n2)
            rows[name][f"{kind}_profile"] = prof
            print(
                f"  {name} {kind}: {prof['kernels']:.1f} kernels/step, busy"
                f" {prof['busy_us']:.1f} us, span {prof['span_us']:.1f} us per step"
            )
            for kname, per_step_n, mean_us in prof["top"][:profile]:
                print(f"      {per_step_n:5.1f}/step {mean_us:8.2f} us  {kname[:90]}")
    return {"n_params": n, "inner": inner_name, "batch": batch, "steps": steps, "rows": rows}


def print_study_ratios(path: str) -> None:
    with open(path) as fh:
        res = json.load(fh)
    print(f"\nstudy ratios from {path}")
    for name, pr in res["problems"].items():
        for k, v in pr["ratios"].items():
            print(f"  {name:24s} {k:45s} {'-' if v is None else f'{v:.2f}'}")


def time_to_target(path: str, repeats: int, problem_names=None) -> dict:
    """Re-time the deterministic problems of a finished study, interleaved.

    For every seed, the tuned Nesterov and Adam and ``anderson(sgd(1/L), m)`` each run
    exactly the iterations they needed to reach the target (from ``results.json``) in a
    compiled loop (:func:`experiments.anderson.runner.step_loop`); the methods are
    interleaved in every repeat, the median over repeats is taken, and the ratio is
    best-baseline time / Anderson time per seed (median over seeds printed). Same process,
    same load: the study's own timing is sequential.
    """
    from experiments.anderson import run as study
    from experiments.anderson import runner

    with open(path) as fh:
        res = json.load(fh)
    scale = res.get("config", {}).get("scale", 1.0)
    out = {}
    for name, pr in res["problems"].items():
        if not pr["deterministic"] or (problem_names and name not in problem_names):
            continue
        # The study's own problem (size, steps) in the study's precision.
        with jax.enable_x64(name in study.X64):
            problem = study.build_problem(name, scale)
            cases = []  # (method name, seed, compiled, args)
            for mname, summ in pr["summary"].items():
                if mname not in ("nesterov", "adam") and not mname.startswith("aa_sgd"):
                    continue
                loop = runner.step_loop(problem, runner.Method(**summ["method"]))
                for seed, rec in enumerate(summ["seeds"]):
                    if rec["iters"] is None:
                        continue
                    prog = lambda p0, loop=loop, n=int(rec["iters"]): loop(p0, n)
                    p0 = problem.init(jax.random.PRNGKey(seed))
                    jax.block_until_ready(prog(p0))
                    cases.append((mname, seed, prog, p0))
            t = {(c[0], c[1]): [] for c in cases}
            for _ in range(repeats):
                for mname, seed, prog, p0 in cases:
                    t0 = time.perf_counter()
                    jax.block_until_ready(prog(p0))
                    t[mname, seed].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) for k, v in t.items()}
        seeds = sorted({k[1] for k in med})
        print(f"\n{name}: time to target [ms], median of {repeats} interleaved repeats")
        ratios = {}
        # Per seed, the faster baseline that reached the target (None: neither did).
        best = {
            sd: min((med[b, sd] for b in ("nesterov", "adam") if (b, sd) in med), default=None)
            for sd in seeds
        }
        for mname in sorted({k[0] for k in med}):
            row = [med.get((mname, sd)) for sd in seeds]
            txt = " ".join("-" if v is None else f"{1e3 * v:7.3f}" for v in row)
            line = f"  {mname:12s} {txt}"
            if mname.startswith("aa_sgd"):
                r = [
                    best[sd] / med[mname, sd]
                    for sd in seeds
                    if (mname, sd) in med and best[sd] is not None
                ]
                if r:
                    ratios[mname] = float(np.median(r))
                    line += f"   speedup {ratios[mname]:.2f} [{' '.join(f'{x:.2f}' for x in r)}]"
            print(line)
        out[name] = {"ms": {f"{k[0]}/{k[1]}": 1e3 * v for k, v in med.items()}, "speedup": ratios}
    return out


def main(argv: list[str] | None = None) -> list | dict | None:
    ap = argparse.ArgumentParser(
        description=re.sub(r"(?::\w+:)?`{1,2}([^`]+)`{1,2}", r"\1", __doc__),
        formatter_class=argparse.RawTextHelpFormatter,
    )
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[100_000, 1_000_000],
        help="MLP parameter counts (default: %(default)s)",
    )
    ap.add_argument(
        "--memories",
        type=int,
        nargs="+",
        default=[5, 10],
        help="Anderson memories m (default: %(default)s)",
    )
    ap.add_argument(
        "--inner",
        nargs="+",
        default=["sgd", "adam"],
        choices=["sgd", "adam"],
        help="inner optimizers (default: %(default)s)",
    )
    ap.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=[20, 100],
        help="steps per timed call: two counts n1 < n2 give the per-step time as the slope\n"
        "(t(n2) - t(n1)) / (n2 - n1), free of the fixed cost per call; one count gives\n"
        "t(n) / n (default: %(default)s)",
    )
    ap.add_argument(
        "--repeats", type=int, default=5, help="interleaved repeats (default: %(default)s)"
    )
    ap.add_argument(
        "--layout",
        nargs="+",
        default=["auto"],
        choices=["auto", "flat", "tree"],
        help="Anderson state layout(s) to time (auto: per leaf on CPU, flat on accelerators;\n"
        "default: %(default)s)",
    )
    ap.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=[64, 1024],
        help="minibatch size(s) (default: %(default)s)",
    )
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="K",
        help="trace each configuration once and print its K costliest kernels\n"
        "(default: %(default)s, off)",
    )
    ap.add_argument(
        "--results",
        default=None,
        help="results.json of an Anderson study: print its ratios, no bench (default: none)",
    )
    ap.add_argument(
        "--time-to-target",
        action="store_true",
        help="with --results: re-time the deterministic problems' time to target, interleaved",
    )
    a = ap.parse_args(argv)
    if len(a.steps) > 2 or min(a.steps) < 1:
        ap.error(f"--steps takes one or two counts >= 1, got {a.steps}")
    if a.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {a.repeats}")
    if min(a.sizes) < 1 or min(a.memories) < 1 or min(a.batch) < 1 or a.profile < 0:
        ap.error("--sizes, --memories and --batch must be >= 1, --profile >= 0")
    if a.time_to_target and not a.results:  # it was silently ignored
        ap.error("--time-to-target needs --results (the study whose problems to re-time)")
    if a.results and not os.path.isfile(a.results):
        why = "is a folder" if os.path.isdir(a.results) else "no such file"
        ap.error(f"--results {a.results}: {why}")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; load: {os.getloadavg()}")
    if a.results:  # a finished study's ratios (re-timed with --time-to-target), no bench
        print_study_ratios(a.results)
        return time_to_target(a.results, a.repeats) if a.time_to_target else None
    out = [
        bench_size(n, inner, a.memories, a.steps, a.repeats, b, tuple(a.layout), a.profile)
        for b in a.batch
        for n in a.sizes
        for inner in a.inner
    ]
    return out


if __name__ == "__main__":
    from experiments._cli import interruptible

    interruptible(main)
