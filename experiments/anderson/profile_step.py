"""Per-op times of one Anderson training step on CPU (XLA thunk trace), summed by op name.

    XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true \
        python -m experiments.anderson.profile_step --layout flat --what train --batch 64

Builds the 1M-parameter MLP step of ``benchmarks/bench_anderson.py`` (``--what train``:
forward, backward, update, apply; ``update``: the optimizer update alone), runs it under
``jax.profiler.trace`` with a Perfetto trace, and prints the ops that took the most time per
step. Used to find what makes a layout slow (e.g. fused concatenates of the raveled
parameters). Timings under the profiler are inflated; compare ops within one run.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from benchmarks.bench_anderson import (  # noqa: E402
    init_mlp,
    loss_fn,
    make_train,
    make_update_only,
    mlp_sizes,
)
from jaxsci.optim import anderson  # noqa: E402

_HOST = ("ThunkExecutor", "$", "Pjit", "Common", "PjRt", "Execute")


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layout", default="tree", choices=["auto", "flat", "tree", "none"])
    ap.add_argument("--what", default="train", choices=["train", "update"])
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--memory", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args(argv)
    for name in ("params", "batch", "memory", "steps", "top"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    key = jax.random.PRNGKey(0)
    sizes = mlp_sizes(a.params)
    params = init_mlp(key, sizes)
    x = jax.random.normal(key, (a.batch, sizes[0]))
    y = jax.random.randint(key, (a.batch,), 0, 10)
    aa = a.layout != "none"
    opt = anderson(optax.sgd(1e-2), a.memory, layout=a.layout) if aa else optax.sgd(1e-2)
    if a.what == "train":
        fn = make_train(opt, x, y, a.steps, aa)
    else:
        fn = make_update_only(opt, jax.grad(loss_fn)(params, x, y), a.steps, aa)

    def run() -> None:
        p = jax.tree_util.tree_map(jnp.copy, params)
        jax.block_until_ready(fn(p, opt.init(p)))

    run()
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            run()
        path = glob.glob(f"{d}/**/*perfetto_trace.json.gz", recursive=True)[0]
        with gzip.open(path) as fh:
            events = json.load(fh)
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_op: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith(_HOST):
            per_op[e["name"]] += e.get("dur", 0) / 1e3 / a.steps  # ms per step
    print(f"{a.what} step, layout {a.layout}, {a.params} params, batch {a.batch}")
    print(f"load {os.getloadavg()}")
    print(f"sum of op times: {sum(per_op.values()):.2f} ms/step (profiled)")
    for name, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[: a.top]:
        print(f"  {ms:8.3f} ms/step  {name}")
    return dict(per_op)


if __name__ == "__main__":
    main()
