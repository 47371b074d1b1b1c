"""Measure which fixed-length representation the CVAE should generate.

For relaxed training clusters of a few sizes, reconstruct coordinates (with
``jaxsci.reconstruct.reconstruct``, identical options) from
  1. the exact per-atom fingerprint set (upper bound),
  2. the sorted-column quantile representation (``n_quantiles`` levels, step or linear)
     mapped back to N,
  3. the seed paper's max/min pooled fingerprint,
and report the RMSD to the original (best over rotations, reflections, permutations),
after EMT relaxation of the reconstruction as well, and the fraction of structures
recovered (RMSD < 0.1 A after relaxation).

    python -m experiments.pt_nanoparticles.compare_representations --sizes 13 38 --per-size 4
    python -m experiments.pt_nanoparticles.compare_representations --tiny   # smoke test

Clusters come from the experiment's data set (``Config().data``: Pt10-60, built once and
cached under ``--cache-dir``); ``--tiny`` uses the smoke-test data set (Pt10-12) and a
seconds-scale budget. Writes a run folder ``<out-root>/compare_representations-<timestamp>``
with ``results.json`` (settings, one row per cluster and representation, the summary per
representation), ``representations.png`` (RMSD per representation, before and after
relaxation) and the structures, one per row of ``results.json`` and in its order, as extxyz
(``ase.io.read(path, index=":")``), written as ``experiments.pt_nanoparticles.pipeline``
writes its own:

- ``reconstructed.extxyz``: the coordinates reconstructed from each representation
  (``info``: ``representation``, ``index`` (the original's in the data set), ``n_atoms``,
  ``rmsd`` to the original in Angstrom, ``fingerprint_error``, and
  ``reference_energy_per_atom``: the original's energy);
- ``relaxed.extxyz``: the same after EMT relaxation (``info``: ``representation``, ``index``,
  ``n_atoms``, ``rmsd`` to the original, ``energy_per_atom``, ``relax_converged``,
  ``reference_energy_per_atom``).

Energies are EMT's, in eV/atom relative to bulk, as the data set's. Prints the summary and,
as its last line, the run folder's path.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from experiments._cli import config_default, interruptible, note_run_folder
from experiments.pt_nanoparticles.config import Config, tiny_config
from jaxsci.data.pt_clusters import PtClusterConfig

__all__ = [
    "CompareConfig",
    "NotEnoughClusters",
    "build_parser",
    "compare",
    "main",
    "parse_config",
    "tiny_compare_config",
]

METHODS = ("step", "linear")
RECOVERED_RMSD = 0.1  # Angstrom, after EMT relaxation


class NotEnoughClusters(ValueError):
    """The data set holds fewer relaxed clusters of a size than ``per_size``."""


@dataclass(frozen=True)
class CompareConfig:
    """What to compare; ``validate()`` checks it before any work.

    sizes: cluster sizes (atoms) taken from the data set, each within its size range;
    per_size: relaxed clusters per size (the first ones of the data set); n_quantiles and
    methods: the quantile representations (``representation.to_quantiles``); starts,
    rounds, time_limit: the ``reconstruct`` budget per target (time_limit in seconds).
    """

    data: PtClusterConfig = field(default_factory=lambda: Config().data)
    sizes: tuple[int, ...] = (13, 38)
    per_size: int = 4
    n_quantiles: tuple[int, ...] = (24, 60)
    methods: tuple[str, ...] = METHODS
    starts: int = 4
    rounds: int = 5
    time_limit: float = 60.0
    cache_dir: str | None = None  # data set cache root (default: the data module's)
    out_root: str = "runs"
    n_workers: int | None = None  # EMT worker processes for building the data set
    progress: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first problem (nothing is built or written)."""
        self.data.validate()
        if not self.sizes:
            raise ValueError("sizes must name at least one cluster size")
        lo, hi = self.data.min_size, self.data.max_size
        outside = [n for n in self.sizes if not lo <= n <= hi]
        if outside:
            raise ValueError(f"sizes {outside} lie outside the data set's range {lo}..{hi}")
        if len(set(self.sizes)) != len(self.sizes):
            raise ValueError(f"duplicate sizes in {self.sizes}")
        if not self.n_quantiles or min(self.n_quantiles) < 1:
            raise ValueError(f"n_quantiles must be >= 1, got {self.n_quantiles}")
        if len(set(self.n_quantiles)) != len(self.n_quantiles):
            raise ValueError(f"duplicate n_quantiles in {self.n_quantiles}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must be distinct names from {METHODS}, got {self.methods}")
        for name in ("per_size", "starts", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.time_limit > 0:
            raise ValueError(f"time_limit must be > 0 s, got {self.time_limit}")
        if self.n_workers is not None and self.n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {self.n_workers}")


def tiny_compare_config(**changes: Any) -> CompareConfig:
    """A seconds-scale comparison: one Pt10 cluster of the smoke-test data set, Q = 4 (step)."""
    base = CompareConfig(
        data=tiny_config().data,
        sizes=(10,),
        per_size=1,
        n_quantiles=(4,),
        methods=("step",),
        starts=2,
        rounds=1,
        time_limit=20.0,
        n_workers=1,
        progress=False,
    )
    return dataclasses.replace(base, **changes)


def _targets(feats: np.ndarray, config: CompareConfig) -> dict[str, np.ndarray]:
    from experiments.pt_nanoparticles.representation import (
        from_quantiles,
        pooled_max_min,
        to_quantiles,
    )

    n = len(feats)
    targets = {"exact_set": feats, "pooled_max_min": pooled_max_min(feats)}
    for q in config.n_quantiles:
        for m in config.methods:
            targets[f"quantiles_{q}_{m}"] = from_quantiles(to_quantiles(feats, q, m), n, m)
    return targets


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Per representation: median RMSD before/after relaxation, recovered fraction, count."""
    summary = {}
    for name in dict.fromkeys(r["representation"] for r in rows):  # first-seen order
        sel = [r for r in rows if r["representation"] == name]
        summary[name] = {
            "median_rmsd": float(np.median([r["rmsd"] for r in sel])),
            "median_rmsd_after_relax": float(np.median([r["rmsd_after_relax"] for r in sel])),
            "recovered_lt_0.1A_after_relax": float(
                np.mean([r["rmsd_after_relax"] < RECOVERED_RMSD for r in sel])
            ),
            "median_wall_s": float(np.median([r["wall_s"] for r in sel])),
            "n": len(sel),
        }
    return summary


def plot(rows: list[dict], path: Path) -> Path:
    """RMSD to the original per representation (one point per cluster), before and after
    EMT relaxation, with the recovery threshold (PNG)."""
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(r["representation"] for r in rows))
    fig = Figure(figsize=(max(5.0, 1.1 * len(names) + 2), 4.2), layout="constrained")
    ax = fig.add_subplot()
    for j, (key, dx, marker) in enumerate((("rmsd", -0.12, "o"), ("rmsd_after_relax", 0.12, "s"))):
        xs = [names.index(r["representation"]) + dx for r in rows]
        ys = [max(r[key], 1e-4) for r in rows]
        label = "reconstructed" if j == 0 else "after EMT relaxation"
        ax.scatter(xs, ys, s=22, marker=marker, label=label, alpha=0.8)
    ax.axhline(RECOVERED_RMSD, color="k", lw=0.8, ls="--", label=f"{RECOVERED_RMSD} A")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("RMSD to the original (Angstrom)")
    ax.set_title("coordinates from each representation")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return Path(path)


def compare(config: CompareConfig) -> tuple[Path, dict[str, Any]]:
    """Run the comparison; returns ``(run folder, results)`` (also in ``results.json``).

    The config is validated, and the data set built and checked to hold ``per_size``
    relaxed clusters of every size, before the run folder is created.
    """
    import jax
    from ase.io import write
    from tqdm.auto import tqdm

    from experiments.pt_nanoparticles.pipeline import _atoms, make_descriptor
    from jaxsci.data.pt_clusters import build_pt_clusters, relax_many
    from jaxsci.metrics import structure_rmsd
    from jaxsci.reconstruct import reconstruct
    from jaxsci.train import make_run_dir, write_json

    config.validate()
    descriptor = make_descriptor(Config(data=config.data))
    data = build_pt_clusters(
        config.data,
        cache_dir=config.cache_dir,
        descriptor=descriptor,
        n_workers=config.n_workers,
        progress=config.progress,
    )
    chosen = {
        n: np.flatnonzero((data.sizes == n) & data.relaxed)[: config.per_size] for n in config.sizes
    }
    short = {n: len(idx) for n, idx in chosen.items() if len(idx) < config.per_size}
    if short:
        raise NotEnoughClusters(
            f"the data set has fewer than per_size={config.per_size} relaxed clusters of "
            f"some sizes (size: count): {short}"
        )
    run_dir = make_run_dir(config.out_root, "compare_representations")
    note_run_folder(run_dir)
    t_start = time.perf_counter()
    indices = [int(i) for n in config.sizes for i in chosen[n]]
    n_reps = 2 + len(config.n_quantiles) * len(config.methods)
    element = config.data.element
    rows, reconstructed, relaxed_frames = [], [], []
    with tqdm(total=len(indices) * n_reps, desc="reconstruct", disable=not config.progress) as bar:
        for i in indices:
            ref = data.structures[i]
            n = len(ref)
            for name, target in _targets(data.fingerprints[i], config).items():
                bar.set_postfix_str(f"Pt{n} #{i} {name}")
                t0 = time.perf_counter()
                res = reconstruct(
                    target,
                    [element] * n,
                    descriptor,
                    key=jax.random.key(i),
                    n_starts=config.starts,
                    max_rounds=config.rounds,
                    time_limit=config.time_limit,
                )
                wall = time.perf_counter() - t0
                rec = ref.copy()
                rec.positions = res.positions
                (relaxed,), energy, converged = relax_many(
                    [rec],
                    element=element,
                    bulk_energy=data.bulk_energy,
                    n_workers=1,
                    progress=False,
                )
                row = {
                    "n": n,
                    "index": i,
                    "representation": name,
                    "rmsd": structure_rmsd(res.positions, ref.positions),
                    "rmsd_after_relax": structure_rmsd(relaxed.positions, ref.positions),
                    "fingerprint_error": float(res.error),
                    "energy_per_atom_after_relax": float(energy[0]),
                    "relax_converged": bool(converged[0]),
                    "reference_energy_per_atom": float(ref.info["energy_per_atom"]),
                    "wall_s": wall,
                }
                rows.append(row)
                same = {k: row[k] for k in ("representation", "index")}
                reconstructed.append(
                    _atoms(
                        element,
                        res.positions,
                        **same,
                        n_atoms=n,
                        rmsd=row["rmsd"],
                        fingerprint_error=row["fingerprint_error"],
                        reference_energy_per_atom=row["reference_energy_per_atom"],
                    )
                )
                relaxed_frames.append(
                    _atoms(
                        element,
                        relaxed.positions,
                        **same,
                        n_atoms=n,
                        rmsd=row["rmsd_after_relax"],
                        energy_per_atom=row["energy_per_atom_after_relax"],
                        relax_converged=row["relax_converged"],
                        reference_energy_per_atom=row["reference_energy_per_atom"],
                    )
                )
                bar.update(1)
    results = {
        "config": dataclasses.asdict(config),
        "summary": summarize(rows),
        "rows": rows,
        "wall_s": time.perf_counter() - t_start,
    }
    write_json(run_dir / "results.json", results)
    write(run_dir / "reconstructed.extxyz", reconstructed, format="extxyz")
    write(run_dir / "relaxed.extxyz", relaxed_frames, format="extxyz")
    plot(rows, run_dir / "representations.png")
    return run_dir, results


def format_summary(summary: dict[str, dict]) -> str:
    lines = [
        f"{'representation':<24}{'RMSD':>9}{'relaxed':>9}{'recovered':>11}{'time s':>8}{'n':>4}"
    ]
    for name, s in summary.items():
        lines.append(
            f"{name:<24}{s['median_rmsd']:>9.3f}{s['median_rmsd_after_relax']:>9.3f}"
            f"{s['recovered_lt_0.1A_after_relax']:>11.2f}{s['median_wall_s']:>8.1f}{s['n']:>4}"
        )
    return "\n".join(lines)


def _default(name: str, none: str = "none") -> str:
    """``CompareConfig``'s default of field ``name`` for a help string (and ``--tiny``'s);
    ``none`` describes what ``None`` means."""

    def show(value: Any) -> str:
        if value is None:
            return none
        return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)

    return config_default(CompareConfig(), tiny_compare_config(), name, show)


def build_parser() -> argparse.ArgumentParser:
    """The command line; every help string shows the default (from :class:`CompareConfig`)."""
    from jaxsci.data.pt_clusters import default_cache_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--tiny",
        action="store_true",
        help="smoke-test data set and budget (default: the experiment's data set)",
    )
    p.add_argument(
        "--sizes", type=int, nargs="+", help=f"cluster sizes, atoms ({_default('sizes')})"
    )
    p.add_argument(
        "--per-size", type=int, help=f"relaxed clusters per size ({_default('per_size')})"
    )
    p.add_argument(
        "--n-quantiles",
        type=int,
        nargs="+",
        help=f"quantile levels Q ({_default('n_quantiles')})",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        help=f"quantile read-out ({_default('methods')})",
    )
    p.add_argument(
        "--starts", type=int, help=f"parallel reconstruction starts ({_default('starts')})"
    )
    p.add_argument("--rounds", type=int, help=f"basin-hopping rounds ({_default('rounds')})")
    p.add_argument(
        "--time-limit",
        type=float,
        help=f"seconds per reconstruction ({_default('time_limit')})",
    )
    workers = min(2, os.cpu_count() or 1)  # the data module's rule for n_workers=None
    p.add_argument(
        "--n-workers",
        type=int,
        help="EMT worker processes for the data set "
        f"({_default('n_workers', f'min(2, CPU count) = {workers}')})",
    )
    p.add_argument(
        "--cache-dir",
        help="data set cache root "
        f"({_default('cache_dir', str(default_cache_dir()))}: "
        "$JAXSCI_CACHE/pt_clusters if JAXSCI_CACHE is set, else under the current folder)",
    )
    p.add_argument("--out-root", help=f"where the run folder is created ({_default('out_root')})")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (default: shown)")
    return p


def parse_config(argv: list[str] | None = None) -> CompareConfig:
    """Build the config from command-line flags (``--tiny`` first, then the flags given);
    invalid flags or output folders exit with status 2 before any work."""
    from jaxsci.data.pt_clusters import default_cache_dir, is_cached
    from jaxsci.train import check_output_dir

    p = build_parser()
    a = p.parse_args(argv)
    base = tiny_compare_config(progress=True) if a.tiny else CompareConfig()
    given = {
        "sizes": tuple(a.sizes) if a.sizes is not None else None,
        "per_size": a.per_size,
        "n_quantiles": tuple(a.n_quantiles) if a.n_quantiles is not None else None,
        "methods": tuple(a.methods) if a.methods is not None else None,
        "starts": a.starts,
        "rounds": a.rounds,
        "time_limit": a.time_limit,
        "n_workers": a.n_workers,
        "cache_dir": a.cache_dir,
        "out_root": a.out_root,
    }
    config = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
    if a.no_progress:
        config = dataclasses.replace(config, progress=False)
    try:
        config.validate()
        check_output_dir(config.out_root)  # creates nothing
        cache = config.cache_dir if config.cache_dir is not None else default_cache_dir()
        if not is_cached(config.data, cache):  # a complete cache is only read
            check_output_dir(cache)
    except ValueError as err:
        p.error(str(err))  # exit status 2, before any work or run folder
    return config


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    try:
        run_dir, results = compare(config)
    except NotEnoughClusters as err:  # found once the data set is built; no run folder yet
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_summary(results["summary"]))
    print(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(interruptible(main))
