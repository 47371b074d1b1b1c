"""UNet (jaxsci.models.fcn): shapes, validation, circular-shift equivariance, gradients, fit."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsci.models.fcn import UNet


def _init_apply(model, x, seed=0):
    """(params, jitted apply, output); jit: faster than op-by-op dispatch here."""
    params = jax.jit(model.init)(jax.random.key(seed), x)
    apply = jax.jit(model.apply)
    return params, apply, apply(params, x)


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({"features": (8, 16, 32)}, (2, 16, 16, 3)),
        ({"features": (8, 16, 32), "out_channels": 2, "bottleneck": "dense"}, (1, 16, 24, 5)),
        ({"features": (4, 8), "downsample": "strided_conv", "padding": "SAME"}, (3, 10, 6, 1)),
        ({"features": (4, 8, 8, 8), "norm": "layer", "out_channels": 3}, (1, 16, 8, 2)),
        ({"features": (6,), "norm": "none"}, (2, 7, 5, 4)),  # one level: any H, W
        ({"features": [8, 12], "bottleneck": "dense", "dense_channels": 2}, (2, 8, 12, 16)),
    ],
)
def test_output_shape(kwargs, shape):
    model = UNet(**kwargs)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)  # shapes only: traced, not compiled
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    y = jax.eval_shape(model.apply, params, x)
    assert y.shape == (*shape[:3], kwargs.get("out_channels", 1))
    assert y.dtype == jnp.float32


def test_features_become_tuple():
    assert UNet(features=[8, 16]).features == (8, 16)
    assert UNet(features=np.array([8, 16])).features == (8, 16)


@pytest.mark.parametrize("shape", [(1, 18, 16, 1), (1, 16, 6, 1), (1, 2, 2, 1)])
def test_spatial_size_not_divisible_raises(shape):
    model = UNet(features=(4, 8, 16))  # needs multiples of 4
    with pytest.raises(ValueError, match="divisible by 4"):
        model.init(jax.random.key(0), jnp.ones(shape))


def test_input_rank_raises():
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        UNet(features=(4,)).init(jax.random.key(0), jnp.ones((8, 8, 1)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"features": ()}, "features"),
        ({"features": (8, 0)}, "features"),
        ({"features": (8, -4)}, "features"),
        ({"features": (8.0, 16)}, "features"),
        ({"out_channels": 0}, "out_channels"),
        ({"bottleneck": "global"}, "bottleneck"),
        ({"padding": "VALID"}, "padding"),
        ({"downsample": "max_pool"}, "downsample"),
        ({"norm": "batch"}, "norm"),
        ({"norm_groups": 0}, "norm_groups"),
        ({"dense_channels": 0}, "dense_channels"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**kwargs)


# features (8, 16, 32): 3 levels, coarsest map 1/4 of the input: shifts by multiples of 4
# pixels commute with the network when every op is circular and per-sample.
EQ_X = jax.random.normal(jax.random.key(1), (2, 16, 24, 3))


@pytest.mark.parametrize("downsample", ["avg_pool", "strided_conv"])
def test_translation_equivariance_circular(downsample):
    model = UNet(features=(8, 16, 32), bottleneck="conv", padding="CIRCULAR", downsample=downsample)
    params, apply, y = _init_apply(model, EQ_X)
    scale = float(jnp.max(jnp.abs(y)))
    assert scale > 0.5  # a non-trivial output
    for shift in [(4, 0), (0, 8), (-4, 12), (8, 4)]:
        y_shift = apply(params, jnp.roll(EQ_X, shift, axis=(1, 2)))
        # measured max |diff| ~3e-6 (float32 reduction order in the norms)
        np.testing.assert_allclose(y_shift, jnp.roll(y, shift, axis=(1, 2)), atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "shift"),
    [
        ({"bottleneck": "dense"}, (4, 0)),  # a global dense map: not equivariant
        ({"bottleneck": "conv"}, (2, 0)),  # not a multiple of 4: pooling grid changes
        ({"bottleneck": "conv", "padding": "SAME"}, (4, 0)),  # zero padding: edges differ
    ],
)
def test_translation_equivariance_fails_when_broken(kwargs, shift):
    """The equivariance check above can fail: it does for these (measured diff ~1-3)."""
    model = UNet(features=(8, 16, 32), **kwargs)
    params, apply, y = _init_apply(model, EQ_X)
    y_shift = apply(params, jnp.roll(EQ_X, shift, axis=(1, 2)))
    assert float(jnp.max(jnp.abs(y_shift - jnp.roll(y, shift, axis=(1, 2))))) > 0.1


def test_samples_independent_of_batch():
    """No batch statistics (no BatchNorm): a sample's output does not depend on the others."""
    model = UNet(features=(8, 16), bottleneck="dense")
    params, apply, y = _init_apply(model, EQ_X[:, :16, :16])
    y0 = apply(params, EQ_X[:1, :16, :16])
    np.testing.assert_allclose(y0, y[:1], atol=1e-5)


def test_dense_bottleneck_size():
    model = UNet(features=(8, 16, 32), bottleneck="dense", dense_channels=3)
    params = jax.eval_shape(model.init, jax.random.key(0), EQ_X)  # 16 x 24 -> coarsest 4 x 6
    dense = [v for k, v in jax.tree_util.tree_leaves_with_path(params) if "bottleneck" in str(k)]
    assert {d.shape for d in dense} == {(4, 6, 3, 4 * 6 * 3), (4 * 6 * 3,)}


def test_dense_bottleneck_refuses_another_input_size():
    model = UNet(features=(8, 16), bottleneck="dense")
    params = jax.jit(model.init)(jax.random.key(0), EQ_X[:, :16, :16])
    apply = jax.jit(model.apply)  # the shape checks run while tracing (one compile, not op by op)
    with pytest.raises(ValueError, match="initialised for inputs of H x W = 16 x 16"):
        apply(params, EQ_X[:, :16, :8])
    with pytest.raises(ValueError, match="got H=8, W=32"):  # as many pixels, another shape
        apply(params, jnp.zeros((1, 8, 32, EQ_X.shape[-1])))
    apply(params, EQ_X[:1, :16, :16])  # same size, any batch: fine


@pytest.mark.parametrize("bottleneck", ["conv", "dense"])
def test_gradients_finite(bottleneck):
    model = UNet(features=(8, 16), out_channels=2, bottleneck=bottleneck)
    x = EQ_X[:, :16, :16]
    params = jax.jit(model.init)(jax.random.key(0), x)

    def loss(p, x):
        return jnp.mean(model.apply(p, x) ** 2)

    g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    leaves = jax.tree.leaves(g_params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)  # every parameter is used
    assert bool(jnp.all(jnp.isfinite(g_x))) and float(jnp.max(jnp.abs(g_x))) > 0


@pytest.mark.parametrize("bottleneck", ["conv", "dense"])
def test_fits_tiny_batch(bottleneck):
    """4 random 16x16x2 inputs -> random 16x16x1 targets: 200 Adam steps (lr 3e-3) cut the MSE
    > 100x. Measured over 4 seeds: 820x-1.6e4x (conv), 1.1e3x-3.2e4x (dense)."""
    model = UNet(features=(8, 16), bottleneck=bottleneck)
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 2))
    y = jax.random.normal(jax.random.key(100), (4, 16, 16, 1))
    params = jax.jit(model.init)(jax.random.key(200), x)
    opt = optax.adam(3e-3)
    state = opt.init(params)

    def loss(p):
        return jnp.mean((model.apply(p, x) - y) ** 2)

    @jax.jit
    def step(p, s):
        value, grads = jax.value_and_grad(loss)(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    first = None
    for _ in range(200):
        params, state, value = step(params, state)
        first = value if first is None else first
    final = jax.jit(loss)(params)
    assert float(first) / float(final) > 100
