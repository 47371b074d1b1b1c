"""Conditional GANs: models, per-label training (vmap == alone, resume), bad input."""

import json
import re
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsci.data.digits import load_digits_split
from jaxsci.models.gan import PatchConv, dc_cgan, w_cgan
from jaxsci.parallel.bootstrap import ProcessInfo
from jaxsci.parallel.per_label import group_by_label, split_labels
from jaxsci.train.gan import (
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    init_gan_state,
    make_gan_trainer,
    make_pool,
    per_label_pools,
    sample_images,
    sample_per_label,
    train_per_label,
)

LABELS = [0, 3, 7]
STEPS = 4  # two chunks of 2: the carry between compiled calls, one program


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


def tiny_wgan():
    return w_cgan(latent_dim=8, g_features=8, d_features=8, n_critic=2)


def tiny_dcgan():
    return dc_cgan(latent_dim=8, g_features=8, d_features=8)


def test_shapes_and_ranges():
    labels = jnp.arange(5)
    for size in (8, 32):
        cgan = w_cgan(image_size=size, g_features=8, d_features=8)
        opt = optax.adam(1e-3)

        def forward(key, cgan=cgan, opt=opt):
            state = init_gan_state(cgan, opt, opt, key)
            x = cgan.generator.apply(state.g_params, jnp.ones((5, cgan.latent_dim)), labels)
            return x, cgan.discriminator.apply(state.d_params, x, labels)

        x, score = jax.eval_shape(forward, jax.random.PRNGKey(0))
        assert x.shape == (5, size, size, 1) and score.shape == (5,)
        if size == 8:
            x, _ = jax.jit(forward)(jax.random.PRNGKey(0))
            assert float(jnp.max(jnp.abs(x))) <= 1.0
    with pytest.raises(ValueError, match="power of two"):
        w_cgan(image_size=12).generator.init(jax.random.PRNGKey(0), jnp.ones((5, 32)), labels)


@pytest.mark.parametrize("kernel,stride", [(3, 1), (4, 2)])
def test_patch_conv_equals_conv(kernel, stride):
    """PatchConv is nn.Conv (SAME padding) with the kernel flattened (HWIO -> [k*k*C, F])."""
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
    pc = PatchConv(5, kernel, stride)
    params = pc.init(jax.random.PRNGKey(2), x)
    w, b = params["params"]["Dense_0"]["kernel"], params["params"]["Dense_0"]["bias"]
    conv = nn.Conv(5, (kernel, kernel), strides=(stride, stride), padding="SAME")
    ref = conv.apply({"params": {"kernel": w.reshape(kernel, kernel, 3, 5), "bias": b}}, x)
    np.testing.assert_allclose(pc.apply(params, x), ref, rtol=1e-5, atol=1e-5)


def _alone(cgan, opt, run, pools, key, label, n_steps):
    """Reference: one label trained on its own, no vmap. Its images sit in a pool padded to
    the largest label's size (never drawn: draws stay below ``count``), so one compiled
    ``run`` serves every label."""
    pool = jax.tree.map(lambda x: x[label], pools)
    state = init_gan_state(cgan, opt, opt, jax.random.fold_in(key, label))
    return run(state, pool, n_steps)


def test_adversarial_losses_by_hand():
    """The loss formulas on fixed discriminator outputs (logits for DC-CGAN)."""
    d_real, d_fake = jnp.array([2.0, 0.5]), jnp.array([-1.0, 3.0])
    sp = lambda x: np.log1p(np.exp(x))  # noqa: E731  softplus
    loss, gap = discriminator_loss(d_real, d_fake, "dcgan")
    want = (sp(-2.0) + sp(-0.5)) / 2 + (sp(-1.0) + sp(3.0)) / 2  # BCE: real -> 1, fake -> 0
    np.testing.assert_allclose([loss, gap], [want, 1.25 - 1.0], rtol=1e-6)
    np.testing.assert_allclose(generator_loss(d_fake, "dcgan"), (sp(1.0) + sp(-3.0)) / 2, rtol=1e-6)
    loss, gap = discriminator_loss(d_real, d_fake, "wgan-gp")
    np.testing.assert_allclose([loss, gap], [-0.25, 0.25], rtol=1e-6)  # the critic maximises gap
    np.testing.assert_allclose(generator_loss(d_fake, "wgan-gp"), -1.0, rtol=1e-6)
    # a confident, correct discriminator has a small loss; a fooled one a large loss
    good = discriminator_loss(jnp.full(4, 6.0), jnp.full(4, -6.0), "dcgan")[0]
    fooled = discriminator_loss(jnp.full(4, -6.0), jnp.full(4, 6.0), "dcgan")[0]
    assert good < 0.01 < 10.0 < fooled


def test_gradient_penalty_by_hand():
    """critic(x)_b = sum(x_b^2): per-sample gradient 2 x_b, penalty mean (2 ||x_b|| - 1)^2."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 1))
    got = gradient_penalty(lambda v: jnp.sum(v**2, axis=(1, 2, 3)), x)
    norms = 2.0 * np.linalg.norm(np.asarray(x).reshape(3, -1), axis=1)
    np.testing.assert_allclose(got, np.mean((norms - 1.0) ** 2), rtol=1e-5)
    unit = jnp.zeros((2, 4, 4, 1)).at[:, 0, 0, 0].set(1.0)  # a 1-Lipschitz critic: no penalty
    assert float(gradient_penalty(lambda v: jnp.sum(v * unit, axis=(1, 2, 3)), unit)) < 1e-10


def test_critic_updates_raise_the_wasserstein_estimate(digits):
    """With the generator frozen (lr 0), critic updates must widen the real-fake gap."""
    cgan = w_cgan(latent_dim=8, g_features=8, d_features=8, n_critic=5)
    d_opt = optax.adam(1e-3, 0.5, 0.9)
    state = init_gan_state(cgan, optax.sgd(0.0), d_opt, jax.random.PRNGKey(0))
    pool = make_pool(digits.train_images[:64], digits.train_labels[:64])
    run = jax.jit(make_gan_trainer(cgan, optax.sgd(0.0), d_opt, 32), static_argnums=2)
    _, metrics = run(state, pool, 8)
    w = np.asarray(metrics["w_dist"])
    assert w[-1] > w[0] + 0.1 and w[-3:].mean() > w[:3].mean()


@pytest.mark.parametrize("make", [tiny_dcgan, tiny_wgan])
def test_generator_updates_lower_its_loss_on_a_frozen_critic(digits, make):
    """With the critic frozen (lr 0), generator steps must descend the generator loss:
    measured by hand on a fixed batch of latents and labels the steps never saw."""
    cgan = make()
    g_opt, d_opt = optax.adam(1e-2, 0.5, 0.9), optax.sgd(0.0)
    state = init_gan_state(cgan, g_opt, d_opt, jax.random.PRNGKey(0))
    pool = make_pool(digits.train_images[:64], digits.train_labels[:64])
    run = jax.jit(make_gan_trainer(cgan, g_opt, d_opt, 32), static_argnums=2)
    after, _ = run(state, pool, 20)
    z = jax.random.normal(jax.random.PRNGKey(9), (64, cgan.latent_dim))
    y = jnp.arange(64) % 10
    G, D = cgan.generator, cgan.discriminator

    def loss(g_params):
        return float(generator_loss(D.apply(state.d_params, G.apply(g_params, z, y), y), cgan.loss))

    for a, b in zip(jax.tree.leaves(after.d_params), jax.tree.leaves(state.d_params), strict=True):
        np.testing.assert_array_equal(a, b)  # the critic did not move
    # measured: DCGAN 0.699 -> 0.527, W-CGAN 0.139 -> -1.97 (a sign flip raises both)
    assert loss(after.g_params) < loss(state.g_params) - 0.1


def test_the_critic_loss_holds_the_gradient_penalty_times_its_weight(digits):
    """d_loss = -w_dist + gp_weight * penalty: with one critic update from the same state
    and key, the reported d_loss + w_dist is 0 at weight 0 and doubles with the weight."""
    pool = make_pool(digits.train_images[:64], digits.train_labels[:64])
    opt = optax.adam(1e-3)
    terms = []
    for weight in (0.0, 10.0, 20.0):
        cgan = w_cgan(latent_dim=8, g_features=8, d_features=8, n_critic=1, gp_weight=weight)
        state = init_gan_state(cgan, opt, opt, jax.random.PRNGKey(0))
        run = jax.jit(make_gan_trainer(cgan, opt, opt, 32), static_argnums=2)
        _, metrics = run(state, pool, 1)
        terms.append(float(metrics["d_loss"][0] + metrics["w_dist"][0]))
    assert terms[0] == pytest.approx(0.0, abs=1e-6)
    assert terms[1] > 0.01  # measured 0.46
    assert terms[2] == pytest.approx(2.0 * terms[1], rel=1e-4)


def test_vmapped_per_label_equals_alone(digits):
    """W-CGAN (the gradient penalty nests a grad inside the vmapped step)."""
    cgan, opt, key = tiny_wgan(), optax.adam(1e-3, 0.5, 0.9), jax.random.PRNGKey(3)
    res = train_per_label(
        cgan,
        opt,
        opt,
        digits.train_images,
        digits.train_labels,
        key=key,
        label_set=LABELS,
        n_steps=STEPS,
        batch_size=8,
        chunk_steps=2,
        progress=False,
    )
    assert res.history["g_loss"].shape == (len(LABELS), STEPS)
    run = jax.jit(make_gan_trainer(cgan, opt, opt, 8), static_argnums=2)
    pools = per_label_pools(digits.train_images, digits.train_labels, range(10))
    for i, label in enumerate(LABELS):
        state, metrics = _alone(cgan, opt, run, pools, key, label, STEPS)
        mine = jax.tree.map(lambda x, i=i: x[i], (res.state.g_params, res.state.d_params))
        for a, b in zip(
            jax.tree.leaves((state.g_params, state.d_params)), jax.tree.leaves(mine), strict=True
        ):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(res.history["d_loss"][i], metrics["d_loss"], rtol=1e-5)
    # the models did move away from their initialisation and differ between labels
    g0 = jax.tree.leaves(res.state.g_params)[0]
    assert not np.allclose(g0[0], g0[1])


def test_resume_from_checkpoint_continues_exactly(digits, tmp_path):
    cgan, opt, key = tiny_dcgan(), optax.adam(1e-3, 0.5), jax.random.PRNGKey(4)
    kw = dict(key=key, label_set=[1, 2], batch_size=8, chunk_steps=2, progress=False)
    args = (cgan, opt, opt, digits.train_images, digits.train_labels)
    full = train_per_label(*args, n_steps=4, **kw)
    train_per_label(*args, n_steps=2, checkpoint_dir=tmp_path / "ck", **kw)
    resumed = train_per_label(*args, n_steps=4, checkpoint_dir=tmp_path / "ck", **kw)
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(full.history["g_loss"], resumed.history["g_loss"], rtol=1e-6)
    images, labels = sample_per_label(cgan, resumed, jax.random.PRNGKey(1), 3)
    assert images.shape == (6, 8, 8, 1)
    assert labels.tolist() == [1, 1, 1, 2, 2, 2]


def test_resume_with_another_label_split(digits, tmp_path):
    """A 2-rank run stopped half-way resumes in one process (and the other way round)."""
    cgan, opt, key = tiny_dcgan(), optax.adam(1e-3, 0.5), jax.random.PRNGKey(5)
    kw = dict(key=key, label_set=[1, 2, 3], batch_size=8, chunk_steps=2, progress=False)
    args = (cgan, opt, opt, digits.train_images, digits.train_labels)
    full = train_per_label(*args, n_steps=4, **kw)
    ck = tmp_path / "ck"
    for rank in (0, 1):  # the two ranks of an MPI run, played one after the other
        info = ProcessInfo(rank=rank, size=2, local_device_count=1)
        part = train_per_label(*args, n_steps=2, strategy="mpi", info=info, checkpoint_dir=ck, **kw)
        assert part.history["g_loss"].shape == (2 - rank, 2)  # labels [1, 2] and [3]
    assert sorted(p.name for p in ck.iterdir()) == ["labels-1-2", "labels-3"]
    resumed = train_per_label(*args, n_steps=4, checkpoint_dir=ck, **kw)
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full.history["g_loss"], resumed.history["g_loss"], rtol=1e-5)
    # and back: rank 1 of a 2-rank run resumes label 3 from the one-process block at step 4
    info = ProcessInfo(rank=1, size=2, local_device_count=1)
    shutil.rmtree(ck / "labels-3")
    more = train_per_label(*args, n_steps=4, strategy="mpi", info=info, checkpoint_dir=ck, **kw)
    np.testing.assert_allclose(more.history["g_loss"][0], full.history["g_loss"][2], rtol=1e-5)


def test_resume_with_labels_missing_from_the_checkpoints_is_an_error(digits, tmp_path):
    cgan, opt, key = tiny_dcgan(), optax.adam(1e-3, 0.5), jax.random.PRNGKey(5)
    kw = dict(key=key, batch_size=8, chunk_steps=2, progress=False, checkpoint_dir=tmp_path)
    args = (cgan, opt, opt, digits.train_images, digits.train_labels)
    train_per_label(*args, n_steps=2, label_set=[1, 2], **kw)
    with pytest.raises(ValueError, match=r"hold labels \[1, 2\] but not \[3\]"):
        train_per_label(*args, n_steps=4, label_set=[1, 2, 3], **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels-1-2"]  # no empty 1-2-3


def test_label_without_data_is_an_error(digits):
    cgan, opt = tiny_dcgan(), optax.adam(1e-3)
    keep = digits.train_labels != 5
    with pytest.raises(ValueError, match=r"labels \[5\] have no data"):
        train_per_label(
            cgan,
            opt,
            opt,
            digits.train_images[keep],
            digits.train_labels[keep],
            key=jax.random.PRNGKey(0),
            label_set=range(10),
            n_steps=1,
            batch_size=4,
            progress=False,
        )
    with pytest.raises(ValueError, match="empty"):
        make_pool(np.zeros((0, 8, 8, 1)), np.zeros((0,), int))


def test_labels_outside_the_classes_are_refused():
    """one_hot gives zeros beyond n_labels (the generator then ignores its label) and the
    critic's embedding NaN: such labels must raise, not train or sample silently."""
    cgan = tiny_dcgan()
    state = init_gan_state(cgan, optax.adam(1e-3), optax.adam(1e-3), jax.random.PRNGKey(0))
    z, x = jnp.zeros((1, cgan.latent_dim)), jnp.zeros((1, 8, 8, 1))
    for bad in (10, -1):
        with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9"):
            cgan.generator.apply(state.g_params, z, jnp.array([bad]))
        with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9"):
            cgan.discriminator.apply(state.d_params, x, jnp.array([bad]))
        with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9"):
            sample_images(cgan, state.g_params, jax.random.PRNGKey(1), jnp.array([3, bad]))
        with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9"):
            make_pool(np.zeros((2, 8, 8, 1)), np.array([0, bad]), n_labels=10)
    with pytest.raises(ValueError, match="integers"):
        make_pool(np.zeros((2, 8, 8, 1)), np.array([0.0, 2.7]))
    with pytest.raises(ValueError, match="square"):
        cgan.discriminator.apply(state.d_params, jnp.zeros((1, 8, 16, 1)), jnp.array([1]))
    for bad in ({"image_size": 12}, {"latent_dim": 0}, {"n_labels": 0}):
        with pytest.raises(ValueError):
            dc_cgan(**bad)
    with pytest.raises(ValueError, match="gp_weight"):
        w_cgan(gp_weight=-1.0)
    assert sample_images(cgan, state.g_params, jax.random.PRNGKey(1), jnp.arange(10)).shape == (
        10,
        8,
        8,
        1,
    )


def test_more_ranks_than_labels_is_an_error(digits):
    with pytest.raises(ValueError, match="3 ranks but only 2 labels"):
        split_labels([0, 1], 3)
    cgan, opt = tiny_dcgan(), optax.adam(1e-3)
    info = ProcessInfo(rank=0, size=3, local_device_count=1)
    with pytest.raises(ValueError, match="3 ranks but only 2 labels"):
        train_per_label(
            cgan,
            opt,
            opt,
            digits.train_images,
            digits.train_labels,
            key=jax.random.PRNGKey(0),
            label_set=[0, 1],
            n_steps=1,
            batch_size=4,
            strategy="mpi",
            info=info,
            progress=False,
        )


def test_split_and_group():
    blocks = split_labels(range(10), 3)
    assert [b.tolist() for b in blocks] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    data = np.arange(6)[:, None] * 1.0
    grouped, counts = group_by_label(data, np.array([2, 0, 2, 2, 0, 1]), [2, 0])
    assert counts.tolist() == [3, 2]
    assert grouped[0, :, 0].tolist() == [0, 2, 3]
    assert grouped[1, :, 0].tolist() == [1, 4, 0]
    padded, _ = group_by_label(data, np.array([2, 0, 2, 2, 0, 1]), [0], rows=3)
    assert padded.shape == (1, 3, 1) and padded[0, :, 0].tolist() == [1, 4, 0]
    for bad in (1, 2.5, True):  # below the largest group, not an int
        with pytest.raises(ValueError, match="rows must be an int >= 3"):
            group_by_label(data, np.array([2, 0, 2, 2, 0, 1]), [2, 0], rows=bad)
    with pytest.raises(ValueError, match="repeated"):
        split_labels([1, 1], 1)
    with pytest.raises(ValueError, match="fit in int32"):  # 2**33 wrapped to label 0
        group_by_label(data, np.array([2, 0, 2, 2, 0, 1]), [2**33])


def test_fit_gan_runs_a_short_last_chunk_and_joins_the_history():
    """5 steps in chunks of 2: calls of 2, 2 and 1 steps; the history is their concatenation."""
    from jaxsci.train.gan import fit_gan

    calls = []

    def run_chunk(state, k):  # a counter as the state, its step numbers as the metric
        calls.append(k)
        return state + k, {"step": np.arange(state + 1, state + k + 1, dtype=np.float32)}

    state, history = fit_gan(run_chunk, 0, n_steps=5, chunk_steps=2, progress=False)
    assert calls == [2, 2, 1] and state == 5
    np.testing.assert_array_equal(history["step"], [1, 2, 3, 4, 5])


def _ckpt_steps(folder):
    from jaxsci.train.checkpoint import Checkpointer

    with Checkpointer(folder, keep=None, info=ProcessInfo(0, 1, 1)) as ck:
        return ck.all_steps()


def test_resume_picks_the_newest_holder_of_each_label_after_two_resplits(digits, tmp_path):
    """Labels 1-4: 2 ranks to step 2, then 3 ranks to step 6 (blocks 1-2, 3 and 4; keep=2
    leaves 3-4 at step 2 only), then one process and 2 ranks again. The first holder of
    each label (3 in labels-3, 4 in labels-3-4) share no step: the resume was refused, and
    the block 3-4 restarted from its own step 2. Each label's newest holder is at step 6."""
    cgan, opt, key = tiny_dcgan(), optax.adam(1e-3, 0.5), jax.random.PRNGKey(6)
    kw = dict(key=key, label_set=[1, 2, 3, 4], batch_size=8, chunk_steps=2, progress=False)
    args = (cgan, opt, opt, digits.train_images, digits.train_labels)
    ck = tmp_path / "ck"
    for size, n_steps in ((2, 2), (3, 6)):
        for rank in range(size):
            info = ProcessInfo(rank=rank, size=size, local_device_count=1)
            train_per_label(
                *args, n_steps=n_steps, strategy="mpi", info=info, checkpoint_dir=ck, **kw
            )
    assert _ckpt_steps(ck / "labels-3-4") == [2] and _ckpt_steps(ck / "labels-3") == [4, 6]
    full = train_per_label(*args, n_steps=6, **kw)
    resumed = train_per_label(*args, n_steps=6, checkpoint_dir=ck, **kw)
    assert _ckpt_steps(ck / "labels-1-2-3-4") == [6]  # assembled at 6, nothing left to train
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full.history["g_loss"], resumed.history["g_loss"], rtol=1e-5)
    # rank 1 of 2 again: its own block is at step 2, labels-3 and labels-4 at 6 -> from 6
    info = ProcessInfo(rank=1, size=2, local_device_count=1)
    again = train_per_label(*args, n_steps=6, strategy="mpi", info=info, checkpoint_dir=ck, **kw)
    assert _ckpt_steps(ck / "labels-3-4") == [2, 6]  # no step 4: not retrained from 2
    np.testing.assert_allclose(again.history["g_loss"], full.history["g_loss"][2:], rtol=1e-5)


def test_resume_refused_when_no_step_is_saved_for_every_label(digits, tmp_path):
    cgan, opt, key = tiny_dcgan(), optax.adam(1e-3, 0.5), jax.random.PRNGKey(6)
    kw = dict(key=key, batch_size=8, chunk_steps=2, progress=False, checkpoint_dir=tmp_path)
    args = (cgan, opt, opt, digits.train_images, digits.train_labels)
    train_per_label(*args, n_steps=2, label_set=[1], **kw)
    train_per_label(*args, n_steps=6, label_set=[2], **kw)  # keeps steps 4 and 6
    with pytest.raises(ValueError, match=r"label 1: steps \[2\] in labels-1; label 2: steps"):
        train_per_label(*args, n_steps=6, label_set=[1, 2], **kw)
    assert _ckpt_steps(tmp_path / "labels-1-2") == []


def _tree_files(folder):
    return sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_resume_with_other_settings_is_refused_naming_them(digits, tmp_path):
    """A resume with another learning rate, batch size, latent size, architecture or key
    mixed two runs silently; now it raises, naming the setting, and writes nothing. More
    steps, another chunking and no progress bar are allowed."""
    from jaxsci.train.gan import train_conditional

    def run(n_steps=2, lr=1e-3, batch=8, cgan=None, key=0, n_images=None, chunk=2, **kw):
        opt = optax.adam(lr, 0.5)  # a new optimizer object every call, as a rerun makes
        return train_conditional(
            cgan or tiny_dcgan(),
            opt,
            opt,
            digits.train_images[:n_images],
            digits.train_labels[:n_images],
            key=jax.random.PRNGKey(key),
            n_steps=n_steps,
            batch_size=batch,
            chunk_steps=chunk,
            checkpoint_dir=tmp_path / "ck",
            **{"progress": False, **kw},
        )

    run()
    before = _tree_files(tmp_path)
    refused = {
        "d_optimizer, g_optimizer": dict(lr=2e-3),
        "batch_size": dict(batch=16),
        "model.latent_dim": dict(cgan=dc_cgan(latent_dim=4, g_features=8, d_features=8)),
        "model.generator.features": dict(cgan=dc_cgan(latent_dim=8, g_features=16, d_features=8)),
        "key": dict(key=1),
        r"data\.images_checksum, data\.label_counts\.2, .*, data\.shape": dict(n_images=-5),
        "extra": dict(settings={"note": "b"}),
    }
    for name, changes in refused.items():
        with pytest.raises(ValueError, match=rf"other settings \({name} differ\)"):
            run(n_steps=4, **changes)
        assert _tree_files(tmp_path) == before, name  # nothing written
    _, history = run(n_steps=6, chunk=4, progress=True)  # the same run, extended: fine
    assert history["g_loss"].shape == (6,)


def test_per_label_resume_with_other_settings_is_refused_before_assembling(digits, tmp_path):
    cgan, key = tiny_dcgan(), jax.random.PRNGKey(5)
    kw = dict(key=key, label_set=[1, 2, 3], batch_size=8, chunk_steps=2, progress=False)
    args = (cgan, digits.train_images, digits.train_labels)
    opt = optax.adam(1e-3, 0.5)
    for rank in (0, 1):
        info = ProcessInfo(rank=rank, size=2, local_device_count=1)
        train_per_label(
            cgan, opt, opt, *args[1:], n_steps=2, strategy="mpi", info=info,
            checkpoint_dir=tmp_path, **kw,
        )  # fmt: skip
    other = optax.adam(1e-3, 0.9)  # another beta1: only the updates tell
    with pytest.raises(ValueError, match=r"other settings \(d_optimizer, g_optimizer differ\)"):
        train_per_label(cgan, other, other, *args[1:], n_steps=4, checkpoint_dir=tmp_path, **kw)
    assert _ckpt_steps(tmp_path / "labels-1-2-3") == []  # nothing assembled
    with pytest.raises(ValueError, match=r"other settings \(batch_size differ\)"):  # own checkpoint
        info = ProcessInfo(rank=1, size=2, local_device_count=1)
        kw2 = dict(kw, batch_size=4)
        train_per_label(
            cgan, opt, opt, *args[1:], n_steps=4, strategy="mpi", info=info,
            checkpoint_dir=tmp_path, **kw2,
        )  # fmt: skip
    assert _ckpt_steps(tmp_path / "labels-3") == [2]
    same = optax.adam(1e-3, 0.5)  # an equal optimizer, another object: resumes
    res = train_per_label(cgan, same, same, *args[1:], n_steps=4, checkpoint_dir=tmp_path, **kw)
    assert res.history["g_loss"].shape == (3, 4)


def test_per_label_resume_with_another_learning_rate_is_refused_writing_nothing(digits, tmp_path):
    """A per-label resume with another learning rate is refused, both optimizers' probes
    shown, from the block's own checkpoint (fit_gan) and from blocks of another label split
    (assembled). The latter created its block's folder first: an empty labels-1-2-3 was
    left behind by the refusal; now nothing is written."""
    from jaxsci.train._fingerprint import optimizer_probe

    cgan, key = tiny_dcgan(), jax.random.PRNGKey(5)
    kw = dict(key=key, label_set=[1, 2, 3], batch_size=8, chunk_steps=2, progress=False)

    def run(lr, n_steps, **more):
        opt = optax.adam(lr, 0.5)
        return train_per_label(
            cgan, opt, opt, digits.train_images, digits.train_labels, n_steps=n_steps,
            checkpoint_dir=tmp_path, **kw, **more,
        )  # fmt: skip

    def rank(r):
        return dict(strategy="mpi", info=ProcessInfo(rank=r, size=2, local_device_count=1))

    for r in (0, 1):  # blocks labels-1-2 and labels-3 at step 2
        run(1e-3, 2, **rank(r))
    files = lambda: sorted(  # noqa: E731
        (p.relative_to(tmp_path), p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
        for p in tmp_path.rglob("*")
    )
    before = files()
    saved, now = (
        re.escape(json.dumps(optimizer_probe(optax.adam(lr, 0.5)))) for lr in (1e-3, 3e-3)
    )
    for how, more, block in (("own block", rank(1), "3"), ("assembled", {}, "1-2")):
        with pytest.raises(
            ValueError,
            match=rf"step 2 in .*labels-{block} was made with other settings \(d_optimizer, "
            rf"g_optimizer differ\): d_optimizer: saved {saved}, now {now}; g_optimizer: "
            rf"saved {saved}, now {now}\.",
        ):
            run(3e-3, 4, **more)
        assert files() == before, how  # no folder, no checkpoint written


def test_init_does_not_recompile_for_an_equal_new_optimizer():
    """The init was one jit keyed on the optimizer objects: optax.adam(...) called again (a
    new object, the same configuration) compiled it again, each time."""
    compiles = []

    def listen(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    cgan = tiny_wgan()
    opt = optax.adam(1e-3, 0.5, 0.9)
    jax.block_until_ready(init_gan_state(cgan, opt, opt, jax.random.PRNGKey(0)))  # warm
    stacked = lambda o: jax.vmap(lambda k: init_gan_state(cgan, o, o, k))  # noqa: E731
    jax.block_until_ready(stacked(opt)(jax.random.split(jax.random.PRNGKey(0), 3)))
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for i in range(2):
            new = optax.adam(1e-3, 0.5, 0.9)
            jax.block_until_ready(init_gan_state(cgan, new, new, jax.random.PRNGKey(i)))
            jax.block_until_ready(stacked(new)(jax.random.split(jax.random.PRNGKey(i), 3)))
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiles == []


def test_a_rerun_with_the_same_objects_compiles_no_training_program(digits):
    """train_conditional and train_per_label jitted a new closure on every call: a rerun or a
    resume in the same process with the same model and optimizer compiled its training
    chunks again. An optimizer that cannot be hashed still trains, the same way."""
    from jaxsci.train.gan import train_conditional

    compiles = []

    def listen(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    cgan, opt = tiny_dcgan(), optax.adam(1e-3, 0.5)
    kw = dict(key=jax.random.PRNGKey(0), n_steps=2, batch_size=8, chunk_steps=2, progress=False)
    args = (digits.train_images, digits.train_labels)
    runs = lambda o: (  # noqa: E731
        train_conditional(cgan, o, o, *args, **kw)[1],
        train_per_label(cgan, o, o, *args, label_set=[1, 2], **kw).history,
    )
    first = runs(opt)
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        again = runs(opt)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiles == []

    class Unhashable(optax.GradientTransformation):
        __hash__ = None

    odd = Unhashable(*opt)
    with pytest.raises(TypeError):
        hash(odd)
    for history in (again, runs(odd)):
        for a, b in zip(first, history, strict=True):
            np.testing.assert_array_equal(a["g_loss"], b["g_loss"])


def test_bench_cgan_labels_say_what_the_images_per_second_count():
    """bench_cgan reported labels * steps * batch / s as "img/s": the generator updates'
    images only, while each step also pushes 2 * n_critic * batch images through the critic."""
    import argparse
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_cgan.py")
    spec = importlib.util.spec_from_file_location("bench_cgan", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(labels=10, steps=20, batch_size=32, n_critic=5)
    rates = bench.image_rates(args, {"stacked": 2.0, "sequential": 4.0})
    assert rates["images_per_run"] == {
        "generator_images": 6400,
        "critic_images": 64000,
        "all_images": 70400,
    }
    assert rates["images_per_s"]["generator_images"] == {"stacked": 3200, "sequential": 1600}
    assert rates["images_per_s"]["all_images"]["stacked"] == 35200


def _conditional_run(digits, tmp_path, n_steps, images=None, labels=None, **kw):
    from jaxsci.train.gan import train_conditional

    opt = optax.adam(1e-3, 0.5)
    return train_conditional(
        dc_cgan(latent_dim=4, g_features=4, d_features=4),
        opt,
        opt,
        digits.train_images[:200] if images is None else images,
        digits.train_labels[:200] if labels is None else labels,
        key=jax.random.PRNGKey(0),
        n_steps=n_steps,
        batch_size=8,
        chunk_steps=2,
        checkpoint_dir=tmp_path / "ck",
        progress=False,
        **kw,
    )


def test_resume_on_rearranged_data_is_refused_naming_it(digits, tmp_path):
    """The data fingerprint held only the shape, label counts, mean and mean square: a resume
    on the images mirrored, the rows shuffled or the labels reassigned among the images
    went on silently, mixing two runs. Now each is refused, naming the checksum that moved,
    before anything is written; last-bit differences (data recomputed) still resume."""
    x, y = digits.train_images[:200], digits.train_labels[:200]
    _conditional_run(digits, tmp_path, 2)
    before = _tree_files(tmp_path)
    perm = np.random.default_rng(1).permutation(len(x))
    refused = {
        r"data\.images_checksum": (x[:, :, ::-1], y),  # mirrored left-right
        r"data\.images_checksum, data\.labels_checksum": (x[perm], y[perm]),  # rows shuffled
        r"data\.labels_checksum": (x, np.random.default_rng(2).permutation(y)),  # relabelled
    }
    for name, (images, labels) in refused.items():
        with pytest.raises(ValueError, match=rf"other settings \({name} differ\)"):
            _conditional_run(digits, tmp_path, 4, images=images, labels=labels)
        assert _tree_files(tmp_path) == before, name  # nothing written
    rounded = np.nextafter(x, np.float32(2.0))  # every value 1 ulp up (another rounding)
    _, history = _conditional_run(digits, tmp_path, 4, images=rounded)
    assert history["g_loss"].shape == (4,)


def test_resume_from_a_checkpoint_without_data_checksums_warns(digits, tmp_path, monkeypatch):
    """A checkpoint saved before the checksums were recorded resumes with a warning, its
    shape, label counts and moments still compared (and a change in those refused)."""
    import jaxsci.train.gan as gan

    real = gan._data_fingerprint

    def older(images, labels):
        out = real(images, labels)
        return {k: v for k, v in out.items() if k not in ("images_checksum", "labels_checksum")}

    monkeypatch.setattr(gan, "_data_fingerprint", older)
    _conditional_run(digits, tmp_path, 2)
    monkeypatch.setattr(gan, "_data_fingerprint", real)
    with pytest.warns(UserWarning, match="without data.images_checksum, data.labels_checksum"):
        with pytest.raises(ValueError, match=r"other settings \(data\.mean, data\.mean_square"):
            _conditional_run(digits, tmp_path, 4, images=digits.train_images[:200] * 0.5)
    with pytest.warns(UserWarning, match="older jaxsci"):
        _, history = _conditional_run(digits, tmp_path, 4)
    assert history["g_loss"].shape == (4,)


def test_resume_from_a_checkpoint_with_the_older_optimizer_probe_warns(
    digits, tmp_path, monkeypatch
):
    """Checkpoints saved up to session 28 hold the older probe (per update a signed weighted
    sum and the L1 norm, 6 values): they resume with a warning, the optimizers not compared,
    everything else still compared."""
    import jaxsci.train.gan as gan

    def older(opt):  # the earlier probe's form: 2 values per update
        params = {"w": jnp.linspace(-1.0, 1.0, 8, dtype=jnp.float32)}
        state, out = opt.init(params), []
        for i, scale in enumerate((1.0, -0.5, 2.0)):
            grads = {"w": scale * jnp.cos(3.0 * params["w"] + 0.5 + i)}
            u, state = opt.update(grads, state, params)
            params = optax.apply_updates(params, u)
            out += [float(jnp.sum(u["w"] * jnp.arange(1.0, 9.0))), float(jnp.sum(jnp.abs(u["w"])))]
        return out

    monkeypatch.setattr(gan, "optimizer_probe", older)
    _conditional_run(digits, tmp_path, 2)
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="g_optimizer and d_optimizer probe"):
        with pytest.raises(ValueError, match=r"other settings \(data\.images_checksum"):
            _conditional_run(digits, tmp_path, 4, images=digits.train_images[:200] * 0.5)
    with pytest.warns(UserWarning, match="without checking that the optimizers are the same"):
        _, history = _conditional_run(digits, tmp_path, 4)
    assert history["g_loss"].shape == (4,)


def test_the_discriminator_scores_with_its_label_projection():
    """D(x, y) = dense(h) + <embed(y), h> (the projection discriminator): the label
    embedding reaches the score (it has a gradient)."""
    cgan = tiny_wgan()
    state = init_gan_state(cgan, optax.sgd(0.0), optax.sgd(0.0), jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
    labels = jnp.array([0, 3, 7, 9])
    D = cgan.discriminator

    def score(params):
        return jnp.sum(D.apply(params, x, labels))

    grads = jax.grad(score)(state.d_params)
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    embed = [g for path, g in flat if "Embed" in jax.tree_util.keystr(path)]
    assert embed and max(float(jnp.abs(g).max()) for g in embed) > 0
