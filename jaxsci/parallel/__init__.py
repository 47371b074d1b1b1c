"""jaxsci.parallel."""

from jaxsci.parallel.bootstrap import (
    ProcessInfo,
    bootstrap,
    launcher_size,
    rank_key,
    rank_shard,
    rank_slice,
)

__all__ = [
    "ProcessInfo",
    "bootstrap",
    "launcher_size",
    "rank_key",
    "rank_shard",
    "rank_slice",
]
