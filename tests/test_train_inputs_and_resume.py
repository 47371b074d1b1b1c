"""jaxsci.train and jaxsci.models.cvae where users went wrong: resume checks (activation,
settings=None, data), validation and condition widths, x64 hints, plot_curves keys, the
warning when a fresh run drops a metrics file's records, and the settings helpers' export."""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsci.train
from jaxsci.models import CVAE
from jaxsci.models.cvae import encode, init_cvae_state, sample
from jaxsci.train import Checkpointer, check_resume, fit, plot_curves, train_cvae
from jaxsci.train.loop import JsonlLogger

RNG = np.random.default_rng(1)
X = RNG.normal(size=(32, 5)).astype(np.float32)
C = RNG.normal(size=(32, 2)).astype(np.float32)
MODEL = CVAE(data_dim=5, latent_dim=2, hidden=(8,))
ARGS = dict(batch_size=16, seed=0, progress=False)


def files(folder):
    return sorted((str(p), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def train(model=MODEL, x=X, c=C, epochs=2, **kw):
    return train_cvae(model, optax.adam(1e-2), x, c, epochs=epochs, **{**ARGS, **kw})


def saved_run(tmp_path):
    ck = tmp_path / "ck"
    train(checkpoint_dir=ck, settings={"run": "a"})
    return ck, files(tmp_path)


def test_resume_with_another_activation_is_refused(tmp_path):
    ck, before = saved_run(tmp_path)
    relu = CVAE(data_dim=5, latent_dim=2, hidden=(8,), activation=jax.nn.relu)
    with pytest.raises(ValueError, match='activation: saved "elu", now "relu"'):
        train(relu, epochs=4, checkpoint_dir=ck, settings={"run": "a"})
    assert files(tmp_path) == before  # nothing written


def test_resume_without_settings_of_a_run_saved_with_some_is_refused(tmp_path):
    ck, before = saved_run(tmp_path)
    with pytest.raises(ValueError, match=r"saved with run settings but none were given"):
        train(epochs=4, checkpoint_dir=ck, settings=None)
    with pytest.raises(ValueError, match=r"settings=None"):
        check_resume(ck, None, 4)
    assert files(tmp_path) == before


def test_resume_on_other_data_of_the_same_shape_is_refused(tmp_path):
    ck, before = saved_run(tmp_path)
    with pytest.raises(ValueError, match=r"data\.x_checksum"):  # the rows in another order
        train(x=X[::-1].copy(), epochs=4, checkpoint_dir=ck, settings={"run": "a"})
    with pytest.raises(ValueError, match=r"data\.c_checksum"):
        train(c=C + 0.5, epochs=4, checkpoint_dir=ck, settings={"run": "a"})
    assert files(tmp_path) == before
    # the same data with last-bit noise (recomputed elsewhere) resumes
    noisy = X * np.float32(1 + 2**-22)
    assert train(x=noisy, epochs=3, checkpoint_dir=ck, settings={"run": "a"}).epochs_done == 3


@pytest.mark.parametrize(
    ("validation", "match"),
    [
        ((X[:4], C[:4, :1]), "c_val has 1 columns but c has 2"),
        ((X[:4, :3], C[:4]), "x_val has 3 columns but model.data_dim is 5"),
        ((X[:4], C[:3]), "x_val has 4 rows but c_val has 3"),
        ((X[0], C[:4]), r"x_val must be 2-D \[rows, features\], got shape \(5,\)"),
        ((np.full((4, 5), np.nan), C[:4]), "x_val holds 20 non-finite"),
    ],
)
def test_bad_validation_rows_are_refused_before_any_epoch(tmp_path, validation, match):
    with pytest.raises(ValueError, match=match):
        train(validation=validation, checkpoint_dir=tmp_path / "ck", metrics_path=tmp_path / "m")
    assert list(tmp_path.iterdir()) == []  # refused before the first epoch: nothing written


def test_sample_and_encode_check_the_condition_against_the_params():
    params = init_cvae_state(MODEL, optax.adam(1e-2), 2, jax.random.key(0)).params
    key = jax.random.key(1)
    with pytest.raises(ValueError, match=r"c must be 2-D \[rows, 2 condition columns\]"):
        sample(MODEL, params, C[:4, 0], key)
    with pytest.raises(ValueError, match="c has 3 columns but the params were made for cond_dim 2"):
        sample(MODEL, params, np.zeros((4, 3)), key)
    with pytest.raises(ValueError, match="c has 1 columns but the params were made for cond_dim 2"):
        encode(MODEL, params, X[:4], C[:4, :1])
    with pytest.raises(ValueError, match=r"x has leading shape \(4,\) but c has \(3,\)"):
        encode(MODEL, params, X[:4], C[:3])
    with pytest.raises(ValueError, match=r"x must be \[..., data_dim = 5\]"):
        encode(MODEL, params, X[:4, :3], C[:4])
    with pytest.raises(ValueError, match=r"params do not fit CVAE\(data_dim=7.*another model"):
        sample(CVAE(data_dim=7, latent_dim=2, hidden=(8,)), params, C[:4], key)
    with pytest.raises(ValueError, match="encoder' and 'decoder'"):
        sample(MODEL, {"params": params}, C[:4], key)
    # still jittable: the checks read static shapes only
    out = jax.jit(lambda p, c: sample(MODEL, p, c, key))(params, jnp.asarray(C[:4]))
    assert out.shape == (4, 5)
    mean, _ = jax.jit(lambda p, x, c: encode(MODEL, p, x, c))(params, X[:4], C[:4])
    assert mean.shape == (4, 2)
    # one row at a time, e.g. under vmap, as before the checks (a review found it refused)
    rows, _ = jax.vmap(lambda x, c: encode(MODEL, params, x, c))(X[:4], C[:4])
    np.testing.assert_allclose(rows, mean, rtol=1e-5, atol=1e-6)
    one, _ = encode(MODEL, params, X[0], C[0])
    np.testing.assert_allclose(one, mean[0], rtol=1e-5, atol=1e-6)


def test_a_float_width_mismatch_names_jax_enable_x64(tmp_path):
    with Checkpointer(tmp_path / "ck") as ck:
        ck.save(1, {"w": np.ones(3, np.float32)})
        with pytest.raises(ValueError, match="jax_enable_x64 may have been off at save time"):
            ck.restore({"w": jax.ShapeDtypeStruct((3,), np.float64)})
        with pytest.raises(ValueError) as err:  # a shape mismatch: no x64 hint
            ck.restore({"w": jax.ShapeDtypeStruct((4,), np.float32)})
        assert "x64" not in str(err.value)


def test_plot_curves_refuses_a_missing_key_before_writing(tmp_path):
    history = [{"epoch": i, "loss": 1.0 / (i + 1)} for i in range(3)]
    path = tmp_path / "c.png"
    with pytest.raises(KeyError, match=re.escape("no record holds 'val_los'; the records hold")):
        plot_curves(history, ["loss", "val_los"], path)
    with pytest.raises(KeyError, match="'step'"):
        plot_curves(history, ["loss"], path, x_key="step")
    assert not path.exists()
    assert plot_curves(history, ["loss"], path).stat().st_size > 0


def test_a_fresh_run_warns_when_it_drops_a_metrics_files_records(tmp_path):
    log = tmp_path / "m.jsonl"
    log.write_text('{"epoch": 0, "loss": 5.0}\n{"epoch": 1, "loss": 4.0}\n')
    with pytest.warns(UserWarning, match=re.escape(f"{log} holds 2 metrics records")):
        fit(0, lambda s, e: (s, {"loss": 1.0}), num_epochs=1, metrics_path=log, progress=False)
    with pytest.warns(UserWarning, match="holds 1 metrics records"):
        train(epochs=1, metrics_path=log)
    with pytest.warns(UserWarning, match="holds 1 metrics records"):
        JsonlLogger(log)
    with warnings.catch_warnings():  # a resume, or a fresh file, is silent
        warnings.simplefilter("error")
        fit(0, lambda s, e: (s, {"loss": 1.0}), num_epochs=2, start_epoch=1, metrics_path=log,
            progress=False)  # fmt: skip
        fit(0, lambda s, e: (s, {}), num_epochs=1, metrics_path=tmp_path / "new.jsonl",
            progress=False)  # fmt: skip


def test_settings_helpers_are_exported():
    for name in ("check_settings", "normalize_settings", "settings_differences"):
        assert name in jaxsci.train.__all__ and callable(getattr(jaxsci.train, name))
    with pytest.raises(ValueError, match="lr"):
        jaxsci.train.check_settings({"lr": 1e-3}, {"lr": 1e-2}, "here")


def test_a_checkpoint_of_an_older_jaxsci_resumes_with_a_warning(tmp_path):
    old_own = {"batch_size": 16, "beta": 1.0, "seed": 0, "data_dim": 5, "cond_dim": 2}
    old_own.update(latent_dim=2, hidden=[8])  # no activation, no data fingerprint
    state = init_cvae_state(MODEL, optax.adam(1e-2), 2, jax.random.key(0))
    with Checkpointer(tmp_path / "ck") as ck:
        ck.save(1, state, metadata={"train_cvae": old_own})
    with pytest.warns(UserWarning, match="does not record activation, data, optimizer"):
        assert train(epochs=2, checkpoint_dir=tmp_path / "ck").epochs_done == 2


def test_the_data_fingerprint_sees_arrangement_offsets_and_scales_but_not_last_bits():
    # a review found shuffled non-centred data passing (the sums moved by std/mean/sqrt(N))
    # and a zero turned into -1e-8 refused (an absolute tolerance on a sum of zeros)
    from jaxsci.train import settings_differences
    from jaxsci.train.cvae import _data_fingerprint

    rng = np.random.default_rng(0)
    x = (50 + rng.normal(size=(20000, 20))).astype(np.float32)
    c = rng.normal(size=(20000, 2)).astype(np.float32)

    def same(x2, c2=c):
        return settings_differences(_data_fingerprint(x, c), _data_fingerprint(x2, c2)) == {}

    assert not same(x[rng.permutation(len(x))])  # rows shuffled
    assert not same(x[:, ::-1].copy())  # columns swapped
    assert not same(x + 1.0) and not same(x * 2.0)  # shifted, rescaled
    assert not same((50 + rng.normal(size=x.shape)).astype(np.float32))  # other data
    assert not same(x, c[rng.permutation(len(c))])  # conditions shuffled
    noisy = (x * (1 + 1e-7 * rng.normal(size=x.shape))).astype(np.float32)
    assert same(noisy)  # last-bit differences pass
    images = np.zeros((5000, 64), np.float32)
    images[:, :10] = rng.random((5000, 10))
    nudged = images.copy()
    nudged[0, 20:23] = -1e-8
    cond = np.zeros((5000, 1), np.float32)
    fp = _data_fingerprint(images, cond)
    assert settings_differences(fp, _data_fingerprint(nudged, cond)) == {}
    shuffled = images[rng.permutation(5000)]
    assert settings_differences(fp, _data_fingerprint(shuffled, cond)) != {}
