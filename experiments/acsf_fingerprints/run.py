"""Compute and print ACSF fingerprints of a few Pt nanoparticles (ase.cluster).

    python -m experiments.acsf_fingerprints.run [--r-cut 6.0] [--rattle 0.05] [--out-root runs]

Per-atom ACSF (DScribe layout) are pooled by max and min over atoms into one fixed-length
fingerprint per particle; the script prints sizes, feature counts and the fingerprints, and
writes a run folder ``<out-root>/acsf_fingerprints-<timestamp>`` with ``results.json`` (the
settings and each particle's pooled fingerprint), ``per_atom.npz`` (the per-atom rows),
``particles.extxyz`` (the structures) and ``fingerprints.png``; its path is the last line.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from ase.cluster import Decahedron, Icosahedron, Octahedron

from jaxsci.descriptors import ACSF, pool

DESCRIPTION = (
    "Compute and print ACSF fingerprints of a few Pt nanoparticles (ase.cluster). Per-atom "
    "ACSF (DScribe layout) are pooled by max and min over atoms into one fixed-length "
    "fingerprint per particle."
)
G2 = [[eta, rs] for eta in (0.01, 0.1, 0.5, 1.0) for rs in (0.0, 3.0)]
G4 = [[eta, zeta, lam] for eta in (0.001, 0.01, 0.05) for zeta in (1, 4) for lam in (1, -1)]


def particles(rattle: float, seed: int = 0) -> dict:
    """A few Pt particles (Angstrom), lightly rattled so that they are not perfect."""
    built = [
        ("icosahedron", Icosahedron("Pt", 2)),
        ("icosahedron", Icosahedron("Pt", 3)),
        ("decahedron", Decahedron("Pt", 2, 2, 1)),
        ("octahedron", Octahedron("Pt", 4, 1)),
    ]
    shapes = {}
    for i, (kind, atoms) in enumerate(built):
        atoms.rattle(rattle, seed=seed + i)
        shapes[f"Pt{len(atoms)} {kind}"] = atoms
    return shapes


def build_parser() -> argparse.ArgumentParser:
    """The command line; every help string shows the default."""
    p = argparse.ArgumentParser(description=DESCRIPTION)
    p.add_argument(
        "--r-cut", type=float, default=6.0, help="cutoff radius, Angstrom (default: %(default)s)"
    )
    p.add_argument(
        "--rattle",
        type=float,
        default=0.05,
        help="rattle amplitude, Angstrom (default: %(default)s)",
    )
    p.add_argument(
        "--out-root", default="runs", help="parent of the run folder (default: %(default)s)"
    )
    return p


def main(argv: list[str] | None = None) -> dict[str, np.ndarray]:
    from jaxsci.train import check_output_dir

    p = build_parser()
    args = p.parse_args(argv)
    if not 0 < args.r_cut < math.inf:  # before any work (nan too)
        p.error(f"--r-cut must be a finite number > 0 Angstrom, got {args.r_cut}")
    if not 0 <= args.rattle < math.inf:
        p.error(f"--rattle must be a finite number >= 0 Angstrom, got {args.rattle}")
    try:  # creates nothing
        check_output_dir(args.out_root)
    except ValueError as err:
        p.error(str(err))

    acsf = ACSF(["Pt"], args.r_cut, g2_params=G2, g4_params=G4)
    print(acsf)
    shapes = particles(args.rattle)
    per_atom = acsf.create(list(shapes.values()))
    fingerprints = {}
    np.set_printoptions(precision=3, suppress=True, linewidth=100)
    for (name, atoms), feats in zip(shapes.items(), per_atom, strict=True):
        fp = np.asarray(pool(feats, ops=("max", "min")))
        fingerprints[name] = fp
        print(
            f"\n{name}: {len(atoms)} atoms, per-atom features {feats.shape}, "
            f"fingerprint (max | min over atoms) length {fp.size}"
        )
        print(fp)
    run_dir = write_run_folder(args, shapes, per_atom, fingerprints)
    print(run_dir)
    return fingerprints


def write_run_folder(
    args: argparse.Namespace, shapes: dict, per_atom: list, fingerprints: dict
) -> Path:
    """The run folder: results.json, per_atom.npz, particles.extxyz, fingerprints.png."""
    import ase.io
    from matplotlib.figure import Figure

    from jaxsci.train import make_run_dir, write_json

    run_dir = make_run_dir(args.out_root, "acsf_fingerprints")
    write_json(
        run_dir / "results.json",
        {
            "r_cut_A": args.r_cut,
            "rattle_A": args.rattle,
            "g2_params": G2,
            "g4_params": G4,
            "particles": {
                name: {"n_atoms": len(atoms), "fingerprint_max_min": fingerprints[name]}
                for name, atoms in shapes.items()
            },
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


if __name__ == "__main__":
    main()
