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

The data set is a pure function of the config (and of the calculator): task ``i`` draws its
random numbers from ``numpy.random.default_rng([seed, i])``, so the result does not depend
on the number of worker processes. It is cached under ``cache_dir/<hash of config>/`` as
``structures.extxyz`` plus ``meta.json``; per-atom fingerprints for a descriptor are cached
beside it (``fingerprints-<hash>.npz``), so a second run reuses both. A fresh build returns
exactly what the cache holds (it goes through the same extxyz text), so fresh, cached and
``use_cache=False`` results are bit-identical: positions are rounded to 8 decimals (extxyz,
at most 5e-9 Angstrom from the simulation's values; the energies were computed before the
rounding), energies are stored exactly, and ``info`` values are Python ``float`` / ``int`` /
``str`` / ``bool``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import numbers
import os
import signal
import uuid
import warnings
import zipfile
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
    "default_cache_dir",
    "emt_calculator",
    "is_cached",
    "lattice_constant",
    "nearest_neighbour_distance",
    "relax",
    "relax_many",
    "seed_cluster",
]

SHAPES = ("icosahedron", "decahedron", "octahedron", "wulff", "fcc_ball", "random")
EMT_FCC_ELEMENTS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")  # fcc metals ase's EMT supports
_CACHE_VERSION = 1


def _ignore_sigint() -> None:
    """Pool worker initializer: Ctrl-C goes to the parent, which ends the pool; a worker
    taking it too printed its own traceback beside the command's one line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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

    def __post_init__(self) -> None:
        # NumPy scalars (np.int64 sizes, np.float32 temperatures) pass validate() but are no
        # JSON for the cache key: store them as the equal Python numbers; lists and arrays
        # of shapes / temperatures become tuples (the frozen config stays hashable)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.generic):
                value = value.item()
            elif f.name in ("shapes", "md_temperatures") and isinstance(
                value, list | tuple | np.ndarray
            ):
                items = value.tolist() if isinstance(value, np.ndarray) else value
                value = tuple(v.item() if isinstance(v, np.generic) else v for v in items)
            object.__setattr__(self, f.name, value)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first problem; does no work.

        Sizes and step counts are integers; ``rattle``, ``md_friction`` >= 0 and ``fmax``,
        ``md_timestep``, every temperature > 0 are finite real numbers; ``seed`` is an
        integer >= 0.
        """
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
        if not is_int_at_least(self.seed, 0):
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) is below min_size ({self.min_size})")
        if not isinstance(self.shapes, tuple):
            raise ValueError(f"shapes must be a tuple of shape names, got {self.shapes!r}")
        unknown = [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise ValueError(f"unknown shape(s) {unknown}: choose from {SHAPES}")
        if not self.shapes:
            raise ValueError("empty data set: no seed shapes given")
        if len(set(self.shapes)) != len(self.shapes):
            raise ValueError(f"duplicate shapes in {self.shapes}")
        for name, unit, positive in (
            ("rattle", "Angstrom", False),
            ("fmax", "eV/Angstrom", True),
            ("md_timestep", "fs", True),
            ("md_friction", "1/fs", False),
        ):
            value = getattr(self, name)
            if not _finite_real(value) or value < 0 or (positive and value == 0):
                bound = "> 0" if positive else ">= 0"
                raise ValueError(f"{name} must be a finite number {bound} ({unit}), got {value!r}")
        temps = self.md_temperatures
        if not isinstance(temps, tuple) or not all(_finite_real(t) and t > 0 for t in temps):
            raise ValueError(
                f"md_temperatures must be a tuple of finite numbers > 0 (K), got {temps!r}"
            )

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(range(self.min_size, self.max_size + 1, self.size_step))

    def cache_key(self, calculator: str) -> str:
        blob = json.dumps(
            {"v": _CACHE_VERSION, "calc": calculator, **dataclasses.asdict(self)}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _finite_real(value: object) -> bool:
    """``value`` is a finite real number (Python or NumPy; not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


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

    if n_workers is not None and not is_int_at_least(n_workers, 1):
        raise ValueError(f"n_workers must be an int >= 1 or None, got {n_workers!r}")
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
        with multiprocessing.get_context("spawn").Pool(workers, _ignore_sigint) as pool:
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
    """An unrelaxed ``n``-atom seed cluster of the given shape (see the module docstring).

    ValueError for an unknown shape or element and for ``n`` that is not an int >= 1.
    """
    if not is_int_at_least(n, 1):
        raise ValueError(f"seed_cluster: n must be an int >= 1 (atoms), got {n!r}")
    n = int(n)
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
    energy = atoms.get_potential_energy() / n - e_bulk
    _check_finite(relaxed_pos, energy, f"{shape} cluster of {n} atoms (task {index}), relaxed")
    records = [
        dict(
            positions=relaxed_pos,
            energy=energy,
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
        for k in range(cfg.md_snapshots):
            dyn.run(cfg.md_interval)
            p = md_atoms.positions - md_atoms.positions.mean(0)
            energy = md_atoms.get_potential_energy() / n - e_bulk
            _check_finite(
                p,
                energy,
                f"{shape} cluster of {n} atoms (task {index}), MD snapshot {k} at {temp} K "
                f"(md_timestep={cfg.md_timestep} fs, md_friction={cfg.md_friction} 1/fs)",
            )
            records.append(
                dict(
                    positions=p,
                    energy=energy,
                    kind="md",
                    shape=shape,
                    temperature=float(temp),
                    task=index,
                    converged=True,
                    steps=0,
                )
            )
    return records


def _check_finite(positions: np.ndarray, energy: float, what: str) -> None:
    """RuntimeError unless the positions and the energy are finite (a blown-up simulation
    must not be recorded, let alone cached, as a structure with a finite energy)."""
    if not (np.all(np.isfinite(positions)) and math.isfinite(energy)):
        raise RuntimeError(
            f"pt_clusters: {what} has non-finite positions or energy (energy {energy}): "
            "the simulation blew up; nothing was recorded or cached"
        )


# --------------------------------------------------------------------------- build + cache


def default_cache_dir() -> Path:
    """``$JAXSCI_CACHE/pt_clusters`` if set, else ``./.cache/jaxsci/pt_clusters``."""
    root = os.environ.get("JAXSCI_CACHE")
    return (Path(root) if root else Path(".cache") / "jaxsci") / "pt_clusters"


def _to_extxyz(structures: Sequence[Atoms]) -> str:
    """The cache file's text (positions to 8 decimals, energies exact)."""
    from ase.io import write

    buf = io.StringIO()
    write(buf, list(structures), format="extxyz")
    return buf.getvalue()


def _from_extxyz(text: str) -> list[Atoms]:
    """Structures from :func:`_to_extxyz` text, ``info`` values as Python types."""
    from ase.io import read

    structures = read(io.StringIO(text), index=":", format="extxyz") if text else []
    for a in structures:  # extxyz reads numbers back as NumPy scalars
        info = a.info
        a.info = dict(
            energy_per_atom=float(info["energy_per_atom"]),
            kind=str(info["kind"]),
            shape=str(info["shape"]),
            temperature_K=float(info["temperature_K"]),
            task=int(info["task"]),
            converged=bool(info["converged"]),
        )
    return structures


def _write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``path`` via a uniquely named temporary file in its folder + ``os.replace``:
    readers never see a half-written file, and concurrent writers do not share a tmp."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    try:
        if isinstance(data, str):
            with open(tmp, "x", encoding="utf-8") as f:
                f.write(data)
        else:
            with open(tmp, "xb") as f:
                f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _cache_folder(config: PtClusterConfig, cache_dir: str | Path | None, calc_name: str) -> Path:
    """Where ``config``'s data set is cached under ``cache_dir`` (default
    :func:`default_cache_dir`) for the calculator ``calc_name``."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / config.cache_key(calc_name)


def _cache_write(path: Path, data: str | bytes) -> bool:
    """Write a cache file atomically; ``False``, with a ``RuntimeWarning``, when the cache
    cannot be written (a read-only or full file system, a file where the folder should
    be): the data just built are still returned, only not cached."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, data)
    except OSError as exc:
        warnings.warn(
            f"pt_clusters: could not write the cache file {path} ({exc.strerror or exc}); "
            "the data are returned but not cached",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


def is_cached(config: PtClusterConfig, cache_dir: str | Path | None = None) -> bool:
    """Whether ``cache_dir`` (default :func:`default_cache_dir`) holds the finished
    structures of ``config`` (``meta.json``, the completion mark, beside
    ``structures.extxyz``), so that :func:`build_pt_clusters` reads them and writes
    nothing for them (fingerprints of a new descriptor aside). Command lines use it to
    accept a read-only cache that is complete."""
    config.validate()
    folder = _cache_folder(config, cache_dir, emt_calculator()[1])
    return (folder / "meta.json").is_file() and (folder / "structures.extxyz").is_file()


class _IncompleteCache(Exception):
    """The cache folder's files are missing, unreadable or disagree with each other."""


def _load_cache(folder: Path, config: PtClusterConfig, calc_name: str) -> PtClusterDataset:
    """The cached data set; :class:`_IncompleteCache` when it cannot be trusted."""
    struct_file, meta_file = folder / "structures.extxyz", folder / "meta.json"
    if not (struct_file.exists() and meta_file.exists()):
        raise _IncompleteCache("missing file")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        bulk_energy = float(meta["bulk_energy"])
        n_expected = meta["n_structures"]
        structures = _from_extxyz(struct_file.read_text(encoding="utf-8"))
    except Exception as e:  # a truncated/corrupt file: JSON, extxyz or info errors
        raise _IncompleteCache(f"unreadable: {type(e).__name__}: {e}") from e
    if n_expected != len(structures):
        raise _IncompleteCache(
            f"structures.extxyz holds {len(structures)} structures, meta.json says {n_expected}"
        )
    return PtClusterDataset(config, structures, bulk_energy, calc_name, folder)


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

    The cache is written atomically: ``structures.extxyz`` first, then ``meta.json``, the
    completion marker, each via a uniquely named temporary file and ``os.replace``. A cache
    that cannot be written (read-only, full) gives a ``RuntimeWarning`` and the data
    uncached (``cache_dir`` ``None``); a complete cache is only read. A
    folder whose ``meta.json`` is missing, unreadable, or disagrees with
    ``structures.extxyz`` (a different structure count, e.g. after a full disk or a copy
    cut short) is an incomplete cache: it is rebuilt and overwritten, with a
    ``RuntimeWarning`` (the build is deterministic, so nothing is lost). A simulation that
    blows up (non-finite positions or energy) raises ``RuntimeError`` and caches nothing.
    """
    config.validate()
    if n_workers is not None and not is_int_at_least(n_workers, 1):
        raise ValueError(f"n_workers must be an int >= 1 or None, got {n_workers!r}")
    _, calc_name = emt_calculator()
    folder = _cache_folder(config, cache_dir, calc_name)

    dataset = None
    problem = None
    if use_cache and (folder / "meta.json").exists():
        try:
            dataset = _load_cache(folder, config, calc_name)
        except _IncompleteCache as e:
            problem = str(e)
    elif use_cache and (folder / "structures.extxyz").exists():
        problem = "structures.extxyz without meta.json, its completion mark"
    if problem is not None:
        warnings.warn(
            f"pt_clusters cache {folder} is incomplete or corrupt ({problem}); rebuilding it",
            RuntimeWarning,
            stacklevel=2,
        )
    if dataset is None:
        dataset, text = _build(config, calc_name, n_workers, progress)
        if use_cache:
            meta = {
                "config": dataclasses.asdict(config),
                "calculator": calc_name,
                "bulk_energy": dataset.bulk_energy,
                "n_structures": len(dataset),
            }
            written = _cache_write(folder / "structures.extxyz", text) and _cache_write(
                folder / "meta.json", json.dumps(meta, indent=2) + "\n"
            )
            dataset.cache_dir = folder if written else None

    if descriptor is not None:
        dataset.fingerprints = _fingerprints(dataset, descriptor, folder if use_cache else None)
    return dataset


def _build(
    config: PtClusterConfig, calc_name: str, n_workers: int | None, progress: bool
) -> tuple[PtClusterDataset, str]:
    """The data set and its extxyz text; the structures are read back from that text, so a
    fresh build equals what the cache returns."""
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
        with ctx.Pool(workers, _ignore_sigint) as pool:
            for r in pool.imap(_run_task, tasks, chunksize=1):
                results.append(r)
                bar.update()
    bar.close()
    records = [r for rs in results for r in rs]
    text = _to_extxyz(_records_to_atoms(records, config.element))
    return PtClusterDataset(config, _from_extxyz(text), e_bulk, calc_name, None), text


def _fingerprints(
    dataset: PtClusterDataset, descriptor: Any, folder: Path | None
) -> list[np.ndarray]:
    path = folder / f"fingerprints-{_descriptor_key(descriptor)}.npz" if folder else None
    sizes = dataset.sizes
    if path is not None and path.exists():
        try:
            with np.load(path) as z:
                flat, stored_sizes = z["features"], z["sizes"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # unreadable: recompute
            flat = stored_sizes = None
        if stored_sizes is not None and np.array_equal(stored_sizes, sizes):
            return np.split(flat, np.cumsum(sizes)[:-1])
    feats = descriptor.create(dataset.structures)
    feats = [np.asarray(f, dtype=np.float32) for f in feats]
    if path is not None:
        buf = io.BytesIO()
        np.savez(buf, features=np.concatenate(feats), sizes=sizes)
        _cache_write(path, buf.getvalue())
    return feats
