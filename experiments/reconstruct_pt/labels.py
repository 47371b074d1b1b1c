"""Why random packings of 20+ atoms are not recovered: the atom labels, not the geometry.

    .venv/bin/python -m experiments.reconstruct_pt.labels --n-atoms 25 --seed 101

For an EMT-relaxed random Pt cluster (the target), takes ``n_starts`` start structures of
:func:`jaxsci.reconstruct.reconstruct` (its random compact packings after
``search_steps`` steps of its label-free, sorted-column search), and runs from each a
float64 L-BFGS-B descent of the *row-matched* loss ``||(F(x)[labels] - T) / scale||^2``
(:func:`jaxsci.reconstruct.polish.matched_descent`) under three labelings of the target
rows:

* ``oracle``: the correspondence of the start's atoms to the target's atoms after the best
  rigid overlay (:func:`jaxsci.metrics.align`), i.e. labels that need the answer;
* ``features``: the Hungarian matching of the start's fingerprint rows to the target's,
  the only labels available without the answer (what the polish uses);
* ``oracle_k``: the oracle labels with ``k`` disjoint random pairs swapped (``2k`` wrong).

A start counts as recovered when the relative fingerprint error ends below ``tol`` (rows
matched). Writes ``labels.json`` and ``labels.png`` (error after the descent against the
start's RMSD, per labeling) into a run folder and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from experiments._cli import interruptible, note_run_folder
from experiments.reconstruct_pt.config import Config
from experiments.reconstruct_pt.run import descriptor


def diagnose(
    n_atoms: int,
    seed: int,
    *,
    n_starts: int = 24,
    search_steps: int = 1,
    transpositions: tuple[int, ...] = (1,),
    tol: float = 1e-3,
    key: int = 7,
    config: Config | None = None,
    progress: bool = False,
) -> dict:
    """Recovery counts per labeling (see module doc) for one random cluster.

    ``oracle_k`` swaps ``k`` disjoint pairs of oracle labels (so exactly ``2k`` atoms are
    mislabelled; needs ``2k <= n_atoms``).
    """
    if any(k < 0 or 2 * k > n_atoms for k in transpositions):
        raise ValueError(f"transpositions must lie in 0..{n_atoms // 2}, got {transpositions}")
    if len(set(transpositions)) != len(transpositions):  # one oracle_k entry per k
        raise ValueError(f"transpositions must be distinct, got {transpositions}")
    import jax
    from ase import Atoms
    from tqdm.auto import tqdm

    from jaxsci.data.pt_clusters import relax, seed_cluster
    from jaxsci.metrics import align
    from jaxsci.metrics.structure import match_rows
    from jaxsci.reconstruct import reconstruct
    from jaxsci.reconstruct.losses import feature_scales
    from jaxsci.reconstruct.polish import matched_descent

    acsf = descriptor(config or Config())
    target_atoms, _, _ = relax(seed_cluster("random", n_atoms, seed=seed))
    t = np.asarray(acsf.create(target_atoms), np.float64)
    scale = feature_scales(t)  # the search's column scales
    symbols = target_atoms.get_chemical_symbols()
    species = acsf.encode_species(symbols)
    starts = reconstruct(
        t,
        symbols,
        acsf,
        key=jax.random.key(key),
        n_starts=n_starts,
        steps_per_round=search_steps,
        max_rounds=1,
        motif_starts=0,
        polish_below=0.0,
        time_limit=None,
    ).start_positions
    rng = np.random.default_rng(seed)
    kinds = ["oracle", "features"] + [f"oracle_{k}" for k in transpositions]
    per_start = []
    for x0 in tqdm(starts, desc=f"labels N={n_atoms}", disable=not progress):
        al = align(x0, target_atoms.positions)
        oracle = np.asarray(al.permutation)
        feats = np.asarray(acsf.create(Atoms(symbols, positions=x0)), np.float64)
        labelings = {"oracle": oracle, "features": match_rows(feats, t)}
        for k in transpositions:
            lab = oracle.copy()
            pairs = rng.choice(n_atoms, 2 * k, replace=False).reshape(k, 2)
            lab[pairs[:, 0]], lab[pairs[:, 1]] = oracle[pairs[:, 1]], oracle[pairs[:, 0]]
            labelings[f"oracle_{k}"] = lab
        rec = {
            "start_rmsd": float(al.rmsd),
            "wrong_feature_labels": int(np.sum(labelings["features"] != oracle)),
        }
        for kind in kinds:
            _, err = matched_descent(x0, t, labelings[kind], species, acsf, scale=scale)
            rec[kind] = err
        per_start.append(rec)
    return {
        "n_atoms": n_atoms,
        "seed": seed,
        "n_starts": len(per_start),
        "search_steps": search_steps,
        "tol": tol,
        "recovered": {k: int(sum(r[k] < tol for r in per_start)) for k in kinds},
        "median_start_rmsd": float(np.median([r["start_rmsd"] for r in per_start])),
        "median_wrong_feature_labels": float(
            np.median([r["wrong_feature_labels"] for r in per_start])
        ),
        "per_start": per_start,
    }


def plot(out: dict, path: Path) -> None:
    """Final fingerprint error against start RMSD, one marker per labeling (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rmsd = [r["start_rmsd"] for r in out["per_start"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in out["recovered"]:
        errs = [max(r[kind], 1e-12) for r in out["per_start"]]
        ax.scatter(rmsd, errs, s=18, label=f"{kind} ({out['recovered'][kind]}/{out['n_starts']})")
    ax.axhline(out["tol"], color="k", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("start RMSD to the target (Angstrom)")
    ax.set_ylabel("fingerprint error after the matched descent")
    ax.set_title(f"random Pt{out['n_atoms']} (seed {out['seed']}): recovered per labeling")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(
        description="Why random packings of 20+ atoms are not recovered: oracle vs feature "
        "labels for the row-matched descent."
    )
    ap.add_argument(
        "--n-atoms", type=int, default=25, help="atoms of the target, >= 4 (default: %(default)s)"
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=101,
        help="target cluster and label swaps, >= 0 (default: %(default)s)",
    )
    ap.add_argument(
        "--n-starts", type=int, default=24, help="start structures, >= 1 (default: %(default)s)"
    )
    ap.add_argument(
        "--search-steps",
        type=int,
        default=1,
        help="search steps per start, >= 1 (default: %(default)s)",
    )
    ks = (1,)  # default transpositions
    ap.add_argument(
        "--transpositions",
        type=int,
        nargs="*",
        default=list(ks),
        help="k of each oracle_k labeling, distinct, 1 <= k <= n_atoms // 2 (default: "
        f"{' '.join(map(str, ks))}; none given: oracle and features only)",
    )
    ap.add_argument(
        "--out-root",
        "--out-dir",
        dest="out_dir",
        metavar="DIR",
        default="runs",
        help="parent of the run folder (default: %(default)s)",
    )
    ap.add_argument(
        "--no-progress", action="store_true", help="hide the progress bar (default: shown)"
    )
    args = ap.parse_args(argv)
    # every check before any work: the run folder is made only once the results are in
    if args.n_atoms < 4:
        ap.error(f"--n-atoms must be >= 4, got {args.n_atoms}")
    if args.n_starts < 1 or args.search_steps < 1:
        ap.error(
            f"--n-starts and --search-steps must be >= 1, got {args.n_starts} and "
            f"{args.search_steps}"
        )
    if args.seed < 0:
        ap.error(f"--seed must be >= 0, got {args.seed}")
    top = args.n_atoms // 2
    if any(not 1 <= k <= top for k in args.transpositions):
        ap.error(f"--transpositions must lie in 1..{top} (n_atoms // 2), got {args.transpositions}")
    if len(set(args.transpositions)) != len(args.transpositions):
        ap.error(f"--transpositions must be distinct, got {args.transpositions}")
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        ap.error(f"--out-root {args.out_dir} exists and is not a folder")
    from jaxsci.train.run_dir import check_output_dir, make_run_dir, write_json

    try:  # writable too: the run folder is made after the work, which must not be lost
        check_output_dir(args.out_dir)
    except ValueError as err:
        ap.error(str(err))

    t0 = time.perf_counter()
    out = diagnose(
        args.n_atoms,
        args.seed,
        n_starts=args.n_starts,
        search_steps=args.search_steps,
        transpositions=tuple(args.transpositions),
        progress=not args.no_progress,
    )
    out["wall_time_s"] = time.perf_counter() - t0
    run_dir = make_run_dir(args.out_dir, "reconstruct_labels")
    note_run_folder(run_dir)
    write_json(run_dir / "labels.json", out)
    plot(out, run_dir / "labels.png")
    summary = {k: v for k, v in out.items() if k != "per_start"}
    print(json.dumps(summary, indent=1))
    print(run_dir)
    return run_dir


if __name__ == "__main__":
    interruptible(main)
