"""Inverse imaging (Laanait et al. 2019): a fully convolutional network reconstructs the
projected potential of a crystal from a 4D-STEM stack of CBED patterns; ePIE is the baseline.

.venv/bin/python -m experiments.inverse_imaging.run         # default: ~6 min on 2 CPU cores
.venv/bin/python -m experiments.inverse_imaging.run --tiny  # smoke size, seconds

Simulates random crystal specimens (six materials, random zone axes, rotations and
thicknesses of 2-20 Å) with multislice and reconstructs held-out ones three ways, all
low-passed to the same resolution as the truth:

* ePIE (known probe, projection approximation), the classical baseline;
* ePIE+MS: ePIE's potential refined through the multislice model by L-BFGS
  (``jaxsci.imaging.refine_potential``), identical slices for every candidate thickness,
  the best fit kept, then every slice on its own: the strongest classical baseline
  (``--identical-slices`` skips the last stage, ``--refine-iters 0`` turns it off);
* a U-Net trained through ``jaxsci.parallel.data_parallel`` (all local devices; MPI ranks
  under mpirun). By default it reads the ePIE object and predicts ePIE's error, in units of
  each specimen's RMS potential (the projection approximation fails as specimens thicken);
  ``--fcn-input cbed --bottleneck dense`` makes it read the raw CBED stack, Laanait et al.'s
  formulation, which at this size and training budget does not learn the global
  diffraction-to-real-space map.

Writes ``results.json``, ``config.json``, ``test_predictions.npz`` (the truth, each
method's predictions and, with the refinement, the slice count each fit chose) and PNGs
(training curve, examples, error against thickness) to a run folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from experiments._cli import (
    config_default,
    exit_2_on_every_rank,
    interruptible,
    note_run_folder,
    root_check,
)
from experiments.inverse_imaging.config import Config, tiny_config
from experiments.inverse_imaging.data import TEST_SEED_OFFSET, ImagingSet, lowpass, simulate
from experiments.inverse_imaging.plots import (
    plot_error_vs_thickness,
    plot_examples,
    plot_training,
)
from experiments.inverse_imaging.refine import refine_potentials
from experiments.inverse_imaging.train import (
    Standardizer,
    epie_objects,
    epie_potential,
    fcn_inputs,
    predict,
    relative_errors,
    residual_answer,
    train_fcn,
)
from jaxsci.parallel import ProcessInfo, bootstrap, rank_slice
from jaxsci.train import check_output_dir, make_run_dir, write_json

__all__ = [
    "build_parser",
    "format_table",
    "main",
    "parse_config",
    "summarize",
    "train_and_evaluate",
]

DESCRIPTION = (
    "Inverse imaging (Laanait et al. 2019): a fully convolutional network reconstructs the "
    "projected potential of a crystal from a 4D-STEM stack of CBED patterns, compared with "
    "ePIE and with ePIE refined through the multislice model. Prints the median errors and "
    "writes a run folder."
)


def summarize(errors: np.ndarray, test: ImagingSet, config: Config) -> dict[str, Any]:
    """Median / mean / 90th percentile of the relative errors, overall, per thickness and
    per material."""

    def stats(e: np.ndarray) -> dict[str, float]:
        return {
            "n": int(e.size),
            "median": float(np.median(e)),
            "mean": float(e.mean()),
            "p90": float(np.percentile(e, 90)),
        }

    out = {"all": stats(errors)}
    out["by_thickness"] = {
        f"{t:g}": stats(errors[test.thickness == t]) for t in np.unique(test.thickness)
    }
    out["by_material"] = {
        name: stats(errors[test.material == m])
        for m, name in enumerate(config.materials)
        if np.any(test.material == m)
    }
    return out


def _raise_on_every_rank(error: str | None, info: ProcessInfo) -> None:
    """Rank 0's file error (``None``: none), raised on every rank: the others would wait in
    the next collective forever."""
    if info.size > 1:
        error = info.comm.bcast(error, root=0)
    if error is not None:
        raise OSError(f"rank 0 could not write the run folder: {error}")


def train_and_evaluate(
    config: Config, run_dir: str | Path, *, info: ProcessInfo | None = None
) -> dict[str, Any]:
    """Simulate, train, evaluate FCN and ePIE; writes into ``run_dir`` and returns results.

    Under MPI (``info``, default :func:`jaxsci.parallel.bootstrap`) every rank simulates the
    same specimens, trains its share of each batch and refines its block of the test
    specimens (ePIE+MS, gathered); rank 0 alone writes and shows progress, and every rank
    returns the same results (timings are its own).
    """
    config.validate()
    info = info if info is not None else bootstrap()
    shards = info.size * jax.local_device_count()
    if config.batch_size % shards:
        raise ValueError(
            f"batch_size ({config.batch_size}) must divide over {info.size} processes x "
            f"{jax.local_device_count()} devices = {shards} shards"
        )
    write = info.is_root
    if not write:
        config = dataclasses.replace(config, progress=False)
    run_dir = Path(run_dir)
    error = None
    if write:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / "config.json", dataclasses.asdict(config))
        except OSError as e:
            error = f"{type(e).__name__}: {e}"
    _raise_on_every_rank(error, info)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    train = simulate(config, config.n_train, config.seed, progress=config.progress)
    test_seed = config.seed + TEST_SEED_OFFSET
    test = simulate(config, config.n_test, test_seed, progress=config.progress)
    timings["simulate_s"] = time.perf_counter() - t0

    objects = {}
    for name, data in (("train", train), ("test", test)):
        if name == "train" and config.fcn_input != "epie":
            continue
        objects[name], timings[f"epie_{name}_s_per_specimen"] = epie_objects(
            config, data.patterns, progress=config.progress
        )
    raw_train = fcn_inputs(config, train.patterns, objects.get("train"))
    standardize = Standardizer(raw_train)
    x_train = standardize(raw_train)
    x_test = standardize(fcn_inputs(config, test.patterns, objects["test"]))
    del raw_train

    epie_test = epie_potential(config, objects["test"])
    residual = config.fcn_input == "epie" and config.residual
    bases = {}
    if residual:  # the network learns ePIE's error, not the potential
        bases = {"train_base": epie_potential(config, objects["train"]), "test_base": epie_test}
    t0 = time.perf_counter()
    model, params, history = train_fcn(
        config,
        x_train,
        train.targets,
        x_test,
        test.targets,
        progress=config.progress,
        info=info,
        **bases,
    )
    timings["train_s"] = time.perf_counter() - t0

    predict(model, params, x_test)  # compile the timed shapes outside the clock
    t0 = time.perf_counter()
    fcn = predict(model, params, x_test)
    fcn = np.asarray(lowpass(residual_answer(epie_test, fcn) if residual else fcn, config))
    timings["fcn_s_per_specimen"] = (time.perf_counter() - t0) / config.n_test
    timings["epie_s_per_specimen"] = timings["epie_test_s_per_specimen"]
    # what a specimen costs each method end to end: FCN(ePIE) reads ePIE's answer
    timings["fcn_pipeline_s_per_specimen"] = timings["fcn_s_per_specimen"] + (
        timings["epie_s_per_specimen"] if config.fcn_input == "epie" else 0.0
    )
    label = "FCN(ePIE)" if config.fcn_input == "epie" else "FCN(CBED)"
    predictions = {label: fcn, "ePIE": epie_test}
    refine, chosen_slices = {}, {}
    if config.refine_iters:  # each rank refines its block of the specimens
        share = rank_slice(config.n_test, info, equal=False)
        refined, chosen, timings["refine_s_per_specimen"] = refine_potentials(
            config, test.patterns[share], epie_test[share], progress=config.progress
        )
        if info.size > 1:
            blocks = info.comm.allgather((refined, chosen))
            refined = np.concatenate([b[0] for b in blocks])
            chosen = np.concatenate([b[1] for b in blocks])
        predictions["ePIE+MS"] = refined
        chosen_slices["ePIE+MS_slices"] = chosen  # the thickness each fit chose, in slices
        off = chosen * config.dz - test.thickness
        refine = {
            "iters_per_thickness": config.refine_iters,
            "per_slice": config.refine_per_slice,
            "thickness_right_fraction": float(np.mean(np.abs(off) < 1e-3)),
            "thickness_within_one_slice_fraction": float(np.mean(np.abs(off) < config.dz + 1e-3)),
        }
    errors = {name: relative_errors(p, test.targets) for name, p in predictions.items()}

    results = {
        "n_train": config.n_train,
        "n_test": config.n_test,
        "n_parameters": int(sum(np.size(x) for x in jax.tree.leaves(params))),
        "seeds": {"train": config.seed, "test": test_seed},
        "input_standardization": {"mean": standardize.mean, "std": standardize.std},
        "summary": {name: summarize(e, test, config) for name, e in errors.items()},
        "fcn_method": label,
        "residual": residual,
        "fcn_better_fraction": float(np.mean(errors[label] < errors["ePIE"])),
        "refine": refine,
        "history": history,
        "timings": timings,
    }
    if not write:
        return {**results, "run_dir": str(run_dir)}
    write_json(run_dir / "results.json", results)
    np.savez_compressed(
        run_dir / "test_predictions.npz",
        truth=test.targets,
        thickness=test.thickness,
        material=test.material,
        **predictions,
        **chosen_slices,
    )
    plot_training(history, run_dir / "training.png")
    k = config.n_examples
    if k:
        pick = np.linspace(0, config.n_test - 1, k).astype(int)
        titles = [f"{config.materials[test.material[i]]}, {test.thickness[i]:g} Å" for i in pick]
        plot_examples(
            np.log10(test.patterns[pick, 0] + 1e-6),
            test.targets[pick],
            {name: p[pick] for name, p in predictions.items()},
            titles,
            run_dir / "examples.png",
        )
    plot_error_vs_thickness(test.thickness, errors, run_dir / "error_vs_thickness.png")
    return {**results, "run_dir": str(run_dir)}


def format_table(results: dict[str, Any]) -> str:
    """Median relative error per method, overall and per thickness, as text."""
    summary = results["summary"]
    thick = list(summary["ePIE"]["by_thickness"])
    head = f"{'method':<10}{'all':>8}" + "".join(f"{t + ' Å':>9}" for t in thick)
    lines = [head, "-" * len(head)]
    for name, s in summary.items():
        row = f"{name:<10}{s['all']['median']:>8.3f}"
        row += "".join(f"{s['by_thickness'][t]['median']:>9.3f}" for t in thick)
        lines.append(row)
    lines.append("(median relative error of the projected potential on held-out specimens)")
    return "\n".join(lines)


def _default(name: str, show: Callable[[Any], str] = str) -> str:
    """``Config``'s default of field ``name`` for a help string, and ``--tiny``'s if other."""
    return config_default(Config(), tiny_config(), name, show)


def build_parser() -> argparse.ArgumentParser:
    """The command line; every help string shows the default (from :class:`Config`)."""
    full, tiny = Config(), tiny_config()
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument(
        "--tiny",
        action="store_true",
        help=f"smoke-test size: {tiny.n_train} training specimens, {tiny.epochs} epochs "
        f"(default: {full.n_train} specimens, {full.epochs} epochs)",
    )
    parser.add_argument(
        "--out-root", default=None, help=f"parent of the run folder ({_default('out_root')})"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help=f"training epochs ({_default('epochs')})"
    )
    parser.add_argument(
        "--n-train", type=int, default=None, help=f"training specimens ({_default('n_train')})"
    )
    noise = {None: "none, noise-free"}
    parser.add_argument(
        "--dose",
        type=float,
        default=None,
        help="electrons per pattern, Poisson noise "
        f"({_default('dose', lambda v: noise.get(v, str(v)))})",
    )
    parser.add_argument("--seed", type=int, default=None, help=f"random seed ({_default('seed')})")
    parser.add_argument(
        "--fcn-input",
        choices=("epie", "cbed"),
        default=None,
        help="what the network reads: epie (the ePIE object) or cbed (the raw CBED stack) "
        f"({_default('fcn_input')})",
    )
    parser.add_argument(
        "--bottleneck",
        choices=("conv", "dense"),
        default=None,
        help=f"U-Net bottleneck; use dense with --fcn-input cbed ({_default('bottleneck')})",
    )
    parser.add_argument(
        "--refine-iters",
        type=int,
        default=None,
        help="L-BFGS iterations of ePIE+MS per thickness, 0: no ePIE+MS "
        f"({_default('refine_iters')})",
    )
    parser.add_argument(
        "--identical-slices",
        action="store_true",
        help="ePIE+MS without its per-slice stage (default: with it)",
    )
    shown = {True: "shown", False: "hidden"}.get
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help=f"hide progress bars ({_default('progress', shown)})",
    )
    return parser


def _config(args: argparse.Namespace) -> Config:
    config = tiny_config() if args.tiny else Config()
    changes = {
        "out_root": args.out_root,
        "epochs": args.epochs,
        "n_train": args.n_train,
        "dose": args.dose,
        "seed": args.seed,
        "fcn_input": args.fcn_input,
        "bottleneck": args.bottleneck,
        "refine_iters": args.refine_iters,
    }
    config = dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
    if args.identical_slices:
        config = dataclasses.replace(config, refine_per_slice=False)
    if args.no_progress:
        config = dataclasses.replace(config, progress=False)
    return config


def parse_config(argv: list[str] | None = None) -> Config:
    """The config the command-line flags ask for (not validated, nothing checked on disk)."""
    return _config(build_parser().parse_args(argv))


def main(argv: list[str] | None = None) -> Path:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = _config(args)
    try:
        config.validate()
    except ValueError as err:
        parser.error(f"bad config: {err}")  # exit status 2, nothing written
    info = bootstrap()
    # rank 0 alone writes: it checks, before any work (creates nothing); a failure ends
    # every rank with status 2
    ranks = {"is_root": info.is_root, "comm": info.comm}
    root_check(parser, lambda: check_output_dir(config.out_root), **ranks)
    run_dir, error = None, None
    if info.is_root:
        try:
            run_dir = str(make_run_dir(config.out_root, config.run_name))
        except OSError as e:
            error = f"cannot make a run folder under {config.out_root}: {type(e).__name__}: {e}"
    exit_2_on_every_rank(parser, error, **ranks)
    if info.size > 1:  # one folder, rank 0's
        run_dir = info.comm.bcast(run_dir, root=0)
    run_dir = Path(run_dir)
    note_run_folder(run_dir)  # every rank: the one that reports Ctrl-C names it
    t0 = time.perf_counter()
    results = train_and_evaluate(config, run_dir, info=info)
    if not info.is_root:
        return run_dir
    print(format_table(results))
    t = results["timings"]
    print(
        f"{results['fcn_method']} better than ePIE on {results['fcn_better_fraction']:.0%} of "
        f"specimens; per specimen: {results['fcn_method']} "
        f"{1e3 * t['fcn_pipeline_s_per_specimen']:.2f} ms (network "
        f"{1e3 * t['fcn_s_per_specimen']:.2f} ms), "
        f"ePIE ({config.epie_iters} iterations) {1e3 * t['epie_s_per_specimen']:.1f} ms"
    )
    if results["refine"]:
        print(
            f"ePIE+MS: {1e3 * t['refine_s_per_specimen']:.0f} ms per specimen on top of ePIE "
            f"({len(range(config.slices[0], config.slices[1] + 1))} thicknesses x "
            f"{config.refine_iters} L-BFGS iterations"
            f"{', then per slice' if config.refine_per_slice else ''}); thickness right on "
            f"{results['refine']['thickness_right_fraction']:.0%}, within one slice on "
            f"{results['refine']['thickness_within_one_slice_fraction']:.0%}"
        )
    print(f"{time.perf_counter() - t0:.1f} s; run folder {run_dir}")
    return run_dir


if __name__ == "__main__":
    interruptible(main)
