"""``python -m experiments.cgan_digits.run`` (``make cgan``): per-label vs single CGANs on digits.

Flags override a few config fields; prints a summary table and, as its last line, the run
folder's path. Under ``mpirun -n R ... --strategy mpi`` the per-label models are split over
the ranks (rank 0 trains the baselines and writes the run folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import jax

from experiments._cli import root_check
from experiments.cgan_digits.config import MODELS, Config
from experiments.cgan_digits.train import train_and_evaluate
from jaxsci.parallel import ProcessInfo, bootstrap
from jaxsci.train import check_output_dir

DESCRIPTION = (
    "Per-label versus single conditional GANs on scikit-learn digits, at equal compute "
    "(make cgan). Prints a summary table and, as its last line, the run folder's path. Under "
    "mpirun with --strategy mpi the per-label models are split over the ranks (rank 0 trains "
    "the baselines and writes the run folder)."
)


def build_parser() -> argparse.ArgumentParser:
    """The command line; every help string shows the default (from :class:`Config`)."""
    d = Config()
    p = argparse.ArgumentParser(description=DESCRIPTION)
    p.add_argument(
        "--image-size",
        type=int,
        default=d.image_size,
        help="8, or 32 (upscaled) (default: %(default)s)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=d.steps,
        help="generator updates per model (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="per-label batch (default: %(default)s)",
    )
    p.add_argument(
        "--n-critic",
        type=int,
        default=d.n_critic,
        help="critic updates per generator update (default: %(default)s)",
    )
    p.add_argument(
        "--samples-per-label",
        type=int,
        default=d.samples_per_label,
        help="generated images per label for the metrics (default: %(default)s)",
    )
    p.add_argument(
        "--baseline-schedule",
        choices=("larger_batch", "more_steps"),
        default=d.baseline_schedule,
        help="how the baselines spend the equal budget (default: %(default)s)",
    )
    p.add_argument(
        "--strategy",
        choices=("vmap", "shard", "mpi"),
        default=d.strategy,
        help="per-label parallelism; mpi: labels over ranks (default: %(default)s)",
    )
    p.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=list(d.models),
        help=f"models to train (default: {' '.join(d.models)})",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default: %(default)s)")
    p.add_argument(
        "--out-root",
        default=d.out_root,
        help="where run folders are created (default: %(default)s)",
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
    """The config the parsed flags ask for (``Config`` checks it: ``ValueError``)."""
    return dataclasses.replace(
        Config(),
        image_size=a.image_size,
        steps=a.steps,
        batch_size=a.batch_size,
        n_critic=a.n_critic,
        samples_per_label=a.samples_per_label,
        strategy=a.strategy,
        baseline_schedule=a.baseline_schedule,
        models=tuple(a.models),
        seed=a.seed,
        out_root=a.out_root,
    )


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
    sys.exit(main())
