"""``python -m experiments.cgan_digits.run`` (``make cgan``): per-label vs single CGANs on digits.

Flags override a few config fields; prints a summary table and, as its last line, the run
folder's path. Under ``mpirun -n R ... --strategy mpi`` the per-label models are split over
the ranks (rank 0 trains the baselines and writes the run folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from experiments.cgan_digits.config import MODELS, Config
from experiments.cgan_digits.train import train_and_evaluate


def parse_config(argv: list[str] | None = None) -> tuple[Config, str | None, bool]:
    """Config from command-line flags; returns ``(config, workdir, progress)``."""
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=d.image_size, help="8, or 32 (upscaled)")
    p.add_argument("--steps", type=int, default=d.steps, help="generator updates per model")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per-label batch")
    p.add_argument("--n-critic", type=int, default=d.n_critic)
    p.add_argument("--samples-per-label", type=int, default=d.samples_per_label)
    p.add_argument(
        "--baseline-schedule",
        choices=("larger_batch", "more_steps"),
        default=d.baseline_schedule,
        help="how the baselines spend the equal budget",
    )
    p.add_argument("--strategy", choices=("vmap", "shard", "mpi"), default=d.strategy)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(d.models))
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out-root", default=d.out_root, help="where run folders are created")
    p.add_argument("--workdir", default=None, help="run folder to use/resume (default: fresh)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    a = p.parse_args(argv)
    config = dataclasses.replace(
        d,
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
    return config, a.workdir, not a.no_progress


def main(argv: list[str] | None = None) -> int:
    try:
        config, workdir, progress = parse_config(argv)
    except ValueError as err:  # before any run folder exists
        print(f"error: bad config: {err}", file=sys.stderr)
        return 2
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
