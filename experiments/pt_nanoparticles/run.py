"""``python -m experiments.pt_nanoparticles.run``: the project's ``make demo``.

Runs :func:`train_and_evaluate` with the default config (flags override a few fields),
prints a short summary table, and prints the run folder's path as the last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from experiments._cli import interruptible, note_run_folder
from experiments.pt_nanoparticles.config import Config
from jaxsci.data.pt_clusters import default_cache_dir, is_cached

DESCRIPTION = (
    "Generate Pt nanoparticles with a conditional VAE (the project's make demo): EMT-relaxed "
    "clusters and their ACSF fingerprints train the model, which generates fingerprints at "
    "target energies; coordinates are reconstructed from them and relaxed. Prints a summary "
    "table and, as its last line, the run folder's path."
)


def build_parser() -> argparse.ArgumentParser:
    """The command line; every help string shows the default (from :class:`Config`)."""
    d = Config()
    p = argparse.ArgumentParser(description=DESCRIPTION)

    def add(flag: str, default: object, text: str, **kw: object) -> None:
        p.add_argument(flag, default=default, help=f"{text} (default: %(default)s)", **kw)

    add("--min-size", d.data.min_size, "smallest cluster, atoms", type=int)
    add("--max-size", d.data.max_size, "largest cluster, atoms", type=int)
    add("--element", d.data.element, "fcc metal that EMT supports")
    add("--epochs", d.epochs, "CVAE training epochs", type=int)
    add("--beta", d.beta, "KL weight", type=float)
    add("--n-targets", d.n_targets, "target energies generated at", type=int)
    add("--samples-per-target", d.samples_per_target, "structures per target energy", type=int)
    add("--reconstruct-starts", d.reconstruct_starts, "parallel starts per structure", type=int)
    add("--reconstruct-rounds", d.reconstruct_rounds, "basin-hopping rounds", type=int)
    add("--n-generation-sizes", d.n_generation_sizes, "cluster sizes generated at", type=int)
    add("--seed", d.seed, "random seed (data set and model)", type=int)
    workers = min(2, os.cpu_count() or 1)  # the data module's rule for n_workers=None
    p.add_argument(
        "--n-workers",
        type=int,
        default=d.n_workers,
        help=f"EMT worker processes (default: min(2, CPU count) = {workers})"
        if d.n_workers is None
        else "EMT worker processes (default: %(default)s)",
    )
    p.add_argument(
        "--cache-dir",
        default=d.cache_dir,
        help=f"data set cache root (default: {default_cache_dir()}: "
        "$JAXSCI_CACHE/pt_clusters if JAXSCI_CACHE is set, else under the current folder)"
        if d.cache_dir is None
        else "data set cache root (default: %(default)s)",
    )
    add("--out-root", d.out_root, "where run folders are created")
    p.add_argument(
        "--workdir",
        default=None,
        help=f"run folder to use or resume (default: a fresh {d.run_name}-<UTC time> under "
        "--out-root)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (default: shown)")
    return p


def config_from_args(a: argparse.Namespace) -> Config:
    """The config the parsed flags ask for (not validated)."""
    d = Config()
    data = dataclasses.replace(
        d.data, min_size=a.min_size, max_size=a.max_size, element=a.element, seed=a.seed
    )
    return dataclasses.replace(
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


def parse_config(argv: list[str] | None = None) -> tuple[Config, str | None]:
    """Build the config from command-line flags; returns ``(config, workdir)``."""
    a = build_parser().parse_args(argv)
    return config_from_args(a), a.workdir


def main(argv: list[str] | None = None) -> int:
    # jaxsci.train and the pipeline are imported here so that EMT worker processes (spawned,
    # they re-import this module) do not pay for Flax/Orbax imports
    from jaxsci.train import check_output_dir

    parser = build_parser()
    a = parser.parse_args(argv)
    config, workdir = config_from_args(a), a.workdir
    try:
        config.validate()
    except ValueError as err:
        print(f"error: bad config: {err}", file=sys.stderr)
        return 2
    try:  # before any work; creates nothing
        check_output_dir(config.out_root if workdir is None else workdir)
        cache = config.cache_dir if config.cache_dir is not None else default_cache_dir()
        if not is_cached(config.data, cache):  # a complete cache is only read
            check_output_dir(cache)
    except ValueError as exc:
        parser.error(str(exc))  # exit status 2
    from experiments.pt_nanoparticles.pipeline import format_summary, train_and_evaluate

    if workdir is not None:  # named on Ctrl-C from the start if it exists (a resume)
        note_run_folder(workdir)
    metrics = train_and_evaluate(config, workdir)
    print()
    print(format_summary(metrics))
    print(metrics["run_dir"])
    return 0


if __name__ == "__main__":
    sys.exit(interruptible(main, resume_flag="--workdir"))
