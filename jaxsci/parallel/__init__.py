"""jaxsci.parallel."""

from jaxsci.parallel.bootstrap import (
    ProcessInfo,
    bootstrap,
    launcher_size,
    rank_key,
    rank_shard,
    rank_slice,
)
from jaxsci.parallel.collectives import Bucket, Segment, allreduce_plan, tree_allreduce
from jaxsci.parallel.data_parallel import (
    DataParallel,
    DataParallelState,
    data_parallel,
    tree_signature,
)
from jaxsci.parallel.flat import FlatLayout
from jaxsci.parallel.mesh import make_mesh
from jaxsci.parallel.precision import (
    DynamicLossScale,
    LossScaleState,
    Policy,
    all_finite,
    get_policy,
)

__all__ = [
    "Bucket",
    "DataParallel",
    "DataParallelState",
    "DynamicLossScale",
    "FlatLayout",
    "LossScaleState",
    "Policy",
    "ProcessInfo",
    "Segment",
    "all_finite",
    "allreduce_plan",
    "data_parallel",
    "get_policy",
    "make_mesh",
    "tree_allreduce",
    "tree_signature",
    "bootstrap",
    "launcher_size",
    "rank_key",
    "rank_shard",
    "rank_slice",
]
