"""Frozen dataclasses that hold arrays are pytrees (DESIGN.md: "State is a pytree"): their
arrays are the leaves, their settings static (hashable, part of the tree structure), so
they pass through ``jit``, ``tree_map``, ``grad`` and ``device_put``.

Instances come from the library's own builders at tiny sizes; the jitted checks compare
against the same computation in NumPy.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsci.alloys import (
    MONBTAW,
    AlloyModel,
    Lattice,
    PTResult,
    bcc_lattice,
    pair_hamiltonian,
    parallel_tempering,
    random_occupation,
)
from jaxsci.data import CrystalBlock, crystal_block

# the split each class must have: (data fields, meta fields), in field order
SPLIT: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {
    Lattice: (("positions", "cell", "neighbors", "shell"), ("coordination", "distances")),
    PTResult: (
        (
            "temperatures",
            "energies",
            "samples",
            "swap_acceptance",
            "exchange_acceptance",
            "timings",
            "final_state",
        ),
        ("n_sweeps", "n_burn"),
    ),
    CrystalBlock: (
        ("positions", "numbers"),
        ("material", "zone_axis", "rotation", "extent", "thickness"),
    ),
    AlloyModel: (("pair_energies",), ("species", "composition", "source")),
}
# leaves per instance: Lattice 4 arrays; PTResult 5 arrays + 2 timings + 5 PTState arrays
N_LEAVES = {Lattice: 4, PTResult: 12, CrystalBlock: 2, AlloyModel: 1}
CASES = ["lattice", "pt_result", "crystal_block", "alloy_model"]


@pytest.fixture(scope="module")
def lattice() -> Lattice:
    return bcc_lattice(3, 2)  # 54 sites, 8 + 6 neighbours


@pytest.fixture(scope="module")
def pt_run():
    lat = bcc_lattice(2, 1)  # 16 sites
    ham = pair_hamiltonian(lat, MONBTAW.pair_energies[:1])
    occ = random_occupation(jax.random.key(0), lat.n_sites, MONBTAW.composition)
    res = parallel_tempering(
        jax.random.key(1),
        ham,
        occ,
        [400.0, 800.0, 1600.0],
        n_samples=3,
        sample_every=2,
        n_burn=1,
        progress=False,
    )
    return ham, res


@pytest.fixture(scope="module")
def pt_result(pt_run) -> PTResult:
    return pt_run[1]


@pytest.fixture(scope="module")
def crystal_block_() -> CrystalBlock:
    return crystal_block(
        "Pt", extent=(6.0, 7.0), thickness=5.0, zone_axis=(0, 1, 1), rng=np.random.default_rng(0)
    )


@pytest.fixture(params=CASES)
def obj(request):
    name = "crystal_block_" if request.param == "crystal_block" else request.param
    if name == "alloy_model":
        return MONBTAW
    return request.getfixturevalue(name)


def _expected_leaves(o) -> list:
    """The leaves ``o`` should flatten to: its data fields in order, a dict's values by
    sorted key, a NamedTuple's fields in order."""
    out = []
    for name in SPLIT[type(o)][0]:
        v = getattr(o, name)
        if isinstance(v, dict):
            out += [v[k] for k in sorted(v)]
        elif isinstance(v, tuple):  # PTState
            out += list(v)
        else:
            out.append(v)
    return out


def _assert_same(a, b, exact: bool = True) -> None:
    """Same type, equal meta fields, equal leaves (to float32 rounding unless ``exact``)."""
    assert type(a) is type(b)
    for name in SPLIT[type(a)][1]:
        assert getattr(a, name) == getattr(b, name), name
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape
        if exact:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(y, x, rtol=1e-6, atol=0)


def test_every_field_is_data_or_meta_and_arrays_are_data(obj):
    data, meta = SPLIT[type(obj)]
    names = tuple(f.name for f in dataclasses.fields(obj))
    assert set(data) | set(meta) == set(names) and not set(data) & set(meta)
    for name in meta:
        v = getattr(obj, name)
        assert not isinstance(v, np.ndarray | jax.Array), name
        hash(v)  # static fields must be hashable: they key jit's cache
    for name in data:
        v = getattr(obj, name)
        assert all(isinstance(x, np.ndarray | jax.Array | float) for x in jax.tree.leaves(v))
    hash(jax.tree_util.tree_structure(obj))


def test_flatten_gives_exactly_the_array_fields_as_leaves(obj):
    leaves, _ = jax.tree_util.tree_flatten(obj)
    expected = _expected_leaves(obj)
    assert len(leaves) == len(expected) == N_LEAVES[type(obj)]
    assert all(a is b for a, b in zip(leaves, expected, strict=True))


def test_unflatten_round_trips_with_the_same_meta(obj):
    leaves, treedef = jax.tree_util.tree_flatten(obj)
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert back is not obj
    _assert_same(obj, back)
    for name in SPLIT[type(obj)][0]:
        if isinstance(getattr(obj, name), np.ndarray | jax.Array):
            assert getattr(back, name) is getattr(obj, name)  # the same arrays, not copies
    assert jax.tree_util.tree_structure(back) == treedef


def test_tree_map_keeps_type_and_meta(obj):
    out = jax.tree_util.tree_map(lambda a: a * 1, obj)
    assert out is not obj
    _assert_same(obj, out)


def test_device_put_gives_device_arrays_and_keeps_meta(obj):
    out = jax.device_put(obj)
    assert type(out) is type(obj)
    assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(out))
    _assert_same(obj, out, exact=False)  # float64 -> float32 unless x64 is on


def test_meta_stays_static_and_leaves_are_traced_under_jit(obj):
    data, meta = SPLIT[type(obj)]
    seen = {}

    def f(o):
        seen.update({m: getattr(o, m) for m in meta})
        seen["traced"] = all(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(o))
        return jax.tree.map(lambda a: a + 0, o)

    out = jax.jit(f)(obj)
    assert seen.pop("traced")
    assert seen == {m: getattr(obj, m) for m in meta}
    _assert_same(obj, out, exact=False)


def test_eq_and_hash_are_identity_and_never_raise(obj):
    copy = jax.tree_util.tree_map(lambda a: a, obj)  # equal contents, another object
    assert obj == obj and obj != copy
    assert {obj: 1, copy: 2}[obj] == 1  # usable as a dict key (array fields do not hash)


def _min_image(d: np.ndarray, cell: np.ndarray, xp) -> np.ndarray:
    frac = d @ xp.linalg.inv(cell)
    return (frac - xp.round(frac)) @ cell


def test_lattice_neighbour_table_under_jit_matches_numpy(lattice):
    traces = []

    @jax.jit
    def shell_distances(lat: Lattice):
        traces.append(1)
        d = lat.positions[lat.neighbors] - lat.positions[:, None, :]  # [n, z, 3]
        r = jnp.linalg.norm(_min_image(d, lat.cell, jnp), axis=-1)
        want = jnp.asarray(lat.distances)[lat.shell]  # static tuple indexed by a leaf
        return r, jnp.max(jnp.abs(r - want)), lat.shell_neighbors(lat.n_shells - 1)

    r, err, second = shell_distances(lattice)
    pos, nbr = lattice.positions, lattice.neighbors
    ref = np.linalg.norm(_min_image(pos[nbr] - pos[:, None, :], lattice.cell, np), axis=-1)
    np.testing.assert_allclose(np.asarray(r), ref, rtol=1e-6)
    assert float(err) < 1e-5
    np.testing.assert_array_equal(np.asarray(second), nbr[:, lattice.shell == 1])
    np.testing.assert_array_equal(lattice.shell_neighbors(1), nbr[:, lattice.shell == 1])
    assert second.shape == (lattice.n_sites, lattice.coordination[1])
    shell_distances(bcc_lattice(3, 2))  # another lattice of the same size: no new trace
    assert len(traces) == 1
    shell_distances(bcc_lattice(3, 1))  # other shells (meta): a new trace
    assert len(traces) == 2


def test_pt_result_under_jit_matches_its_hamiltonian(pt_run):
    ham, res = pt_run

    @jax.jit
    def check(ham, res: PTResult):
        final = jax.vmap(ham.energy)(res.final_state.occupations)
        last = jax.vmap(ham.energy)(res.samples[-1].astype(jnp.int32))
        accepted = res.swap_acceptance * (res.n_sweeps * ham.n_sites)  # meta: Python int
        return final, last, jnp.mean(res.energies, axis=0), accepted

    final, last, mean, accepted = check(ham, res)
    np.testing.assert_allclose(final, np.asarray(res.final_state.energies), rtol=1e-5)
    np.testing.assert_allclose(last, res.energies[-1], rtol=1e-5)
    np.testing.assert_allclose(mean, res.energies.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(accepted, np.round(accepted), atol=1e-3)  # whole swaps
    np.testing.assert_array_equal(res.samples[-1], np.asarray(res.final_state.occupations))
    assert (res.n_sweeps, res.n_burn) == (6, 2)
    assert type(res.n_sweeps) is int and type(res.n_burn) is int


def test_pt_results_of_other_timings_share_a_structure(pt_result):
    other = dataclasses.replace(
        pt_result, timings={k: v + 1.0 for k, v in pt_result.timings.items()}
    )
    assert jax.tree_util.tree_structure(other) == jax.tree_util.tree_structure(pt_result)
    mean = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, pt_result, other)
    assert mean.timings["burn_s"] == pytest.approx(pt_result.timings["burn_s"] + 0.5)
    np.testing.assert_allclose(mean.energies, pt_result.energies)


def test_crystal_block_under_jit_matches_numpy(crystal_block_):
    block = crystal_block_

    @jax.jit
    def frac_and_density(b: CrystalBlock):
        ly, lx = b.extent
        frac = b.positions / jnp.array([lx, ly, b.thickness])
        return frac, jnp.sum(b.numbers == 78), b.n_atoms / b.volume  # Python numbers: meta

    frac, n_pt, density = frac_and_density(block)
    ly, lx = block.extent
    ref = block.positions / np.array([lx, ly, block.thickness])
    np.testing.assert_allclose(np.asarray(frac), ref, rtol=1e-6)
    assert np.all((ref >= 0) & (ref < 1))
    assert int(n_pt) == block.n_atoms > 0
    assert float(density) == pytest.approx(block.n_atoms / (6.0 * 7.0 * 5.0))


def test_alloy_model_gradient_is_a_model_of_bond_counts():
    lat = bcc_lattice(5)  # MoNbTaW's 6 shells need 5 cells
    occ = np.asarray(random_occupation(jax.random.key(2), lat.n_sites, MONBTAW.composition))

    def energy(model: AlloyModel):
        v = model.pair_energies[lat.shell]  # [z, S, S]
        cols = np.arange(lat.neighbors.shape[1])
        return 0.5 * jnp.sum(v[cols[None, :], occ[:, None], occ[lat.neighbors]])

    e, grad = jax.jit(jax.value_and_grad(energy))(MONBTAW)
    want = jax.jit(pair_hamiltonian(lat, MONBTAW.pair_energies).energy)(occ)
    assert float(e) == pytest.approx(float(want), rel=1e-5)
    assert type(grad) is AlloyModel
    assert (grad.species, grad.composition, grad.source) == (
        MONBTAW.species,
        MONBTAW.composition,
        MONBTAW.source,
    )
    counts = np.zeros_like(MONBTAW.pair_energies)  # half-bonds per shell and species pair
    np.add.at(counts, (lat.shell[None, :], occ[:, None], occ[lat.neighbors]), 0.5)
    np.testing.assert_allclose(np.asarray(grad.pair_energies), counts)
    assert counts.sum() == lat.n_sites * lat.neighbors.shape[1] / 2  # every bond once


def test_batch_and_neighbor_list_compare_by_identity():
    """The two pytrees registered earlier hold arrays too: ``==`` between two of them raised
    "truth value of an array is ambiguous", and ``hash`` a TypeError."""
    from ase.build import bulk

    from jaxsci.descriptors import ACSF
    from jaxsci.geometry.neighbors import cell_list_allocate

    acsf = ACSF(species=["Cu"], r_cut=4.0, g2_params=[[1.0, 0.0]])
    batch = acsf.batch([bulk("Cu", "fcc", a=3.6, cubic=True)] * 2)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    nbrs = cell_list_allocate(atoms.positions, np.asarray(atoms.cell), 4.0)
    for obj in (batch, nbrs):
        copy = jax.tree_util.tree_map(lambda a: a, obj)
        assert obj == obj and obj != copy
        assert {obj: 1, copy: 2}[copy] == 2
