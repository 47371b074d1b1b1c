"""jaxsci.train.gan refuses bad input at the API edge, naming the argument and its value."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsci.models.gan import dc_cgan
from jaxsci.train import Checkpointer
from jaxsci.train.gan import (
    fit_gan,
    make_gan_step,
    make_pool,
    per_label_pools,
    sample_per_label,
    train_conditional,
    train_per_label,
)

CGAN = dc_cgan(latent_dim=4, g_features=4, d_features=4)  # 8 x 8 x 1 images
OPT = optax.adam(1e-3)
RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(-1, 1, (12, 8, 8, 1)).astype(np.float32)
LABELS = np.arange(12) % 2


def _with_nan(images):
    images = images.copy()
    images[5, 3, 2, 0] = np.nan
    return images


def _train(fn, **kw):
    args = {"key": jax.random.PRNGKey(0), "n_steps": 2, "batch_size": 4, "chunk_steps": 2}
    if fn is train_per_label:
        args["label_set"] = [0, 1]
    images = kw.pop("images", IMAGES)
    labels = kw.pop("labels", LABELS)
    return lambda: fn(CGAN, OPT, OPT, images, labels, progress=False, **{**args, **kw})


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (_train(train_conditional, batch_size=0), "batch_size must be an int >= 1, got 0"),
        (_train(train_per_label, batch_size=-1), "batch_size must be an int >= 1, got -1"),
        (lambda: make_gan_step(CGAN, OPT, OPT, 0), "batch_size must be an int >= 1, got 0"),
        (lambda: make_gan_step(CGAN, OPT, OPT, 2.5), "batch_size must be an int >= 1, got 2.5"),
        (
            _train(train_conditional, images=np.zeros((12, 16, 16, 1), np.float32)),
            re.escape("images must be [N, 8, 8, 1]") + ".*got shape \\(12, 16, 16, 1\\)",
        ),
        (
            _train(train_per_label, images=np.zeros((12, 8, 8, 3), np.float32)),
            re.escape("images must be [N, 8, 8, 1]") + ".*got shape \\(12, 8, 8, 3\\)",
        ),
        (
            lambda: per_label_pools(IMAGES, np.where(LABELS == 0, 0.5, 1.0), [1]),
            "labels must be integers, got float64",
        ),
        (lambda: make_pool(_with_nan(IMAGES), LABELS), "non-finite.*1 images \\(rows \\[5\\]"),
        (lambda: per_label_pools(_with_nan(IMAGES), LABELS, [0, 1]), "non-finite.*rows \\[5\\]"),
        (lambda: sample_per_label(CGAN, None, jax.random.PRNGKey(0), -1), "n_per_label.*-1"),
    ],
)
def test_bad_input_is_refused_naming_it(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_train_per_label_takes_a_typed_key_as_its_raw_data():
    """``jax.random.key(0)`` (typed) and ``PRNGKey(0)`` (raw) give the same run, as in
    train_conditional (a typed key failed at the end, turning the state into numpy)."""
    typed = _train(train_per_label, key=jax.random.key(0))()
    raw = _train(train_per_label)()
    np.testing.assert_array_equal(typed.history["g_loss"], raw.history["g_loss"])
    assert typed.state.key.dtype == raw.state.key.dtype == jnp.uint32
    with pytest.raises(ValueError, match="default PRNG implementation"):
        _train(train_per_label, key=jax.random.key(0, impl="rbg"))()


def test_fit_gan_past_n_steps_names_the_checkpoint_folder(tmp_path):
    state = {"w": jnp.zeros(3)}
    with Checkpointer(tmp_path / "ck", keep=None) as ckpt:
        ckpt.save(4, {"state": state, "history": {}}, force=True)
        with pytest.raises(ValueError, match=f"{tmp_path / 'ck'}.*at step 4, past n_steps=2"):
            fit_gan(lambda s, k: (s, {}), state, n_steps=2, chunk_steps=1, checkpointer=ckpt)
