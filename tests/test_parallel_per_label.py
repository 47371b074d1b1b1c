"""jaxsci.parallel.per_label: gather_over_ranks (0-d leaves, dtype and shape checks across
ranks, the same shapes with and without MPI) and split_labels' count check."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsci.parallel import ProcessInfo, gather_over_ranks, split_labels


class _Comm:
    """Rank 0 of a job whose other ranks send ``others`` (host allgather only)."""

    def __init__(self, *others):
        self.others = others

    def allgather(self, obj):
        return [obj, *self.others]


def test_gather_stacks_scalars_in_one_process_as_over_ranks():
    """A 0-d leaf came back 0-d in one process but crashed under MPI ("zero-dimensional
    arrays cannot be concatenated"): it is now stacked along a new axis, [size], in both."""
    tree = {"w": jnp.ones((3, 2)), "step": jnp.int32(5), "lr": 0.5}
    one = gather_over_ranks(tree, ProcessInfo(0, 1, 1))
    assert one["step"].shape == (1,) and one["step"].dtype == np.int32 and one["step"][0] == 5
    assert one["lr"].shape == (1,)
    assert isinstance(one["w"], np.ndarray) and one["w"].shape == (3, 2)
    other = {"w": np.zeros((1, 2), np.float32), "step": np.int32(7), "lr": np.asarray(0.25)}
    two = gather_over_ranks(tree, ProcessInfo(0, 2, 1, comm=_Comm(other)))
    np.testing.assert_array_equal(two["step"], [5, 7])
    np.testing.assert_array_equal(two["lr"], [0.5, 0.25])
    np.testing.assert_array_equal(two["w"], np.concatenate([np.ones((3, 2)), np.zeros((1, 2))]))
    assert two["w"].dtype == np.float32


@pytest.mark.parametrize(
    ("other", "match"),
    [  # were promoted to float32 / concatenated without a word, or a numpy error
        (
            {"a": {"w": np.ones((1, 2), np.float16)}},
            "dtype float32 on rank 0 but float16 on rank 1",
        ),
        ({"a": {"w": np.ones((1, 3), np.float32)}}, r"shape \(2, 2\) on rank 0 but \(1, 3\)"),
        ({"a": {"w": np.float32(1.0)}}, r"shape \(2, 2\) on rank 0 but \(\) on rank 1"),
    ],
)
def test_gather_refuses_leaves_that_differ_between_ranks(other, match):
    tree = {"a": {"w": jnp.ones((2, 2), jnp.float32)}}
    with pytest.raises(ValueError, match=r"gather_over_ranks: leaf \['a'\]\['w'\] has " + match):
        gather_over_ranks(tree, ProcessInfo(0, 2, 1, comm=_Comm(other)))


@pytest.mark.mpi
def test_gather_over_two_ranks_stacks_scalars_and_checks_dtypes():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    info = ProcessInfo(rank, comm.Get_size(), 1, comm=comm)
    tree = {"w": jnp.full((rank + 1, 2), rank, jnp.float32), "step": jnp.int32(10 + rank)}
    out = gather_over_ranks(tree, info)
    np.testing.assert_array_equal(out["step"], [10, 11])
    np.testing.assert_array_equal(out["w"], [[0, 0], [1, 1], [1, 1]])
    mixed = {"w": jnp.ones((1, 2), jnp.float16 if rank else jnp.float32)}
    with pytest.raises(ValueError, match="dtype float32 on rank 0 but float16 on rank 1"):
        gather_over_ranks(mixed, info)  # on every rank, no promotion


@pytest.mark.parametrize("n_parts", [2.0, True, "2", 0, -1, None])
def test_split_labels_refuses_a_non_integer_count(n_parts):
    """split_labels(labels, 2.0) split in two and True meant one part."""
    with pytest.raises(ValueError, match=r"split_labels: n_parts must be an int >= 1, got"):
        split_labels([3, 1, 2], n_parts)
    assert [b.tolist() for b in split_labels([3, 1, 2], np.int64(2))] == [[3, 1], [2]]


def test_gather_refuses_a_different_structure_naming_the_rank():
    tree = {"w": np.ones((1, 2))}
    other = {"w": np.ones((1, 2)), "b": np.ones(1)}
    with pytest.raises(ValueError, match=r"rank 1 sent a pytree of a different structure .* "
                       r"\(2 vs 1 leaves"):  # fmt: skip
        gather_over_ranks(tree, ProcessInfo(0, 2, 1, comm=_Comm(other)))
