"""jaxsci.train.train_cvae: a resumed run equals the uninterrupted one; refusals write nothing."""

import jax
import numpy as np
import optax
import pytest

from jaxsci.models import CVAE
from jaxsci.train import train_cvae

RNG = np.random.default_rng(0)
X = RNG.normal(size=(48, 6)).astype(np.float32)
C = RNG.normal(size=(48, 2)).astype(np.float32)
MODEL = CVAE(data_dim=6, latent_dim=2, hidden=(8,))
ARGS = dict(batch_size=16, beta=0.5, seed=3, progress=False)


def run(tmp, epochs, **extra):
    return train_cvae(MODEL, optax.adam(1e-2), X, C, epochs=epochs, **ARGS, **extra)


def snapshot(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def test_a_resumed_run_ends_with_the_uninterrupted_runs_parameters(tmp_path):
    straight = run(tmp_path, 4, checkpoint_dir=tmp_path / "a", metrics_path=tmp_path / "a.jsonl")
    run(tmp_path, 2, checkpoint_dir=tmp_path / "b", metrics_path=tmp_path / "b.jsonl")
    resumed = run(tmp_path, 4, checkpoint_dir=tmp_path / "b", metrics_path=tmp_path / "b.jsonl")
    for a, b in zip(
        jax.tree_util.tree_leaves(straight.state),
        jax.tree_util.tree_leaves(resumed.state),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    drop = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h]  # noqa: E731
    assert drop(resumed.history) == drop(straight.history)  # the metrics file continues
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2, 3]
    assert int(resumed.state.step) == 4 * (48 // 16)


def test_other_settings_or_fewer_epochs_are_refused_before_anything_is_written(tmp_path):
    run(tmp_path, 3, checkpoint_dir=tmp_path / "ck", settings={"lr": 1e-2, "data": "x"})
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="lr"):
        run(tmp_path, 4, checkpoint_dir=tmp_path / "ck", settings={"lr": 3e-2, "data": "x"})
    with pytest.raises(ValueError, match="epoch 3, past epochs=2"):
        run(tmp_path, 2, checkpoint_dir=tmp_path / "ck", settings={"lr": 1e-2, "data": "x"})
    # its own arguments are checked whatever the caller's settings say
    changed = dict(ARGS, batch_size=8, settings={"lr": 1e-2, "data": "x"})
    with pytest.raises(ValueError, match="batch_size"):
        train_cvae(
            MODEL, optax.adam(1e-2), X, C, epochs=4, **changed, checkpoint_dir=tmp_path / "ck"
        )
    # and settings=None does not skip the check of the settings the checkpoint holds
    with pytest.raises(ValueError, match="none were given"):
        run(tmp_path, 4, checkpoint_dir=tmp_path / "ck")
    assert snapshot(tmp_path) == before


def test_validation_metrics_and_a_plain_vae():
    model = CVAE(data_dim=6, latent_dim=2, hidden=(8,))
    none = np.zeros((40, 0), np.float32)
    with_val = train_cvae(
        model, optax.adam(1e-2), X[:40], none, epochs=2, **ARGS,
        validation=(X[40:], np.zeros((8, 0), np.float32)),
    )  # fmt: skip
    without = train_cvae(model, optax.adam(1e-2), X[:40], none, epochs=2, **ARGS)
    assert {"val_loss", "val_recon", "val_kl"} <= set(with_val.history[-1])
    assert not any(k.startswith("val_") for k in without.history[-1])
    assert with_val.history[-1]["loss"] == without.history[-1]["loss"]  # validation only reads


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="data_dim"):
        train_cvae(MODEL, optax.adam(1e-2), X[:, :5], C, epochs=1, **ARGS)
    with pytest.raises(ValueError, match="epochs"):
        train_cvae(MODEL, optax.adam(1e-2), X, C, epochs=0, **ARGS)
    with pytest.raises(ValueError, match="non-finite"):
        train_cvae(MODEL, optax.adam(1e-2), np.where(X > 2, np.nan, X), C, epochs=1, **ARGS)
