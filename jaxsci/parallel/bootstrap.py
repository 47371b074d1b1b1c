"""Process bootstrap: who am I (rank, size, local devices), my RNG stream, my data shard.

``bootstrap()`` works in three settings without code changes:

* a plain ``python script.py`` with or without mpi4py installed: rank 0 of 1, ``comm=None``;
* ``mpirun -n N python script.py`` (MPICH, Open MPI, MVAPICH) or ``srun``: mpi4py's
  ``COMM_WORLD`` (mpi4py must then be importable, else a clear error);
* an explicit communicator passed by the caller (e.g. a split of ``COMM_WORLD``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

import jax

from jaxsci._keys import as_key

__all__ = [
    "ProcessInfo",
    "bootstrap",
    "launcher_size",
    "rank_key",
    "rank_slice",
    "rank_shard",
]

# Environment variables set by MPI launchers / Slurm for every started process.
_SIZE_VARS = (
    "PMI_SIZE",  # MPICH hydra, Intel MPI, Slurm --mpi=pmi2
    "OMPI_COMM_WORLD_SIZE",  # Open MPI
    "PMIX_SIZE",  # PMIx launchers
    "MV2_COMM_WORLD_SIZE",  # MVAPICH2
)
# ... and the rank of this process, in the same order (``experiments._cli`` reads both).
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")


@dataclass(frozen=True)
class ProcessInfo:
    """This process's place in the job.

    Attributes:
      rank: index of this process in ``comm`` (0 when single-process).
      size: number of processes in ``comm`` (1 when single-process).
      local_device_count: JAX devices visible to this process (``jax.local_device_count()``).
      comm: the mpi4py communicator, or ``None`` when running without MPI.
    """

    rank: int
    size: int
    local_device_count: int
    comm: Any | None = field(default=None, compare=False, repr=False)

    @property
    def is_root(self) -> bool:
        """True on rank 0 (the rank that writes files)."""
        return self.rank == 0

    @property
    def global_device_count(self) -> int:
        """Devices over all processes, assuming every process sees the same count."""
        return self.size * self.local_device_count

    def barrier(self) -> None:
        """Block until every rank gets here (no-op without MPI)."""
        if self.comm is not None and self.size > 1:
            self.comm.Barrier()


def launcher_size() -> int:
    """Process count announced by an MPI launcher or ``srun`` in the environment (1 if none)."""
    return _launcher_size_source()[0]


def _launcher_size_source() -> tuple[int, list[str]]:
    """:func:`launcher_size` and the environment variables it was read from (``NAME=value``;
    none when no launcher variable is set)."""
    for var in _SIZE_VARS:
        if var in os.environ:
            return int(os.environ[var]), [f"{var}={os.environ[var]}"]
    if "SLURM_STEP_ID" in os.environ and "SLURM_NTASKS" in os.environ:
        names = ("SLURM_NTASKS", "SLURM_STEP_ID")
        return int(os.environ["SLURM_NTASKS"]), [f"{v}={os.environ[v]}" for v in names]
    return 1, []


def _stale_hint(source: list[str]) -> str:
    """What to say about launcher variables that may not belong to this process."""
    names = " ".join(item.split("=", 1)[0] for item in source)
    return (
        f"the expected size comes from {', '.join(source)} in the environment, which may be "
        "left over from an enclosing launcher's shell (a script started with plain python "
        "from inside an mpirun / srun / salloc job, or a variable exported by hand): to run "
        f"as one process, unset {'them' if len(source) > 1 else 'it'} (unset {names})"
    )


def bootstrap(comm: Any | None = None) -> ProcessInfo:
    """Find this process's rank, the process count and the local devices.

    Args:
      comm: an mpi4py communicator to use. Default: ``MPI.COMM_WORLD`` when the process was
        started by an MPI launcher (or mpi4py is already imported), else no MPI at all.

    Returns:
      A :class:`ProcessInfo`.

    Raises:
      RuntimeError: started by a launcher with several processes but mpi4py is missing, or
        mpi4py's MPI library disagrees with the launcher (e.g. Open MPI's mpirun with an
        MPICH-built mpi4py), which would otherwise silently run N independent copies. The
        expected size is read from the environment (``PMI_SIZE``, ``OMPI_COMM_WORLD_SIZE``,
        ``PMIX_SIZE``, ``MV2_COMM_WORLD_SIZE``, or ``SLURM_NTASKS`` inside a Slurm step), so
        the message names the variable it came from: one left over from an enclosing
        launcher's shell (``PMI_SIZE=2 python script.py``) gives the same mismatch.
    """
    n_local = jax.local_device_count()
    expected, source = _launcher_size_source()
    if comm is None:
        if expected > 1 or "mpi4py.MPI" in sys.modules:
            try:
                from mpi4py import MPI
            except ImportError as err:
                raise RuntimeError(
                    f"started by an MPI launcher with {expected} processes but mpi4py is not "
                    "importable: install the 'mpi' extra (mpich, mpi4py, mpi4jax); or, if "
                    f"this process was not started by a launcher, {_stale_hint(source)}"
                ) from err
            comm = MPI.COMM_WORLD
            if comm.Get_size() != expected and expected > 1:
                raise RuntimeError(
                    f"the environment announces {expected} processes but mpi4py's COMM_WORLD "
                    f"has size {comm.Get_size()}. Either this process was not started by that "
                    f"launcher: {_stale_hint(source)}; or mpirun and mpi4py come from "
                    "different MPI libraries (use the mpirun that belongs to the MPI mpi4py "
                    "was built with)"
                )
        else:
            return ProcessInfo(rank=0, size=1, local_device_count=n_local, comm=None)
    return ProcessInfo(
        rank=int(comm.Get_rank()), size=int(comm.Get_size()), local_device_count=n_local, comm=comm
    )


def rank_key(key: jax.Array | int, info: ProcessInfo) -> jax.Array:
    """A PRNG key for this rank: ``fold_in(key, rank)``; distinct per rank, reproducible.

    Args:
      key: a JAX PRNG key (typed or raw uint32) or an integer seed (a Python or NumPy int
        or a 0-d integer array), the same on every rank.
    """
    if key is None:
        raise ValueError("rank_key: key must be a PRNG key or an int seed >= 0, got None")
    return jax.random.fold_in(as_key(key, "rank_key"), info.rank)


def rank_slice(n: int, info: ProcessInfo, *, equal: bool = True) -> slice:
    """This rank's contiguous block of ``range(n)``.

    Args:
      n: number of items (samples, labels, ...) to split over ``info.size`` ranks.
      equal: require equal shards (ValueError if ``n`` does not divide); with ``False`` the
        first ``n % size`` ranks get one extra item.

    Returns:
      A ``slice`` into a sequence of length ``n``; blocks are ordered by rank and cover it.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    size, rank = info.size, info.rank
    if equal:
        if n % size:
            raise ValueError(
                f"{n} items do not divide over {size} ranks (remainder {n % size}); "
                f"use a multiple of {size} or equal=False"
            )
        per = n // size
        return slice(rank * per, (rank + 1) * per)
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def rank_shard(x: Any, info: ProcessInfo, *, equal: bool = True) -> Any:
    """This rank's block of ``x`` along axis 0.

    ``x``: an array, a pytree of equal-length arrays (a tuple such as ``(X, y)`` is a pytree:
    each array is split), or a ``list`` / ``range`` of items (the items are split).
    """
    seq = isinstance(x, list | range)
    leaves = [x] if seq else jax.tree.leaves(x)
    if not leaves:
        return x
    n = len(leaves[0])
    lengths = {len(leaf) for leaf in leaves}
    if len(lengths) > 1:
        raise ValueError(f"leaves disagree on their leading length: {sorted(lengths)}")
    sl = rank_slice(n, info, equal=equal)
    if seq:
        return x[sl]
    return jax.tree.map(lambda a: a[sl], x)
