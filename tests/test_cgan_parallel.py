"""Per-label training sharded over a device mesh and split over MPI ranks equals one process."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType

from jaxsci.data.digits import load_digits_split
from jaxsci.models.gan import dc_cgan, w_cgan
from jaxsci.parallel import shard_over_labels
from jaxsci.parallel.bootstrap import bootstrap
from jaxsci.train.gan import train_per_label


def _run(strategy, labels, loss="wgan-gp", **kw):
    d = load_digits_split()
    tiny = dict(latent_dim=8, g_features=8, d_features=8)
    cgan = w_cgan(**tiny, n_critic=2) if loss == "wgan-gp" else dc_cgan(**tiny)
    opt = optax.adam(1e-3, 0.5, 0.9)
    return train_per_label(
        cgan,
        opt,
        opt,
        d.train_images,
        d.train_labels,
        key=jax.random.PRNGKey(7),
        label_set=labels,
        n_steps=3,
        batch_size=8,
        chunk_steps=3,
        strategy=strategy,
        progress=False,
        **kw,
    )


def _assert_same(a, b):
    np.testing.assert_array_equal(a.labels, b.labels)
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    for name in a.history:
        np.testing.assert_allclose(a.history[name], b.history[name], rtol=1e-5, atol=1e-6)


@pytest.mark.multidevice
def test_sharded_over_mesh_equals_vmapped():
    labels = [0, 2, 5, 6, 9]  # 5 labels over 4 devices: exercises the padding
    _assert_same(_run("shard", labels), _run("vmap", labels))


@pytest.mark.multidevice
@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_shard_over_labels_on_either_axis_type(axis_type):
    # jax.make_mesh's axes are Explicit by default; shard_map raised on them
    mesh = jax.make_mesh((4,), ("label",), axis_types=(axis_type,))

    def fn(tree, b):
        return {"y": tree["a"] * 2.0 + b.sum()}

    args = ({"a": jnp.arange(6.0).reshape(3, 2)}, jnp.arange(12.0).reshape(3, 4))
    want = jax.vmap(fn)(*args)
    on_one = jax.device_put(args, jax.devices()[0])  # e.g. restored from a checkpoint
    g = shard_over_labels(fn, mesh)
    for got in (g(*args), g(*on_one), _under_mesh(mesh, fn, args)):
        np.testing.assert_array_equal(got["y"], want["y"])
        assert got["y"].shape == (3, 2)
    # labels that divide the mesh come back split over it, not gathered on every device
    four = ({"a": jnp.arange(8.0).reshape(4, 2)}, jnp.arange(16.0).reshape(4, 4))
    out = g(*four)
    np.testing.assert_array_equal(out["y"], jax.vmap(fn)(*four)["y"])
    assert out["y"].sharding.spec[0] == "label"


def _under_mesh(mesh, fn, args):
    with jax.set_mesh(mesh):
        return shard_over_labels(fn, mesh)(*args)


@pytest.mark.mpi
def test_rank_split_equals_single_process(tmp_path_factory):
    info = bootstrap()
    assert info.size == 2
    labels = [1, 4, 8]  # rank 0 trains [1, 4], rank 1 trains [8]
    # DC-CGAN: the split is model-agnostic, and the W-CGAN's nested gradient under vmap is
    # covered in one process (test_cgan.py); its three programs per rank took 56 s here.
    split = _run("mpi", labels, "dcgan", info=info)
    alone = _run("vmap", labels, "dcgan")  # every rank also runs all labels in one process
    _assert_same(split, alone)
