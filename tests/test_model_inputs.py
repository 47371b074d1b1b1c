"""jaxsci.models (gan, mlp, classifier, cvae, fcn docs) and mllog.time_to_train: bad input is
refused at the API edge with a message naming it; degenerate but valid input is handled."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsci.models import fcn
from jaxsci.models.classifier import MLPClassifier
from jaxsci.models.cvae import CVAE, make_epoch_fn, make_eval_fn, with_validation
from jaxsci.models.gan import dc_cgan, w_cgan
from jaxsci.models.mlp import MLP
from jaxsci.train import time_to_train

KEY = jax.random.key(0)
GEN = dc_cgan(latent_dim=4, g_features=4, d_features=4).generator
DISC = dc_cgan(latent_dim=4, g_features=4, d_features=4).discriminator
OPT = optax.adam(1e-3)
X, C = np.zeros((6, 3), np.float32), np.zeros((6, 1), np.float32)


def _epoch_fn(x=X, c=C, **kw):
    args = {"batch_size": 2, "beta": 1.0, "seed": 0, **kw}
    return lambda: make_epoch_fn(CVAE(3, 2, hidden=(4,)), OPT, x, c, **args)


def _nan_x():
    x = X.copy()
    x[2, 1] = np.nan
    return x


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: w_cgan(n_critic=2.5), "n_critic must be an int >= 1, got 2.5"),
        (lambda: dc_cgan(g_features=0), "CondGenerator: features must be an int >= 1, got 0"),
        (lambda: dc_cgan(channels=0), "channels must be an int >= 1, got 0"),
        (lambda: dc_cgan(d_features=-2), "CondDiscriminator: features.*got -2"),
        (lambda: dc_cgan(latent_dim=1.5), "latent_dim must be an int >= 1, got 1.5"),
        (
            lambda: GEN.init(KEY, jnp.zeros((2, 4)), jnp.zeros(3, jnp.int32)),
            "labels must be \\[B\\] with B = z.shape\\[0\\] = 2, got shape \\(3,\\)",
        ),
        (
            lambda: GEN.init(KEY, jnp.zeros((2, 4)), jnp.zeros((2, 1), jnp.int32)),
            "labels must be \\[B\\].*got shape \\(2, 1\\)",
        ),
        (
            lambda: DISC.init(KEY, jnp.zeros((2, 8, 8, 1)), jnp.zeros(3, jnp.int32)),
            "labels must be \\[B\\] with B = images.shape\\[0\\] = 2, got shape \\(3,\\)",
        ),
        (lambda: MLP((0, 2)).init(KEY, jnp.zeros((1, 3))), "MLP features.*ints >= 1.*\\(0, 2\\)"),
        (lambda: MLP((-3, 2)).init(KEY, jnp.zeros((1, 3))), "ints >= 1, got \\(-3, 2\\)"),
        (lambda: MLPClassifier(n_labels=0).init(KEY, jnp.zeros((1, 4))), "n_labels.*got 0"),
        (lambda: MLPClassifier(n_labels=-1).init(KEY, jnp.zeros((1, 4))), "n_labels.*got -1"),
        (lambda: MLPClassifier(hidden=(8, 0)).init(KEY, jnp.zeros((1, 4))), "hidden.*\\(8, 0\\)"),
        (lambda: CVAE(4, 2, hidden=(-1,)), "CVAE: hidden widths must be ints >= 1, got \\(-1,\\)"),
        (lambda: CVAE(4, latent_dim=2.5), "CVAE: latent_dim must be an int >= 1, got 2.5"),
        (_epoch_fn(x=X[:, 0]), "x must be 2-D .*got shape \\(6,\\)"),
        (_epoch_fn(c=C[:, 0]), "c must be 2-D .*got shape \\(6,\\)"),
        (_epoch_fn(beta=-1.0), "beta must be a finite number >= 0, got -1.0"),
        (_epoch_fn(beta=math.nan), "beta must be a finite number >= 0, got nan"),
        (_epoch_fn(batch_size=2.5), "batch_size must be an int >= 1, got 2.5"),
        (_epoch_fn(x=_nan_x()), "x holds 1 non-finite"),
        (lambda: make_eval_fn(CVAE(3), beta=-0.5, seed=0), "beta.*got -0.5"),
        (lambda: with_validation(None, None, X, None), "x_val of shape \\(6, 3\\).*c_val is None"),
        (lambda: with_validation(None, None, None, C), "c_val of shape \\(6, 1\\).*x_val is None"),
        (lambda: with_validation(None, None, X, C[:4]), "as many rows.*\\(6, 3\\) and \\(4, 1\\)"),
    ],
)
def test_bad_input_is_refused_naming_it(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_empty_validation_set_means_no_validation():
    """A (0, D) validation set gave val_* = NaN; it is now the same as none."""
    epoch_fn = _epoch_fn()()
    assert with_validation(epoch_fn, None, X[:0], C[:0]) is epoch_fn
    assert with_validation(epoch_fn, None, None, C[:0]) is epoch_fn  # hea_order's no-val form


def test_time_to_train_reads_null_metadata_as_none():
    events = [
        {"key": "run_start", "time_ms": 0, "metadata": None},
        {"key": "epoch_stop", "time_ms": 2, "metadata": None},
        {"key": "run_stop", "time_ms": 5, "metadata": None},
    ]
    ttt = time_to_train(events)
    assert ttt.time_to_train_s == 0.005 and not ttt.success and ttt.epochs == 1.0
    events[-1]["metadata"] = "success"
    with pytest.raises(ValueError, match="run_stop's metadata is not a mapping: 'success'"):
        time_to_train(events)


def test_unet_receptive_field_is_the_documented_one():
    """Three levels, 2x2 average pool, no norm: one output pixel sees 48 or 52 input pixels
    across, by its place on the pooling grid, as the module docstring says."""
    model = fcn.UNet(features=(2, 2, 2), norm="none", padding="SAME")
    x = jnp.zeros((1, 64, 64, 1))
    params = jax.jit(model.init)(KEY, x)

    @jax.jit
    def widths(x):
        def one(col):
            g = jax.grad(lambda x: model.apply(params, x)[0, 32, col, 0])(x)[0, 32, :, 0]
            idx = jnp.arange(64)
            nz = g != 0
            return jnp.max(jnp.where(nz, idx, -1)) - jnp.min(jnp.where(nz, idx, 64)) + 1

        return jax.vmap(one)(jnp.arange(32, 36))

    assert sorted(set(np.asarray(widths(x)).tolist())) == [48, 52]
    assert "48 or 52 for three" in " ".join(fcn.__doc__.split())


def test_mlp_activate_final_applies_the_activation_to_the_output():
    from jaxsci.models.mlp import MLP

    x = jax.random.normal(jax.random.PRNGKey(0), (16, 5))
    for final in (False, True):
        model = MLP((4, 3), jax.nn.relu, activate_final=final)
        params = model.init(jax.random.PRNGKey(1), x)
        out = model.apply(params, x)
        assert bool(jnp.all(out >= 0)) is final  # (16 x 3 linear outputs: some negative)
