"""jaxsci.data.batch_indices / batches and load_diabetes_split."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsci.data import batch_indices, batches, load_diabetes_split


def test_an_epoch_sees_every_row_once_or_drops_only_the_remainder():
    key = jax.random.key(3)
    full = np.asarray(batch_indices(key, 12, 4))
    assert full.shape == (3, 4) and full.dtype == np.int32
    assert sorted(full.ravel()) == list(range(12))
    dropped = np.asarray(batch_indices(key, 14, 4))
    assert dropped.shape == (3, 4) and len(set(dropped.ravel())) == 12  # 2 rows sit out
    kept = np.asarray(batch_indices(key, 14, 4, drop_remainder=False))
    assert kept.shape == (4, 4) and set(kept.ravel()) == set(range(14))  # 2 rows seen twice
    np.testing.assert_array_equal(kept[:3], dropped)  # the same order, completed
    np.testing.assert_array_equal(batch_indices(None, 6, 3), [[0, 1, 2], [3, 4, 5]])
    # a batch over twice the data goes round the order as often as needed (a TypeError from
    # a reshape before), and an int seed is a key
    np.testing.assert_array_equal(
        batch_indices(None, 4, 10, drop_remainder=False), [[0, 1, 2, 3, 0, 1, 2, 3, 0, 1]]
    )
    np.testing.assert_array_equal(batch_indices(3, 14, 4), batch_indices(jax.random.key(3), 14, 4))
    np.testing.assert_array_equal(batch_indices(key, 14, 4), dropped)  # a function of key
    assert not np.array_equal(batch_indices(jax.random.key(4), 14, 4), dropped)


def test_batch_indices_runs_under_jit_and_vmap():
    jitted = jax.jit(batch_indices, static_argnums=(1, 2))
    key = jax.random.key(0)
    np.testing.assert_array_equal(jitted(key, 10, 5), batch_indices(key, 10, 5))
    with pytest.raises(ValueError, match="n is a shape and must be a static int"):
        jax.jit(batch_indices)(key, 10, 5)  # n traced: a clear message, not "got JitTracer"
    keys = jax.random.split(key, 3)
    epochs = jax.vmap(lambda k: batch_indices(k, 10, 5))(keys)
    assert epochs.shape == (3, 2, 5)
    np.testing.assert_array_equal(epochs[1], batch_indices(keys[1], 10, 5))


def test_batches_follow_batch_indices_and_keep_the_structure():
    x = np.arange(20.0).reshape(10, 2)
    y = np.arange(10) * 10
    key = jax.random.key(1)
    got = list(batches({"x": x, "y": y}, 4, key=key, drop_remainder=False))
    idx = np.asarray(batch_indices(key, 10, 4, drop_remainder=False))
    assert len(got) == 3
    for b, rows in zip(got, idx, strict=True):
        assert isinstance(b["x"], np.ndarray)  # NumPy stays on the host
        np.testing.assert_array_equal(b["x"], x[rows])
        np.testing.assert_array_equal(b["y"], y[rows])
        np.testing.assert_array_equal(b["y"], b["x"][:, 0] * 5)  # rows stay paired
    on_device = next(batches((jnp.asarray(x), y), 5))
    assert isinstance(on_device[0], jax.Array) and on_device[0].shape == (5, 2)


def test_batches_placed_with_a_sharding():
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    (bx,) = list(batches((np.ones((4, 3)),), 4, sharding=sharding))
    assert isinstance(bx[0], jax.Array) and bx[0].sharding == sharding


@pytest.mark.multidevice
def test_batches_split_over_four_devices():
    assert jax.device_count() >= 4
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    x = np.arange(32.0).reshape(16, 2)
    for b in batches(x, 8, key=jax.random.key(0), sharding=sharding):
        assert len(b.addressable_shards) == 4
        assert {s.data.shape for s in b.addressable_shards} == {(2, 2)}
    # a batch that cannot split over the devices fails at the call (at next() before)
    with pytest.raises(ValueError, match=r"shape \(6, 2\) does not divide over the sharding"):
        batches(x, 6, sharding=sharding)


def test_bad_calls_fail_at_the_call_not_at_the_first_batch():
    x = np.zeros((10, 2))
    cases = [
        (lambda: batches((x, np.zeros(9)), 2), r"same leading length, got \[9, 10\]"),
        (lambda: batches((x, np.float32(1.0)), 2), "got a scalar"),
        (lambda: batches({}, 2), "holds no arrays"),
        (lambda: batches(x, 0), "batch_size must be an int >= 1"),
        (lambda: batches(x, 2.0), "batch_size must be an int >= 1"),
        (lambda: batches(x, 11), "larger than the 10 rows"),
        (lambda: batch_indices(None, 0, 1), "at least one row"),
        (lambda: batch_indices("0", 4, 2), "key must be a PRNG key, an int seed"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()  # no next(): the generator is not started
    assert len(list(batches(x, 11, drop_remainder=False))) == 1


def test_diabetes_split_is_standardised_with_training_statistics_only():
    from sklearn.datasets import load_diabetes

    raw_x, raw_y = load_diabetes(return_X_y=True)
    s = load_diabetes_split(seed=2)
    assert s.train_x.shape == (331, 10) and s.test_x.shape == (111, 10)
    assert s.train_x.dtype == np.float32 and s.train_y.shape == (331,)
    np.testing.assert_allclose(s.train_x.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(s.train_x.std(0), 1.0, atol=1e-5)
    assert abs(s.train_y.mean()) < 1e-5 and abs(s.train_y.std() - 1.0) < 1e-5
    assert abs(s.test_y.mean()) > 1e-3  # held-out rows are not re-centred on themselves
    # the split is a partition of scikit-learn's rows, recoverable with the statistics
    back_x = np.concatenate([s.train_x, s.test_x]) * s.x_std + s.x_mean
    back_y = np.concatenate([s.train_y, s.test_y]) * s.y_std + s.y_mean
    order = np.lexsort(back_x.T[::-1])
    ref = np.lexsort(raw_x.T[::-1])
    np.testing.assert_allclose(back_x[order], raw_x[ref], atol=1e-5)
    np.testing.assert_allclose(back_y[order], raw_y[ref], rtol=1e-5)
    again = load_diabetes_split(seed=2)
    np.testing.assert_array_equal(again.test_x, s.test_x)
    assert not np.array_equal(load_diabetes_split(seed=3).test_y, s.test_y)
    plain = load_diabetes_split(standardize=False, test_fraction=0.1)
    assert plain.y_std == 1.0 and plain.test_y.shape == (45,)  # ceil(44.2)
    assert set(np.round(plain.train_y).astype(int)) <= set(raw_y.astype(int))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"test_fraction": 0.0}, "test_fraction must be a number in"),
        ({"test_fraction": 1.0}, "test_fraction must be a number in"),
        ({"test_fraction": True}, "test_fraction must be a number in"),
        ({"seed": -1}, "seed must be an int"),
        ({"seed": 1.5}, "seed must be an int"),
    ],
)
def test_diabetes_split_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"load_diabetes_split: {match}"):
        load_diabetes_split(**kwargs)


@pytest.mark.multidevice
def test_batches_placed_with_the_trainers_sharding_train_as_host_batches():
    import optax

    from jaxsci.parallel import data_parallel, make_mesh

    def loss(p, b):
        x, y = b
        return jnp.mean((x @ p["w"] - y) ** 2)

    split = load_diabetes_split()
    data = (split.train_x[:320], split.train_y[:320])
    params = {"w": jnp.zeros(10)}
    runs = []
    for placed in (False, True):
        dp = data_parallel(loss, optax.sgd(0.05), mesh=make_mesh(4))
        state = dp.init(params)
        assert len(dp.batch_sharding.device_set) == 4
        sharding = dp.batch_sharding if placed else None
        for batch in batches(data, 32, key=7, sharding=sharding):
            state, _ = dp.step(state, batch)
        runs.append(np.asarray(dp.params(state)["w"]))
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-6, atol=1e-7)
    assert np.abs(runs[0]).max() > 1e-3  # it trained


def test_integer_scalar_arrays_are_seeds_and_keys_stay_keys():
    """jnp.int32(5) and np.array(5) were taken for key data ("invalid PRNG key data")."""
    want = np.asarray(batch_indices(5, 10, 5))
    for seed in (np.int64(5), np.uint32(5), np.array(5), jnp.int32(5), jnp.uint32(5)):
        np.testing.assert_array_equal(batch_indices(seed, 10, 5), want)
    np.testing.assert_array_equal(batch_indices(jax.random.key(5), 10, 5), want)
    np.testing.assert_array_equal(batch_indices(jax.random.PRNGKey(5), 10, 5), want)  # raw
    # a traced seed (jit, vmap) is a seed too
    jitted = jax.jit(batch_indices, static_argnums=(1, 2))
    np.testing.assert_array_equal(jitted(jnp.int32(5), 10, 5), want)
    epochs = jax.vmap(lambda s: batch_indices(s, 10, 5))(jnp.arange(4, 7))
    np.testing.assert_array_equal(epochs[1], want)
    got = [b.tolist() for b in batches(np.arange(10), 5, key=jnp.int32(5))]
    assert got == want.tolist()


@pytest.mark.parametrize(
    ("key", "match"),
    [
        (2**64, r"an int seed must be in \[0, 2\*\*32\)"),  # a raw OverflowError before
        (2**32, r"an int seed must be in \[0, 2\*\*32\)"),  # silently the order of seed 0
        (-1, r"an int seed must be in \[0, 2\*\*32\)"),
        (np.array(-1), r"an int seed must be in \[0, 2\*\*32\)"),
        (jnp.int32(-3), r"an int seed must be in \[0, 2\*\*32\)"),
        (True, "key must be a PRNG key, an int seed"),
        (np.bool_(True), "key must be a PRNG key, an int seed"),
        (np.float32(1.0), "key must be a PRNG key, an int seed"),
        (np.zeros(3, np.int32), r"key must .* got an array of shape \(3,\) of dtype int32"),
        (np.zeros(2, np.float32), r"key must .* got an array of shape \(2,\) of dtype float32"),
    ],
)
def test_bad_seeds_are_value_errors_naming_the_key(key, match):
    with pytest.raises(ValueError, match=f"batch_indices: {match}"):
        batch_indices(key, 10, 5)
    with pytest.raises(ValueError, match=f"batches: {match}"):
        batches(np.zeros((10, 2)), 5, key=key)


def test_a_sharding_of_higher_rank_than_a_leaf_is_a_value_error_naming_the_leaf():
    """A spec naming more axes than a leaf has escaped as a bare IndexError."""
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    named = jax.sharding.NamedSharding
    cols = named(mesh, jax.sharding.PartitionSpec(None, "data"))
    rows = named(mesh, jax.sharding.PartitionSpec("data"))
    data = (np.zeros((8, 4)), np.zeros(8))
    with pytest.raises(
        ValueError,
        match=r"batches: a batch of shape \(4,\) \(leaf \[1\]\) has 1 axis/axes but the "
        r"sharding's P\(None, 'data'\) names 2",
    ):
        batches(data, 4, sharding=cols)
    # one sharding per leaf (a pytree prefix of data) is the way out
    bx, by = next(batches(data, 4, sharding=(cols, rows)))
    assert bx.sharding == cols and by.sharding == rows
    with pytest.raises(ValueError, match="a prefix of data's structure"):
        batches(data, 4, sharding=(cols, rows, rows))


@pytest.mark.multidevice
def test_a_sharded_axis_that_does_not_divide_is_named():
    """A column axis that did not divide was blamed on batch_size ("shards along the rows")."""
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    cols = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
    with pytest.raises(ValueError) as err:
        batches({"x": np.zeros((8, 3))}, 4, sharding=cols)
    want = (
        "batches: a batch of shape (4, 3) (leaf ['x']) does not divide over the sharding: its "
        "axis 1 (size 3) does not divide over the 4 shards of 'data' in P(None, 'data') "
        "(batch_size is not the problem)"
    )
    assert str(err.value) == want
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    with pytest.raises(ValueError, match="its 6 rows do not divide over the 4 shards of 'data'"):
        batches(np.zeros((12, 3)), 6, sharding=rows)
    assert len(list(batches({"x": np.zeros((8, 4))}, 4, sharding=cols))) == 2
