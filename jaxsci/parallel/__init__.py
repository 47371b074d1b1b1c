"""jaxsci.parallel: data parallelism over local devices (jax.sharding) and processes (mpi4jax).

- ``bootstrap()`` -> ``ProcessInfo`` (rank, size, local devices, communicator); ``rank_key``,
  ``rank_slice``, ``rank_shard`` for per-rank RNG streams and data shards.
- ``data_parallel(loss_fn, tx, ...)`` -> ``init / step / params / shard_batch``: flat parameter
  and optimizer buffers, gradients averaged over devices and processes, mixed precision
  (``Policy``, ``get_policy``) and dynamic loss scaling (``DynamicLossScale``).
- ``tree_allreduce`` / ``allreduce_plan``: bucketed mpi4jax all-reduce of a pytree
  (``check_same_tree``: the ranks' trees agree, one small host collective).
- ``make_mesh``: a 1-D mesh over local devices.
- per-label (ensemble) parallelism: ``group_by_label``, ``label_keys``, ``split_labels``,
  ``rank_labels``, ``shard_over_labels`` (label axis of a mesh), ``gather_over_ranks``.
"""

from jaxsci.parallel.bootstrap import (
    ProcessInfo,
    bootstrap,
    launcher_size,
    rank_key,
    rank_shard,
    rank_slice,
)
from jaxsci.parallel.collectives import (
    MAX_MESSAGE_ELEMENTS,
    Bucket,
    Segment,
    allreduce_plan,
    check_same_tree,
    tree_allreduce,
)
from jaxsci.parallel.data_parallel import (
    DataParallel,
    DataParallelState,
    data_parallel,
    tree_signature,
)
from jaxsci.parallel.flat import FlatLayout
from jaxsci.parallel.mesh import make_mesh
from jaxsci.parallel.per_label import (
    gather_over_ranks,
    group_by_label,
    label_keys,
    rank_labels,
    shard_over_labels,
    split_labels,
)
from jaxsci.parallel.precision import (
    DynamicLossScale,
    LossScaleState,
    Policy,
    all_finite,
    get_policy,
)

__all__ = [
    "MAX_MESSAGE_ELEMENTS",
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
    "check_same_tree",
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
    "gather_over_ranks",
    "group_by_label",
    "label_keys",
    "rank_labels",
    "shard_over_labels",
    "split_labels",
]
