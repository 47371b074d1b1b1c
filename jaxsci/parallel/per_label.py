"""Per-label (ensemble) parallelism: independent models, one per class label.

Each label's model sees only that label's data and never talks to the others, so the
ensemble parallelises three ways without any collective during training:

* stacked on one device: ``jax.vmap`` over a leading label axis of the states and data
  (:func:`group_by_label` builds the padded per-label data, :func:`label_keys` the keys);
* over the devices of a mesh: :func:`shard_over_labels` splits that label axis with
  ``jax.shard_map`` (each device vmaps over its block of labels);
* over MPI ranks: :func:`rank_labels` gives this rank its contiguous block of labels, and
  :func:`gather_over_ranks` collects the results (host arrays, mpi4py ``allgather``) at
  the end (per-rank scalars are stacked into ``[size]``, in one process too).

A label's model depends only on ``fold_in(key, label)`` and its own data, so all three
give the same parameters as training each label alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxsci._checks import is_int_at_least
from jaxsci.parallel.bootstrap import ProcessInfo

__all__ = [
    "gather_over_ranks",
    "group_by_label",
    "label_keys",
    "rank_labels",
    "shard_over_labels",
    "split_labels",
]


def _check_label_set(label_set: Sequence[int] | np.ndarray) -> np.ndarray:
    labels = np.asarray(label_set)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"label_set must be a non-empty 1-D sequence, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if np.unique(labels).size != labels.size:
        raise ValueError(f"label_set has repeated labels: {labels.tolist()}")
    info = np.iinfo(np.int32)
    if labels.min() < info.min or labels.max() > info.max:
        raise ValueError(f"labels must fit in int32, got {labels.min()} .. {labels.max()}")
    return labels.astype(np.int32)


def _label_counts(labels: np.ndarray, label_set: np.ndarray) -> np.ndarray:
    """``[L]`` int32: how many of ``labels`` equal each of ``label_set``."""
    return np.array([np.sum(labels == lab) for lab in label_set], np.int32)


def group_by_label(
    data: np.ndarray, labels: np.ndarray, label_set: Sequence[int], rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stack the rows of each label, padded to the largest group (or to ``rows``).

    Args:
      data: ``[N, ...]`` rows (e.g. images).
      labels: ``[N]`` integer label of each row.
      label_set: the labels to keep, in output order (``[L]``).
      rows: pad every group to this many rows (an int at least the largest group's count;
        None: the largest group's count), so that blocks of labels cut out of one label
        set have the same shape.

    Returns:
      ``(grouped [L, n_max, ...], counts [L])``: ``grouped[i, :counts[i]]`` are the rows of
      ``label_set[i]`` in their original order; the rest is zero padding.

    Raises:
      ValueError: a label in ``label_set`` has no rows, shapes disagree, or ``rows`` is
        smaller than the largest group.
    """
    data = np.asarray(data)
    labels = np.asarray(labels)
    label_set = _check_label_set(label_set)
    if labels.shape != data.shape[:1]:
        raise ValueError(f"labels {labels.shape} do not match data rows {data.shape[:1]}")
    counts = _label_counts(labels, label_set)
    empty = label_set[counts == 0]
    if empty.size:
        raise ValueError(
            f"labels {empty.tolist()} have no data (present labels: {np.unique(labels).tolist()})"
        )
    n_max = int(counts.max())
    if rows is not None:
        if not is_int_at_least(rows, n_max):
            raise ValueError(
                f"rows must be an int >= {n_max}, the largest group's count, got {rows!r}"
            )
        n_max = int(rows)
    grouped = np.zeros((label_set.size, n_max, *data.shape[1:]), data.dtype)
    for i, lab in enumerate(label_set):
        grouped[i, : counts[i]] = data[labels == lab]
    return grouped, counts


def label_keys(key: jax.Array, label_set: Sequence[int]) -> jax.Array:
    """One key per label, ``fold_in(key, label)``: ``[L, ...]`` keys (same on any rank/device)."""
    labels = jnp.asarray(_check_label_set(label_set))
    return jax.vmap(lambda lab: jax.random.fold_in(key, lab))(labels)


def split_labels(label_set: Sequence[int], n_parts: int) -> list[np.ndarray]:
    """Contiguous blocks of ``label_set`` for ``n_parts`` ranks (sizes differ by at most 1).

    Raises:
      ValueError: ``n_parts`` is not an int ``>= 1`` (a bool or a float included), or there
        are more parts (ranks) than labels -- a rank would have nothing to train.
    """
    labels = _check_label_set(label_set)
    if not is_int_at_least(n_parts, 1):
        raise ValueError(f"split_labels: n_parts must be an int >= 1, got {n_parts!r}")
    if n_parts > labels.size:
        raise ValueError(
            f"{n_parts} ranks but only {labels.size} labels: per-label training needs at "
            f"least one label per rank (use at most {labels.size} ranks)"
        )
    return [np.asarray(b, np.int32) for b in np.array_split(labels, n_parts)]


def rank_labels(label_set: Sequence[int], info: ProcessInfo) -> np.ndarray:
    """This rank's block of ``label_set`` (see :func:`split_labels`)."""
    return split_labels(label_set, info.size)[info.rank]


def gather_over_ranks(tree: Any, info: ProcessInfo) -> Any:
    """Every rank's pytree joined along axis 0, in rank order; the result on every rank.

    A leaf with a leading axis is concatenated along it (ranks may hold different numbers
    of rows, e.g. labels). A 0-d leaf (a per-rank scalar, such as a step count) is stacked
    along a new leading axis: ``[info.size]``, rank ``r``'s value at index ``r``. Both rules
    hold in one process too (``info.size == 1`` or no MPI), where a 0-d leaf comes back as
    shape ``(1,)``: the result has the same shapes with and without MPI.

    Host-side (numpy, mpi4py ``allgather``): meant for the end of training, not for a step.
    Leaves come back as numpy arrays.

    Raises:
      ValueError: (the same on every rank) the ranks sent pytrees of different structures,
        or a leaf whose dtype, number of axes or trailing shape (all but the leading axis)
        differs between ranks: named by its path, with the two ranks that differ. Nothing
        is promoted: cast to one dtype on every rank first.
    """
    local = jax.tree.map(np.asarray, jax.device_get(tree))
    if info.comm is None or info.size == 1:
        return jax.tree.map(_stackable, local)
    parts = info.comm.allgather(local)
    structure = jax.tree.structure(parts[0])
    for rank, part in enumerate(parts):
        if jax.tree.structure(part) != structure:  # the same verdict on every rank
            raise ValueError(
                f"gather_over_ranks: rank {rank} sent a pytree of a different structure than "
                f"rank 0 ({jax.tree.structure(part).num_leaves} vs {structure.num_leaves} "
                "leaves, or the same number differently nested)"
            )
    paths = [
        jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(parts[0])[0]
    ]
    per_rank = [jax.tree.leaves(part) for part in parts]
    for i, path in enumerate(paths):
        first = per_rank[0][i]
        for rank in range(1, len(parts)):
            leaf = per_rank[rank][i]
            problem = None
            if leaf.dtype != first.dtype:
                problem = f"dtype {first.dtype} on rank 0 but {leaf.dtype} on rank {rank}"
            elif leaf.ndim != first.ndim or leaf.shape[1:] != first.shape[1:]:
                problem = f"shape {first.shape} on rank 0 but {leaf.shape} on rank {rank}"
            if problem:
                raise ValueError(
                    f"gather_over_ranks: leaf {path or '(the tree)'} has {problem}: the ranks' "
                    "leaves must agree in dtype and in all but their leading axis (a 0-d "
                    "leaf must be 0-d on every rank); cast or reshape before gathering"
                )
    joined = [
        np.concatenate([_stackable(leaves[i]) for leaves in per_rank], axis=0)
        for i in range(len(paths))
    ]
    return jax.tree.unflatten(structure, joined)


def _stackable(x: np.ndarray) -> np.ndarray:
    """``x`` with a leading axis: a 0-d leaf becomes ``[1]`` (stacked over ranks)."""
    return x[None] if x.ndim == 0 else x


def shard_over_labels(
    fn: Callable[..., Any], mesh: Mesh, *, axis_name: str | None = None
) -> Callable[..., Any]:
    """Run ``fn`` (one label's computation) for a stack of labels split over ``mesh``.

    Args:
      fn: ``fn(*args) -> out`` for one label; every argument and output is a pytree whose
        leaves get a leading label axis in the returned function.
      mesh: a 1-D mesh (e.g. ``jaxsci.parallel.make_mesh(axis_name="label")``).
      axis_name: the mesh axis to split labels over (default: the mesh's only axis).

    Returns:
      ``g(*stacked_args) -> stacked_out`` (a jitted program; the inputs are placed on the
      mesh first, from wherever they are). Each device ``vmap``s ``fn`` over its block
      of labels; there is no communication. When the number of labels does not divide the
      mesh size, the stack is padded by repeating the last label and the padding is dropped.
    """
    if axis_name is None:
        if len(mesh.axis_names) != 1:
            raise ValueError(f"give axis_name for a mesh with axes {mesh.axis_names}")
        axis_name = mesh.axis_names[0]
    n_dev = mesh.shape[axis_name]
    spec = P(axis_name)
    explicit = dict(zip(mesh.axis_names, mesh.axis_types, strict=True))[axis_name] == (
        AxisType.Explicit
    )
    inner = jax.shard_map(jax.vmap(fn), mesh=mesh, in_specs=spec, out_specs=spec)

    split, whole = NamedSharding(mesh, spec), NamedSharding(mesh, P())

    @functools.partial(jax.jit, static_argnames="gather")
    def run(*padded: Any, gather: bool) -> Any:
        out = inner(*padded)
        if gather:  # a split axis of n_dev * k rows cannot be cut to n: gather it first
            out = jax.tree.map(lambda x: jax.sharding.reshard(x, whole), out)
        return out

    def g(*args: Any) -> Any:
        leaves = jax.tree_util.tree_flatten_with_path(args)[0]
        if not leaves:
            raise ValueError(
                "shard_over_labels: give at least one stacked argument (an array with a "
                "leading label axis): the number of labels is read from it"
            )
        for path, x in leaves:
            if np.ndim(x) == 0:
                raise ValueError(
                    f"shard_over_labels: every argument leaf needs a leading label axis; "
                    f"argument {path[0].idx}{jax.tree_util.keystr(path[1:])} is a scalar "
                    f"({x!r}): stack it per label (e.g. jnp.full(n_labels, value)) or close "
                    "over it in fn"
                )
        sizes = {np.shape(x)[0] for _, x in leaves}
        if len(sizes) != 1:
            raise ValueError(f"stacked arguments disagree on the label axis: {sorted(sizes)}")
        (n,) = sizes
        pad = -n % n_dev

        def pad_leaf(x):
            return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]) if pad else x

        # placed on the mesh, split over labels, whatever device(s) the inputs were on (on
        # Explicit axes, jax.make_mesh's default, shard_map accepts nothing else)
        padded = jax.device_put(jax.tree.map(pad_leaf, args), split)
        out = run(*padded, gather=explicit and pad > 0)  # unpadded: stays split over labels
        return jax.tree.map(lambda x: x[:n], out) if pad else out

    return g
