"""Minibatch check: Anderson on top of SGD, heavy ball and Adam vs that inner optimizer alone.

    python -m experiments.anderson.minibatch                 # MLP diabetes and CNN digits, 3 seeds
    python -m experiments.anderson.minibatch --problems mlp_diabetes_minibatch --seeds 5

The issue's minibatch criterion: at equal epochs, Anderson is never more than 5% worse than
its inner optimizer. Step sizes are the study's tuned ones (``experiments.anderson.run``,
seed-0 grids; heavy ball uses Nesterov's tuned lr and momentum). Prints, per problem and
inner, the final full-train loss of the inner and of Anderson (median over seeds) and the
per-seed ratios Anderson / inner. Every run writes a fresh run folder
``<out>/minibatch-<UTC timestamp>`` (earlier runs are never overwritten) with
``minibatch.json`` (``settings``, and under ``problems``, per problem and inner, the
losses, ratios and counters) and ``minibatch.png`` (the per-seed ratios against the 5%
bound); the folder's path is printed last.

Where the papers claim a gain (the moving average), it is in *evaluating* the average, not
in stepping to it: every run also tracks ``jaxsci.optim.moving_average`` (span 10) and
reports the final loss at ``averaged_params`` (the average while its rsd test holds), as a
ratio to the inner optimizer's last iterate ("adaptive").
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import jax
import numpy as np

from experiments._cli import interruptible, note_run_folder
from experiments.anderson.run import build_problem
from experiments.anderson.runner import AA_COUNTERS, Method, run_minibatch

# Tuned on seed 0 by experiments.anderson.run (runs/anderson/20261126-162944/results.json).
TUNED = {
    "mlp_diabetes_minibatch": {"sgd": (0.3, 0.0), "momentum": (0.03, 0.99), "adam": (0.009, 0.0)},
    "cnn_digits": {"sgd": (0.3, 0.0), "momentum": (0.1, 0.9), "adam": (0.009, 0.0)},
}


#: The issue's bound: Anderson's final loss at most 5% above its inner optimizer's.
BOUND = 1.05


def check(problem: str, seeds: int, scale: float, average: bool, bar=None) -> dict:
    """Final full-train losses of each inner and of Anderson on it, per seed.

    ``bar``: a tqdm bar advanced by one per training run (``2 * seeds`` per inner)."""
    prob = build_problem(problem, scale)
    out = {}
    for inner, (lr, mom) in TUNED[problem].items():
        base = Method(inner, inner, lr=lr, momentum=mom)
        aa = Method(f"aa_{inner}", f"aa_{inner}", lr=lr, momentum=mom, memory=5, average=average)
        runs = {"inner": [], "anderson": []}
        for seed in range(seeds):
            key = jax.random.PRNGKey(seed)
            for kind, method in (("inner", base), ("anderson", aa)):
                runs[kind].append(run_minibatch(prob, method, key, prob.epochs))
                if bar is not None:
                    bar.update(1)
        fin_b = [r["final_loss"] for r in runs["inner"]]
        fin_a = [r["final_loss"] for r in runs["anderson"]]
        ratios = [a / b for a, b in zip(fin_a, fin_b, strict=True)]
        adaptive = {  # loss at averaged_params over the inner optimizer's last iterate
            k: [r["final_loss_adaptive"] / b for r, b in zip(v, fin_b, strict=True)]
            for k, v in runs.items()
        }
        counts = [{k: r[k] for k in AA_COUNTERS if k in r} for r in runs["anderson"]]
        out[inner] = {
            "inner": fin_b,
            "anderson": fin_a,
            "ratios": ratios,
            "inner_average": [r["final_loss_average"] for r in runs["inner"]],
            "inner_adaptive": [r["final_loss_adaptive"] for r in runs["inner"]],
            "anderson_adaptive": [r["final_loss_adaptive"] for r in runs["anderson"]],
            "average_on": {k: [r["average_on"] for r in v] for k, v in runs.items()},
            "counts": counts,
        }
        (bar.write if bar is not None else print)(
            f"{problem:24s} {inner:8s} avg={average!s:5s} inner {np.median(fin_b):.4g}"
            f"  AA {np.median(fin_a):.4g}  ratio median {np.median(ratios):.3f}"
            f"  per seed {[round(r, 3) for r in ratios]}  {counts}\n"
            f"{'':33s} adaptive average / inner: inner {_fmt(adaptive['inner'])}"
            f"  AA {_fmt(adaptive['anderson'])}"
        )
    return out


def _fmt(ratios: list[float]) -> str:
    return f"{np.median(ratios):.3f} {[round(r, 3) for r in ratios]}"


def plot(results: dict, path: Path) -> Path:
    """Per-seed final-loss ratios Anderson / inner, one column per (problem, inner) (PNG)."""
    from matplotlib.figure import Figure

    cols = [(p, inner) for p, per in results.items() for inner in per]
    fig = Figure(figsize=(max(4.0, 1.2 * len(cols) + 1.5), 3.8), layout="constrained")
    ax = fig.add_subplot()
    for j, (p, inner) in enumerate(cols):
        ratios = results[p][inner]["ratios"]
        ax.scatter([j] * len(ratios), ratios, s=24, color="C0")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(BOUND, color="r", lw=0.8, ls="--", label=f"bound {BOUND}")
    ax.set_xticks(range(len(cols)), [f"{p}\n{i}" for p, i in cols], fontsize=7)
    ax.set_ylabel("final loss: Anderson / inner (per seed)")
    ax.set_title("minibatch: Anderson on its inner optimizer, equal epochs")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return Path(path)


def main(argv: list[str] | None = None) -> Path:
    """Run the check; returns the run folder."""
    from tqdm.auto import tqdm

    from jaxsci.train import check_output_dir, make_run_dir, write_json

    ap = argparse.ArgumentParser(
        description=__doc__.replace("``", ""), formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument(
        "--problems",
        nargs="+",
        default=list(TUNED),
        choices=list(TUNED),
        help=f"problems to check (default: all, {' '.join(TUNED)})",
    )
    ap.add_argument("--seeds", type=int, default=3, help="seeds, >= 1 (default: %(default)s)")
    ap.add_argument(
        "--scale", type=float, default=1.0, help="multiply epochs, > 0 (default: %(default)s)"
    )
    ap.add_argument(
        "--average", action="store_true", help="anderson(..., average=True) (default: off)"
    )
    ap.add_argument(
        "--out-root",
        "--out",
        dest="out",
        metavar="DIR",
        default="runs/anderson",
        help="parent of the run folder (default: %(default)s)",
    )
    ap.add_argument(
        "--no-progress", action="store_true", help="hide the progress bar (default: shown)"
    )
    args = ap.parse_args(argv)
    if args.seeds < 1 or not 0 < args.scale < math.inf:  # inf, nan too
        ap.error(f"need --seeds >= 1 and a finite --scale > 0, got {args.seeds} and {args.scale}")
    try:  # before any work: a run folder can be made under --out
        check_output_dir(args.out)
    except ValueError as err:
        ap.error(str(err))
    problems = list(dict.fromkeys(args.problems))  # a problem named twice runs once
    run_dir = make_run_dir(args.out, "minibatch")  # a fresh folder: never an earlier run's
    note_run_folder(run_dir)
    total = sum(2 * args.seeds * len(TUNED[p]) for p in problems)
    with tqdm(total=total, desc="minibatch check", disable=args.no_progress) as bar:
        res = {p: check(p, args.seeds, args.scale, args.average, bar) for p in problems}
    settings = {
        "problems": problems,
        **{k: getattr(args, k) for k in ("seeds", "scale", "average")},
    }
    write_json(run_dir / "minibatch.json", {"settings": settings, "problems": res})
    plot(res, run_dir / "minibatch.png")
    print(run_dir)
    return run_dir


if __name__ == "__main__":
    interruptible(main)
