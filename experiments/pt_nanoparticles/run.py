"""``python -m experiments.pt_nanoparticles.run``: the project's ``make demo``.

Runs :func:`train_and_evaluate` with the default config (flags override a few fields),
prints a short summary table, and prints the run folder's path as the last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from experiments.pt_nanoparticles.config import Config


def parse_config(argv: list[str] | None = None) -> tuple[Config, str | None]:
    """Build the config from command-line flags; returns ``(config, workdir)``."""
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--min-size", type=int, default=d.data.min_size, help="smallest cluster (atoms)")
    p.add_argument("--max-size", type=int, default=d.data.max_size, help="largest cluster (atoms)")
    p.add_argument("--element", default=d.data.element, help="fcc metal EMT supports (Pt)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--beta", type=float, default=d.beta, help="KL weight")
    p.add_argument("--n-targets", type=int, default=d.n_targets)
    p.add_argument("--samples-per-target", type=int, default=d.samples_per_target)
    p.add_argument("--reconstruct-starts", type=int, default=d.reconstruct_starts)
    p.add_argument("--reconstruct-rounds", type=int, default=d.reconstruct_rounds)
    p.add_argument("--n-generation-sizes", type=int, default=d.n_generation_sizes)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--n-workers", type=int, default=d.n_workers, help="EMT worker processes")
    p.add_argument("--cache-dir", default=d.cache_dir, help="data set cache root")
    p.add_argument("--out-root", default=d.out_root, help="where run folders are created")
    p.add_argument("--workdir", default=None, help="run folder to use/resume (default: fresh)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    a = p.parse_args(argv)
    data = dataclasses.replace(
        d.data, min_size=a.min_size, max_size=a.max_size, element=a.element, seed=a.seed
    )
    config = dataclasses.replace(
        d,
        data=data,
        epochs=a.epochs,
        beta=a.beta,
        n_targets=a.n_targets,
        samples_per_target=a.samples_per_target,
        reconstruct_starts=a.reconstruct_starts,
        reconstruct_rounds=a.reconstruct_rounds,
        n_generation_sizes=a.n_generation_sizes,
        seed=a.seed,
        n_workers=a.n_workers,
        cache_dir=a.cache_dir,
        out_root=a.out_root,
        progress=not a.no_progress,
    )
    return config, a.workdir


def main(argv: list[str] | None = None) -> int:
    config, workdir = parse_config(argv)
    try:
        config.validate()
    except ValueError as err:
        print(f"error: bad config: {err}", file=sys.stderr)
        return 2
    # imported here so that EMT worker processes (spawned, they re-import this module) do
    # not pay for JAX/Flax imports
    from experiments.pt_nanoparticles.pipeline import format_summary, train_and_evaluate

    metrics = train_and_evaluate(config, workdir)
    print()
    print(format_summary(metrics))
    print(metrics["run_dir"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
