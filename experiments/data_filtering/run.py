"""Does filtering the easiest examples help large-batch training? (arXiv 2012.09272)

.venv/bin/python -m experiments.data_filtering.run            # default: ~20 s on 2 CPU cores
.venv/bin/python -m experiments.data_filtering.run --tiny     # smoke size, seconds

Per seed: warm-up runs on all data give EL2N / forgetting (/ GraNd) scores; then a fresh MLP
trains for the same number of large-batch steps on all data, on the subsets that drop the
easiest ``drop_fraction`` by each score, and on random subsets of the same size (control).
Writes ``results.json``, ``config.json`` and ``test_accuracy.png`` to a run folder and
prints a table of final test accuracy (mean +- std over seeds, and the paired difference to
training on all data).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from experiments._cli import config_default, interruptible, note_run_folder
from experiments.data_filtering.config import Config, tiny_config
from experiments.data_filtering.train import (
    batch_stream,
    load_data,
    make_model,
    make_trainer,
    train_run,
    warmup_scores,
)
from jaxsci.data import n_keep, select
from jaxsci.train import check_output_dir, make_run_dir, write_json

REFERENCE = "full-small-batch"
DESCRIPTION = (
    "Does dropping the easiest training examples help large-batch training (arXiv "
    "2012.09272)? MLPs on scikit-learn digits train on all data, on the subsets that "
    "importance scores keep, and on random subsets of the same size; prints their final "
    "test accuracy and writes a run folder."
)


def method_labels(config: Config) -> list[str]:
    """``full``, then ``<score>-drop<f>`` and ``random-drop<f>`` per drop fraction."""
    labels = ["full"]
    for f in config.drop_fractions:
        labels += [f"{s}-drop{f:g}" for s in (*config.scores, "random")]
    return labels


def summarize(runs: dict[str, dict[str, dict]]) -> dict[str, dict[str, float]]:
    """Final test accuracy per method: mean, std (ddof 0), and paired difference to full."""
    full = runs["full"]
    out = {}
    for label, per_seed in runs.items():
        acc = np.array([r["final_test_accuracy"] for r in per_seed.values()])
        diff = np.array(
            [r["final_test_accuracy"] - full[s]["final_test_accuracy"] for s, r in per_seed.items()]
        )
        out[label] = {
            "mean": float(acc.mean()),
            "std": float(acc.std()),
            "diff_vs_full_mean": float(diff.mean()),
            "diff_vs_full_std": float(diff.std()),
            "n_train_used": int(next(iter(per_seed.values()))["n_train_used"]),
            "time_s_mean": float(np.mean([r["time_s"] for r in per_seed.values()])),
        }
    return out


def plot_accuracy(config: Config, runs: dict[str, dict[str, dict]], path: Path) -> Path:
    """Test accuracy vs step, one panel per drop fraction: mean line, min-max band."""
    from matplotlib.figure import Figure

    k = len(config.drop_fractions)
    fig = Figure(figsize=(4.5 * k, 4.0), layout="constrained")
    axes = fig.subplots(1, k, sharey=True, squeeze=False)[0]
    for ax, f in zip(axes, config.drop_fractions, strict=True):
        for label in ["full"] + [f"{s}-drop{f:g}" for s in (*config.scores, "random")]:
            per_seed = list(runs[label].values())
            acc = np.array([r["test_accuracy"] for r in per_seed])
            steps = per_seed[0]["steps"]
            (line,) = ax.plot(steps, acc.mean(0), label=label)
            ax.fill_between(steps, acc.min(0), acc.max(0), color=line.get_color(), alpha=0.2)
        if REFERENCE in runs:
            ref = np.mean([r["final_test_accuracy"] for r in runs[REFERENCE].values()])
            ax.axhline(
                ref, color="k", ls="--", lw=1, label=f"batch {config.base_batch}, same epochs"
            )
        ax.set_xlabel(f"optimizer step (batch {config.batch_size})")
        ax.set_title(f"drop {f:g} of the training set")
        ax.set_ylim(max(0.0, ax.get_ylim()[0]), 1.0)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel(f"test accuracy (mean, min-max over {len(config.seeds)} seeds)")
    fig.savefig(path, dpi=110)
    return path


def train_and_evaluate(config: Config, run_dir: str | Path) -> dict[str, Any]:
    """Run the whole comparison; writes into ``run_dir`` (created) and returns the results."""
    config.validate()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", dataclasses.asdict(config))
    data = load_data(config)
    n = int(data.y_train.shape[0])
    model = make_model(config)
    trainer = make_trainer(model, config.optimizer(config.batch_size), data)
    labels = method_labels(config)
    runs: dict[str, dict[str, dict]] = {label: {} for label in labels}
    scores_info: dict[str, dict] = {}
    total = len(config.seeds) * (len(labels) + int(config.reference_small_batch))
    bar = tqdm(total=total, desc="runs", disable=not config.progress, dynamic_ncols=True)
    for seed in config.seeds:
        t0 = time.perf_counter()
        scores = warmup_scores(config, trainer, model, data, seed)
        scores_info[str(seed)] = {
            "time_s": time.perf_counter() - t0,
            "fraction_at_min": {k: float(np.mean(v == v.min())) for k, v in scores.items()},
        }
        subsets = {"full": np.arange(n)}
        for f in config.drop_fractions:
            for i, (s, v) in enumerate(scores.items()):
                # equal scores (most examples have no forgetting event) are dropped in a
                # random order of the seed (Toneva et al.), not lowest index first; one key
                # per score and seed for every fraction: the kept sets are nested
                tie_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 8), i)
                subsets[f"{s}-drop{f:g}"] = select(v, 1.0 - f, drop="easiest", key=tie_key)
            key = jax.random.fold_in(jax.random.key(seed), 7)
            subsets[f"random-drop{f:g}"] = select(np.zeros(n), 1.0 - f, drop="random", key=key)
        for label in labels:
            stream = batch_stream(subsets[label], config.steps, config.batch_size, seed)
            run = train_run(trainer, jax.random.key(seed), stream, config.eval_every)
            runs[label][str(seed)] = {**run, "n_train_used": len(subsets[label])}
            bar.set_postfix({"seed": seed, label: f"{run['final_test_accuracy']:.3f}"})
            bar.update()
        if config.reference_small_batch:
            ref = config.optimizer(config.base_batch)
            steps = -(-config.steps * config.batch_size // config.base_batch)  # same epochs
            stream = batch_stream(np.arange(n), steps, config.base_batch, seed)
            # the large-batch runs' evaluation epochs (>= 1: validate() has base <= batch)
            every = config.eval_every * config.batch_size // config.base_batch
            run = train_run(make_trainer(model, ref, data), jax.random.key(seed), stream, every)
            runs.setdefault(REFERENCE, {})[str(seed)] = {**run, "n_train_used": n}
            bar.update()
    bar.close()
    results = {
        "n_train": n,
        "n_test": int(data.y_test.shape[0]),
        "lr": config.lr,
        "kept": {f"{f:g}": n_keep(n, 1.0 - f) for f in config.drop_fractions},
        "scoring": scores_info,
        "runs": runs,
        "summary": summarize(runs),
    }
    write_json(run_dir / "results.json", results)
    plot_accuracy(config, runs, run_dir / "test_accuracy.png")
    return {**results, "run_dir": str(run_dir)}


def format_table(summary: dict[str, dict[str, float]], n_seeds: int) -> str:
    """The summary as a fixed-width text table."""
    head = f"{'method':<22}{'kept':>6}  {'final test acc':>16}  {'vs full (paired)':>17}  time/run"
    lines = [head, "-" * len(head)]
    for label, s in summary.items():
        lines.append(
            f"{label:<22}{s['n_train_used']:>6}  {s['mean']:.4f} +- {s['std']:.4f}  "
            f"{s['diff_vs_full_mean']:+.4f} +- {s['diff_vs_full_std']:.4f}  "
            f"{s['time_s_mean']:.2f} s"
        )
    lines.append(f"(mean +- std over {n_seeds} seeds)")
    return "\n".join(lines)


def _default(name: str, show: Callable[[Any], str] = str) -> str:
    """``Config``'s default of field ``name`` for a help string, and ``--tiny``'s if other."""
    return config_default(Config(), tiny_config(), name, show)


def build_parser() -> argparse.ArgumentParser:
    """The command line; every help string shows the default (from :class:`Config`)."""
    full, tiny = Config(), tiny_config()
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument(
        "--tiny",
        action="store_true",
        help=f"smoke-test size: {len(tiny.seeds)} seeds of {tiny.steps} steps (default: "
        f"{len(full.seeds)} seeds of {full.steps} steps)",
    )
    parser.add_argument(
        "--out-root", default=None, help=f"parent of the run folder ({_default('out_root')})"
    )
    shown = {True: "shown", False: "hidden"}.get
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help=f"hide progress bars ({_default('progress', shown)})",
    )
    return parser


def parse_config(argv: list[str] | None = None) -> Config:
    """The config the command-line flags ask for (not validated, nothing checked on disk)."""
    return _config(build_parser().parse_args(argv))


def _config(args: argparse.Namespace) -> Config:
    config = tiny_config() if args.tiny else Config()
    if args.out_root is not None:
        config = dataclasses.replace(config, out_root=args.out_root)
    if args.no_progress:
        config = dataclasses.replace(config, progress=False)
    return config


def main(argv: list[str] | None = None) -> Path:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = _config(args)
    try:
        config.validate()
    except ValueError as err:
        parser.error(f"bad config: {err}")  # exit status 2, nothing written
    try:  # before any work; creates nothing
        check_output_dir(config.out_root)
    except ValueError as exc:
        parser.error(str(exc))  # exit status 2
    run_dir = make_run_dir(config.out_root, config.run_name)
    note_run_folder(run_dir)
    t0 = time.perf_counter()
    results = train_and_evaluate(config, run_dir)
    print(format_table(results["summary"], len(config.seeds)))
    print(
        f"batch {config.batch_size}, lr {config.lr:g} (warm-up {config.lr_warmup_steps} steps), "
        f"{config.steps} steps; "
        f"{time.perf_counter() - t0:.1f} s; run folder {run_dir}"
    )
    return run_dir


if __name__ == "__main__":
    interruptible(main)
