"""``python -m experiments.hea_order.run``: the VAE order parameter of MoNbTaW.

Runs :func:`train_and_evaluate` with the default config (flags override a few fields),
prints a short summary table, and prints the run folder's path as the last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from experiments._cli import config_default, interruptible
from experiments.hea_order.config import Config, min_n_cells, tiny_config
from jaxsci.train import check_output_dir

DESCRIPTION = (
    "The VAE order parameter of the MoNbTaW high-entropy alloy: swap Monte Carlo with "
    "parallel tempering samples a BCC supercell over a temperature ladder, and variational "
    "autoencoders learn an order parameter from the samples. Prints a summary table and, as "
    "its last line, the run folder's path."
)


def _windows(windows: tuple[tuple[float, float], ...]) -> str:
    return " ".join(f"{lo:g}-{hi:g}" for lo, hi in windows)


def _default(name: str, show: Callable[[Any], str] = str) -> str:
    """``Config``'s default of field ``name`` for a help string, and ``--tiny``'s if other."""
    return config_default(Config(), tiny_config(), name, show)


def build_parser() -> argparse.ArgumentParser:
    """The command line; every help string shows the default (from :class:`Config`, and
    :func:`tiny_config` with ``--tiny``)."""
    d, tiny = Config(), tiny_config()
    p = argparse.ArgumentParser(description=DESCRIPTION)
    p.add_argument(
        "--tiny",
        action="store_true",
        help=f"smoke-test size, seconds: {2 * tiny.n_cells**3} BCC sites, the ladder "
        f"{' '.join(f'{t:g}' for t in tiny.temperatures)} K, {tiny.epochs} VAE epochs "
        f"(default: {2 * d.n_cells**3} sites, {d.n_temperatures} temperatures); the flags "
        "below override it",
    )
    p.add_argument(
        "--n-cells",
        type=int,
        default=None,
        help=f"BCC cells per edge, >= {min_n_cells(d.n_shells)} (the smallest supercell that "
        f"holds MoNbTaW's {d.n_shells} neighbour shells) ({_default('n_cells')})",
    )
    ladder = "; sets the geometric ladder, also with --tiny"
    p.add_argument(
        "--t-min",
        type=float,
        default=None,
        help=f"lowest temperature, K ({_default('t_min')}{ladder})",
    )
    p.add_argument(
        "--t-max",
        type=float,
        default=None,
        help=f"highest temperature, K ({_default('t_max')}{ladder})",
    )
    p.add_argument(
        "--n-temperatures",
        type=int,
        default=None,
        help="temperatures of the ladder, geometric from --t-min to --t-max, >= 2; each "
        f"--vae-window must hold >= 3 of them ({_default('n_temperatures')}{ladder})",
    )
    p.add_argument(
        "--n-burn", type=int, default=None, help=f"burn-in sweeps ({_default('n_burn')})"
    )
    p.add_argument(
        "--n-samples",
        type=int,
        default=None,
        help=f"samples kept per temperature, >= {d.min_n_samples} (10 x the {d.n_blocks} error "
        f"blocks; --tiny: >= {tiny.min_n_samples}, {tiny.n_blocks} blocks) "
        f"({_default('n_samples')})",
    )
    p.add_argument(
        "--sample-every",
        type=int,
        default=None,
        help=f"sweeps between samples ({_default('sample_every')})",
    )
    p.add_argument(
        "--latent-dim",
        type=int,
        default=None,
        help=f"VAE latent dimension ({_default('latent_dim')})",
    )
    p.add_argument(
        "--epochs", type=int, default=None, help=f"VAE training epochs ({_default('epochs')})"
    )
    p.add_argument("--beta", type=float, default=None, help=f"KL weight ({_default('beta')})")
    p.add_argument(
        "--vae-window",
        nargs=2,
        type=float,
        action="append",
        metavar=("LOW", "HIGH"),
        help="train another VAE on the temperatures in [LOW, HIGH] K, >= 3 of them "
        f"(repeatable; {_default('vae_windows', _windows)})",
    )
    p.add_argument("--seed", type=int, default=None, help=f"random seed ({_default('seed')})")
    p.add_argument(
        "--out-root",
        default=None,
        help=f"where run folders are created ({_default('out_root')})",
    )
    p.add_argument(
        "--run-dir",
        default=None,
        help="run folder to write, new or empty (a run does not resume) (default: a fresh "
        f"{d.run_name}-<UTC time> under --out-root)",
    )
    p.add_argument(
        "--no-samples", action="store_true", help="do not write samples.npz (default: written)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (default: shown)")
    return p


def config_from_args(a: argparse.Namespace) -> Config:
    """The config the parsed flags ask for (not validated): :class:`Config`, or
    :func:`tiny_config` with ``--tiny``, with the flags given replacing its fields. A
    ladder flag (``--t-min``, ``--t-max``, ``--n-temperatures``) replaces the tiny config's
    explicit temperatures by the geometric ladder."""
    base = tiny_config() if a.tiny else Config()
    given = {
        "n_cells": a.n_cells,
        "t_min": a.t_min,
        "t_max": a.t_max,
        "n_temperatures": a.n_temperatures,
        "n_burn": a.n_burn,
        "n_samples": a.n_samples,
        "sample_every": a.sample_every,
        "latent_dim": a.latent_dim,
        "epochs": a.epochs,
        "beta": a.beta,
        "seed": a.seed,
        "vae_windows": None if a.vae_window is None else tuple(map(tuple, a.vae_window)),
        "out_root": a.out_root,
    }
    changes = {k: v for k, v in given.items() if v is not None}
    if {"t_min", "t_max", "n_temperatures"} & changes.keys():
        changes["temperatures"] = None
    return dataclasses.replace(
        base, **changes, save_samples=not a.no_samples, progress=not a.no_progress
    )


def parse_config(argv: list[str] | None = None) -> tuple[Config, str | None]:
    """Build the config from command-line flags; returns ``(config, run_dir)``."""
    a = build_parser().parse_args(argv)
    return config_from_args(a), a.run_dir


def flag_problem(config: Config, windows_given: bool) -> str | None:
    """The first limit the flags break, in the flags' terms (``None``: none).

    ``Config.validate_limits`` names fields without a flag (``n_shells``, ``n_blocks``);
    call this after ``Config.validate_fields`` passed."""
    low = min_n_cells(config.n_shells)
    if config.n_cells < low:
        return (
            f"--n-cells must be >= {low} (a smaller supercell cannot hold MoNbTaW's "
            f"{config.n_shells} neighbour shells), got {config.n_cells}"
        )
    if config.n_samples < config.min_n_samples:
        return (
            f"--n-samples must be >= {config.min_n_samples} (10 x {config.n_blocks}: the drift "
            f"check splits the first tenth of each chain into {config.n_blocks} blocks), "
            f"got {config.n_samples}"
        )
    ladder = config.ladder()
    for (lo, hi), count in zip(config.vae_windows, config.window_counts(), strict=True):
        if count < 3:
            which = (
                f"--vae-window {lo:g} {hi:g}"
                if windows_given
                else f"the default --vae-window {lo:g} {hi:g} (no --vae-window was given)"
            )
            if config.temperatures is not None:  # --tiny's fixed list
                listed = " ".join(f"{t:g}" for t in ladder)
                return (
                    f"{which} holds {count} of the {len(ladder)} temperatures of --tiny's "
                    f"ladder ({listed} K); it needs >= 3: pass a wider --vae-window LOW HIGH, "
                    "or set a geometric ladder with --t-min, --t-max and --n-temperatures"
                )
            return (
                f"{which} holds {count} of the {len(ladder)} ladder temperatures "
                f"(--t-min {config.t_min:g} to --t-max {config.t_max:g} K, --n-temperatures "
                f"{len(ladder)}); it needs >= 3: raise --n-temperatures or pass a wider "
                "--vae-window LOW HIGH"
            )
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    config, run_dir = config_from_args(a), a.run_dir
    try:
        config.validate_fields()
        problem = flag_problem(config, a.vae_window is not None)
        if problem is not None:
            raise ValueError(problem)
        config.validate()
    except ValueError as err:
        print(f"error: bad config: {err}", file=sys.stderr)
        return 2
    try:  # before any work; creates nothing
        check_output_dir(config.out_root if run_dir is None else run_dir)
        if run_dir is not None:
            from experiments.hea_order.pipeline import check_run_dir

            check_run_dir(run_dir)
    except ValueError as exc:
        parser.error(str(exc))  # exit status 2
    from experiments.hea_order.pipeline import format_summary, train_and_evaluate

    results = train_and_evaluate(config, run_dir)
    print()
    print(format_summary(results))
    print(results["run_dir"])
    return 0


if __name__ == "__main__":
    sys.exit(interruptible(main))
