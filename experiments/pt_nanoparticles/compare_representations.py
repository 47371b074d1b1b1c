"""Measure which fixed-length representation the CVAE should generate.

For relaxed training clusters of a few sizes, reconstruct coordinates (with
``jaxsci.reconstruct.reconstruct``, identical options) from
  1. the exact per-atom fingerprint set (upper bound),
  2. the sorted-column quantile representation (``n_quantiles`` levels, step or linear)
     mapped back to N,
  3. the seed paper's max/min pooled fingerprint,
and report the RMSD to the original (best over rotations, reflections, permutations),
after EMT relaxation of the reconstruction as well, and the fraction of structures
recovered (RMSD < 0.1 A).

    python -m experiments.pt_nanoparticles.compare_representations --sizes 13 38 --per-size 4
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from experiments.pt_nanoparticles.config import Config
from experiments.pt_nanoparticles.pipeline import make_descriptor
from experiments.pt_nanoparticles.representation import (
    from_quantiles,
    pooled_max_min,
    to_quantiles,
)
from jaxsci.data.pt_clusters import build_pt_clusters, relax
from jaxsci.metrics import structure_rmsd
from jaxsci.reconstruct import reconstruct


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[13, 38])
    p.add_argument("--per-size", type=int, default=4)
    p.add_argument("--n-quantiles", type=int, nargs="+", default=[24, 60])
    p.add_argument("--starts", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cache-dir", default=None)
    a = p.parse_args(argv)
    config = Config(cache_dir=a.cache_dir)
    descriptor = make_descriptor(config)
    data = build_pt_clusters(config.data, cache_dir=a.cache_dir, descriptor=descriptor)
    rows = []
    for n in a.sizes:
        idx = np.flatnonzero((data.sizes == n) & data.relaxed)[: a.per_size]
        for i in idx:
            ref = data.structures[i]
            feats = data.fingerprints[i]
            targets = {"exact_set": feats, "pooled_max_min": pooled_max_min(feats)}
            for q in a.n_quantiles:
                for m in ("step", "linear"):
                    targets[f"quantiles_{q}_{m}"] = from_quantiles(to_quantiles(feats, q, m), n, m)
            for name, target in targets.items():
                t0 = time.perf_counter()
                res = reconstruct(
                    target,
                    ["Pt"] * n,
                    descriptor,
                    key=jax.random.key(int(i)),
                    n_starts=a.starts,
                    max_rounds=a.rounds,
                    time_limit=60.0,
                )
                wall = time.perf_counter() - t0
                rec = ref.copy()
                rec.positions = res.positions
                relaxed, _, _ = relax(rec)
                row = {
                    "n": int(n),
                    "index": int(i),
                    "representation": name,
                    "rmsd": structure_rmsd(res.positions, ref.positions),
                    "rmsd_after_relax": structure_rmsd(relaxed.positions, ref.positions),
                    "fingerprint_error": float(res.error),
                    "wall_s": wall,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {}
    for name in sorted({r["representation"] for r in rows}):
        sel = [r for r in rows if r["representation"] == name]
        summary[name] = {
            "median_rmsd": float(np.median([r["rmsd"] for r in sel])),
            "median_rmsd_after_relax": float(np.median([r["rmsd_after_relax"] for r in sel])),
            "recovered_lt_0.1A_after_relax": float(
                np.mean([r["rmsd_after_relax"] < 0.1 for r in sel])
            ),
            "n": len(sel),
        }
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
