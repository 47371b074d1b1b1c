"""Command-line helpers shared by the experiments and benchmarks.

Usage errors end a run before any work with argparse's one-line ``error:`` and exit status
2. Under MPI only rank 0 writes, so rank 0 checks and every rank exits together: none is
left waiting in a collective for a rank that has stopped.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["config_default", "exit_2_on_every_rank", "root_check"]


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
