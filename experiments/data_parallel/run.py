"""Data-parallel digits: run one layout, or all four and compare their loss curves.

# all four layouts (1/2 processes x 1/4 simulated devices), JSON + PNG in a run folder
.venv/bin/python -m experiments.data_parallel.run --all
# one layout in the current job (what --all launches)
.venv/bin/mpirun -n 2 .venv/bin/python -m experiments.data_parallel.run --out curve.json

All layouts see the same global batches, so their curves agree to float32 rounding: 2
processes x 1 device differ from 1 x 1 by ~1e-8 (a two-term sum in another order); with 4
devices the per-device means add another rounding (~1e-6), which Adam's normalisation of
near-zero gradients amplifies late in training (~1e-4 after 300 steps, loss ~1e-2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from experiments._cli import QUIET_INTERRUPT_ENV, interruptible, note_run_folder, root_check
from experiments.data_parallel.config import Config, tiny

LAYOUTS = [(1, 1), (1, 4), (2, 1), (2, 4)]  # (processes, devices per process)
ROOT = "runs"  # default parent of --all's run folder


def _config(args: argparse.Namespace) -> Config:
    base = tiny() if args.tiny else Config()
    if args.steps is None:
        return base
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    return dataclasses.replace(base, steps=args.steps)


def mllog_path(out: str | Path) -> Path:
    """The MLPerf-style event log written beside a layout's curve ``out``."""
    return Path(out).with_suffix(".mllog")


def run_one(args: argparse.Namespace) -> None:
    from experiments.data_parallel.train import train_and_evaluate
    from jaxsci.parallel import bootstrap
    from jaxsci.train import MLLogger, time_to_train, write_json

    info = bootstrap()
    log = MLLogger(mllog_path(args.out) if args.out else None, is_root=info.is_root)
    t0 = time.perf_counter()
    result = train_and_evaluate(_config(args), info=info, mllog=log, progress=not args.no_progress)
    result["wall_s"] = time.perf_counter() - t0
    if not info.is_root:
        return
    if args.out:
        ttt = time_to_train(mllog_path(args.out))
        result["time_to_train"] = ttt._asdict()
        write_json(args.out, result)  # strict JSON: NaN/inf as null (read back as NaN)
    losses = result["losses"]
    print(
        f"{info.size} process(es): {len(losses)} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
        f"test accuracy {result['final_test_accuracy']:.3f}, {result['wall_s']:.1f} s"
        + (
            f"; time to train {ttt.time_to_train_s:.2f} s"
            f" ({'target reached' if ttt.success else 'target not reached'})"
            f"; curve written to {args.out}"
            if args.out
            else ""
        )
    )


def run_all(args: argparse.Namespace) -> Path:
    from jaxsci.train import make_run_dir, write_metrics

    # absolute: the child processes run in the repository root
    run_dir = make_run_dir(args.root or ROOT, "data_parallel").resolve()
    note_run_folder(run_dir)
    root = Path(__file__).resolve().parents[2]
    mpirun = str(Path(sys.executable).with_name("mpirun"))
    curves = {}
    for procs, devs in LAYOUTS:
        name = f"{procs}proc_{devs}dev"
        out = run_dir / f"{name}.json"
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devs}")
        env["JAX_PLATFORMS"] = "cpu"
        env[QUIET_INTERRUPT_ENV] = "1"  # on Ctrl-C this process prints the one line
        cmd = [sys.executable, "-m", "experiments.data_parallel.run", "--out", str(out)]
        cmd += ["--steps", str(_config(args).steps)] + (["--tiny"] if args.tiny else [])
        cmd += ["--no-progress"] if args.no_progress else []
        if procs > 1:
            cmd = [mpirun, "-n", str(procs)] + cmd
        print(f"[{name}] {' '.join(cmd[-6:])}", flush=True)
        subprocess.run(cmd, cwd=root, env=env, check=True)
        curves[name] = _null_as_nan(json.loads(out.read_text()))
    ref = np.array(curves["1proc_1dev"]["losses"])
    summary = {
        "config": dataclasses.asdict(_config(args)),
        "layouts": {
            name: {
                "processes": c["processes"],
                "devices_per_process": c["devices_per_process"],
                "final_loss": c["losses"][-1],
                "final_test_accuracy": c["final_test_accuracy"],
                "max_abs_loss_diff_vs_1proc_1dev": _max_diff(c["losses"], ref),
                "max_abs_loss_diff_first_100_steps": _max_diff(c["losses"][:100], ref[:100]),
                "wall_s": c["wall_s"],
                "time_to_train": c["time_to_train"],
            }
            for name, c in curves.items()
        },
    }
    summary["scaling"] = scaling_summary(curves)
    write_metrics(run_dir, summary)
    _plot(curves, run_dir / "loss_curves.png")
    for name, s in summary["layouts"].items():
        print(
            f"{name}: final loss {s['final_loss']:.4f}, test acc {s['final_test_accuracy']:.3f}, "
            f"max |loss - 1proc_1dev| {s['max_abs_loss_diff_vs_1proc_1dev']:.2e} "
            f"(first 100 steps {s['max_abs_loss_diff_first_100_steps']:.2e}), "
            f"{s['wall_s']:.1f} s, time to train {s['time_to_train']['time_to_train_s']:.2f} s"
            f" ({'reached' if s['time_to_train']['success'] else 'not reached'})"
        )
    eff = summary["scaling"]["strong_efficiency_by_workers"]
    print(
        f"strong-scaling efficiency by {summary['scaling']['measure']}: "
        + ", ".join(f"{n} workers {e:.2f}" for n, e in eff.items())
    )
    if summary["scaling"]["basis"]:
        print(summary["scaling"]["basis"])
    print(f"run folder: {run_dir}")
    return run_dir


def scaling_summary(curves: dict[str, dict]) -> dict:
    """Strong scaling (the same global batches on more workers) of the layouts' results.

    Measured by time to train (``run_start`` to ``run_stop``: staging, steps, evaluations;
    no start-up, initialisation or compilation) when every layout reached the target. When
    one missed it, times to train would cover different numbers of steps, so every layout
    is timed over all ``config.steps``: an aborted run's ``time_to_train_s`` (its
    ``run_stop`` follows the last step), a successful run's ``all_steps_s`` (the same span).
    Never ``wall_s``, which is mostly start-up and compilation at these sizes.
    """
    from jaxsci.metrics import scaling_efficiency

    reached = all(c["time_to_train"]["success"] for c in curves.values())
    times = {
        # workers: processes x devices (1, 4, 2, 8)
        c["processes"] * c["devices_per_process"]: (
            c["time_to_train"]["time_to_train_s"]
            if reached or not c["time_to_train"]["success"]
            else c["all_steps_s"]
        )
        for c in curves.values()
    }
    missed = sorted(n for n, c in curves.items() if not c["time_to_train"]["success"])
    return {
        "measure": "time_to_train_s" if reached else "time_over_all_steps_s",
        "basis": ""
        if reached
        else (
            f"{', '.join(missed)} missed the target: strong scaling compares every layout's "
            "time over all steps (aborted runs: their time_to_train_s; the others: "
            "all_steps_s), not time to target and not wall_s (start-up and compilation)"
        ),
        "strong_efficiency_by_workers": scaling_efficiency(times, "strong"),
        "note": "simulated CPU devices share this machine's cores: contention, not scaling",
    }


def _null_as_nan(obj: object) -> object:
    """A layout's JSON as written (NaN/inf as null) with the nulls back as NaN."""
    if isinstance(obj, dict):
        return {k: _null_as_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_null_as_nan(v) for v in obj]
    return float("nan") if obj is None else obj


def _max_diff(losses: list[float], ref: np.ndarray) -> float:
    return float(np.max(np.abs(np.array(losses) - ref)))


def _plot(curves: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4))
    ax, ax2 = fig.subplots(1, 2)
    ref = np.array(curves["1proc_1dev"]["losses"])
    styles = ["-", "--", ":", "-."]
    for (name, c), ls in zip(curves.items(), styles, strict=False):
        losses = np.array(c["losses"])
        ax.plot(np.arange(1, len(losses) + 1), losses, ls, label=name)
        ax2.semilogy(np.arange(1, len(losses) + 1), np.abs(losses - ref) + 1e-12, ls, label=name)
    ax.set(xlabel="step", ylabel="global training loss (cross-entropy)", yscale="log")
    ax.set_title("same global batches, four layouts")
    ax2.set(xlabel="step", ylabel="|loss - loss(1 proc, 1 dev)|")
    ax.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _check_out_on_root(ap: argparse.ArgumentParser, out: str) -> None:
    """One layout: rank 0, which writes ``out``, checks it can; on failure every rank exits
    with status 2 (rank 0 through ``ap.error``, the others quietly; none left waiting)."""
    from jaxsci.parallel import bootstrap
    from jaxsci.train import check_output_file

    info = bootstrap()
    check = lambda: check_output_file(out)  # noqa: E731
    root_check(ap, check, is_root=info.is_root, comm=info.comm, prefix=f"--out {out}: ")


def build_parser() -> argparse.ArgumentParser:
    """The command line; every help string shows the default (from :class:`Config`)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--all", action="store_true", help="run the four layouts and compare (default: one layout)"
    )
    ap.add_argument(
        "--out",
        type=str,
        default=None,
        help="(one layout) write the curve here, its event log beside it (default: not written)",
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"optimizer steps (default: {Config().steps}; --tiny: {tiny().steps})",
    )
    ap.add_argument(
        "--tiny", action="store_true", help="smoke-test configuration (default: full size)"
    )
    ap.add_argument(
        "--out-root",
        "--root",
        dest="root",
        metavar="DIR",
        type=str,
        default=None,
        help=f"(--all) parent of the run folder (default: {ROOT})",
    )
    ap.add_argument(
        "--no-progress",
        action="store_true",
        help="hide progress bars, also those of --all's layouts (default: shown)",
    )
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = build_parser()
    args = ap.parse_args(argv)
    # every check here, before any run folder, training or child process
    try:
        _config(args)
    except ValueError as err:
        ap.error(str(err))
    if args.all and args.out is not None:
        ap.error("--out writes one layout's curve; --all writes its run folder under --out-root")
    if not args.all and args.root is not None:
        ap.error("--out-root is the parent of --all's run folder; one layout writes only --out")
    if args.out is not None and not Path(args.out).resolve().parent.is_dir():
        ap.error(f"--out {args.out}: its folder does not exist")
    if args.all:
        from jaxsci.train import check_output_dir

        try:  # creates nothing
            check_output_dir(args.root or ROOT)
        except ValueError as exc:
            ap.error(f"--out-root: {exc}")
        run_all(args)
    else:
        if args.out is not None:
            _check_out_on_root(ap, args.out)
        run_one(args)


if __name__ == "__main__":
    interruptible(main)
