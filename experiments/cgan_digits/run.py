"""``python -m experiments.cgan_digits.run`` (``make cgan``): per-label vs single CGANs on digits.

Flags override a few config fields (of the full config, or of the smoke-test one with
``--tiny``); prints a summary table and, as its last line, the run folder's path. Under
``mpirun -n R ... --strategy mpi`` the per-label models are split over the ranks (rank 0
trains the baselines and writes the run folder). A rerun in a ``--workdir`` that cannot
resume (other training settings, or fewer ``--steps`` than a checkpoint holds) ends before
any training with one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import jax

from experiments._cli import config_default, interruptible, root_check
from experiments.cgan_digits.config import MODELS, Config, tiny
from experiments.cgan_digits.train import check_resume, train_and_evaluate
from jaxsci.parallel import ProcessInfo, bootstrap
from jaxsci.train import check_output_dir

DESCRIPTION = (
    "Per-label versus single conditional GANs on scikit-learn digits, at equal compute "
    "(make cgan). Prints a summary table and, as its last line, the run folder's path. Under "
    "mpirun with --strategy mpi the per-label models are split over the ranks (rank 0 trains "
    "the baselines and writes the run folder)."
)


def _default(name: str, show: Callable[[Any], str] = str) -> str:
    """``Config``'s default of field ``name`` for a help string, and ``--tiny``'s if other."""
    return config_default(Config(), tiny(), name, show)


def build_parser() -> argparse.ArgumentParser:
    """The command line; every help string shows the default (from :class:`Config`, and
    :func:`~experiments.cgan_digits.config.tiny` with ``--tiny``)."""
    t = tiny()
    p = argparse.ArgumentParser(description=DESCRIPTION)
    p.add_argument(
        "--tiny",
        action="store_true",
        help=f"smoke-test size, seconds: {t.steps} steps of models with {t.g_features} "
        f"generator and {t.d_features} critic features, {t.samples_per_label} samples per "
        "label, a shorter metric classifier (default: the full study); the flags below "
        "override it",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="a power of two >= 8: 8 (the native digits) or larger, upscaled by pixel "
        f"replication, e.g. 32 ({_default('image_size')})",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"generator updates per model ({_default('steps')})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"per-label batch ({_default('batch_size')})",
    )
    p.add_argument(
        "--n-critic",
        type=int,
        default=None,
        help=f"critic updates per generator update ({_default('n_critic')})",
    )
    p.add_argument(
        "--samples-per-label",
        type=int,
        default=None,
        help=f"generated images per label for the metrics ({_default('samples_per_label')})",
    )
    p.add_argument(
        "--baseline-schedule",
        choices=("larger_batch", "more_steps"),
        default=None,
        help=f"how the baselines spend the equal budget ({_default('baseline_schedule')})",
    )
    p.add_argument(
        "--strategy",
        choices=("vmap", "shard", "mpi"),
        default=None,
        help=f"per-label parallelism; mpi: labels over ranks ({_default('strategy')})",
    )
    p.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=None,
        help=f"models to train ({_default('models', ' '.join)})",
    )
    p.add_argument("--seed", type=int, default=None, help=f"random seed ({_default('seed')})")
    p.add_argument(
        "--out-root",
        default=None,
        help=f"where run folders are created ({_default('out_root')})",
    )
    p.add_argument(
        "--workdir",
        default=None,
        help="run folder to use or resume (default: a fresh cgan_digits-<UTC time> under "
        "--out-root)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (default: shown)")
    return p


def config_from_args(a: argparse.Namespace) -> Config:
    """The config the parsed flags ask for: :class:`Config`, or ``tiny()`` with ``--tiny``,
    with the flags given replacing its fields (``Config`` checks it: ``ValueError``)."""
    base = tiny() if a.tiny else Config()
    given = {
        "image_size": a.image_size,
        "steps": a.steps,
        "batch_size": a.batch_size,
        "n_critic": a.n_critic,
        "samples_per_label": a.samples_per_label,
        "strategy": a.strategy,
        "baseline_schedule": a.baseline_schedule,
        "models": None if a.models is None else tuple(a.models),
        "seed": a.seed,
        "out_root": a.out_root,
    }
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def parse_config(argv: list[str] | None = None) -> tuple[Config, str | None, bool]:
    """Config from command-line flags; returns ``(config, workdir, progress)``."""
    a = build_parser().parse_args(argv)
    return config_from_args(a), a.workdir, not a.no_progress


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        config, workdir, progress = config_from_args(a), a.workdir, not a.no_progress
    except ValueError as err:  # before any run folder exists
        print(f"error: bad config: {err}", file=sys.stderr)
        return 2
    # the ranks train_and_evaluate will use (it bootstraps MPI for --strategy mpi only)
    info = bootstrap() if config.strategy == "mpi" else ProcessInfo(0, 1, jax.local_device_count())
    folder = workdir if workdir is not None else config.out_root
    # rank 0 alone writes: it checks before any work; a failure ends every rank (status 2)
    root_check(parser, lambda: check_output_dir(folder), is_root=info.is_root, comm=info.comm)
    if workdir is not None:  # a resume it cannot make: refused before any training
        root_check(
            parser, lambda: check_resume(workdir, config), is_root=info.is_root, comm=info.comm
        )
    run_dir, metrics = train_and_evaluate(config, workdir, progress=progress)
    if run_dir is None:
        return 0
    ref = metrics["reference_fid"]
    print(
        f"classifier test accuracy {metrics['classifier']['test_accuracy']:.3f}; "
        f"FID at n={ref['n']} (models too): real held-out {ref['real_heldout_vs_train']:.2f}, "
        f"noise {ref['uniform_noise_vs_train']:.1f}"
    )
    # train s: the training wall time less compilation (see train.py's module docstring)
    print(f"{'model':<16}{'FID':>8}{'IS':>7}{'acc':>7}{'compile s':>11}{'train s':>9}")
    for name, m in metrics["models"].items():
        compile_s = m.get("compile_seconds")  # absent from entries of older runs
        print(
            f"{name:<16}{m['fid']:>8.2f}{m['inception_score']:>7.2f}{m['accuracy']:>7.3f}"
            + (f"{compile_s:>11.1f}" if compile_s is not None else f"{'-':>11}")
            + f"{m['train_seconds']:>9.1f}"
        )
    print(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(interruptible(main, resume_flag="--workdir"))
