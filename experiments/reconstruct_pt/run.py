"""Reconstruct EMT-relaxed Pt clusters from their per-atom ACSF fingerprints.

    .venv/bin/python -m experiments.reconstruct_pt.run --sizes 13 19 --shapes random

Writes a run folder with ``results.json`` (per cluster: fingerprint error, RMSD, time,
success; per size: success rate, median RMSD and time), ``reconstructed.extxyz``
(recovered structures, aligned on the originals, with ``info`` fields) and
``summary.png`` (success rate and time per size).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from experiments._cli import interruptible, note_run_folder
from experiments.reconstruct_pt.config import SHAPES, Config


def build_clusters(config: Config):
    """EMT-relaxed Pt clusters: rattled seeds of every shape and size, relaxed with FIRE.

    ``info["shape"]`` names the seed shape; for ``complete`` the ``ase.cluster`` shape
    with its parameters, e.g. ``decahedron(3,1,0)``.
    """
    from ase import Atoms

    from jaxsci.data.pt_clusters import lattice_constant, relax, seed_cluster
    from jaxsci.geometry import complete_motifs

    a_pt = lattice_constant("Pt")  # Angstrom
    out = []
    for n in config.sizes:
        for shape in config.shapes:
            if shape == "complete":
                seeds = [
                    (name, Atoms(f"Pt{n}", positions=pos)) for name, pos in complete_motifs(n, a_pt)
                ]
            else:
                seeds = [(shape, None)]
            for name, ideal in seeds:
                for k in range(config.per_shape):
                    seed = config.seed + 1000 * k + n
                    atoms = seed_cluster(shape, n, seed=seed) if ideal is None else ideal.copy()
                    atoms.rattle(0.1, seed=seed)
                    relaxed, _, _ = relax(atoms)
                    relaxed.info.update(shape=name, index=k)
                    out.append(relaxed)
    return out


def descriptor(config: Config):
    """The experiment's fingerprint: ACSF of Pt with the config's G2 (Rs = 0) and G4 sets."""
    from jaxsci.descriptors import ACSF

    return ACSF(
        ["Pt"],
        config.r_cut,
        g2_params=[[eta, 0.0] for eta in config.g2_etas],
        g4_params=[list(p) for p in config.g4_params],
    )


def train_and_evaluate(config: Config, run_dir: Path) -> dict:
    """Reconstruct every cluster of ``config``; write results into ``run_dir``; return them."""
    import jax
    from ase.io import write
    from tqdm.auto import tqdm

    from jaxsci.metrics import align, fingerprint_error
    from jaxsci.reconstruct import reconstruct
    from jaxsci.train.run_dir import write_json

    config.validate()
    acsf = descriptor(config)
    clusters = build_clusters(config)
    records, frames = [], []
    key = jax.random.key(config.seed)
    for atoms in tqdm(clusters, desc="reconstruct", disable=not config.progress):
        key, sub = jax.random.split(key)
        target = acsf.create(atoms)
        t0 = time.perf_counter()
        res = reconstruct(
            target,
            atoms.get_chemical_symbols(),
            acsf,
            key=sub,
            n_starts=config.n_starts,
            time_limit=config.time_limit,
        )
        wall = time.perf_counter() - t0
        rec_atoms = atoms.copy()
        rec_atoms.positions = res.positions
        err = fingerprint_error(acsf.create(rec_atoms), target)
        al = align(res.positions, atoms.positions)
        rec = {
            "n_atoms": len(atoms),
            "shape": atoms.info["shape"],
            "fingerprint_error": err,
            "rmsd": al.rmsd,
            "time_s": wall,
            "rounds": res.n_rounds,
            "success": bool(err < 1e-3 and al.rmsd < 0.1),
        }
        records.append(rec)
        rec_atoms.positions = al.aligned
        rec_atoms.info.clear()
        rec_atoms.info.update({k: v for k, v in rec.items()})
        frames.append(rec_atoms)
    per_size = {}
    for n in config.sizes:
        rs = [r for r in records if r["n_atoms"] == n]
        if not rs:  # e.g. only "complete" shapes, none of n atoms
            continue
        per_size[str(n)] = {
            "success_rate": float(np.mean([r["success"] for r in rs])),
            "median_rmsd": float(np.median([r["rmsd"] for r in rs])),
            "median_time_s": float(np.median([r["time_s"] for r in rs])),
            "count": len(rs),
        }
    results = {
        "config": config.to_dict(),
        "success_rate": float(np.mean([r["success"] for r in records])),
        "per_size": per_size,
        "clusters": records,
    }
    write_json(run_dir / "results.json", results)
    write(run_dir / "reconstructed.extxyz", frames, format="extxyz")
    _plot(per_size, run_dir / "summary.png")
    return results


def _plot(per_size: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(n) for n in per_size]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.plot(sizes, [per_size[str(n)]["success_rate"] for n in sizes], "o-")
    a1.set(xlabel="atoms", ylabel="success rate", ylim=(-0.05, 1.05))
    a2.plot(sizes, [per_size[str(n)]["median_time_s"] for n in sizes], "o-")
    a2.set(xlabel="atoms", ylabel="median time per cluster (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _words(values) -> str:
    """A default as it is typed on the command line: ``8 13 19`` for a list."""
    return " ".join(map(str, values)) if isinstance(values, list | tuple) else str(values)


def parse_config(argv: list[str] | None = None) -> Config:
    """The command line's :class:`Config`, checked (with ``--out-root``) before any work.

    Flags left out keep :class:`Config`'s defaults, which ``--help`` shows. A bad value
    exits through ``argparse``'s ``error:`` (status 2) and creates nothing."""
    d = Config()
    ap = argparse.ArgumentParser(
        description="Reconstruct EMT-relaxed Pt clusters from their per-atom ACSF fingerprints."
    )
    ap.add_argument(
        "--sizes", type=int, nargs="+", help=f"atom counts, >= 2 (default: {_words(d.sizes)})"
    )
    ap.add_argument(
        "--shapes",
        nargs="+",
        help=f"seed shapes, any of {_words(SHAPES)} "
        f"(default: {'all' if d.shapes == SHAPES else _words(d.shapes)})",
    )
    ap.add_argument(
        "--per-shape", type=int, help=f"clusters per size and shape (default: {d.per_shape})"
    )
    ap.add_argument(
        "--time-limit",
        type=float,
        help=f"seconds per reconstruction, a soft limit: the first round compiles "
        f"(default: {d.time_limit})",
    )
    ap.add_argument(
        "--n-starts", type=int, help=f"parallel starts per reconstruction (default: {d.n_starts})"
    )
    ap.add_argument(
        "--out-root",
        "--out-dir",
        dest="out_dir",
        metavar="DIR",
        help=f"parent of the run folder (default: {d.out_dir})",
    )
    ap.add_argument(
        "--seed", type=int, help=f"seed of clusters and searches, >= 0 (default: {d.seed})"
    )
    ap.add_argument(
        "--no-progress", action="store_true", help="hide the progress bar (default: shown)"
    )
    args = ap.parse_args(argv)
    updates = {
        "sizes": tuple(args.sizes) if args.sizes else None,
        "shapes": tuple(args.shapes) if args.shapes else None,
        "per_shape": args.per_shape,
        "time_limit": args.time_limit,
        "n_starts": args.n_starts,
        "out_dir": args.out_dir,
        "seed": args.seed,
        "progress": False if args.no_progress else None,
    }
    config = replace(d, **{k: v for k, v in updates.items() if v is not None})
    from jaxsci.train.run_dir import check_output_dir

    try:  # fail before any work or run folder
        config.validate()
        check_output_dir(config.out_dir)
    except ValueError as err:
        ap.error(str(err))
    return config


def main(argv: list[str] | None = None) -> Path:
    config = parse_config(argv)
    from jaxsci.train.run_dir import make_run_dir

    run_dir = make_run_dir(config.out_dir, "reconstruct_pt")
    note_run_folder(run_dir)
    results = train_and_evaluate(config, run_dir)
    for n, s in results["per_size"].items():
        print(
            f"N={n:>3}: success {s['success_rate']:.2f}, median RMSD {s['median_rmsd']:.3f} A, "
            f"median time {s['median_time_s']:.1f} s"
        )
    print(run_dir)
    return run_dir


if __name__ == "__main__":
    interruptible(main)
