"""Anderson acceleration study: every problem, tuned baselines vs Anderson, >= 3 seeds.

    python -m experiments.anderson.run                      # all problems, default sizes
    python -m experiments.anderson.run --tiny               # smoke test, seconds
    python -m experiments.anderson.run --problems least_squares logistic_regression
    python -m experiments.anderson.run --scale 4 --seeds 5  # longer runs, more seeds
    python -m experiments.anderson.run --methods nesterov aa_sgd_m5  # part of the study

The target of a nonconvex problem is the best loss any run reached, so it depends on
which methods ran (``--methods``).

Writes a fresh run folder ``<out>/study-<UTC timestamp>`` (``jaxsci.train.make_run_dir``:
a run started in the same second gets a suffixed folder of its own) with ``results.json``
and one ``<problem>.png`` per problem (median loss over seeds vs iterations or epochs).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from experiments._cli import config_default, interruptible, note_run_folder
from experiments.anderson import problems as P
from experiments.anderson.config import ALL, METHODS, Config, tiny_config
from experiments.anderson.runner import (
    AA_COUNTERS,
    Method,
    anderson_base,
    anderson_methods,
    iters_to_target,
    run_deterministic,
    run_minibatch,
    time_deterministic,
    tuning_grids,
)
from jaxsci.train import check_output_dir, make_run_dir, write_json

# 1e-6 relative targets need float64
X64 = {"least_squares", "least_squares_large", "logistic_regression"}


def build_problem(name: str, scale: float) -> P.Problem:
    s = lambda n: max(2, int(round(n * scale)))
    if name == "least_squares":
        prob = P.least_squares()
        return _with(prob, steps=s(prob.steps))
    if name == "least_squares_large":
        # Same spectrum, 10x the data and 2.5x the parameters: a gradient costs ~0.5 ms
        # on the 2-core CPU instead of ~10 us, so the optimizers' own per-step work no
        # longer decides the wall time.
        prob = P.least_squares(n=5000, d=500)
        return _with(prob, name="least_squares_large", steps=s(prob.steps))
    if name == "logistic_regression":
        prob = P.logistic_regression()
        return _with(prob, steps=s(prob.steps))
    if name == "mlp_diabetes_fullbatch":
        return P.mlp_diabetes(False, steps=s(1000))
    if name == "mlp_diabetes_minibatch":
        return P.mlp_diabetes(True, epochs=s(20))
    if name == "burgers_1d_pinn":
        return P.burgers_1d(steps=s(1000))
    if name == "burgers_2d_pinn":
        return P.burgers_2d(n_colloc=200, steps=s(400))
    if name == "cnn_digits":
        return P.cnn_digits(epochs=s(6))
    raise ValueError(f"unknown problem {name!r}; choose from {ALL}")


def _with(prob: P.Problem, **kw) -> P.Problem:
    from dataclasses import replace

    return replace(prob, **kw)


def _run(prob: P.Problem, method: Method, seed: int) -> dict:
    key = jax.random.PRNGKey(seed)
    if prob.deterministic:
        return run_deterministic(prob, method, key, prob.steps)
    return run_minibatch(prob, method, key, prob.epochs)


def _score(prob: P.Problem, res: dict) -> tuple:
    """Tuning score (lower is better): iterations to target (convex), else final loss."""
    final = res["final_loss"] if np.isfinite(res["final_loss"]) else np.inf
    if prob.f_star is not None:
        f0 = res["loss"][0]
        it = iters_to_target(res["loss"], prob.f_star + prob.rel_target * (f0 - prob.f_star))
        return (it if it is not None else np.inf, final)
    return (final,)


# The baseline each Anderson family's minibatch ratio is taken against (see ratios).
_INNER = {"aa_sgd": "sgd", "aa_momentum": "nesterov", "aa_adam": "adam"}


def _anderson_variants(prob: P.Problem, tuned: dict[str, Method]) -> list[Method]:
    """:func:`anderson_methods` with the first grid point standing in for every baseline
    not in ``tuned`` (only the variants that do not read it are kept by the callers)."""
    placeholder = {f: g[0] for f, g in tuning_grids(prob).items()}
    return anderson_methods(prob, {**placeholder, **tuned})


def select_methods(
    prob: P.Problem, only: list[str] | None
) -> tuple[dict[str, list[Method]], set[str]]:
    """The baseline grids to tune and the Anderson variants to run for ``only`` (None: all).

    A selected Anderson variant brings what its ratio is taken against (see :func:`ratios`):
    on a deterministic problem tuned Nesterov and Adam (the best of the two) and the
    baseline whose tuned step it takes; on a minibatch problem its inner optimizer. Both
    parts are empty when nothing in ``only`` runs on this problem.
    """
    grids = tuning_grids(prob)
    aa = [m for m in _anderson_variants(prob, {}) if only is None or m.name in only]
    keep = set(grids) if only is None else set(only) & set(grids)
    keep |= {anderson_base(prob, m.family) for m in aa} - {None}
    if aa and prob.deterministic:
        keep |= {"nesterov", "adam"}
    if not prob.deterministic:  # the minibatch ratio's inner optimizer
        keep |= {_INNER[m.family] for m in aa}
    return {f: g for f, g in grids.items() if f in keep}, {m.name for m in aa}


def study_problem(
    prob: P.Problem, seeds: int, bar: tqdm, methods: list[str] | None = None
) -> dict | None:
    """Tune baselines on seed 0, run the methods on all seeds, compute targets and ratios.

    ``methods``: a subset of :data:`METHODS` (None: all), see :func:`select_methods`.
    Returns None, having run nothing, when none of ``methods`` runs on ``prob``.
    """
    grids, aa_names = select_methods(prob, methods)
    if not grids and not aa_names:
        return None
    n_aa = len(aa_names)
    bar.total = (bar.total or 0) + sum(map(len, grids.values())) + (len(grids) + n_aa) * seeds
    bar.refresh()
    tuned: dict[str, Method] = {}
    tuning: dict[str, list] = {}
    for fam, grid in grids.items():
        scored = []
        for m in grid:
            r = _run(prob, m, 0)
            scored.append((_score(prob, r), m))
            bar.update(1)
        scored.sort(key=lambda t: t[0])
        tuned[fam] = scored[0][1]
        tuning[fam] = [{"score": list(map(float, sc)), **asdict(m)} for sc, m in scored]
    aa = [m for m in _anderson_variants(prob, tuned) if m.name in aa_names]
    methods = list(tuned.values()) + aa
    runs: dict[str, list[dict]] = {m.name: [] for m in methods}
    for m in methods:
        for seed in range(seeds):
            runs[m.name].append(_run(prob, m, seed))
            bar.update(1)
    # Target: f* (convex) or the best loss any method reached (nonconvex).
    f_ref = prob.f_star if prob.f_star is not None else best_loss(runs)
    f0 = float(np.median([r["loss"][0] for r in runs[methods[0].name]]))
    target = f_ref + prob.rel_target * (f0 - f_ref)
    summary = {}
    for m in methods:
        rows = []
        for seed, r in enumerate(runs[m.name]):
            it = iters_to_target(r["loss"], target)
            n = len(r["loss"]) - (0 if prob.deterministic else 1)
            row = {"iters": it, "final_loss": r["final_loss"]}
            if prob.deterministic:
                row["grad_evals"] = r["evals"][it] if it is not None else None
                row["time_to_target_s"] = (
                    time_deterministic(prob, m, jax.random.PRNGKey(seed), it)
                    if it is not None
                    else None
                )
            else:
                row["epochs"] = it
                row["time_to_target_s"] = r["wall"] * it / n if it is not None else None
            for k in (*AA_COUNTERS, "rel_l2"):
                if k in r:
                    row[k] = r[k]
            row["wall_s"] = r["wall"]
            rows.append(row)
        summary[m.name] = {"method": asdict(m), "seeds": rows}
    return {
        "problem": prob.name,
        "deterministic": prob.deterministic,
        "target": target,
        "f_ref": f_ref,
        "tuned": {k: asdict(v) for k, v in tuned.items()},
        "tuning": tuning,
        "summary": summary,
        "ratios": ratios(prob, summary),
        "curves": {k: [r["loss"] for r in v] for k, v in runs.items()},
    }


def best_loss(runs: dict[str, list[dict]]) -> float:
    """The lowest loss any run reached: its curve (iterates 0..N-1) and its final iterate N
    (``final_loss``), NaN (a diverged stretch) ignored; runs that start non-finite left out.
    (It was ``min`` over the curves alone: the last iterate never counted, and a NaN inside
    a curve made Python's ``min`` depend on where it fell.)"""
    return min(
        float(np.nanmin([*r["loss"], r["final_loss"]]))
        for rs in runs.values()
        for r in rs
        if np.isfinite(r["loss"][0])
    )


def _median(values):
    vals = [v for v in values if v is not None]
    if len(vals) < len(values):
        return None
    return float(np.median(vals))


def ratios(prob: P.Problem, summary: dict) -> dict:
    """Deterministic: best of Nesterov/Adam over Anderson (iterations, time); minibatch:
    Anderson's final loss over its inner optimizer's at equal epochs. ``aa_momentum``'s
    inner is heavy ball at tuned Nesterov's step and momentum; the study runs no heavy-ball
    baseline, so it is compared with tuned Nesterov (``experiments.anderson.minibatch``
    compares each Anderson variant with its exact inner optimizer)."""
    med = lambda name, key: _median([r[key] for r in summary[name]["seeds"]])
    out = {}
    if prob.deterministic:
        for key in ("iters", "time_to_target_s"):
            base = [med(b, key) for b in ("nesterov", "adam") if b in summary]
            base = [b for b in base if b is not None]
            best = min(base) if base else None
            for name in summary:
                if name.startswith("aa_"):
                    v = med(name, key)
                    out[f"{name}:{key}_speedup"] = best / v if best and v else None
    else:
        for name, s in summary.items():
            inner = _INNER.get(s["method"]["family"])
            if inner in summary:
                a = med(name, "final_loss")
                b = med(inner, "final_loss")
                out[f"{name}:final_loss_over_{inner}"] = a / b if b else None
    return out


def plot_problem(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    f_ref = res["f_ref"]
    for name, curves in res["curves"].items():
        arr = np.asarray(curves, np.float64)
        gap = np.maximum(np.median(arr, 0) - f_ref, 1e-16)
        style = "-" if name.startswith("aa_") else "--"
        ax.semilogy(gap, style, label=name, lw=1.3)
    ax.axhline(res["target"] - f_ref, color="k", lw=0.8, ls=":", label="target")
    ax.set_xlabel("iteration" if res["deterministic"] else "epoch")
    ax.set_ylabel("loss - f_ref (median over seeds)")
    ax.set_title(res["problem"])
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(res: dict) -> None:
    print(f"\n== {res['problem']}  target {res['target']:.6g}")
    key = "iters" if res["deterministic"] else "epochs"
    for name, s in res["summary"].items():
        its = [r[key] for r in s["seeds"]]
        tt = [r["time_to_target_s"] for r in s["seeds"]]
        fl = [r["final_loss"] for r in s["seeds"]]
        ex = ""
        if "accelerated" in s["seeds"][0]:
            ex = f" {'/'.join(AA_COUNTERS)} " + ",".join(
                "/".join(str(r.get(k, 0)) for k in AA_COUNTERS) for r in s["seeds"]
            )
        if "rel_l2" in s["seeds"][0]:
            ex += " relL2 " + ",".join(f"{r['rel_l2']:.3g}" for r in s["seeds"])
        tt_s = ",".join("-" if t is None else f"{t:.3f}" for t in tt)
        print(f"  {name:18s} {key} {its}  t[s] {tt_s}  final {[f'{v:.4g}' for v in fl]}{ex}")
    for k, v in res["ratios"].items():
        print(f"  ratio {k}: {'-' if v is None else f'{v:.2f}'}")


def train_and_evaluate(config: Config) -> dict:
    """Run the study ``config`` asks for (``ValueError`` before any work if it is bad);
    returns the results dict that is also written to the run folder, with ``run_dir``."""
    config.validate()
    run_dir = str(make_run_dir(config.out, config.run_name))
    note_run_folder(run_dir)
    results = {"config": asdict(config), "problems": {}}
    with tqdm(
        total=0, desc="anderson study", disable=not config.progress
    ) as bar:  # each problem adds its runs
        for name in config.problems:
            with jax.enable_x64(name in X64):  # data and params built in the same precision
                p = build_problem(name, config.scale)
                methods = None if config.methods is None else list(config.methods)
                res = study_problem(p, config.seeds, bar, methods)
            if res is None:
                print(f"\n== {name}: none of --methods runs on it; skipped")
                results.setdefault("skipped", []).append(name)
                continue
            results["problems"][p.name] = res
            if config.plots:
                plot_problem(res, os.path.join(run_dir, f"{p.name}.png"))
            print_summary(res)
            # strict JSON: inf and NaN (a target never reached) as null
            write_json(os.path.join(run_dir, "results.json"), results)
    write_json(os.path.join(run_dir, "results.json"), results)  # skipped problems too
    results["run_dir"] = run_dir
    print(f"\nrun folder: {run_dir}")
    return results


def _problems(names) -> str:
    return "all" if tuple(names) == ALL else " ".join(names)


def _default(name: str, show: Callable[[Any], str] = str) -> str:
    """``Config``'s default of field ``name`` for a help string, and ``--tiny``'s if other."""
    return config_default(Config(), tiny_config(), name, show)


def build_parser() -> argparse.ArgumentParser:
    """The command line; every help string shows the default (from :class:`Config`, and
    :func:`~experiments.anderson.config.tiny_config` with ``--tiny``)."""
    t = tiny_config()
    ap = argparse.ArgumentParser(
        description=__doc__.replace("``", ""), formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help=f"smoke-test size, seconds: {_problems(t.problems)} at --scale {t.scale}, "
        f"{t.seeds} seed (default: the\nfull study); the flags below override it",
    )
    ap.add_argument(
        "--problems",
        nargs="+",
        default=None,
        choices=ALL,
        help=f"problems to study ({_default('problems', _problems)})",
    )
    ap.add_argument(
        "--seeds", type=int, default=None, help=f"seeds per method, >= 1 ({_default('seeds')})"
    )
    ap.add_argument(
        "--scale",
        type=float,
        default=None,
        help=f"multiply iterations/epochs, > 0 ({_default('scale')})",
    )
    ap.add_argument(
        "--out-root",
        "--out",
        dest="out",
        metavar="DIR",
        default=None,
        help=f"parent of the run folder ({_default('out')})",
    )
    ap.add_argument(
        "--no-plots", action="store_true", help="write no <problem>.png (default: written)"
    )
    ap.add_argument(
        "--no-progress", action="store_true", help="hide the progress bar (default: shown)"
    )
    ap.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        help="run only these (default: all); an Anderson variant brings the baselines its\n"
        "step and its ratio need",
    )
    return ap


def config_from_args(a: argparse.Namespace) -> Config:
    """The config the parsed flags ask for (not validated): :class:`Config`, or
    :func:`~experiments.anderson.config.tiny_config` with ``--tiny``, with the flags given
    replacing its fields. A problem named twice runs once."""
    base = tiny_config() if a.tiny else Config()
    given = {
        "problems": None if a.problems is None else tuple(dict.fromkeys(a.problems)),
        "seeds": a.seeds,
        "scale": a.scale,
        "methods": None if a.methods is None else tuple(a.methods),
        "out": a.out,
    }
    changes = {k: v for k, v in given.items() if v is not None}
    return dataclasses.replace(base, **changes, plots=not a.no_plots, progress=not a.no_progress)


def main(argv: list[str] | None = None) -> dict:
    """Parse the flags, check them and the output root (status 2 before any work), run
    :func:`train_and_evaluate`; returns its results."""
    ap = build_parser()
    config = config_from_args(ap.parse_args(argv))
    if config.seeds < 1 or not 0 < config.scale < math.inf:  # before any run folder (inf, nan)
        ap.error(
            f"need --seeds >= 1 and a finite --scale > 0, got {config.seeds} and {config.scale}"
        )
    try:
        config.validate()
    except ValueError as err:
        ap.error(f"bad config: {err}")
    try:  # before any work: a run folder can be made under --out
        check_output_dir(config.out)
    except ValueError as err:
        ap.error(str(err))
    return train_and_evaluate(config)


if __name__ == "__main__":
    interruptible(main)
