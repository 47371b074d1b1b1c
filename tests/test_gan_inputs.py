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


# ---- s28 probe: refused before any work, naming the argument


def test_images_outside_minus_one_one_are_refused_naming_the_range(tmp_path):
    """Images on the raw digits scale 0..16 trained silently (the generator's tanh cannot
    reach them); a last-bit excess (a rescaling's rounding) still passes."""
    raw = (IMAGES + 1.0) * 8.0  # 0..16
    lo, hi = float(raw.min()), float(raw.max())
    want = r"images must lie in \[-1, 1\].*" + re.escape(f"values in [{lo:g}, {hi:g}], in 12")
    for call in (
        lambda: make_pool(raw, LABELS),
        lambda: per_label_pools(raw, LABELS, [0, 1]),
        _train(train_conditional, images=raw, checkpoint_dir=tmp_path / "ck"),
        _train(train_per_label, images=raw, checkpoint_dir=tmp_path / "ck"),
    ):
        with pytest.raises(ValueError, match=want):
            call()
    one = IMAGES.copy()
    one[3, 0, 0, 0] = -1.5
    with pytest.raises(ValueError, match=r"values in \[-1\.5, .*in 1 images \(rows \[3\]\)"):
        make_pool(one, LABELS)
    assert not (tmp_path / "ck").exists()
    edge = np.clip(IMAGES * 1.1, -1.0, 1.0) * (1.0 + 1e-6)  # rounding past +-1
    assert make_pool(edge, LABELS).images.shape == IMAGES.shape


@pytest.mark.parametrize(
    ("fn", "kw", "match"),
    [
        (train_conditional, dict(n_steps=2.5), "n_steps must be an int >= 0, got 2.5"),
        (train_conditional, dict(n_steps=2.0), "n_steps must be an int >= 0, got 2.0"),
        (train_conditional, dict(chunk_steps=1.5), "chunk_steps must be an int >= 1, got 1.5"),
        (train_per_label, dict(n_steps=2.5), "n_steps must be an int >= 0, got 2.5"),
        (train_per_label, dict(chunk_steps=0), "chunk_steps must be an int >= 1, got 0"),
    ],
)
def test_non_integer_step_counts_are_refused_before_any_work(fn, kw, match, tmp_path):
    """n_steps=2.5 trained 2 steps (or failed at the first checkpoint, after the work)."""
    with pytest.raises(ValueError, match=match):
        _train(fn, checkpoint_dir=tmp_path / "ck", **kw)()
    assert not (tmp_path / "ck").exists()
    with pytest.raises(ValueError, match="n_steps must be an int >= 0, got 3.0"):
        fit_gan(lambda s, k: (s, {}), {}, n_steps=3.0, chunk_steps=1)


@pytest.mark.parametrize("name", ["wgan_gp", "WGAN-GP", "hinge", None])
def test_unknown_loss_names_are_refused_listing_the_valid_ones(name):
    """An unknown name silently gave the DCGAN (BCE) loss."""
    from jaxsci.train.gan import discriminator_loss, generator_loss

    d_real, d_fake = jnp.array([1.0, 2.0]), jnp.array([-1.0, 0.5])
    want = re.escape(f"loss must be one of 'dcgan', 'wgan-gp', got {name!r}")
    with pytest.raises(ValueError, match=want):
        discriminator_loss(d_real, d_fake, name)
    with pytest.raises(ValueError, match=want):
        generator_loss(d_fake, name)


def test_sample_images_wants_one_label_per_image():
    """A scalar label raised a bare IndexError; 2-D labels failed inside the generator."""
    from jaxsci.train.gan import init_gan_state, sample_images

    params = init_gan_state(CGAN, OPT, OPT, jax.random.PRNGKey(0)).g_params
    key = jax.random.PRNGKey(1)
    with pytest.raises(ValueError, match=r"labels must be 1-D \[B\].*got a scalar 3: pass .*\[3\]"):
        sample_images(CGAN, params, key, 3)
    with pytest.raises(ValueError, match=r"labels must be 1-D \[B\].*got shape \(1, 2\)"):
        sample_images(CGAN, params, key, np.array([[1, 2]]))
    assert sample_images(CGAN, params, key, [3]).shape == (1, 8, 8, 1)
