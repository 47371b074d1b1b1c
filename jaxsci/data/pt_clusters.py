"""Pt (fcc metal) nanoparticle data set: ase.cluster seeds, EMT relaxation and MD snapshots.

For every size ``N`` in ``[min_size, max_size]`` (step ``size_step``) and every seed shape,
a seed cluster is built, rattled, relaxed with EMT (FIRE), and then ``md_temperatures`` x
``md_snapshots`` off-equilibrium snapshots are taken from short Langevin MD runs started at
the relaxed structure. Seed shapes:

- ``icosahedron``, ``decahedron``, ``octahedron``, ``wulff``: ``ase.cluster`` shapes
  large enough to hold ``N`` atoms, trimmed to the ``N`` atoms nearest a slightly shifted
  centroid (random shift and tie-breaking make each seed different);
- ``fcc_ball``: the ``N`` fcc lattice sites nearest a random point of the unit cell;
- ``random``: ``N`` atoms placed at random in a sphere of bulk density, each new one at
  ``0.85-1.15 d_NN`` from its nearest placed atom (random sequential addition).

Energies are per atom and relative to bulk fcc at the EMT equilibrium lattice constant
(eV/atom). The calculator is asap3's EMT when importable (much faster) and ase's EMT
otherwise; the two differ by ~1 meV/atom, so the cache key includes which one was used.

Everything is a pure function of the config: task ``i`` draws its random numbers from
``numpy.random.default_rng([seed, i])``, so the result does not depend on the number of
worker processes. The data set is cached under ``cache_dir/<hash of config>/`` as
``structures.extxyz`` plus ``meta.json``; per-atom fingerprints for a descriptor are cached
beside it (``fingerprints-<hash>.npz``), so a second run reuses both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, reference_states

from jaxsci._checks import is_int_at_least
from jaxsci.geometry.motifs import MOTIFS, motif_positions

__all__ = [
    "PtClusterConfig",
    "PtClusterDataset",
    "bulk_energy_per_atom",
    "build_pt_clusters",
    "emt_calculator",
    "nearest_neighbour_distance",
    "relax",
    "relax_many",
    "seed_cluster",
]

SHAPES = ("icosahedron", "decahedron", "octahedron", "wulff", "fcc_ball", "random")
EMT_FCC_ELEMENTS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")  # fcc metals ase's EMT supports
_CACHE_VERSION = 1


@dataclass(frozen=True)
class PtClusterConfig:
    """What to build (sizes in atoms, lengths in Angstrom, temperatures in K, time in fs)."""

    element: str = "Pt"
    min_size: int = 10
    max_size: int = 60
    size_step: int = 1
    shapes: tuple[str, ...] = ("icosahedron", "decahedron", "octahedron", "fcc_ball", "random")
    rattle: float = 0.05  # std of the Gaussian displacement applied to seeds (Angstrom)
    fmax: float = 0.05  # FIRE convergence (eV/Angstrom)
    max_relax_steps: int = 1000
    md_temperatures: tuple[float, ...] = (300.0, 800.0)
    md_snapshots: int = 2  # snapshots per temperature, every md_interval steps
    md_interval: int = 20
    md_timestep: float = 5.0  # fs
    md_friction: float = 0.02  # 1/fs
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first problem; does no work."""
        if self.element not in EMT_FCC_ELEMENTS:
            raise ValueError(
                f"unknown element {self.element!r}: EMT clusters support {EMT_FCC_ELEMENTS}"
            )
        for name, low in (
            ("min_size", 2),
            ("max_size", 2),
            ("size_step", 1),
            ("max_relax_steps", 1),
            ("md_snapshots", 0),
            ("md_interval", 1),
        ):
            value = getattr(self, name)
            if not is_int_at_least(value, low):
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) is below min_size ({self.min_size})")
        if self.size_step < 1:
            raise ValueError(f"size_step must be >= 1, got {self.size_step}")
        unknown = [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise ValueError(f"unknown shape(s) {unknown}: choose from {SHAPES}")
        if not self.shapes:
            raise ValueError("empty data set: no seed shapes given")
        if len(set(self.shapes)) != len(self.shapes):
            raise ValueError(f"duplicate shapes in {self.shapes}")
        if self.rattle < 0 or self.fmax <= 0 or self.max_relax_steps < 1:
            raise ValueError("rattle must be >= 0, fmax > 0 and max_relax_steps >= 1")
        if any(t <= 0 for t in self.md_temperatures):
            raise ValueError(f"md_temperatures must be > 0 K, got {self.md_temperatures}")
        if self.md_snapshots < 0 or self.md_interval < 1 or self.md_timestep <= 0:
            raise ValueError("md_snapshots >= 0, md_interval >= 1 and md_timestep > 0 required")

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(range(self.min_size, self.max_size + 1, self.size_step))

    def cache_key(self, calculator: str) -> str:
        blob = json.dumps(
            {"v": _CACHE_VERSION, "calc": calculator, **dataclasses.asdict(self)}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class PtClusterDataset:
    """The built data set.

    ``structures``: list of ``ase.Atoms`` (no calculator); each has ``info`` keys
    ``energy_per_atom`` (eV/atom relative to bulk), ``kind`` ("relaxed" or "md"),
    ``shape``, ``temperature_K`` (0 for relaxed) and ``task``. ``energies``/``sizes``/
    ``relaxed`` are NumPy arrays over structures. ``fingerprints``: per-atom descriptor
    rows (list of ``[N_i, F]``) when built with a descriptor, else ``None``.
    """

    config: PtClusterConfig
    structures: list[Atoms]
    bulk_energy: float  # eV/atom, EMT bulk fcc at its equilibrium lattice constant
    calculator: str
    cache_dir: Path | None
    fingerprints: list[np.ndarray] | None = None

    @property
    def energies(self) -> np.ndarray:
        return np.array([a.info["energy_per_atom"] for a in self.structures], dtype=np.float64)

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(a) for a in self.structures], dtype=np.int64)

    @property
    def relaxed(self) -> np.ndarray:
        return np.array([a.info["kind"] == "relaxed" for a in self.structures], dtype=bool)

    def __len__(self) -> int:
        return len(self.structures)


# --------------------------------------------------------------------------- EMT helpers


def emt_calculator(prefer_asap: bool = True) -> tuple[Any, str]:
    """``(calculator, name)``: asap3's EMT when importable and wanted, else ase's EMT."""
    if prefer_asap:
        try:
            from asap3 import EMT as AsapEMT  # noqa: N811
        except ImportError:
            pass
        else:
            return AsapEMT(), "asap3.EMT"
    from ase.calculators.emt import EMT

    return EMT(), "ase.EMT"


def _attach(atoms: Atoms, calc: Any, name: str) -> None:
    if name.startswith("asap3"):
        # asap3 needs a non-degenerate cell even for free clusters
        atoms.pbc = False
        atoms.center(vacuum=12.0)
    atoms.calc = calc


def lattice_constant(element: str = "Pt") -> float:
    """ase's reference fcc lattice constant ``a`` (Angstrom) of ``element``, e.g. 3.92 for Pt.

    ValueError for an unknown chemical symbol and for an element whose reference state is
    not fcc (ase's ``a`` of bcc Fe or diamond Si is no fcc lattice constant).
    """
    z = atomic_numbers.get(element) if isinstance(element, str) else None
    if z is None:
        raise ValueError(f"unknown chemical element {element!r} (give a symbol such as 'Pt')")
    ref = reference_states[z] or {}
    if ref.get("symmetry") != "fcc" or "a" not in ref:
        raise ValueError(
            f"{element} has no fcc reference state in ase (it is {ref.get('symmetry')}): "
            "no fcc lattice constant"
        )
    return float(ref["a"])


def nearest_neighbour_distance(element: str) -> float:
    """Bulk fcc nearest-neighbour distance ``a / sqrt(2)`` (Angstrom), e.g. 2.77 for Pt."""
    return lattice_constant(element) / np.sqrt(2.0)


def bulk_energy_per_atom(element: str = "Pt", prefer_asap: bool = True) -> float:
    """EMT energy per atom (eV) of bulk fcc ``element`` at the EMT equilibrium lattice constant."""
    from ase.build import bulk
    from scipy.optimize import minimize_scalar

    calc, name = emt_calculator(prefer_asap)
    a0 = lattice_constant(element)

    def energy(a: float) -> float:
        cell = bulk(element, "fcc", a=a, cubic=True)
        cell.calc = calc
        return cell.get_potential_energy() / len(cell)

    res = minimize_scalar(energy, bracket=(0.97 * a0, a0, 1.03 * a0), tol=1e-8)
    return float(res.fun)


def relax(
    atoms: Atoms, *, fmax: float = 0.05, steps: int = 1000, prefer_asap: bool = True
) -> tuple[Atoms, bool, int]:
    """Relax a copy of ``atoms`` with EMT + FIRE; returns ``(relaxed, converged, n_steps)``.

    The returned atoms keep the input's cell/pbc and carry no calculator.
    """
    from ase.optimize import FIRE

    calc, name = emt_calculator(prefer_asap)
    work = atoms.copy()
    _attach(work, calc, name)
    opt = FIRE(work, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    out = atoms.copy()
    out.positions = work.positions - work.positions.mean(0) + atoms.positions.mean(0)
    return out, converged, int(opt.nsteps)


def _relax_task(args: tuple[np.ndarray, str, float, int, float]) -> tuple[np.ndarray, float, bool]:
    positions, element, fmax, steps, e_bulk = args
    atoms = Atoms([element] * len(positions), positions=positions)
    out, converged, _ = relax(atoms, fmax=fmax, steps=steps)
    calc, name = emt_calculator()
    probe = out.copy()
    _attach(probe, calc, name)
    return out.positions, probe.get_potential_energy() / len(out) - e_bulk, converged


def relax_many(
    structures: Sequence[Atoms],
    *,
    element: str = "Pt",
    fmax: float = 0.05,
    steps: int = 1000,
    bulk_energy: float | None = None,
    n_workers: int | None = None,
    progress: bool = True,
) -> tuple[list[Atoms], np.ndarray, np.ndarray]:
    """Relax clusters with EMT + FIRE in worker processes.

    Every cluster must consist of ``element`` (the energies are relative to its bulk).
    Returns ``(relaxed atoms, energies [n] in eV/atom relative to bulk, converged [n])``.
    Clusters with non-finite positions are returned unchanged with energy NaN.
    """
    from tqdm.auto import tqdm

    if n_workers is not None and n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    for i, a in enumerate(structures):
        other = sorted(set(a.get_chemical_symbols()) - {element})
        if other:  # it was relaxed as element, silently
            raise ValueError(
                f"relax_many relaxes {element} clusters (element=...); structure {i} holds {other}"
            )

    e_bulk = bulk_energy if bulk_energy is not None else bulk_energy_per_atom(element)
    tasks = [(np.asarray(a.positions), element, fmax, steps, e_bulk) for a in structures]
    finite = [bool(np.all(np.isfinite(t[0]))) for t in tasks]
    todo = [t for t, ok in zip(tasks, finite, strict=True) if ok]
    workers = min(n_workers if n_workers is not None else min(2, os.cpu_count() or 1), len(todo))
    bar = tqdm(total=len(todo), desc="EMT relax", disable=not progress)
    results = []
    if workers <= 1:
        for t in todo:
            results.append(_relax_task(t))
            bar.update()
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for r in pool.imap(_relax_task, todo, chunksize=1):
                results.append(r)
                bar.update()
    bar.close()
    it = iter(results)
    relaxed, energies, converged = [], [], []
    for a, ok in zip(structures, finite, strict=True):
        if ok:
            pos, e, conv = next(it)
            b = a.copy()
            b.positions = pos
        else:
            b, e, conv = a.copy(), float("nan"), False
        b.calc = None
        relaxed.append(b)
        energies.append(e)
        converged.append(conv)
    return relaxed, np.asarray(energies, float), np.asarray(converged, bool)


# --------------------------------------------------------------------------- seeds


def _shape_positions(shape: str, element: str, n: int, rng: np.random.Generator) -> np.ndarray:
    a = lattice_constant(element)
    if shape in MOTIFS:
        return motif_positions(shape, n, a, rng)
    if shape == "random":
        d_nn = a / np.sqrt(2.0)
        # random sequential addition in a sphere of about bulk density: every new atom keeps
        # >= 0.85 d_NN from the others and bonds (< 1.15 d_NN) to one of them, so the seed
        # is one connected, compact, disordered cluster
        radius = 0.5 * d_nn * (n / 0.74) ** (1.0 / 3.0)
        pts = np.zeros((1, 3))
        tries = 0
        while len(pts) < n:
            tries += 1
            if tries > 500:
                radius *= 1.05
                tries = 0
            v = rng.uniform(-radius, radius, 3)
            if v @ v > radius**2:
                continue
            d = np.linalg.norm(pts - v, axis=1)
            if d.min() < 0.85 * d_nn or d.min() > 1.15 * d_nn:
                continue
            pts = np.vstack([pts, v])
            tries = 0
        return pts - pts.mean(0)
    raise ValueError(f"unknown shape {shape!r}")  # validated earlier


def seed_cluster(shape: str, n: int, element: str = "Pt", *, seed: int = 0) -> Atoms:
    """An unrelaxed ``n``-atom seed cluster of the given shape (see the module docstring)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: choose from {SHAPES}")
    if element not in EMT_FCC_ELEMENTS:
        raise ValueError(f"unknown element {element!r}: choose from {EMT_FCC_ELEMENTS}")
    rng = np.random.default_rng(seed)
    return Atoms(
        [element] * n,
        positions=_shape_positions(shape, element, n, rng),
    )


# --------------------------------------------------------------------------- one task


def _run_task(args: tuple[PtClusterConfig, int, int, str, float]) -> list[dict]:
    """Build, rattle, relax one seed and take its MD snapshots (runs in a worker)."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary

    try:
        from ase.md.velocitydistribution import thermalize_momenta  # ase >= 3.29
    except ImportError:  # older ase
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    from ase.optimize import FIRE

    cfg, index, n, shape, e_bulk = args
    rng = np.random.default_rng([cfg.seed, index])
    pos = _shape_positions(shape, cfg.element, n, rng)
    pos = pos + rng.normal(0.0, cfg.rattle, pos.shape)
    atoms = Atoms([cfg.element] * n, positions=pos)
    calc, name = emt_calculator()
    _attach(atoms, calc, name)
    opt = FIRE(atoms, logfile=None)
    converged = bool(opt.run(fmax=cfg.fmax, steps=cfg.max_relax_steps))
    relaxed_pos = atoms.positions - atoms.positions.mean(0)
    records = [
        dict(
            positions=relaxed_pos,
            energy=atoms.get_potential_energy() / n - e_bulk,
            kind="relaxed",
            shape=shape,
            temperature=0.0,
            task=index,
            converged=converged,
            steps=int(opt.nsteps),
        )
    ]
    for t_index, temp in enumerate(cfg.md_temperatures):
        if cfg.md_snapshots == 0:
            break
        md_atoms = Atoms([cfg.element] * n, positions=relaxed_pos)
        _attach(md_atoms, calc, name)
        md_rng = np.random.default_rng([cfg.seed, index, t_index])
        thermalize_momenta(md_atoms, temperature_K=temp, rng=md_rng)
        Stationary(md_atoms)
        dyn = Langevin(
            md_atoms,
            cfg.md_timestep * units.fs,
            temperature_K=temp,
            friction=cfg.md_friction / units.fs,
            fixcm=False,
            rng=md_rng,
        )
        for _ in range(cfg.md_snapshots):
            dyn.run(cfg.md_interval)
            p = md_atoms.positions
            records.append(
                dict(
                    positions=p - p.mean(0),
                    energy=md_atoms.get_potential_energy() / n - e_bulk,
                    kind="md",
                    shape=shape,
                    temperature=float(temp),
                    task=index,
                    converged=True,
                    steps=0,
                )
            )
    return records


# --------------------------------------------------------------------------- build + cache


def default_cache_dir() -> Path:
    """``$JAXSCI_CACHE/pt_clusters`` if set, else ``./.cache/jaxsci/pt_clusters``."""
    root = os.environ.get("JAXSCI_CACHE")
    return (Path(root) if root else Path(".cache") / "jaxsci") / "pt_clusters"


def _records_to_atoms(records: Sequence[dict], element: str) -> list[Atoms]:
    out = []
    for r in records:
        a = Atoms([element] * len(r["positions"]), positions=r["positions"])
        a.info.update(
            energy_per_atom=float(r["energy"]),
            kind=r["kind"],
            shape=r["shape"],
            temperature_K=float(r["temperature"]),
            task=int(r["task"]),
            converged=bool(r["converged"]),
        )
        out.append(a)
    return out


def _descriptor_key(descriptor: Any) -> str:
    fields = {}
    for name in (
        "species_z",
        "r_cut",
        "g2_params",
        "g3_params",
        "g4_params",
        "g5_params",
        "periodic",
        "cutoff",
        "n_features",
    ):
        if hasattr(descriptor, name):
            v = getattr(descriptor, name)
            fields[name] = np.asarray(v).tolist() if v is not None else None
    fields["type"] = type(descriptor).__name__
    blob = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_pt_clusters(
    config: PtClusterConfig = PtClusterConfig(),
    *,
    cache_dir: str | Path | None = None,
    descriptor: Any | None = None,
    n_workers: int | None = None,
    progress: bool = True,
    use_cache: bool = True,
) -> PtClusterDataset:
    """Build (or load from cache) the cluster data set; optionally with per-atom fingerprints.

    Args:
      config: what to build; validated before any work (``ValueError`` naming the problem).
      cache_dir: root of the on-disk cache (default :func:`default_cache_dir`).
      descriptor: object with ``create(list[Atoms]) -> list[[N_i, F]]`` (e.g.
        ``jaxsci.descriptors.ACSF``); fingerprints are cached beside the structures.
      n_workers: worker processes for relaxation/MD (default ``min(2, cpu_count)``);
        the result does not depend on it.
      progress: tqdm progress bar.
      use_cache: read and write the cache (``False``: build in memory only).
    """
    config.validate()
    if n_workers is not None and n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    _, calc_name = emt_calculator()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / config.cache_key(calc_name)
    struct_file, meta_file = folder / "structures.extxyz", folder / "meta.json"

    if use_cache and struct_file.exists() and meta_file.exists():
        from ase.io import read

        meta = json.loads(meta_file.read_text())
        structures = read(struct_file, index=":")
        for a in structures:  # extxyz may turn info values into numpy scalars
            a.info["energy_per_atom"] = float(a.info["energy_per_atom"])
        dataset = PtClusterDataset(
            config, structures, float(meta["bulk_energy"]), calc_name, folder
        )
    else:
        dataset = _build(config, calc_name, n_workers, progress)
        if use_cache:
            from ase.io import write

            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / "structures.extxyz.tmp"
            write(tmp, dataset.structures, format="extxyz")
            tmp.replace(struct_file)
            meta = {
                "config": dataclasses.asdict(config),
                "calculator": calc_name,
                "bulk_energy": dataset.bulk_energy,
                "n_structures": len(dataset),
            }
            meta_file.write_text(json.dumps(meta, indent=2) + "\n")
            dataset.cache_dir = folder

    if descriptor is not None:
        dataset.fingerprints = _fingerprints(dataset, descriptor, folder if use_cache else None)
    return dataset


def _build(
    config: PtClusterConfig, calc_name: str, n_workers: int | None, progress: bool
) -> PtClusterDataset:
    from tqdm.auto import tqdm

    e_bulk = bulk_energy_per_atom(config.element)
    tasks = [
        (config, i, n, shape, e_bulk)
        for i, (n, shape) in enumerate((n, s) for n in config.sizes for s in config.shapes)
    ]
    if not tasks:
        raise ValueError("empty data set: the config yields no structures")
    workers = n_workers if n_workers is not None else min(2, os.cpu_count() or 1)
    workers = min(workers, len(tasks))
    bar = tqdm(total=len(tasks), desc=f"Pt clusters ({calc_name})", disable=not progress)
    results: list[list[dict]] = []
    if workers == 1:
        for t in tasks:
            results.append(_run_task(t))
            bar.update()
    else:
        # spawn: safe after JAX (multithreaded) has been imported in the parent
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers) as pool:
            for r in pool.imap(_run_task, tasks, chunksize=1):
                results.append(r)
                bar.update()
    bar.close()
    records = [r for rs in results for r in rs]
    structures = _records_to_atoms(records, config.element)
    return PtClusterDataset(config, structures, e_bulk, calc_name, None)


def _fingerprints(
    dataset: PtClusterDataset, descriptor: Any, folder: Path | None
) -> list[np.ndarray]:
    path = folder / f"fingerprints-{_descriptor_key(descriptor)}.npz" if folder else None
    sizes = dataset.sizes
    if path is not None and path.exists():
        with np.load(path) as z:
            flat, stored_sizes = z["features"], z["sizes"]
        if np.array_equal(stored_sizes, sizes):
            return np.split(flat, np.cumsum(sizes)[:-1])
    feats = descriptor.create(dataset.structures)
    feats = [np.asarray(f, dtype=np.float32) for f in feats]
    if path is not None:
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, features=np.concatenate(feats), sizes=sizes)
        tmp.replace(path)
    return feats
