"""``python -m experiments.hea_order.run``: the VAE order parameter of MoNbTaW.

Runs :func:`train_and_evaluate` with the default config (flags override a few fields),
prints a short summary table, and prints the run folder's path as the last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from experiments.hea_order.config import Config


def parse_config(argv: list[str] | None = None) -> tuple[Config, str | None]:
    """Build the config from command-line flags; returns ``(config, run_dir)``."""
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-cells", type=int, default=d.n_cells, help="BCC cells per edge")
    p.add_argument("--t-min", type=float, default=d.t_min, help="lowest temperature (K)")
    p.add_argument("--t-max", type=float, default=d.t_max, help="highest temperature (K)")
    p.add_argument("--n-temperatures", type=int, default=d.n_temperatures)
    p.add_argument("--n-burn", type=int, default=d.n_burn, help="burn-in sweeps")
    p.add_argument("--n-samples", type=int, default=d.n_samples, help="samples per temperature")
    p.add_argument("--sample-every", type=int, default=d.sample_every, help="sweeps")
    p.add_argument("--latent-dim", type=int, default=d.latent_dim)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--beta", type=float, default=d.beta, help="KL weight")
    p.add_argument(
        "--vae-window", nargs=2, type=float, action="append", metavar=("LOW", "HIGH"),
        help="train another VAE on the temperatures in [LOW, HIGH] K (repeatable; default "
        f"{' '.join(f'{lo:.0f}-{hi:.0f}' for lo, hi in d.vae_windows)})",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out-root", default=d.out_root, help="where run folders are created")
    p.add_argument("--run-dir", default=None, help="run folder to write (default: fresh)")
    p.add_argument("--no-samples", action="store_true", help="do not write samples.npz")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    a = p.parse_args(argv)
    config = dataclasses.replace(
        d,
        n_cells=a.n_cells,
        t_min=a.t_min,
        t_max=a.t_max,
        n_temperatures=a.n_temperatures,
        n_burn=a.n_burn,
        n_samples=a.n_samples,
        sample_every=a.sample_every,
        latent_dim=a.latent_dim,
        epochs=a.epochs,
        beta=a.beta,
        seed=a.seed,
        vae_windows=d.vae_windows if a.vae_window is None else tuple(map(tuple, a.vae_window)),
        out_root=a.out_root,
        save_samples=not a.no_samples,
        progress=not a.no_progress,
    )
    return config, a.run_dir


def main(argv: list[str] | None = None) -> int:
    config, run_dir = parse_config(argv)
    try:
        config.validate()
    except ValueError as err:
        print(f"error: bad config: {err}", file=sys.stderr)
        return 2
    from experiments.hea_order.pipeline import format_summary, train_and_evaluate

    results = train_and_evaluate(config, run_dir)
    print()
    print(format_summary(results))
    print(results["run_dir"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
