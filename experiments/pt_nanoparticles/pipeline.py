"""Pt nanoparticle generation: data -> ACSF -> CVAE -> sampled fingerprints -> coordinates.

:func:`train_and_evaluate` runs the whole study and writes a run folder:

- ``config.json``, ``metrics.json``, ``train_metrics.jsonl`` (one line per epoch),
  ``checkpoints/`` (Orbax; a run restarted with the same ``workdir`` resumes from the
  newest one and ends with the same parameters as an uninterrupted run; each checkpoint
  holds the :func:`training_settings` it was made with, and a restart with other ones is
  refused before anything is built or written: ``epochs`` may grow (but not fall below
  the newest checkpoint's epoch: refused too), and the settings of generation, progress,
  workers and folders may change);
- ``train.extxyz``: every data set structure (``info``: ``energy_per_atom``, ``split``);
- ``reconstructed.extxyz``: coordinates recovered from the sampled fingerprints;
- ``generated.extxyz``: the same structures after EMT relaxation -- the generated
  nanoparticles (``info``: ``target_energy`` and ``energy_per_atom`` in eV/atom relative to
  bulk, ``valid``, ``unique``, ``novel``, ``rmsd_to_reconstructed``, and
  ``reconstruction_fingerprint_error``: that of the coordinates before relaxation against
  the sampled fingerprint);
- PNG plots: training curves, target vs obtained energy, latent space, a few clusters.

The CVAE models sorted per-feature ACSF columns read at fixed quantiles (see
``representation``), conditioned on (energy per atom, N). For a target energy, N is drawn
as the generation size whose mean relaxed training energy is nearest (see
:func:`choose_targets`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ase import Atoms

from experiments._cli import note_run_folder
from experiments.pt_nanoparticles import plots
from experiments.pt_nanoparticles.config import Config
from experiments.pt_nanoparticles.representation import from_quantiles, to_quantiles
from jaxsci.data.pt_clusters import (
    PtClusterDataset,
    build_pt_clusters,
    nearest_neighbour_distance,
    relax_many,
)
from jaxsci.descriptors import ACSF
from jaxsci.metrics import (
    check_validity,
    energy_spearman,
    energy_wasserstein,
    fingerprint_error,
    kabsch_rmsd,
    novelty_mask,
    uniqueness_mask,
)
from jaxsci.models.cvae import CVAE, CVAEState, encode, sample
from jaxsci.train import check_resume, make_run_dir, write_json, write_metrics
from jaxsci.train import train_cvae as fit_cvae
from jaxsci.train.checkpoint import normalize_settings

__all__ = [
    "Standardizer",
    "make_descriptor",
    "train_and_evaluate",
    "train_cvae",
    "training_settings",
]


def make_descriptor(config: Config) -> ACSF:
    """The ACSF the experiment fingerprints clusters with."""
    return ACSF(
        species=[config.data.element],
        r_cut=config.r_cut,
        g2_params=[list(p) for p in config.g2_params] or None,
        g4_params=[list(p) for p in config.g4_params] or None,
    )


@dataclasses.dataclass(frozen=True)
class Standardizer:
    """Per-column ``(x - mean) / std`` fitted on the training rows (std floored)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        x = np.asarray(x, np.float64)
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.maximum(std, 1e-6 * max(float(std.max()), 1e-12)))

    def forward(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.mean) / self.std

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, np.float64) * self.std + self.mean


# --------------------------------------------------------------------------- training

#: Config fields that define the CVAE training run (with the data and descriptor settings).
TRAINING_FIELDS = (
    "r_cut",
    "g2_params",
    "g4_params",
    "n_quantiles",
    "latent_dim",
    "hidden",
    "beta",
    "learning_rate",
    "batch_size",
    "val_fraction",
    "seed",
)


def training_settings(config: Config, data_dim: int, cond_dim: int) -> dict[str, Any]:
    """What defines a CVAE training run, as JSON: the data set's settings, the descriptor,
    the representation, the split, the model, the optimizer and the seed (plus the model's
    input sizes). Not ``epochs`` (a resume may extend training), ``checkpoint_every``, the
    generation settings, ``progress``, ``n_workers`` or the folders."""
    fields = {name: getattr(config, name) for name in TRAINING_FIELDS}
    return normalize_settings(
        {
            "data": dataclasses.asdict(config.data),
            **fields,
            "data_dim": int(data_dim),
            "cond_dim": int(cond_dim),
        }
    )


def train_cvae(
    config: Config,
    x_train: np.ndarray,
    c_train: np.ndarray,
    x_val: np.ndarray | None,
    c_val: np.ndarray | None,
    run_dir: Path,
) -> tuple[CVAE, CVAEState, list[dict]]:
    """Train (or resume) the CVAE on standardised rows; returns ``(model, state, history)``.

    :func:`jaxsci.train.train_cvae` with checkpoints in ``run_dir/checkpoints`` every
    ``config.checkpoint_every`` epochs and at the end, and per-epoch metrics in
    ``run_dir/train_metrics.jsonl``. If a checkpoint exists, training continues from it and
    reproduces the uninterrupted run exactly; a checkpoint made with other
    :func:`training_settings`, or at an epoch past ``config.epochs``, raises ``ValueError``
    naming them (nothing is written then).
    """
    model = CVAE(data_dim=x_train.shape[1], latent_dim=config.latent_dim, hidden=config.hidden)
    result = fit_cvae(
        model,
        optax.adam(config.learning_rate),
        x_train,
        c_train,
        epochs=config.epochs,
        batch_size=config.batch_size,
        beta=config.beta,
        seed=config.seed,
        validation=(x_val, c_val) if x_val is not None else None,
        checkpoint_dir=run_dir / "checkpoints",
        checkpoint_every=config.checkpoint_every,
        keep=2,
        settings=training_settings(config, x_train.shape[1], c_train.shape[1]),
        metrics_path=run_dir / "train_metrics.jsonl",
        progress=config.progress,
        desc="CVAE",
    )
    return model, result.state, result.history


# --------------------------------------------------------------------------- generation


def generation_sizes(config: Config, sizes: np.ndarray) -> np.ndarray:
    """``n_generation_sizes`` sizes evenly spaced over the range, snapped to sizes in the data."""
    present = np.unique(sizes)
    wanted = np.linspace(present.min(), present.max(), config.n_generation_sizes)
    return np.unique([present[np.argmin(np.abs(present - w))] for w in wanted])


def choose_targets(config: Config, energies: np.ndarray, sizes: np.ndarray, relaxed: np.ndarray):
    """Target energies and a cluster size for every sample.

    Targets are evenly spaced over the ``target_range`` quantiles of the relaxed training
    energies; each gets the generation size (see :func:`generation_sizes`) whose mean
    relaxed training energy is nearest (energy per atom falls with N, so this is p(N | E)
    reduced to its most likely value). Returns ``(targets [n_targets], sample_targets [S],
    sample_sizes [S])`` with ``S = n_targets * samples_per_target``.
    """
    e_rel, n_rel = energies[relaxed], sizes[relaxed]
    if len(e_rel) == 0:
        raise ValueError("no relaxed structures in the training set to choose targets from")
    lo, hi = np.quantile(e_rel, config.target_range)
    targets = np.linspace(lo, hi, config.n_targets)
    allowed = generation_sizes(config, n_rel)
    mean_e = np.array([e_rel[n_rel == n].mean() for n in allowed])
    chosen = allowed[np.argmin(np.abs(mean_e[None, :] - targets[:, None]), axis=1)]
    sample_targets = np.repeat(targets, config.samples_per_target)
    sample_sizes = np.repeat(chosen, config.samples_per_target).astype(np.int64)
    return targets, sample_targets, sample_sizes


def reconstruct_all(
    targets: list[np.ndarray], element: str, descriptor: ACSF, config: Config
) -> tuple[list[np.ndarray], np.ndarray]:
    """Coordinates for per-atom set targets ``[N_i, F]`` with :func:`jaxsci.reconstruct.reconstruct`
    (many starts in parallel, basin hopping; compiled once per size).

    Returns ``(positions list [N_i, 3] in Angstrom, relative fingerprint errors [S])``.
    """
    from tqdm.auto import tqdm

    from jaxsci.reconstruct import reconstruct

    positions, errors = [], []
    base = jax.random.key(config.seed + 7)
    for i, target in enumerate(tqdm(targets, desc="reconstruct", disable=not config.progress)):
        res = reconstruct(
            target,
            [element] * len(target),
            descriptor,
            key=jax.random.fold_in(base, i),
            n_starts=config.reconstruct_starts,
            max_rounds=config.reconstruct_rounds,
            steps_per_round=config.reconstruct_steps_per_round,
            time_limit=config.reconstruct_time_limit,
            # Generated fingerprints are rarely met exactly, so round 1 would nearly always
            # trigger the EMT-relaxed motif starts (2-4 s a call); the pipeline relaxes its
            # results with EMT afterwards anyway.
            motif_relax=None,
        )
        positions.append(np.asarray(res.positions, np.float64))
        errors.append(float(res.error))
    return positions, np.asarray(errors)


def _atoms(element: str, positions: np.ndarray, **info: Any) -> Atoms:
    a = Atoms([element] * len(positions), positions=positions)
    a.info.update(info)
    return a


# --------------------------------------------------------------------------- main entry


def train_and_evaluate(config: Config, workdir: str | Path | None = None) -> dict[str, Any]:
    """Run the study; returns the metrics dict (also in ``<run folder>/metrics.json``).

    ``workdir``: run folder to use (created if absent; resumes training from its
    checkpoints); default a fresh ``config.out_root/config.run_name-<timestamp>``.
    The config is validated before anything is built or written.
    """
    config.validate()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    element = config.data.element
    descriptor = make_descriptor(config)
    q = config.n_quantiles if config.n_quantiles is not None else config.data.max_size
    if workdir is not None:  # refuse a resume with other settings before any work
        check_resume(
            Path(workdir) / "checkpoints",
            training_settings(config, q * descriptor.n_features, 2),
            config.epochs,
        )

    t0 = time.perf_counter()
    dataset = build_pt_clusters(
        config.data,
        cache_dir=config.cache_dir,
        descriptor=descriptor,
        n_workers=config.n_workers,
        progress=config.progress,
    )
    timings["data_s"] = time.perf_counter() - t0
    if len(dataset) == 0:
        raise ValueError("empty data set: the config produced no structures")

    if workdir is None:
        run_dir = make_run_dir(config.out_root, config.run_name)
    else:
        run_dir = Path(workdir)
        run_dir.mkdir(parents=True, exist_ok=True)
    note_run_folder(run_dir)
    write_json(run_dir / "config.json", dataclasses.asdict(config))

    # ---- representation, split, standardisation
    feats = dataset.fingerprints
    assert feats is not None
    x_all = np.stack([to_quantiles(f, q).ravel() for f in feats])
    energies, sizes, relaxed = dataset.energies, dataset.sizes, dataset.relaxed
    tasks = np.array([a.info["task"] for a in dataset.structures])
    split_rng = np.random.default_rng([config.seed, 2])
    unique_tasks = np.unique(tasks)
    n_val_tasks = int(round(config.val_fraction * len(unique_tasks)))
    val_tasks = split_rng.choice(unique_tasks, n_val_tasks, replace=False)
    is_val = np.isin(tasks, val_tasks)
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if len(train_idx) == 0:
        raise ValueError("empty training set after the validation split")

    cond_all = np.stack([energies, sizes.astype(np.float64)], axis=1)
    x_std = Standardizer.fit(x_all[train_idx])
    c_std = Standardizer.fit(cond_all[train_idx])
    xs, cs = x_std.forward(x_all), c_std.forward(cond_all)

    _write_training_structures(run_dir / "train.extxyz", dataset, is_val)

    # ---- train
    t0 = time.perf_counter()
    model, state, history = train_cvae(
        config,
        xs[train_idx],
        cs[train_idx],
        xs[val_idx] if len(val_idx) else None,
        cs[val_idx] if len(val_idx) else None,
        run_dir,
    )
    timings["train_s"] = time.perf_counter() - t0

    # ---- sample fingerprints for target energies
    targets, sample_targets, sample_sizes = choose_targets(
        config, energies[train_idx], sizes[train_idx], relaxed[train_idx]
    )
    cond = c_std.forward(np.stack([sample_targets, sample_sizes.astype(np.float64)], axis=1))
    gen = np.asarray(
        sample(model, state.params, jnp.asarray(cond, jnp.float32), jax.random.key(config.seed + 3))
    )
    quantiles = x_std.inverse(gen).reshape(len(gen), q, -1)
    set_targets = [
        from_quantiles(qf, int(n)) for qf, n in zip(quantiles, sample_sizes, strict=True)
    ]

    # ---- reconstruct coordinates, relax with EMT
    t0 = time.perf_counter()
    rec_positions, rec_errors = reconstruct_all(set_targets, element, descriptor, config)
    timings["reconstruct_s"] = time.perf_counter() - t0
    reconstructed = [
        _atoms(element, p, target_energy=float(t), fingerprint_error=float(err))
        for p, t, err in zip(rec_positions, sample_targets, rec_errors, strict=True)
    ]
    rec_fp = descriptor.create(reconstructed)
    fp_errors = np.array(
        [fingerprint_error(f, t) for f, t in zip(rec_fp, set_targets, strict=True)]
    )
    t0 = time.perf_counter()
    relaxed_atoms, obtained, converged = relax_many(
        reconstructed,
        element=element,
        fmax=config.relax_fmax,
        steps=config.relax_steps,
        bulk_energy=dataset.bulk_energy,
        n_workers=config.n_workers,
        progress=config.progress,
    )
    timings["relax_s"] = time.perf_counter() - t0

    # ---- score
    d_nn = nearest_neighbour_distance(element)
    valid_rec = np.array([check_validity(a, d_nn=d_nn).valid for a in reconstructed])
    valid = np.array([check_validity(a, d_nn=d_nn).valid for a in relaxed_atoms])
    unique = uniqueness_mask(relaxed_atoms, tol=config.novelty_tol)
    novel = novelty_mask(relaxed_atoms, dataset.structures, tol=config.novelty_tol)
    rmsd = np.array([kabsch_rmsd(a, b) for a, b in zip(reconstructed, relaxed_atoms, strict=True)])
    per_target_mean = np.array(
        [np.nanmean(obtained[sample_targets == t]) for t in targets], dtype=np.float64
    )
    train_relaxed_e = energies[train_idx][relaxed[train_idx]]
    in_train = np.zeros(len(energies), dtype=bool)
    in_train[train_idx] = True
    pool = relaxed & in_train  # training minima only (the metric's name; no validation peek)
    min_by_size = {
        int(n): float(energies[(sizes == n) & pool].min()) for n in np.unique(sizes[pool])
    }
    above_min = np.array(
        [
            obtained[i] - min_by_size[int(n)] if int(n) in min_by_size else np.nan
            for i, n in enumerate(sample_sizes)
        ]
    )
    n_gen = len(relaxed_atoms)
    metrics: dict[str, Any] = {
        "n_generated": n_gen,
        "n_training_structures": int(len(train_idx)),
        "n_validation_structures": int(len(val_idx)),
        "n_dataset_structures": len(dataset),
        "calculator": dataset.calculator,
        "validity": float(valid.mean()),
        "validity_before_relaxation": float(valid_rec.mean()),
        "uniqueness": float(unique.mean()),
        "novelty": float(novel.mean()),
        "unique_and_novel": float((unique & novel).mean()),
        "valid_unique_novel": float((valid & unique & novel).mean()),
        "energy_spearman": energy_spearman(sample_targets, obtained),
        "energy_spearman_per_target_mean": energy_spearman(targets, per_target_mean),
        "energy_mae": float(np.nanmean(np.abs(obtained - sample_targets))),
        "energy_wasserstein_to_relaxed_training": energy_wasserstein(obtained, train_relaxed_e),
        "energy_wasserstein_to_all_training": energy_wasserstein(obtained, energies[train_idx]),
        "energy_above_training_min_same_size_mean": float(np.nanmean(above_min)),
        "rmsd_reconstructed_to_relaxed_mean": float(np.nanmean(rmsd)),
        "rmsd_reconstructed_to_relaxed_median": float(np.nanmedian(rmsd)),
        "reconstruction_fingerprint_error_median": float(np.nanmedian(fp_errors)),
        "relax_converged": float(converged.mean()),
        "final_train_loss": history[-1]["loss"] if history else None,
        "final_val_loss": history[-1].get("val_loss") if history else None,
        "epochs": config.epochs,
        "targets": targets,
        "generation_sizes": sorted({int(n) for n in sample_sizes}),
        "obtained_per_target_mean": per_target_mean,
        "timings_s": timings,
    }

    # ---- write structures and plots
    from ase.io import write

    write(run_dir / "reconstructed.extxyz", reconstructed, format="extxyz")
    generated = []
    for i, a in enumerate(relaxed_atoms):
        a.info.clear()
        a.info.update(
            target_energy=float(sample_targets[i]),
            energy_per_atom=float(obtained[i]),
            n_atoms=len(a),
            valid=bool(valid[i]),
            unique=bool(unique[i]),
            novel=bool(novel[i]),
            rmsd_to_reconstructed=float(rmsd[i]),
            # of the reconstructed (pre-relaxation) coordinates against the sample
            reconstruction_fingerprint_error=float(fp_errors[i]),
        )
        generated.append(a)
    write(run_dir / "generated.extxyz", generated, format="extxyz")

    plots.training_curves(history, run_dir / "training_curves.png")
    plots.target_vs_obtained(
        sample_targets, obtained, sample_sizes, run_dir / "target_vs_obtained.png"
    )
    z_mean, _ = encode(
        model,
        state.params,
        jnp.asarray(xs[train_idx], jnp.float32),
        jnp.asarray(cs[train_idx], jnp.float32),
    )
    plots.latent_space(np.asarray(z_mean), energies[train_idx], run_dir / "latent_space.png")
    shown = np.unique(np.linspace(0, n_gen - 1, min(config.n_plot_clusters, n_gen)).round())
    plots.clusters([generated[int(i)] for i in shown], run_dir / "generated_clusters.png")

    timings["total_s"] = time.perf_counter() - t_start
    metrics["run_dir"] = str(run_dir)
    write_metrics(run_dir, metrics)
    return metrics


def _write_training_structures(path: Path, dataset: PtClusterDataset, is_val: np.ndarray) -> None:
    from ase.io import write

    frames = []
    for a, v in zip(dataset.structures, is_val, strict=True):
        b = Atoms(a.get_chemical_symbols(), positions=a.positions)
        b.info.update(
            energy_per_atom=float(a.info["energy_per_atom"]),
            kind=str(a.info["kind"]),
            shape=str(a.info["shape"]),
            temperature_K=float(a.info["temperature_K"]),
            split="val" if v else "train",
        )
        frames.append(b)
    write(path, frames, format="extxyz")


def summary_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) rows for the printed summary table."""

    def f(key: str, fmt: str = "{:.3f}") -> str:
        v = metrics.get(key)
        return "n/a" if v is None else fmt.format(v)

    return [
        ("generated structures", str(metrics["n_generated"])),
        ("valid (after EMT relax)", f("validity", "{:.1%}")),
        ("valid before relax", f("validity_before_relaxation", "{:.1%}")),
        ("unique", f("uniqueness", "{:.1%}")),
        ("novel", f("novelty", "{:.1%}")),
        ("unique and novel", f("unique_and_novel", "{:.1%}")),
        ("Spearman(target, obtained E)", f("energy_spearman")),
        ("Spearman per-target mean", f("energy_spearman_per_target_mean")),
        ("|E - target| mean (eV/atom)", f("energy_mae")),
        ("Wasserstein to train (eV/atom)", f("energy_wasserstein_to_relaxed_training")),
        ("RMSD recon->relaxed (A)", f("rmsd_reconstructed_to_relaxed_median")),
        ("wall time (s)", "{:.0f}".format(metrics["timings_s"]["total_s"])),
    ]


def format_summary(metrics: dict[str, Any]) -> str:
    rows = summary_rows(metrics)
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)
