"""Tests for the conditional VAE (jaxsci.models.cvae).

Exact resume from an Orbax checkpoint is tested through the experiment's ``train_cvae`` in
test_pt_nanoparticles.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsci.models.cvae import (
    CVAE,
    encode,
    init_cvae_state,
    kl_divergence,
    make_epoch_fn,
    make_eval_fn,
    sample,
)
from jaxsci.train import fit


def _toy(n=256, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    x = np.concatenate([c, -c, 2 * c], axis=1) + 0.05 * rng.normal(size=(n, 3))
    return x.astype(np.float32), c


def test_kl_matches_closed_form():
    mean = jnp.array([[0.0, 0.0], [1.0, -2.0]])
    logvar = jnp.array([[0.0, 0.0], [np.log(4.0), 0.0]])
    # KL(N(m, s^2) || N(0, 1)) = (s^2 + m^2 - 1 - log s^2) / 2 per dimension
    expected = [0.0, 0.5 * (4 + 1 - 1 - np.log(4.0)) + 0.5 * 4]
    np.testing.assert_allclose(kl_divergence(mean, logvar), expected, rtol=1e-6)


def test_cvae_learns_the_conditional_mean():
    x, c = _toy()
    model = CVAE(data_dim=3, latent_dim=2, hidden=(32, 32))
    opt = optax.adam(3e-3)
    state = init_cvae_state(model, opt, cond_dim=1, key=jax.random.key(0))
    epoch_fn = make_epoch_fn(model, opt, x, c, batch_size=32, beta=0.1, seed=0)
    evaluate = make_eval_fn(model, beta=0.1, seed=0)
    before = float(evaluate(state.params, x, c)["recon"])
    res = fit(state, epoch_fn, num_epochs=150, progress=False)
    after = float(evaluate(res.state.params, x, c)["recon"])
    assert after < 0.1 * before
    assert int(res.state.step) == 150 * (256 // 32)
    for cv in (-0.6, 0.8):
        cond = jnp.full((400, 1), cv)
        gen = np.asarray(sample(model, res.state.params, cond, jax.random.key(1)))
        np.testing.assert_allclose(gen.mean(0), [cv, -cv, 2 * cv], atol=0.15)
    mean, logvar = encode(model, res.state.params, x[:5], c[:5])
    assert mean.shape == logvar.shape == (5, 2)


def test_the_loss_is_reconstruction_plus_beta_times_kl():
    """loss = recon + beta * KL, KL that of the encoder's Gaussians (computed here from
    ``encode``); the reconstruction term does not depend on beta (same fixed noise)."""
    x, c = _toy(64)
    model = CVAE(data_dim=3, latent_dim=2, hidden=(16,))
    state = init_cvae_state(model, optax.adam(1e-3), cond_dim=1, key=jax.random.key(2))
    kl = float(jnp.mean(kl_divergence(*encode(model, state.params, x, c))))
    assert kl > 0.01
    recon = None
    for beta in (0.0, 0.5, 2.0):
        out = {
            k: float(v)
            for k, v in make_eval_fn(model, beta=beta, seed=0)(state.params, x, c).items()
        }
        recon = out["recon"] if recon is None else recon
        assert out["kl"] == pytest.approx(kl, rel=1e-5)
        assert out["recon"] == pytest.approx(recon, rel=1e-6)
        assert out["loss"] == pytest.approx(recon + beta * kl, rel=1e-5)


def test_hidden_widths_may_be_a_list():
    """The model is a static (hashed) jit argument: a list of widths could not be hashed."""
    model = CVAE(data_dim=4, latent_dim=2, hidden=[8, 8])
    state = init_cvae_state(model, optax.adam(1e-3), 1, jax.random.key(0))
    assert model.hidden == (8, 8) and state.params["encoder"]["dense_0"]["kernel"].shape == (5, 8)


def test_bad_inputs():
    model = CVAE(data_dim=3)
    opt = optax.adam(1e-3)
    with pytest.raises(ValueError, match="rows"):
        make_epoch_fn(model, opt, np.zeros((4, 3)), np.zeros((5, 1)), batch_size=2, beta=1, seed=0)
    with pytest.raises(ValueError, match="empty training set"):
        make_epoch_fn(model, opt, np.zeros((0, 3)), np.zeros((0, 1)), batch_size=2, beta=1, seed=0)


def test_init_does_not_recompile_for_an_equal_new_optimizer():
    """The init was one jit keyed on the optimizer object: a new optax.adam(1e-3) (the same
    configuration) compiled it again on every call."""
    compiles = []

    def listen(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    model = CVAE(data_dim=5, latent_dim=2, hidden=(8,))
    jax.block_until_ready(init_cvae_state(model, optax.adam(1e-3), 2, jax.random.key(0)))
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for i in range(2):
            state = init_cvae_state(model, optax.adam(1e-3), 2, jax.random.key(i))
            jax.block_until_ready(state)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiles == []


def test_with_validation_adds_the_eval_metrics_after_each_epoch():
    from jaxsci.models import with_validation

    def epoch_fn(state, epoch):
        return state + 1, {"loss": float(epoch)}

    def eval_fn(params, x, c):
        return {"loss": params * 10.0 + x.sum(), "kl": c.sum()}

    class S(int):  # a state whose params is itself
        @property
        def params(self):
            return int(self)

    assert with_validation(epoch_fn, eval_fn, None, None) is epoch_fn
    run = with_validation(
        lambda s, e: (S(s + 1), {"loss": float(e)}), eval_fn, np.ones((2, 1)), np.full((2, 1), 1.5)
    )
    state, metrics = run(S(4), 7)
    assert state == 5
    assert metrics == {"loss": 7.0, "val_loss": 52.0, "val_kl": 3.0}


def test_sampling_temperature_and_the_reparameterisation_by_hand():
    """``sample`` decodes temperature * N(0, I); the model's forward pass decodes
    mean + exp(logvar / 2) * N(0, I) (the standard deviation, as the KL term assumes)."""
    x, c = _toy(8)
    model = CVAE(data_dim=3, latent_dim=2, hidden=(16,))
    params = init_cvae_state(model, optax.adam(1e-3), cond_dim=1, key=jax.random.key(4)).params
    key = jax.random.key(5)
    decode = lambda z: model.apply({"params": params}, z, jnp.asarray(c), method=CVAE.decode)  # noqa: E731
    for t in (0.0, 0.5, 2.0):
        z = t * jax.random.normal(key, (8, 2))
        got = sample(model, params, c, key, temperature=t)
        np.testing.assert_allclose(got, decode(z), rtol=1e-5, atol=1e-6)
    x_hat, mean, logvar = model.apply({"params": params}, jnp.asarray(x), jnp.asarray(c), key)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
    np.testing.assert_allclose(x_hat, decode(z), rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(logvar))) > 1e-3  # the test can tell std from variance
