"""Orbax checkpointing of train states: round trips, retention, resume, multi-rank."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsci.parallel import ProcessInfo, bootstrap
from jaxsci.train import Checkpointer


def _state(seed=0):
    k = jax.random.key(seed)
    params = {
        "w": jax.random.normal(k, (3, 4)),
        "b": jnp.arange(4, dtype=jnp.bfloat16),
        "layers": [jnp.ones((2,), jnp.float16), jnp.zeros((1, 2))],
    }
    tx = optax.adamw(1e-3)
    return {"params": params, "opt": tx.init(params), "step": jnp.int32(7), "key": k}


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_keeps_values_dtypes_shapes(tmp_path):
    state = _state()
    with Checkpointer(tmp_path / "ck") as ck:
        assert ck.latest_step() is None
        assert ck.save(3, state, metadata={"lr": 0.1})
        restored = ck.restore(_state(seed=1))  # target with other values, same structure
        meta = ck.metadata()
    _assert_same(restored, state)
    assert meta == {"step": 3, "process_count": 1, "lr": 0.1}


def test_restore_into_abstract_target(tmp_path):
    state = _state()
    with Checkpointer(tmp_path) as ck:
        ck.save(0, state)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
        _assert_same(ck.restore(abstract), state)


def test_every_and_keep(tmp_path):
    state = _state()
    with Checkpointer(tmp_path, every=3, keep=2) as ck:
        written = [s for s in range(10) if ck.save(s, state)]
        assert written == [0, 3, 6, 9]
        assert ck.all_steps() == [6, 9]
        assert ck.latest_step() == 9
        assert ck.save(10, state, force=True)
        assert not ck.save(10, state, force=True)  # already there: not rewritten
        assert ck.all_steps() == [9, 10]


def test_missing_checkpoint_and_bad_target(tmp_path):
    state = _state()
    with Checkpointer(tmp_path) as ck:
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            ck.restore(state)
        assert ck.resume(state) == (state, 0)
        ck.save(2, state)
        with pytest.raises(FileNotFoundError, match="step 5"):
            ck.restore(state, step=5)
        wrong_shape = jax.tree.map(lambda x: x, state)
        wrong_shape["params"]["w"] = jnp.zeros((3, 5))
        with pytest.raises(ValueError, match=r"'params\.w' was saved as float32\[3, 4\]"):
            ck.restore(wrong_shape)
        wrong_dtype = dict(state, step=jnp.float32(0))
        with pytest.raises(ValueError, match="saved as int32"):
            ck.restore(wrong_dtype)
        with pytest.raises(ValueError, match="does not match the target tree"):
            ck.restore({"params": state["params"]})
    with pytest.raises(ValueError, match="every"):
        Checkpointer(tmp_path, every=0)


def _train(n_steps, ck=None, start_state=None, start=0):
    """Adam on a tiny regression; batch and dropout-like noise are functions of the step."""
    tx = optax.adam(1e-2)
    key = jax.random.key(0)

    def loss_fn(params, x, y, k):
        mask = jax.random.bernoulli(k, 0.8, x.shape)
        pred = jnp.tanh((x * mask) @ params["w1"]) @ params["w2"]
        return jnp.mean((pred - y) ** 2)

    @jax.jit
    def step(state, s):
        kx, kd = jax.random.split(jax.random.fold_in(key, s))
        x = jax.random.normal(kx, (16, 4))
        y = jnp.sin(x.sum(1, keepdims=True))
        grads = jax.grad(loss_fn)(state["params"], x, y, kd)
        upd, opt = tx.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], upd), "opt": opt}

    if start_state is None:
        p = {
            "w1": jax.random.normal(jax.random.key(1), (4, 8)) * 0.5,
            "w2": jax.random.normal(jax.random.key(2), (8, 1)) * 0.5,
        }
        start_state = {"params": p, "opt": tx.init(p)}
    state = start_state
    for s in range(start, n_steps):
        state = step(state, s)
        if ck is not None:
            ck.save(s + 1, state)
    return state


def test_stop_and_restart_reproduces_uninterrupted_run(tmp_path):
    reference = _train(12)
    with Checkpointer(tmp_path, every=5, keep=1) as ck:
        _train(7, ck)  # "crashes" after step 7; last checkpoint at 5
    init = _train(0)
    with Checkpointer(tmp_path, every=5, keep=1) as ck:
        state, start = ck.resume(init)
        assert start == 5
        final = _train(12, ck, state, start)
        assert ck.all_steps() == [10]
    _assert_same(final, reference)


@pytest.mark.mpi
def test_multi_rank_single_consistent_checkpoint(tmp_path):
    from mpi4py import MPI

    info = bootstrap()
    world = MPI.COMM_WORLD
    directory = world.bcast(str(tmp_path / "ck"), root=0)  # one folder for all ranks
    state = _state()
    with Checkpointer(directory, every=2, keep=2, info=info) as ck:
        saved = [ck.save(s, state, metadata={"global_batch": 8}) for s in range(5)]
        assert saved == [True, False, True, False, True]
        assert ck.all_steps() == [2, 4]  # same view on every rank after the save returns
        restored = ck.restore(_state(seed=3))
        assert ck.metadata()["process_count"] == 2
    _assert_same(restored, state)
    # every rank read the same bytes
    mine = [np.asarray(x).tobytes() for x in jax.tree.leaves(restored["params"])]
    digests = world.allgather(mine)
    assert digests[0] == digests[1]


@pytest.mark.mpi
def test_resume_on_a_different_process_count(tmp_path):
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    directory = world.bcast(str(tmp_path / "ck"), root=0)
    # written by a 1-process job (rank 0 alone, its own communicator) ...
    if world.Get_rank() == 0:
        solo = ProcessInfo(rank=0, size=1, local_device_count=1, comm=MPI.COMM_SELF)
        with Checkpointer(directory, info=solo) as ck:
            ck.save(5, _train(5))
    world.Barrier()
    # ... resumed by the 2-process job, which reproduces the uninterrupted run
    with Checkpointer(directory, info=bootstrap()) as ck:
        assert ck.metadata()["process_count"] == 1
        state, start = ck.resume(_train(0))
    assert start == 5
    _assert_same(_train(9, None, state, start), _train(9))


def test_python_and_numpy_numbers_round_trip(tmp_path):
    """Numbers in a state (epoch, learning rate, a flag) restore into their own structure;
    NumPy scalars (which Orbax refuses) come back as the Python numbers they hold."""
    state = {"w": jnp.ones(2), "epoch": 7, "lr": 0.1, "flag": True, "f": np.float32(2.5)}
    state["i"] = np.int64(3)
    with Checkpointer(tmp_path) as ck:
        ck.save(0, state)
        restored, step = ck.resume(state)
        assert step == 0
        np.testing.assert_array_equal(restored["w"], state["w"])
        assert (restored["epoch"], restored["lr"], restored["flag"]) == (7, 0.1, True)
        assert (restored["f"], restored["i"]) == (2.5, 3)
        assert type(restored["epoch"]) is int and type(restored["flag"]) is bool
        with pytest.raises(ValueError, match="'epoch' was saved as int64"):
            ck.restore(dict(state, epoch=7.0))


def test_incomplete_folder_and_older_step_are_reported(tmp_path):
    state = {"w": jnp.ones(2)}
    with Checkpointer(tmp_path) as ck:
        ck.save(6, state)
        with pytest.raises(ValueError, match="already holds step 6 > 1: a checkpoint folder"):
            ck.save(1, state)  # another run's folder: nothing written, nothing deleted
        assert ck.all_steps() == [6]
        (tmp_path / "9").mkdir()  # not a checkpoint (e.g. a crash, or user output)
    with Checkpointer(tmp_path) as ck:
        with pytest.raises(ValueError, match="9 is not a complete jaxsci checkpoint"):
            ck.resume(state)
        np.testing.assert_array_equal(ck.restore(state, step=6)["w"], state["w"])


def test_keeping_the_newest_counts_complete_checkpoints_only(tmp_path):
    # Orbax's own retention counted an empty step folder and deleted real checkpoints
    with Checkpointer(tmp_path, keep=2) as ck:
        for step in (4, 8):
            ck.save(step, {"w": jnp.full(2, float(step))})
        (tmp_path / "12").mkdir()
        ck.save(14, {"w": jnp.full(2, 14.0)})
        ck.save(16, {"w": jnp.full(2, 16.0)})
        assert ck.all_steps() == [12, 14, 16]  # the foreign folder stays, untouched
        for step in (14, 16):
            np.testing.assert_array_equal(ck.restore({"w": jnp.ones(2)}, step)["w"], step)
        (tmp_path / "20").mkdir()  # not a checkpoint: it does not make step 18 "older"
        assert ck.save(18, {"w": jnp.full(2, 18.0)})
        assert ck.all_steps() == [12, 16, 18, 20]


def test_step_every_and_keep_must_be_integers(tmp_path):
    # a float step was written as folder "3.0", reported as saved and never found again
    state = {"w": jnp.ones(2)}
    with Checkpointer(tmp_path, keep=None) as ck:
        for bad in (3.0, np.float64(5.0), True, np.bool_(True), jnp.asarray(4.0), "7"):
            with pytest.raises(ValueError, match="step must be an integer"):
                ck.save(bad, state)
        assert sorted(p.name for p in tmp_path.iterdir()) == []
        assert ck.save(np.int64(1), state) and ck.save(jnp.asarray(2), state)
        assert ck.save(np.asarray(3, np.int32), state)
        assert ck.all_steps() == [1, 2, 3] and ck.metadata(np.int64(3))["step"] == 3
    for kwargs, name in (
        ({"every": 2.5}, "every"),
        ({"every": True}, "every"),
        ({"every": 0}, "every"),
        ({"keep": 2.0}, "keep"),
        ({"keep": 0}, "keep"),
    ):
        with pytest.raises(ValueError, match=f"{name} must be an integer"):
            Checkpointer(tmp_path / "other", **kwargs)


def test_bad_metadata_is_refused_before_anything_is_written(tmp_path):
    # unserialisable metadata failed inside Orbax's writer, after writing had started, and
    # an immediate retry of the same step then crashed
    state = {"w": jnp.arange(3.0), "n": 3, "key": jax.random.key(1), "b": True}
    with Checkpointer(tmp_path, keep=2) as ck:
        ck.save(0, state)
        with pytest.raises(TypeError, match="metadata is not JSON-serialisable"):
            ck.save(1, state, metadata={"f": object()})
        with pytest.raises(TypeError, match="metadata must be a mapping"):
            ck.save(1, state, metadata=[("lr", 1.0)])
        with pytest.raises(ValueError, match=r"may not use the keys \['process_count', 'step'\]"):
            ck.save(1, state, metadata={"step": 99, "process_count": 4})
        assert sorted(p.name for p in tmp_path.iterdir()) == ["0"]
        assert ck.save(1, state, metadata={"lr": float("nan"), "shape": (2, np.int64(3))})
        # stored as strict JSON, as the settings are (NaN as null)
        assert ck.metadata(1) == {"step": 1, "process_count": 1, "lr": None, "shape": [2, 3]}


# ------------------------------------------------------------------ s28 probe of train/


def test_integer_settings_compare_exactly_floats_with_a_tolerance():
    """Integers went through math.isclose(rel_tol=1e-5): seed 20240101 vs 20240102 (and
    the key data [0, seed] of a PRNG key, batch 200000 vs 200001) counted as equal, so a
    resume with another seed was accepted."""
    from jaxsci.train import settings_differences

    assert settings_differences({"seed": 20240101}, {"seed": 20240102}) == {
        "seed": (20240101, 20240102)
    }
    key = {"key": np.asarray(jax.random.key_data(jax.random.PRNGKey(20240101)))}
    other = {"key": np.asarray(jax.random.key_data(jax.random.PRNGKey(20240102)))}
    assert "key" in settings_differences(key, other)
    assert "batch" in settings_differences({"batch": 200000}, {"batch": 200001})
    assert settings_differences({"lr": 1e-3}, {"lr": 1e-3 * (1 + 1e-7)}) == {}  # last bits
    assert settings_differences({"n": 3}, {"n": 3}) == {}
    assert "lr" in settings_differences({"lr": 1e-3}, {"lr": 2e-3})


def test_a_file_as_checkpoint_folder_is_refused_before_any_work(tmp_path):
    """Checkpointer(file) was made; train_cvae ran its first epoch, wrote its metrics line,
    then failed with a raw NotADirectoryError at the first save."""
    from jaxsci.models import CVAE
    from jaxsci.train import check_resume, train_cvae

    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for path in (blocker, blocker / "sub"):
        with pytest.raises(ValueError, match="is a file, not a folder"):
            Checkpointer(path)
        with pytest.raises(ValueError, match="is a file, not a folder"):
            check_resume(path, None, 3)
    rng = np.random.default_rng(0)
    x, c = rng.normal(size=(40, 3)), rng.normal(size=(40, 1))
    metrics = tmp_path / "m.jsonl"
    with pytest.raises(ValueError, match="is a file, not a folder"):
        train_cvae(
            CVAE(3, 2, (8,)), optax.adam(1e-2), x, c, epochs=3, batch_size=8,
            checkpoint_dir=blocker, progress=False, metrics_path=metrics,
        )  # fmt: skip
    assert not metrics.exists() and blocker.read_text() == "x"
