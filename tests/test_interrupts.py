"""Ctrl-C ends a command with one line on stderr and exit status 130, no traceback.

``experiments._cli.interruptible`` runs every command's ``main``; the subprocess tests send
a real SIGINT to the command's process group (what a terminal's Ctrl-C does) once its run
folder exists, and run the resume command the line prints. They take tens of seconds with
`make test`'s XLA flags, most of it start-up and compiling.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from experiments import _cli
from experiments._cli import INTERRUPTED, interrupt_message, interruptible, note_run_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli_state(monkeypatch):
    """Isolate the helper: one process of no MPI job, a known command line, and what an
    interruption changes for the rest of the process restored afterwards (the SIGINT
    handler, the hooks of unraisable and thread exceptions, absl's log level)."""
    handler = signal.getsignal(signal.SIGINT)
    # as in a terminal: a test run started in the background (nohup, `cmd &` in a script)
    # inherits SIGINT ignored, and Python then installs no handler of its own
    signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    absl = logging.getLogger("absl")
    level = absl.level
    for var in (*_cli._RANK_VARS, *_cli._SIZE_VARS, _cli.QUIET_INTERRUPT_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    monkeypatch.setattr(sys, "argv", ["run.py", "--tiny", "--workdir", "old", "--seed", "3"])
    yield
    signal.signal(signal.SIGINT, handler)
    absl.setLevel(level)  # (clears the logger's cache, as a set attribute would not)
    _cli._run_folder.clear()


def _interrupted_main(folder: Path | None = None):
    def main():
        if folder is not None:
            folder.mkdir()
            note_run_folder(folder)
        raise KeyboardInterrupt

    return main


def test_return_value_and_arguments_pass_through(cli_state):
    assert interruptible(lambda a, b=0: (a, b), 2, b=3) == (2, 3)
    assert interruptible(lambda **kw: kw, resume_flag="--workdir", x=1) == {"x": 1}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("exc", [ValueError("bad"), SystemExit(2), OSError(5, "io")])
def test_other_exceptions_propagate_unchanged(cli_state, exc, capsys):
    def main():
        raise exc

    with pytest.raises(type(exc)) as info:
        interruptible(main, resume_flag="--workdir")
    assert info.value is exc
    assert capsys.readouterr().err == ""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_before_a_run_folder(cli_state, capsys):
    with pytest.raises(SystemExit) as info:
        interruptible(_interrupted_main(), resume_flag="--workdir")
    assert info.value.code == INTERRUPTED == 130
    assert capsys.readouterr().err == "interrupted; no run folder had been made\n"
    # a second Ctrl-C ends the process at once (nothing left to say), and what the
    # interrupted background work reports as the process exits is not shown
    assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
    assert sys.unraisablehook is threading.excepthook is _cli._ignore
    assert not logging.getLogger("absl").isEnabledFor(logging.ERROR)


def test_ctrl_c_names_the_run_folder_and_how_to_resume(cli_state, tmp_path, capsys):
    folder = tmp_path / "run-1"
    with pytest.raises(SystemExit) as info:
        interruptible(_interrupted_main(folder), resume_flag="--workdir")
    assert info.value.code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    head, resume = err.strip().split("; resume with: ")
    assert head == f"interrupted; its files so far are in {folder}"
    # this command line with --workdir replaced by the run folder
    assert shlex.split(resume)[-5:] == ["--tiny", "--seed", "3", "--workdir", str(folder)]


def test_ctrl_c_of_a_command_that_does_not_resume(cli_state, tmp_path, capsys):
    folder = tmp_path / "run-2"
    with pytest.raises(SystemExit) as info:
        interruptible(_interrupted_main(folder))
    assert info.value.code == 130
    assert capsys.readouterr().err == (
        f"interrupted; its files so far are in {folder} (this command does not resume: a "
        "rerun starts afresh)\n"
    )


def test_the_folder_of_an_earlier_call_is_not_named(cli_state, tmp_path, capsys):
    note_run_folder(tmp_path)  # e.g. a main() called directly before
    with pytest.raises(SystemExit):
        interruptible(_interrupted_main())
    assert capsys.readouterr().err == "interrupted; no run folder had been made\n"


def test_a_folder_noted_but_absent_is_not_named(cli_state, tmp_path):
    note_run_folder(tmp_path / "never-made")
    assert interrupt_message("--workdir") == "interrupted; no run folder had been made"


def test_a_child_whose_parent_reports_prints_nothing(cli_state, monkeypatch, capsys):
    monkeypatch.setenv(_cli.QUIET_INTERRUPT_ENV, "1")
    with pytest.raises(SystemExit) as info:
        interruptible(_interrupted_main())
    assert info.value.code == 130 and capsys.readouterr().err == ""


class _Left(BaseException):
    """What the stand-in for ``os._exit`` raises (the real one would end pytest)."""


@pytest.mark.parametrize("rank", [0, 1])
def test_under_mpi_every_rank_leaves_at_once(cli_state, monkeypatch, tmp_path, rank, capsys):
    """No MPI_Finalize (it waits for a rank stuck in a collective): ``os._exit(130)``. Rank
    0 reports at once; another rank only after the grace in which rank 0's exit makes
    mpirun end it (it reports only when rank 0 was stuck and never did)."""
    monkeypatch.setenv("PMI_RANK", str(rank))
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setattr(_cli, "MPI_REPORT_GRACE_S", 0.5)
    codes = []

    def leave(code):
        codes.append(code)
        raise _Left

    monkeypatch.setattr(_cli.os, "_exit", leave)
    slept = []  # the grace, recorded instead of timed (a loaded box stretches any timing)
    monkeypatch.setattr(_cli.time, "sleep", slept.append)
    folder = tmp_path / "run"
    with pytest.raises(_Left):
        interruptible(_interrupted_main(folder), resume_flag="--workdir")
    assert codes == [130] and slept == ([0.5] if rank else [])
    line = capsys.readouterr().err
    assert line.startswith(f"interrupted; its files so far are in {folder}; resume with: ")
    resume = shlex.split(line.split("; resume with: ")[1])
    local = Path(sys.executable).with_name("mpirun")
    assert resume[:3] == [_cli._shown(local) if local.exists() else "mpirun", "-n", "2"]
    assert resume[-2:] == ["--workdir", str(folder)]


def test_an_interrupt_python_could_only_report_is_delivered_again(cli_state, capsys):
    """A KeyboardInterrupt raised inside a gc callback (JAX registers one) or a __del__ is
    "ignored" by Python, and the run would go on; interruptible delivers it again."""

    class Finalized:
        def __del__(self):
            raise KeyboardInterrupt

    def main():
        obj = Finalized()
        del obj  # the interrupt lands in __del__
        t0 = time.monotonic()
        while time.monotonic() - t0 < 20:  # the redelivered one ends the loop
            pass
        return "went on"

    with pytest.raises(SystemExit) as info:
        interruptible(main)
    assert info.value.code == 130
    err = capsys.readouterr().err
    assert err == "interrupted; no run folder had been made\n" and "ignored" not in err

    # other unraisable exceptions still reach the previous hook
    seen = []
    hook = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        interruptible(lambda: sys.unraisablehook(SimpleNamespace(exc_value=ValueError("x"))))
    finally:
        sys.unraisablehook = hook
    assert [type(u.exc_value) for u in seen] == [ValueError]


# ------------------------------------------------------------------ real commands, real SIGINT


def _start(args: list[str]) -> subprocess.Popen:
    env = dict(
        os.environ,
        PYTHONPATH=".",
        XLA_FLAGS="--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false",
        JAX_PLATFORMS="cpu",
    )
    for var in (*_cli._RANK_VARS, *_cli._SIZE_VARS):
        env.pop(var, None)
    # SIGINT as a terminal gives it: a test run started in the background inherits it
    # ignored and would pass that on; a handler (unlike "ignored") is reset by exec
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, as a terminal job has
        )
    finally:
        signal.signal(signal.SIGINT, old)


def _ctrl_c_when(proc: subprocess.Popen, ready, timeout: float = 240) -> tuple[str, str]:
    """SIGINT to ``proc``'s process group once ``ready()`` holds; its (stdout, stderr)."""
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"ended (status {proc.returncode}) or timed out before ready:\n{err}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def _the_line(err: str) -> str:
    """The interruption line: stderr's last, and the only one of its kind."""
    assert "Traceback" not in err and "ignored" not in err, err
    lines = err.strip().splitlines()
    assert sum(line.startswith("interrupted") for line in lines) == 1, err
    return lines[-1]


@pytest.mark.timeout(300)
def test_hea_order_ctrl_c_names_its_run_folder(tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "experiments.hea_order.run", "--tiny", "--out-root", str(out)]
    proc = _start(cmd)
    _, err = _ctrl_c_when(proc, lambda: any(out.glob("hea_order-*/config.json")))
    assert proc.returncode == 130, err
    (folder,) = out.iterdir()
    assert _the_line(err) == (
        f"interrupted; its files so far are in {folder} (this command does not resume: a "
        "rerun starts afresh)"
    )
    assert (folder / "config.json").is_file()  # what it wrote stays


def _steps(folder: Path) -> list[int]:
    """The complete (finalised) checkpoint steps in ``folder``."""
    return (
        sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit()) if folder.is_dir() else []
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cgan_digits_ctrl_c_prints_a_resume_command_that_continues(tmp_path):
    out = tmp_path / "runs"
    flags = ["--tiny", "--models", "baseline_dcgan", "--steps", "40", "--out-root", str(out)]
    proc = _start([sys.executable, "-m", "experiments.cgan_digits.run", *flags])
    ckpt = lambda: next(out.glob("cgan_digits-*/checkpoints/baseline_dcgan"), Path("-"))  # noqa: E731
    _, err = _ctrl_c_when(proc, lambda: bool(_steps(ckpt())))
    assert proc.returncode == 130, err
    (folder,) = out.iterdir()
    head, resume = _the_line(err).split("; resume with: ")
    assert head == f"interrupted; its files so far are in {folder}"
    args = shlex.split(resume)
    assert args[1:] == ["-m", "experiments.cgan_digits.run", *flags, "--workdir", str(folder)]
    done = _steps(ckpt())[-1]
    assert 0 < done < 40 and (folder / "training_config.json").is_file()

    # the printed command resumes from the checkpoint (the bar starts there, not at 0)
    proc = _start(args)
    _, err = _ctrl_c_when(proc, lambda: _steps(ckpt())[-1] > done)
    assert proc.returncode == 130, err
    assert re.search(rf"\b{done}/40\b", err) and not re.search(r"\b0/40\b", err), err
    assert _the_line(err) == f"{head}; resume with: {resume}"
    assert list(out.iterdir()) == [folder]


MPIRUN = Path(sys.executable).with_name("mpirun")


@pytest.mark.timeout(300)
@pytest.mark.skipif(not MPIRUN.exists(), reason="needs the venv's mpirun (the 'mpi' extra)")
def test_under_mpirun_one_rank_prints_one_line(tmp_path):
    pytest.importorskip("mpi4py")
    curve = tmp_path / "curve.json"
    log = curve.with_suffix(".mllog")
    cmd = [str(MPIRUN), "-n", "2", sys.executable, "-m", "experiments.data_parallel.run"]
    proc = _start([*cmd, "--tiny", "--steps", "100000", "--no-progress", "--out", str(curve)])
    # mpirun forwards the SIGINT to both ranks once the steps have started
    _, err = _ctrl_c_when(proc, lambda: log.is_file() and "run_start" in log.read_text())
    assert proc.returncode == 130, err
    assert _the_line(err) == "interrupted; no run folder had been made"
    assert not curve.exists()
