"""MoNbTaW order-disorder transitions: swap Monte Carlo -> heat capacity -> VAE order parameter.

:func:`train_and_evaluate` runs the study (Yin et al., Nat. Comput. Sci. 2021, arXiv
2109.05598) and writes a run folder:

- ``config.json``; ``results.json``: temperatures, heat capacity ``C(T)`` (per site, units
  of k_B), ``<M>(T)`` and ``chi(T)`` of the VAE order parameter ``M = sum_i |mu_i|``
  (and, for reference, ``chi_eta(T)`` of the B2 long-range order ``eta``),
  their peaks, block standard errors, the same measured from the hottest temperature's
  latent centroid instead of the origin (``*_from_hot_centroid``), Warren-Cowley
  ``alpha`` of the first shell, the B2 long-range order, acceptance rates, timings and
  the paper's numbers (``anchors``); ``vae_windows``: the order parameter of a VAE trained
  only on each of ``config.vae_windows`` (temperature ranges; default 500-2000 K);
- ``vae_metrics.jsonl`` and ``vae_metrics_<low>-<high>K.jsonl`` (one line per epoch);
  ``samples.npz`` (``save_samples``);
- ``structures.extxyz``: the last sample at the lowest and at the highest temperature;
- PNG plots: ``heat_capacity.png``, ``susceptibility.png``, ``order_parameter.png``,
  ``latent_means.png``, ``warren_cowley.png``, ``vae_training.png`` and
  ``susceptibility_<low>-<high>K.png`` per window.

Parallel tempering samples every temperature of the ladder; the VAE (MLP, no condition:
``jaxsci.models.CVAE`` with ``cond_dim = 0``) is trained on the one-hot occupations of all
samples of all temperatures together, and its encoder means give ``M`` per sample.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments._cli import note_run_folder
from experiments.hea_order import plots
from experiments.hea_order.config import ANCHORS, Config, window_tag
from jaxsci.alloys import (
    MONBTAW,
    Lattice,
    PairHamiltonian,
    PTResult,
    bcc_lattice,
    pair_hamiltonian,
    parallel_tempering,
    random_occupation,
)
from jaxsci.metrics.thermo import (
    drift_z,
    heat_capacity,
    local_peaks,
    manhattan_order_parameter,
    peak_temperature,
    susceptibility,
    warren_cowley,
)
from jaxsci.models.cvae import CVAE, CVAEState, encode
from jaxsci.train import make_run_dir, train_cvae, write_json

__all__ = [
    "b2_order",
    "block_error",
    "build_model",
    "format_summary",
    "latent_means",
    "one_hot",
    "run_parallel_tempering",
    "train_and_evaluate",
    "train_vae",
    "vae_order_parameter",
    "window_order_parameter",
]


# --------------------------------------------------------------------------- Monte Carlo


def build_model(config: Config) -> tuple[Lattice, PairHamiltonian]:
    """The BCC lattice and the MoNbTaW Hamiltonian (first ``n_shells`` shells)."""
    lattice = bcc_lattice(config.n_cells, config.n_shells)
    return lattice, pair_hamiltonian(lattice, MONBTAW.pair_energies[: config.n_shells])


def run_parallel_tempering(
    config: Config, lattice: Lattice, hamiltonian: PairHamiltonian, temperatures: np.ndarray
) -> tuple[PTResult, dict[str, float]]:
    """Burn in and sample with :func:`jaxsci.alloys.parallel_tempering` (one progress bar
    over all sweeps). Every replica starts from its own random equimolar occupation.
    Returns ``(result, timings in s)``."""
    key_init, key_run = jax.random.split(jax.random.key(config.seed))
    occ = jnp.stack(
        [
            random_occupation(k, lattice.n_sites, MONBTAW.composition)
            for k in jax.random.split(key_init, len(temperatures))
        ]
    )
    result = parallel_tempering(
        key_run,
        hamiltonian,
        np.asarray(occ),
        temperatures,
        n_samples=config.n_samples,
        sample_every=config.sample_every,
        n_burn=config.n_burn,
        progress=config.progress,
    )
    return result, dict(result.timings)


# --------------------------------------------------------------------------- VAE


def one_hot(occupations: np.ndarray, n_species: int) -> np.ndarray:
    """``[n, n_sites]`` species indices -> ``[n, n_sites * n_species]`` float32 one-hot."""
    occ = np.asarray(occupations, np.int64)
    return np.eye(n_species, dtype=np.float32)[occ].reshape(occ.shape[0], -1)


def train_vae(
    config: Config, x: np.ndarray, run_dir: Path, metrics_name: str = "vae_metrics.jsonl"
) -> tuple[CVAE, CVAEState, list[dict]]:
    """Train the MLP VAE (a :class:`CVAE` with an empty condition) on rows ``x`` ``[n, D]``.

    The last ``val_fraction`` of the rows are held out for ``val_*`` metrics: rows are
    sample-major (``[n_samples, R]`` flattened), so these are the last samples in time of
    every chain, not rows interleaved with (and correlated to) training rows. Per-epoch
    metrics go to ``run_dir/metrics_name``. Returns ``(model, state, history)``.
    """
    n_val = int(round(config.val_fraction * len(x)))
    model = CVAE(data_dim=x.shape[1], latent_dim=config.latent_dim, hidden=config.hidden)
    no_cond = lambda n: np.zeros((n, 0), np.float32)  # noqa: E731  (a VAE: C = 0)
    result = train_cvae(
        model,
        optax.adam(config.learning_rate),
        x[: len(x) - n_val],
        no_cond(len(x) - n_val),
        epochs=config.epochs,
        batch_size=config.batch_size,
        beta=config.beta,
        seed=config.seed,
        validation=(x[len(x) - n_val :], no_cond(n_val)),
        metrics_path=run_dir / metrics_name,
        progress=config.progress,
        desc="VAE epochs",
    )
    return model, result.state, result.history


def latent_means(model: CVAE, params, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Encoder means ``[n, latent_dim]`` of rows ``x`` ``[n, D]`` (in batches)."""
    out = []
    for i in range(0, len(x), batch):
        xb = jnp.asarray(x[i : i + batch])
        mean, _ = encode(model, params, xb, jnp.zeros((len(xb), 0), jnp.float32))
        out.append(np.asarray(mean, np.float64))
    return np.concatenate(out) if out else np.zeros((0, model.latent_dim))


# --------------------------------------------------------------------------- analysis


def block_error(
    fn: Callable[[np.ndarray], np.ndarray], samples: np.ndarray, n_blocks: int
) -> np.ndarray:
    """Standard error of ``fn(samples)`` from ``n_blocks`` blocks of consecutive samples:
    ``std(fn(block)) / sqrt(n_blocks)`` (``samples`` ``[n_samples, ...]``)."""
    values = np.stack([fn(b) for b in np.array_split(samples, n_blocks, axis=0)])
    return values.std(axis=0, ddof=1) / np.sqrt(n_blocks)


def vae_order_parameter(
    config: Config,
    samples: np.ndarray,
    temperatures: np.ndarray,
    run_dir: Path,
    metrics_name: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """Train a VAE on the one-hot ``samples`` ``[n_samples, R, n_sites]`` taken at
    ``temperatures`` ``[R]`` and measure its order parameter on them.

    Returns ``(mu [n_samples, R, L], M [n_samples, R], chi [R], chi block errors [R],
    training history)``.
    """
    n_samples, n_temps, n_sites = samples.shape
    x = one_hot(samples.reshape(n_samples * n_temps, n_sites), len(MONBTAW.species))
    model, state, history = train_vae(config, x, run_dir, metrics_name)
    mu = latent_means(model, state.params, x).reshape(n_samples, n_temps, -1)
    m = manhattan_order_parameter(mu)
    chi = susceptibility(m, temperatures, n_sites)
    chi_err = block_error(lambda v: susceptibility(v, temperatures, n_sites), m, config.n_blocks)
    return mu, m, chi, chi_err, history


def window_order_parameter(
    config: Config,
    samples: np.ndarray,
    temperatures: np.ndarray,
    window: tuple[float, float],
    run_dir: Path,
) -> dict[str, Any]:
    """A VAE trained on the samples of the ladder temperatures inside ``window`` (K) only,
    and its order parameter there: ``<M>(T)``, ``chi(T)`` with block errors and peaks.

    The order parameter of a VAE depends on the temperatures it was trained on: trained
    on the whole ladder, its latent space is spent on the low-temperature orderings
    (RESULTS.md, session 23). 500-2000 K, the default window, is the range of the paper's
    MoNbTaW latent plot, which suggests (not states) that its VAE was trained there.
    """
    lo, hi = window
    inside = (temperatures >= lo) & (temperatures <= hi)
    t = temperatures[inside]
    tag = window_tag(window)
    _, m, chi, chi_err, history = vae_order_parameter(
        config, samples[:, inside], t, run_dir, f"vae_metrics_{tag}.jsonl"
    )
    peaks = _peaks(t, chi, config.peak_prominence)
    plots.susceptibility(t, chi, chi_err, peaks["local_K"], run_dir / f"susceptibility_{tag}.png")
    last = history[-1] if history else {}
    return {
        "t_range_K": [lo, hi],
        "temperatures_K": t,
        "order_parameter_mean": m.mean(0),
        "order_parameter_err": block_error(lambda v: v.mean(0), m, config.n_blocks),
        "susceptibility": chi,
        "susceptibility_err": chi_err,
        "peaks": peaks,
        "vae": {"final_loss": last.get("loss"), "final_val_loss": last.get("val_loss")},
    }


def b2_order(occupations: np.ndarray, positions: np.ndarray, n_species: int) -> np.ndarray:
    """B2 long-range order ``eta = sum_s |x_s^A - x_s^B| / 2`` of occupations ``[..., n_sites]``.

    ``x_s^A`` is the fraction of sublattice-A sites (cube corners; B: body centres) that
    hold species ``s``; ``eta = 0`` when both sublattices have the same composition, 1 for
    two species pairs fully separated onto the two sublattices (the periodic cell's
    antiphase domains lower it).
    """
    sub_b = np.round(2.0 * np.asarray(positions)[:, 0]).astype(np.int64) % 2 == 1
    occ = np.asarray(occupations)
    frac = np.stack(
        [
            np.stack([(occ[..., ~sub_b] == s).mean(-1), (occ[..., sub_b] == s).mean(-1)])
            for s in range(n_species)
        ]
    )  # [S, 2, ...]
    return 0.5 * np.abs(frac[:, 0] - frac[:, 1]).sum(axis=0)


def _peaks(temperatures: np.ndarray, values: np.ndarray, prominence: float) -> dict[str, Any]:
    return {
        "global_K": peak_temperature(temperatures, values),
        "local_K": local_peaks(temperatures, values, min_prominence=prominence),
    }


def mark_suspect(peaks: dict[str, Any], ladder: np.ndarray, equilibrated: np.ndarray) -> None:
    """Add ``suspect_K`` to a peaks dict: the local peaks next to a ladder temperature whose
    chain was not equilibrated (its variance, hence the peak, is not an equilibrium one)."""
    bad = []
    for p in peaks["local_K"]:
        i = int(np.argmin(np.abs(ladder - p)))
        if not np.all(equilibrated[max(i - 1, 0) : i + 2]):
            bad.append(p)
    peaks["suspect_K"] = bad


#: A found peak matches one of the paper's temperatures when it lies within this fraction of
#: the anchor temperature (of a range's midpoint) of it: 25% keeps the two transitions
#: (~250 K and ~920 K) apart, so one peak can never be reported for both.
ANCHOR_TOLERANCE = 0.25


def _near_anchor(peaks: Sequence[float], lo: float, hi: float, tolerance: float) -> float | None:
    """The peak nearest the midpoint of the anchor ``[lo, hi]`` (K) among those at most
    ``tolerance * midpoint`` outside it; ``None`` if there is none."""
    mid = 0.5 * (lo + hi)
    near = [p for p in peaks if max(lo - p, p - hi, 0.0) <= tolerance * mid]
    return min(near, key=lambda p: abs(p - mid)) if near else None


def compare_with_anchors(
    c_peaks: Sequence[float], chi_peaks: Sequence[float], tolerance: float = ANCHOR_TOLERANCE
) -> dict[str, Any]:
    """The found peak (K) nearest each of the paper's transition temperatures, if one lies
    within ``tolerance`` times the anchor temperature of it (``chi_peaks``: those of every
    VAE, the whole ladder's and the windows').

    Per anchor: ``anchor_K`` (a temperature or a ``[low, high]`` range), ``window_K`` (where
    a peak counts as near it), ``nearest_peak_K`` (``None`` if no peak is in the window)
    and, then, ``note``: "no peak near the anchor".
    """
    if not 0 < tolerance < 1:
        raise ValueError(f"compare_with_anchors: tolerance must be in (0, 1), got {tolerance}")

    def entry(peaks: Sequence[float], anchor: Any, lo: float, hi: float) -> dict[str, Any]:
        mid = 0.5 * (lo + hi)
        near = _near_anchor(peaks, lo, hi, tolerance)
        out = {
            "anchor_K": anchor,
            "window_K": [lo - tolerance * mid, hi + tolerance * mid],
            "nearest_peak_K": near,
        }
        if near is None:
            out["note"] = "no peak near the anchor"
        return out

    out: dict[str, Any] = {}
    for name in ("heat_capacity_T2_K", "heat_capacity_T1_K"):
        lo, hi = ANCHORS[name]
        out[name] = entry(c_peaks, [lo, hi], lo, hi)
    for t in ANCHORS["susceptibility_peaks_K"]:
        out[f"susceptibility_{int(t)}_K"] = entry(chi_peaks, t, t, t)
    return out


def _structures(
    config: Config, lattice: Lattice, result: PTResult, m: np.ndarray, path: Path
) -> None:
    from ase import Atoms
    from ase.io import write

    a = config.lattice_constant
    frames = []
    for r in (0, len(result.temperatures) - 1):
        occ = result.samples[-1, r].astype(np.int64)
        atoms = Atoms(
            [MONBTAW.species[s] for s in occ],
            positions=lattice.positions * a,
            cell=lattice.cell * a,
            pbc=True,
        )
        atoms.info.update(
            temperature_K=float(result.temperatures[r]),
            energy_eV=float(result.energies[-1, r]),
            order_parameter_M=float(m[-1, r]),
        )
        frames.append(atoms)
    write(path, frames, format="extxyz")


# --------------------------------------------------------------------------- main entry


def check_run_dir(run_dir: str | Path) -> None:
    """``ValueError`` if ``run_dir`` exists and is not an empty folder: a run writes all its
    files afresh and does not resume, so another run's files left there (samples, a
    window's metrics and plot) would sit beside this run's as if they were its own."""
    path = Path(run_dir)
    if path.is_dir():
        held = sorted(p.name for p in path.iterdir())
        if held:
            shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
            raise ValueError(
                f"run folder {path} is not empty (it holds {shown}): a run does not resume "
                "and would mix its files with these; give a new or empty --run-dir"
            )
    elif path.exists():
        raise ValueError(f"run folder {path} is a file, not a folder")


def train_and_evaluate(config: Config, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Run the study; returns the results dict (also in ``<run folder>/results.json``).

    ``run_dir``: folder to write into (created if absent; an existing one must be empty:
    :func:`check_run_dir`); default a fresh ``config.out_root/config.run_name-<timestamp>``.
    The config is validated before anything is built or written.
    """
    config.validate()
    if run_dir is not None:
        check_run_dir(run_dir)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    temperatures = config.ladder()
    lattice, hamiltonian = build_model(config)
    n_sites, n_species = lattice.n_sites, hamiltonian.n_species
    if run_dir is None:
        run_dir = make_run_dir(config.out_root, config.run_name)
    else:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    note_run_folder(run_dir)
    write_json(run_dir / "config.json", dataclasses.asdict(config))

    # ---- parallel tempering
    result, pt_timings = run_parallel_tempering(config, lattice, hamiltonian, temperatures)
    timings.update(pt_timings)
    energies = result.energies  # [n_samples, R] eV
    c = heat_capacity(energies, temperatures, n_sites)
    c_err = block_error(
        lambda e: heat_capacity(e, temperatures, n_sites), energies, config.n_blocks
    )

    # ---- VAE on all samples of all temperatures
    t0 = time.perf_counter()
    n_samples, n_temps = energies.shape
    mu, m, chi, chi_err, history = vae_order_parameter(
        config, result.samples, temperatures, run_dir, "vae_metrics.jsonl"
    )
    n_rows = n_samples * n_temps  # one VAE row per sample and temperature
    timings["vae_s"] = time.perf_counter() - t0
    # secondary: M measured from the hottest temperature's centroid instead of the origin
    hot_centroid = mu[:, -1].mean(0)
    m_hot = manhattan_order_parameter(mu - hot_centroid)
    chi_hot = susceptibility(m_hot, temperatures, n_sites)

    # ---- the same on temperature windows (default 500-2000 K: the paper's latent plot)
    t0 = time.perf_counter()
    windows = [
        window_order_parameter(config, result.samples, temperatures, w, run_dir)
        for w in config.vae_windows
    ]
    timings["vae_windows_s"] = time.perf_counter() - t0

    # ---- short- and long-range order
    first = lattice.shell_neighbors(0)
    wc = np.stack([warren_cowley(result.samples[:, r], first, n_species) for r in range(n_temps)])
    ia, ib = (MONBTAW.species.index(s) for s in config.wc_pair)
    eta = b2_order(result.samples, lattice.positions, n_species)  # [n_samples, R]
    chi_eta = susceptibility(eta, temperatures, n_sites)  # the conventional reference

    c_peaks = _peaks(temperatures, c, config.peak_prominence)
    chi_peaks = _peaks(temperatures, chi, config.peak_prominence)
    chi_hot_peaks = _peaks(temperatures, chi_hot, config.peak_prominence)
    chi_eta_peaks = _peaks(temperatures, chi_eta, config.peak_prominence)
    # Geweke's diagnostic on each temperature's energy chain: a drift means the replica was
    # still relaxing (slow low-temperature ordering), and a variance there is no C(T)
    drift = drift_z(energies, n_batches=config.n_blocks)
    equilibrated = np.abs(drift) <= config.max_drift_z
    for peaks in (c_peaks, chi_peaks, chi_hot_peaks, chi_eta_peaks, *(w["peaks"] for w in windows)):
        mark_suspect(peaks, temperatures, equilibrated)
    last = history[-1] if history else {}
    results: dict[str, Any] = {
        "config": dataclasses.asdict(config),
        "alloy": {"species": MONBTAW.species, "source": MONBTAW.source},
        "n_sites": n_sites,
        "n_sweeps_sampled": result.n_sweeps,
        "temperatures_K": temperatures,
        "energy_per_site_eV": energies.mean(0) / n_sites,
        "heat_capacity": c,  # per site, units of k_B
        "heat_capacity_err": c_err,
        "order_parameter_mean": m.mean(0),
        "order_parameter_err": block_error(lambda v: v.mean(0), m, config.n_blocks),
        "susceptibility": chi,  # 1/eV: N Var(M) / k_B T
        "susceptibility_err": chi_err,
        "hot_centroid": hot_centroid,
        "order_parameter_from_hot_centroid_mean": m_hot.mean(0),
        "susceptibility_from_hot_centroid": chi_hot,
        "peaks": {
            "heat_capacity": c_peaks,
            "susceptibility": chi_peaks,
            "susceptibility_from_hot_centroid": chi_hot_peaks,
            "b2_susceptibility": chi_eta_peaks,
        },
        "anchors": ANCHORS,
        "vae_windows": windows,
        "comparison": compare_with_anchors(
            c_peaks["local_K"],
            chi_peaks["local_K"] + [p for w in windows for p in w["peaks"]["local_K"]],
        ),
        "energy_drift_z": drift,
        "not_equilibrated_K": temperatures[~equilibrated],
        "swap_acceptance": result.swap_acceptance,
        "exchange_acceptance": result.exchange_acceptance,
        "warren_cowley_first_shell": wc,  # [R, S, S]
        "warren_cowley_pair": list(config.wc_pair),
        "warren_cowley_pair_alpha": wc[:, ia, ib],
        "b2_order_mean": eta.mean(0),
        "b2_susceptibility": chi_eta,  # 1/eV: N Var(eta) / k_B T
        "vae": {
            "final_loss": last.get("loss"),
            "final_recon": last.get("recon"),
            "final_kl": last.get("kl"),
            "final_val_loss": last.get("val_loss"),
            "n_train_rows": n_rows - int(round(config.val_fraction * n_rows)),
            "data_dim": n_sites * n_species,
        },
        "timings_s": timings,
    }

    # ---- files
    t0 = time.perf_counter()
    _structures(config, lattice, result, m, run_dir / "structures.extxyz")
    if config.save_samples:
        np.savez_compressed(
            run_dir / "samples.npz",
            temperatures=temperatures,
            energies=energies,
            occupations=result.samples,
            latent_means=mu,
            order_parameter=m,
        )
    plots.heat_capacity(temperatures, c, c_err, c_peaks["local_K"], run_dir / "heat_capacity.png")
    plots.susceptibility(
        temperatures, chi, chi_err, chi_peaks["local_K"], run_dir / "susceptibility.png",
        chi_hot=chi_hot,
    )  # fmt: skip
    plots.order_parameter(
        temperatures, m.mean(0), results["order_parameter_err"], eta.mean(0),
        run_dir / "order_parameter.png", m_hot=m_hot.mean(0),
    )  # fmt: skip
    plots.latent_means(
        mu.reshape(n_samples * n_temps, -1), np.tile(temperatures, n_samples),
        run_dir / "latent_means.png",
    )  # fmt: skip
    plots.warren_cowley(temperatures, wc, MONBTAW.species, run_dir / "warren_cowley.png")
    plots.training_curves(history, run_dir / "vae_training.png")
    timings["write_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    results["run_dir"] = str(run_dir)
    write_json(run_dir / "results.json", results)
    return results


def format_summary(results: dict[str, Any]) -> str:
    """A short text table of the run: peaks against the paper's, acceptance, time."""

    def ks(values: list[float], suspect: Sequence[float] = ()) -> str:
        out = [f"{v:.0f}" + ("*" if v in suspect else "") for v in values]
        return ", ".join(out) if out else "none"

    def kp(peaks: dict[str, Any]) -> str:
        return ks(peaks["local_K"], peaks.get("suspect_K", ()))

    p = results["peaks"]
    a = results["anchors"]
    swap = np.asarray(results["swap_acceptance"], float)
    ex = np.asarray(results["exchange_acceptance"], float)
    rows = [
        ("sites, temperatures", f"{results['n_sites']}, {len(results['temperatures_K'])}"),
        ("C(T) peaks (K; *: beside a drifting chain)", kp(p["heat_capacity"])),
        ("C(T) global max (K)", f"{p['heat_capacity']['global_K']:.0f}"),
        ("chi(T) peaks (K)", kp(p["susceptibility"])),
        ("chi(T) global max (K)", f"{p['susceptibility']['global_K']:.0f}"),
        *[
            (
                f"chi(T) peaks, VAE on {w['t_range_K'][0]:.0f}-{w['t_range_K'][1]:.0f} K",
                kp(w["peaks"]),
            )
            for w in results["vae_windows"]
        ],
        ("B2 order: chi_eta(T) peaks (K)", kp(p["b2_susceptibility"])),
        (
            "paper: C peaks / chi peaks",
            f"{a['heat_capacity_T1_K'][0]:.0f}-{a['heat_capacity_T1_K'][1]:.0f} & "
            f"{a['heat_capacity_T2_K'][0]:.0f}-{a['heat_capacity_T2_K'][1]:.0f} / "
            f"{ks(list(a['susceptibility_peaks_K']))}",
        ),
        (
            f"drifting chains, K (|Geweke z| > {results['config']['max_drift_z']:g})",
            ks(list(results["not_equilibrated_K"])),
        ),
        ("swap acceptance (min..max)", f"{swap.min():.4f}..{swap.max():.3f}"),
        ("exchange acceptance (min..max)", f"{ex.min():.3f}..{ex.max():.3f}" if ex.size else "-"),
        ("wall time (s)", f"{results['timings_s']['total_s']:.0f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
