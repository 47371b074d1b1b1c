"""Command-line helpers shared by the experiments and benchmarks.

Usage errors end a run before any work with argparse's one-line ``error:`` and exit status
2. Under MPI only rank 0 writes, so rank 0 checks and every rank exits together: none is
left waiting in a collective for a rank that has stopped.

Ctrl-C (SIGINT) ends a command run through :func:`interruptible` with one line on stderr
instead of a traceback, and exit status 130 (128 + SIGINT, the shell's convention): the
line names the run folder if one was made (the command reports it with
:func:`note_run_folder` once it exists) and, for a command that resumes, the command that
resumes it. Under MPI rank 0 prints it (see :func:`interruptible`). Nothing is deleted:
what the run wrote stays.
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import functools
import gc
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

# MPI launchers' variables for this process's rank and the job's size (bootstrap's lists)
from jaxsci.parallel.bootstrap import _RANK_VARS, _SIZE_VARS

__all__ = [
    "INTERRUPTED",
    "MPI_REPORT_GRACE_S",
    "QUIET_INTERRUPT_ENV",
    "config_default",
    "exit_2_on_every_rank",
    "interrupt_message",
    "interruptible",
    "note_run_folder",
    "root_check",
]

T = TypeVar("T")

#: Exit status of a run ended by Ctrl-C: 128 + SIGINT, what a shell reports for it.
INTERRUPTED = 128 + int(signal.SIGINT)
#: Set (to anything but "" or "0") in the environment of a child process whose parent
#: reports the interruption itself (``experiments.data_parallel.run --all``'s layouts):
#: the child exits 130 without a line of its own.
QUIET_INTERRUPT_ENV = "JAXSCI_INTERRUPT_QUIET"

#: Seconds a rank other than 0 waits, after Ctrl-C, for rank 0 to report it and end the job
#: (mpirun then ends this rank) before it reports it itself: rank 0 may never see its own.
MPI_REPORT_GRACE_S = 3.0

_run_folder: list[Path] = []  # the run folder of this invocation, once made (at most one)
# redeliveries of a swallowed Ctrl-C, and whether each was sent (see interruptible)
_pending: list[tuple[threading.Timer, threading.Event]] = []


def exit_2_on_every_rank(
    parser: argparse.ArgumentParser, error: str | None, *, is_root: bool = True, comm: Any = None
) -> None:
    """Rank 0's ``error`` (``None``: none) ends every rank with status 2: rank 0 through
    ``parser.error``, the others quietly. ``comm``: an mpi4py communicator, or None for
    one process."""
    if comm is not None and comm.Get_size() > 1:
        error = comm.bcast(error, root=0)
    if error is not None:
        if is_root:
            parser.error(error)
        raise SystemExit(2)


def root_check(
    parser: argparse.ArgumentParser,
    check: Callable[[], object],
    *,
    is_root: bool = True,
    comm: Any = None,
    prefix: str = "",
) -> None:
    """Run ``check`` on rank 0 (e.g. ``lambda: check_output_dir(root)``); its ``ValueError``
    is a usage error that ends every rank (:func:`exit_2_on_every_rank`)."""
    error = None
    if is_root:
        try:
            check()
        except ValueError as exc:
            error = f"{prefix}{exc}"
    exit_2_on_every_rank(parser, error, is_root=is_root, comm=comm)


def config_default(full: Any, tiny: Any, name: str, show: Callable[[Any], str] = str) -> str:
    """The default of config field ``name`` for a help string (``full``'s), and the
    ``--tiny`` config's when it differs: ``"default 5; --tiny: 1"``."""
    a, b = show(getattr(full, name)), show(getattr(tiny, name))
    return f"default: {a}" + ("" if a == b else f"; --tiny: {b}")


# --------------------------------------------------------------------------- Ctrl-C


def note_run_folder(path: str | Path) -> None:
    """Report this invocation's run folder ``path`` once it exists (under MPI on every rank
    that knows it: another rank may have to report): if the run is interrupted later,
    :func:`interruptible`'s line names it (a folder that does not exist is not named)."""
    _run_folder[:] = [Path(path)]


def _rank_size() -> tuple[int, int]:
    """This process's MPI rank and the job's size (``(0, 1)`` without a launcher):
    mpi4py's if it is in use, else the launcher's environment (``bootstrap``'s variables)."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        return int(mpi.COMM_WORLD.Get_rank()), int(mpi.COMM_WORLD.Get_size())
    rank = next((int(os.environ[v]) for v in _RANK_VARS if os.environ.get(v, "").isdigit()), 0)
    size = next((int(os.environ[v]) for v in _SIZE_VARS if os.environ.get(v, "").isdigit()), 1)
    return rank, size


def _shown(path: str | Path) -> str:
    """``path`` relative to the current folder when it lies under it, else as given."""
    path = Path(path)
    if path.is_absolute():
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)
    return str(path)


def _command(argv: list[str]) -> list[str]:
    """The command line that started this process, as one would type it again: the
    interpreter, ``-m`` and the module (or the script), ``argv``; under an MPI launcher
    prefixed by ``mpirun -n <size>``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    target = ["-m", spec.name] if spec is not None and spec.name else [_shown(sys.argv[0])]
    cmd = [_shown(sys.executable), *target, *argv]
    size = _rank_size()[1]
    if size > 1:
        local = Path(sys.executable).with_name("mpirun")
        cmd = [_shown(local) if local.exists() else "mpirun", "-n", str(size), *cmd]
    return cmd


def _with_flag(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag value`` replacing every ``flag X`` / ``flag=X`` in it."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return [*out, flag, value]


def _close_progress_bars() -> None:
    """Close the tqdm bars still open (one whose frame outlived the interruption), so that
    the line after them starts on a line of its own."""
    std = sys.modules.get("tqdm.std")
    if std is not None:
        for bar in list(getattr(std.tqdm, "_instances", ())):
            bar.close()


def _redeliver_interrupt(hook: Callable[[Any], object], unraisable: Any) -> None:
    """``sys.unraisablehook`` while :func:`interruptible` runs: a Ctrl-C whose
    ``KeyboardInterrupt`` was raised where Python can only report it (a ``gc`` callback,
    such as JAX's, or a ``__del__``: "Exception ignored in ...", and the run went on) is
    delivered to the main thread again; anything else goes to ``hook``."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        # from another thread, once this hook (and the callback) has returned: raised now,
        # it would be reported here again. Recorded, so that a main returning before the
        # timer fires still ends as interrupted (and the timer is cancelled).
        fired = threading.Event()

        def fire() -> None:
            fired.set()
            _thread.interrupt_main()

        timer = threading.Timer(0.01, fire)
        _pending.append((timer, fired))
        timer.start()
    else:
        hook(unraisable)


def _ignore(*_: Any) -> None:
    """A hook that reports nothing."""


def interrupt_message(resume_flag: str | None = None, argv: list[str] | None = None) -> str:
    """The line :func:`interruptible` prints: the run folder noted by
    :func:`note_run_folder` (if it exists) and, with ``resume_flag`` (the flag that names
    the folder to resume, e.g. ``--workdir``), the command that resumes the run: this one
    (``argv``, default ``sys.argv[1:]``) with ``resume_flag <folder>``."""
    folder = _run_folder[0] if _run_folder and _run_folder[0].is_dir() else None
    if folder is None:
        return "interrupted; no run folder had been made"
    shown = _shown(folder)
    if resume_flag is None:
        return (
            f"interrupted; its files so far are in {shown} (this command does not resume: a "
            "rerun starts afresh)"
        )
    argv = sys.argv[1:] if argv is None else list(argv)
    resume = shlex.join(_command(_with_flag(argv, resume_flag, shown)))
    return f"interrupted; its files so far are in {shown}; resume with: {resume}"


def interruptible(
    main: Callable[..., T], *args: Any, resume_flag: str | None = None, **kwargs: Any
) -> T:
    """``main(*args, **kwargs)``, its return value passed through; Ctrl-C
    (``KeyboardInterrupt``) ends it with :func:`interrupt_message` on stderr (none when
    :data:`QUIET_INTERRUPT_ENV` is set) and ``SystemExit(130)``, no traceback. Under MPI
    rank 0 prints it; another rank only when rank 0 has not ended the job within
    :data:`MPI_REPORT_GRACE_S` (it cannot when stuck in a collective).

    Every other exception, ``SystemExit`` included, propagates unchanged. The line is
    printed after the interrupted frames are released and any tqdm bar still open is closed
    (its last state), so it starts a line of its own; after it, ``absl`` logging (JAX,
    Orbax) shows only critical records, and exceptions of other threads and finalizers are
    not reported: the background work of a checkpoint save cut short fails as the process
    exits (the folder keeps Orbax's unfinished ``*.orbax-checkpoint-tmp``, which a resume
    removes). After the first Ctrl-C a second one ends the process at once.
    Under MPI every rank leaves at once (``os._exit(130)``, skipping ``MPI_Finalize``,
    which would wait forever for a rank stuck in a collective).
    ``resume_flag``: see :func:`interrupt_message` (``None``: the command does not resume).
    """
    _run_folder.clear()
    _pending.clear()
    hook = sys.unraisablehook
    sys.unraisablehook = functools.partial(_redeliver_interrupt, hook)
    try:
        result = main(*args, **kwargs)
        for timer, _ in _pending:  # a redelivery not sent yet: main finished first
            timer.cancel()
            timer.join()
        if any(fired.is_set() for _, fired in _pending):
            time.sleep(1.0)  # one already sent arrives here (and ends as interrupted)
        return result
    except KeyboardInterrupt:
        pass
    finally:
        sys.unraisablehook = hook
        for timer, _ in _pending:
            timer.cancel()
    # out of the except block: the traceback and its frames are gone (bars close now)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    gc.collect()
    _close_progress_bars()
    # work cut short in the background (an Orbax save: its threads, event loops) fails as
    # the interpreter shuts down, and would say so with tracebacks after the line: no news
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    sys.unraisablehook = threading.excepthook = _ignore
    rank, size = _rank_size()
    if rank > 0 and size > 1:
        # rank 0 reports and leaves, and mpirun ends this rank meanwhile; unless rank 0 is
        # stuck in a collective with a rank that left it (in a compiled step, where its
        # own Ctrl-C is never seen): then it never reports, and this rank does
        time.sleep(MPI_REPORT_GRACE_S)
    if os.environ.get(QUIET_INTERRUPT_ENV, "") in ("", "0"):
        print(interrupt_message(resume_flag), file=sys.stderr, flush=True)
    if size > 1:
        # MPI_Finalize at exit would wait for a rank stuck in a collective with this one:
        # leave now, mpirun ends the others
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(INTERRUPTED)
    raise SystemExit(INTERRUPTED)
