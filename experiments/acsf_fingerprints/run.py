"""Compute and print ACSF fingerprints of a few Pt nanoparticles (ase.cluster).

    python -m experiments.acsf_fingerprints.run [--r-cut 6.0] [--rattle 0.05] [--out-root runs]
    python -m experiments.acsf_fingerprints.run --tiny   # three small particles, seconds

Per-atom ACSF (DScribe layout) are pooled by max and min over atoms into one fixed-length
fingerprint per particle; the script prints sizes, feature counts and the fingerprints, and
writes a run folder ``<out-root>/acsf_fingerprints-<timestamp>`` with ``results.json`` (the
settings and each particle's pooled fingerprint), ``per_atom.npz`` (the per-atom rows),
``particles.extxyz`` (the structures) and ``fingerprints.png``; its path is the last line.
Every setting is a field of :class:`~experiments.acsf_fingerprints.config.Config`; the flags
override a few.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from experiments._cli import config_default, interruptible, note_run_folder
from experiments.acsf_fingerprints.config import (
    ELEMENT,
    Config,
    build_particle,
    particle_name,
    tiny_config,
)

DESCRIPTION = (
    "Compute and print ACSF fingerprints of a few Pt nanoparticles (ase.cluster). Per-atom "
    "ACSF (DScribe layout) are pooled by max and min over atoms into one fixed-length "
    "fingerprint per particle."
)
#: The default functions, as lists (DScribe's layout): ``[eta, R_s]`` and
#: ``[eta, zeta, lambda]`` rows.
G2 = [list(row) for row in Config().g2_params]
G4 = [list(row) for row in Config().g4_params]
#: The flag of each config field that has one (a bad value is reported in the flag's words).
FLAGS = {"r_cut": "--r-cut", "rattle": "--rattle", "seed": "--seed", "out_root": "--out-root"}


def particles(rattle: float, seed: int = 0, shapes: tuple | None = None) -> dict:
    """The Pt particles ``shapes`` (``Config.particles``, ``None``: the default ones;
    Angstrom) by name, particle ``i`` rattled with seed ``seed + i`` so that they are not
    perfect."""
    out = {}
    for i, (kind, params) in enumerate(Config().particles if shapes is None else shapes):
        atoms = build_particle(kind, tuple(params))
        atoms.rattle(rattle, seed=seed + i)
        out[particle_name(kind, len(atoms))] = atoms
    return out


def descriptor(config: Config):
    """The experiment's ACSF: Pt only, the config's cutoff and G2 and G4 functions."""
    from jaxsci.descriptors import ACSF

    return ACSF(
        [ELEMENT],
        config.r_cut,
        g2_params=[list(row) for row in config.g2_params],
        g4_params=[list(row) for row in config.g4_params],
    )


def evaluate(config: Config) -> tuple[Path, dict[str, np.ndarray]]:
    """Fingerprint the config's particles, print them, write the run folder under
    ``config.out_root`` (``ValueError`` before any work if the config is bad).

    Returns ``(run_dir, fingerprints)``: each particle's pooled fingerprint by name."""
    from jaxsci.descriptors import pool

    config.validate()
    acsf = descriptor(config)
    print(acsf)
    shapes = particles(config.rattle, config.seed, config.particles)
    per_atom = acsf.create(list(shapes.values()))
    fingerprints = {}
    with np.printoptions(precision=3, suppress=True, linewidth=100):
        for (name, atoms), feats in zip(shapes.items(), per_atom, strict=True):
            fp = np.asarray(pool(feats, ops=("max", "min")))
            fingerprints[name] = fp
            print(
                f"\n{name}: {len(atoms)} atoms, per-atom features {feats.shape}, "
                f"fingerprint (max | min over atoms) length {fp.size}"
            )
            print(fp)
    run_dir = write_run_folder(config, shapes, per_atom, fingerprints)
    return run_dir, fingerprints


def write_run_folder(config: Config, shapes: dict, per_atom: list, fingerprints: dict) -> Path:
    """The run folder: results.json, per_atom.npz, particles.extxyz, fingerprints.png."""
    import ase.io
    from matplotlib.figure import Figure

    from jaxsci.train import make_run_dir, write_json

    run_dir = make_run_dir(config.out_root, config.run_name)
    note_run_folder(run_dir)
    write_json(
        run_dir / "results.json",
        {
            "r_cut_A": config.r_cut,
            "rattle_A": config.rattle,
            "g2_params": [list(row) for row in config.g2_params],
            "g4_params": [list(row) for row in config.g4_params],
            "particles": {
                name: {"n_atoms": len(atoms), "fingerprint_max_min": fingerprints[name]}
                for name, atoms in shapes.items()
            },
            "config": dataclasses.asdict(config),
        },
    )
    rows = {name.replace(" ", "_"): f for name, f in zip(shapes, per_atom, strict=True)}
    np.savez(run_dir / "per_atom.npz", **rows)
    ase.io.write(run_dir / "particles.extxyz", list(shapes.values()), format="extxyz")
    fig = Figure(figsize=(8, 3))
    ax = fig.add_subplot()
    image = ax.imshow(np.stack(list(fingerprints.values())), aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(fingerprints)), list(fingerprints))
    ax.set_xlabel("pooled feature (max over atoms, then min)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(run_dir / "fingerprints.png", dpi=120)
    return run_dir


def _default(name: str, show: Callable[[Any], str] = str) -> str:
    """``Config``'s default of field ``name`` for a help string, and ``--tiny``'s if other."""
    return config_default(Config(), tiny_config(), name, show)


def build_parser() -> argparse.ArgumentParser:
    """The command line; every help string shows the default (from :class:`Config`, and
    :func:`~experiments.acsf_fingerprints.config.tiny_config` with ``--tiny``)."""
    d, t = Config(), tiny_config()
    sizes = lambda c: ", ".join(name.split()[0] for name in particles(0.0, 0, c.particles))
    p = argparse.ArgumentParser(description=DESCRIPTION)
    p.add_argument(
        "--tiny",
        action="store_true",
        help=f"smoke-test size, seconds: the particles {sizes(t)} (default: {sizes(d)}); the "
        "flags below override it",
    )
    p.add_argument(
        "--r-cut", type=float, default=None, help=f"cutoff radius, Angstrom ({_default('r_cut')})"
    )
    p.add_argument(
        "--rattle",
        type=float,
        default=None,
        help="rattle amplitude (standard deviation of each coordinate's displacement), "
        f"Angstrom ({_default('rattle')})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"rattle seed of the first particle, the next ones count up ({_default('seed')})",
    )
    p.add_argument(
        "--out-root", default=None, help=f"parent of the run folder ({_default('out_root')})"
    )
    return p


def config_from_args(a: argparse.Namespace) -> Config:
    """The config the parsed flags ask for (not validated): :class:`Config`, or
    :func:`~experiments.acsf_fingerprints.config.tiny_config` with ``--tiny``, with the
    flags given replacing its fields."""
    base = tiny_config() if a.tiny else Config()
    given = {"r_cut": a.r_cut, "rattle": a.rattle, "seed": a.seed, "out_root": a.out_root}
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def _in_flag_words(err: ValueError) -> str:
    """``Config.validate``'s message, its leading field name replaced by its flag."""
    field, _, rest = str(err).partition(" ")
    return f"{FLAGS[field]} {rest}" if field in FLAGS else f"bad config: {err}"


def main(argv: list[str] | None = None) -> dict[str, np.ndarray]:
    """Parse the flags, check them and the output root (status 2 before any work), run
    :func:`evaluate` and print the run folder last; returns the fingerprints by name."""
    from jaxsci.train import check_output_dir

    p = build_parser()
    config = config_from_args(p.parse_args(argv))
    try:
        config.validate()
    except ValueError as err:
        p.error(_in_flag_words(err))
    try:  # creates nothing
        check_output_dir(config.out_root)
    except ValueError as err:
        p.error(str(err))
    run_dir, fingerprints = evaluate(config)
    print(run_dir)
    return fingerprints


if __name__ == "__main__":
    interruptible(main)
