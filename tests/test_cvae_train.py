"""jaxsci.train.train_cvae: a resumed run equals the uninterrupted one; refusals write nothing."""

import json
import re

import jax
import numpy as np
import optax
import pytest

from jaxsci.models import CVAE
from jaxsci.train import train_cvae
from jaxsci.train._fingerprint import optimizer_probe

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


def test_another_optimizer_is_refused_naming_it_before_anything_is_written(tmp_path):
    """The optimizer was not recorded: a resume with another learning rate (or betas, or
    another optimizer) continued the checkpoint silently, a trajectory of neither run. Now
    its updates on a probe gradient are saved and compared, both shown in the error."""
    kw = dict(checkpoint_dir=tmp_path / "ck", metrics_path=tmp_path / "m.jsonl")
    run(tmp_path, 2, **kw)  # optax.adam(1e-2), no settings=
    files = lambda: sorted(  # noqa: E731
        (p, p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
        for p in tmp_path.rglob("*")
    )
    before = files()
    saved = json.dumps(optimizer_probe(optax.adam(1e-2)))
    for opt in (optax.adam(3e-2), optax.adam(1e-2, b1=0.5), optax.sgd(1e-2)):
        now = json.dumps(optimizer_probe(opt))
        msg = (
            rf"at epoch 2 in .*ck was made with other settings \(optimizer differ\): "
            rf"optimizer: saved {re.escape(saved)}, now {re.escape(now)}\."
        )
        with pytest.raises(ValueError, match=msg):
            train_cvae(MODEL, opt, X, C, epochs=4, **ARGS, **kw)
        assert files() == before  # nothing written: checkpoints, metrics file
    # the same optimizer, another object (as a rerun makes), resumes and trains longer
    assert run(tmp_path, 3, **kw).epochs_done == 3


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


def test_the_optimizer_probe_does_not_depend_on_x64_or_summation_order():
    """The probe of one optimizer compares equal with x64 on and off (the earlier signed sum
    moved by 1e-5 of Adam's updates, and one of its entries nearly cancelled, so the order
    of its float32 additions moved it past the tolerance): a legitimate resume in another
    environment must not be refused. Other learning rates still differ."""
    from jaxsci.train.checkpoint import settings_differences

    for opt in (optax.adam(1e-3), optax.adamw(3e-4), optax.sgd(1e-2, 0.9)):
        off = optimizer_probe(opt)
        with jax.enable_x64(True):
            on = optimizer_probe(opt)
        assert len(off) == 9 and min(off) > 0
        assert settings_differences({"o": off}, {"o": on}) == {}
    assert settings_differences(
        {"o": optimizer_probe(optax.adam(1e-3))}, {"o": optimizer_probe(optax.adam(1.001e-3))}
    )
