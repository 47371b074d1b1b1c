"""ACSF properties: gradients vs finite differences, invariances, masks, batching, pooling,
polynomial cutoff against a brute-force reference, bad input."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.cluster import Icosahedron

from jaxsci.descriptors import ACSF, bucket_size, cosine_cutoff, polynomial_cutoff, pool
from jaxsci.geometry import cell_list_allocate, cell_list_update

G2 = [[0.1, 1.0], [0.5, 2.5]]
G4 = [[0.01, 1, 1], [0.02, 4, -1]]
G5 = [[0.01, 2, 1], [0.02, 1.5, -1]]  # zeta 1.5: per-triplet kernel
R_CUT = 5.0


@pytest.fixture(scope="module")
def acsf():
    return ACSF(["Pt", "Cu"], R_CUT, G2, [1.5], G4, G5)


@pytest.fixture(scope="module")
def cluster():
    a = Icosahedron("Pt", 2)
    a.rattle(0.1, seed=4)
    a.numbers[[2, 6, 9]] = 29
    return a


def _fd_check(loss, p, h=1e-5, n_dirs=2):
    g = jax.grad(loss)(p)
    assert np.all(np.isfinite(np.asarray(g)))
    for seed in range(n_dirs):
        v = jax.random.normal(jax.random.PRNGKey(seed), p.shape, dtype=p.dtype)
        fd = (loss(p + h * v) - loss(p - h * v)) / (2 * h)
        assert np.isclose(float(jnp.sum(g * v)), float(fd), rtol=1e-6, atol=1e-8)


def test_gradient_matches_finite_differences_cluster(acsf, cluster):
    with jax.enable_x64(True):
        s = jnp.asarray(acsf.encode_species(cluster.numbers))
        w = jax.random.normal(jax.random.PRNGKey(3), (len(cluster), acsf.n_features))
        _fd_check(jax.jit(lambda p: jnp.sum(w * acsf.fn(p, s))), jnp.asarray(cluster.positions))


def test_gradient_matches_finite_differences_moment_path(monkeypatch):
    # One species and integer zetas (the Pt default): free clusters go through the
    # power-sum (moment) kernels and quad_diag's custom gradient, which the fixtures above
    # (two species, zeta 1.5) never reach.
    import jaxsci.descriptors.acsf_cluster as cluster_module

    calls = []
    table = cluster_module.g4_power_sums_table
    monkeypatch.setattr(
        cluster_module,
        "g4_power_sums_table",
        lambda *a: calls.append("g4") or table(*a),
    )
    atoms = Icosahedron("Pt", 2)
    atoms.rattle(0.1, seed=5)
    ours = ACSF(["Pt"], R_CUT, G2, None, G4, [[0.01, 2, 1], [0.02, 4, -1]])
    with jax.enable_x64(True):
        s = jnp.asarray(ours.encode_species(atoms.numbers))
        w = jax.random.normal(jax.random.PRNGKey(5), (len(atoms), ours.n_features))
        _fd_check(jax.jit(lambda p: jnp.sum(w * ours.fn(p, s))), jnp.asarray(atoms.positions))
    assert calls  # the moment path ran


def test_gradient_matches_finite_differences_periodic():
    atoms = bulk("Cu", "fcc", a=3.6) * (1, 1, 2)  # cell narrower than 2 r_cut
    atoms.numbers[0] = 78
    atoms.rattle(0.05, seed=1)
    ours = ACSF(["Pt", "Cu"], R_CUT, G2, None, G4, G5, periodic=True)
    cell = np.asarray(atoms.cell[:])
    with jax.enable_x64(True):
        s = jnp.asarray(ours.encode_species(atoms.numbers))
        w = jax.random.normal(jax.random.PRNGKey(4), (len(atoms), ours.n_features))
        loss = jax.jit(lambda p: jnp.sum(w * ours.fn(p, s, cell)))
        _fd_check(loss, jnp.asarray(atoms.positions))


def test_gradients_finite_at_coincident_atoms_and_cutoff(acsf):
    pos = np.array([[0, 0, 0], [0, 0, 0], [R_CUT, 0, 0], [0, 2.0, 0]], dtype=np.float64)
    with jax.enable_x64(True):
        s = jnp.zeros(4, dtype=jnp.int32)
        out, g = jax.jit(jax.value_and_grad(lambda p: jnp.sum(acsf.fn(p, s) ** 2)))(
            jnp.asarray(pos)
        )
        feats = np.asarray(jax.jit(acsf.fn)(jnp.asarray(pos), s))
    assert np.all(np.isfinite(np.asarray(g))) and np.isfinite(float(out))
    # atom 2 sits exactly at r_cut from atom 0: G1 of atom 0 counts only atoms 1 and 3
    fc = 0.5 * (np.cos(np.pi * 2.0 / R_CUT) + 1)
    assert np.isclose(feats[0, 0], 1.0 + fc)


def test_invariances(acsf, cluster):
    s = acsf.encode_species(cluster.numbers)
    with jax.enable_x64(True):
        fn = jax.jit(acsf.fn)
        ref = np.asarray(fn(jnp.asarray(cluster.positions), s))
        q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
        moved = cluster.positions @ q.T + np.array([3.0, -7.0, 11.0])
        perm = np.random.default_rng(1).permutation(len(cluster))
        rot = np.asarray(fn(jnp.asarray(moved), s))
        per = np.asarray(fn(jnp.asarray(cluster.positions[perm]), s[perm]))
    assert np.allclose(rot, ref, rtol=1e-10, atol=1e-12)
    assert np.allclose(per, ref[perm], rtol=1e-10, atol=1e-12)
    # float32 create far from the origin: free clusters are centred first (coordinates near
    # 1000 A kept 4 fewer digits in their differences: 1.4e-4 relative error before)
    far = cluster.copy()
    far.positions += 1000.0
    np.testing.assert_allclose(acsf.create(far), ref, rtol=2e-5, atol=1e-5 * np.abs(ref).max())


def test_mask_padding_and_batch(acsf, cluster):
    small = cluster[:9]
    with jax.enable_x64(True):
        batch = acsf.batch([cluster, small])
        assert batch.positions.shape[1] == 16 and batch.mask.sum() == 13 + 9
        out = np.asarray(acsf.batch_fn(batch.positions, batch.species, batch.mask))
        # against the unpadded single-structure function (create runs batch_fn's own path)
        ref = [
            np.asarray(jax.jit(acsf.fn)(jnp.asarray(a.positions), acsf.encode_species(a.numbers)))
            for a in (cluster, small)
        ]
    assert np.allclose(out[1, :9], ref[1], rtol=1e-10, atol=1e-12)
    assert np.allclose(out[0, :13], ref[0], rtol=1e-10, atol=1e-12)
    assert np.all(out[1, 9:] == 0.0)
    # a different size within the same bucket keeps the padded shape (no recompilation)
    assert acsf.batch([cluster[:15]]).positions.shape[1] == 16
    # a Batch is a pytree: its arrays are the leaves and it passes through jit whole
    assert len(jax.tree.leaves(batch)) == 4  # positions, species, mask, n_atoms (no cells)
    feats = jax.jit(lambda b: acsf.batch_fn(b.positions, b.species, b.mask, b.cells, b.pbc))
    np.testing.assert_allclose(feats(batch), out, rtol=1e-5, atol=1e-6)


def test_batch_of_slabs_keeps_their_pbc():
    """Slabs (pbc True, True, False; zero third cell row) batched and evaluated with the
    batch's own cells and pbc equal create's per-structure features; mixing pbc raises."""
    from ase.build import fcc111

    desc = ACSF(["Pt"], R_CUT, G2, None, G4, periodic=True)
    slabs = [
        Atoms(
            "Pt4",
            positions=[[0, 0, 0], [1.95, 1.95, 0], [1.95, 0, 1.9], [0, 1.95, 1.9]],
            cell=[3.9, 3.9, 0.0],
            pbc=(True, True, False),
        )
    ]
    slabs.append(slabs[0].copy())
    slabs[1].rattle(0.05, seed=2)
    with jax.enable_x64(True):
        b = desc.batch(slabs)
        assert b.pbc == (True, True, False)
        out = np.asarray(desc.batch_fn(b.positions, b.species, b.mask, b.cells, b.pbc))
        ref = desc.create(slabs)
    assert np.allclose(out[:, :4], ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="different pbc"):
        desc.batch([slabs[0], fcc111("Pt", size=(2, 2, 2), vacuum=4.0, periodic=True)])


def test_pool(acsf, cluster):
    feats = jnp.asarray(acsf.create(cluster))
    padded = jnp.concatenate([feats, jnp.full((3, feats.shape[1]), 99.0)])
    mask = jnp.arange(16) < 13
    out = pool(padded, mask, ops=("max", "min", "mean"))
    f = np.asarray(feats)
    expected = np.concatenate([f.max(0), f.min(0), f.mean(0)])
    assert out.shape == (3 * acsf.n_features,)
    assert np.allclose(out, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="pool ops"):
        pool(feats, ops=("median",))
    # A padded batch slot with no atoms pools to zeros (max/min gave -inf/+inf), and the
    # gradient through the batch stays finite.
    batch = jnp.stack([padded, padded])
    none = jnp.stack([mask, jnp.zeros(16, bool)])
    ops = ("max", "min", "mean", "sum")
    out = pool(batch, none, ops=ops)
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_allclose(out[0], pool(feats, ops=ops), rtol=1e-6)
    grad = jax.grad(lambda f: jnp.sum(pool(f, none, ops=ops)))(batch)
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad[1]) == 0.0)


def _poly_fc(r, rc):
    x = r / rc
    return np.where(r <= rc, 1 - 10 * x**3 + 15 * x**4 - 6 * x**5, 0.0)


def _brute_g2_g4(pos, rc, g2, g4, fc):
    """Plain loops over pairs and triplets (j < k), single species."""
    n = len(pos)
    out = np.zeros((n, 1 + len(g2) + len(g4)))
    for i in range(n):
        for j in range(n):
            rij = np.linalg.norm(pos[j] - pos[i])
            if j == i or rij > rc:
                continue
            out[i, 0] += fc(rij, rc)
            for p, (eta, rs) in enumerate(g2):
                out[i, 1 + p] += np.exp(-eta * (rij - rs) ** 2) * fc(rij, rc)
        for j, k in itertools.combinations(range(n), 2):
            if i in (j, k):
                continue
            rij, rik = np.linalg.norm(pos[j] - pos[i]), np.linalg.norm(pos[k] - pos[i])
            rjk = np.linalg.norm(pos[k] - pos[j])
            if max(rij, rik, rjk) > rc:
                continue
            cos = np.dot(pos[j] - pos[i], pos[k] - pos[i]) / (rij * rik)
            for p, (eta, zeta, lam) in enumerate(g4):
                out[i, 1 + len(g2) + p] += (
                    2 ** (1 - zeta)
                    * (1 + lam * cos) ** zeta
                    * np.exp(-eta * (rij**2 + rik**2 + rjk**2))
                    * fc(rij, rc)
                    * fc(rik, rc)
                    * fc(rjk, rc)
                )
    return out


def test_polynomial_cutoff_against_brute_force():
    atoms = Icosahedron("Pt", 2)[:8]
    atoms.rattle(0.2, seed=2)
    ours = ACSF(["Pt"], 4.0, G2, g4_params=G4, cutoff="polynomial")
    with jax.enable_x64(True):
        out = ours.create(atoms)
    ref = _brute_g2_g4(atoms.positions, 4.0, G2, G4, _poly_fc)
    assert np.allclose(out, ref, rtol=1e-9, atol=1e-12)


def test_cell_list_overflow_reallocate_gives_dense_result():
    atoms = bulk("Pt", "fcc", a=3.92, cubic=True) * (2, 2, 2)  # 7.84 A cell, 2 bins of 3.9 A
    atoms.rattle(0.05, seed=0)
    r_cut = 3.5
    ours = ACSF(["Pt"], r_cut, G2, g4_params=G4, periodic=True)
    cell = np.asarray(atoms.cell[:])
    s = jnp.asarray(ours.encode_species(atoms.numbers))
    with jax.enable_x64(True):
        nbrs = cell_list_allocate(atoms.positions, cell, r_cut, capacity_multiplier=1.0)
        # pull the atoms towards one corner: bins and neighbour slots overflow
        compressed = 0.5 * atoms.positions
        nbrs = cell_list_update(jnp.asarray(compressed), jnp.asarray(cell), nbrs.spec)
        assert bool(nbrs.did_overflow)
        nbrs = ours.neighbor_list(compressed, cell)  # the host reallocates
        assert not bool(nbrs.did_overflow)
        out = np.asarray(ours.neighbor_fn(jnp.asarray(compressed), s, jnp.asarray(cell), nbrs))
        dense = np.asarray(jax.jit(lambda x: ours.fn(x, s, cell))(jnp.asarray(compressed)))
    assert np.allclose(out, dense, rtol=1e-9, atol=1e-12)
    # a species index the descriptor does not have: an error, as for fn (was all-zero rows)
    with pytest.raises(ValueError, match="species indices"):
        ours.neighbor_fn(jnp.asarray(compressed), s + 1, jnp.asarray(cell), nbrs)


def test_bad_input_errors(acsf, cluster):
    with pytest.raises(ValueError, match="unknown chemical element"):
        ACSF(["Xx"], 5.0)
    with pytest.raises(ValueError, match="r_cut"):
        ACSF(["Pt"], 0.0)
    with pytest.raises(ValueError, match="r_cut"):
        ACSF(["Pt"], -1.0)
    with pytest.raises(ValueError, match="r_cut"):
        ACSF(["Pt"], True)
    with pytest.raises(ValueError, match=r"list of symbols.*\['CO'\]"):  # not C and O
        ACSF("CO", 5.0)
    with pytest.raises(ValueError, match="g2_params"):
        ACSF(["Pt"], 5.0, g2_params=[[0.1, 1.0, 2.0]])
    with pytest.raises(ValueError, match="g3_params"):
        ACSF(["Pt"], 5.0, g3_params=[[1.0]])
    with pytest.raises(ValueError, match="g4_params"):
        ACSF(["Pt"], 5.0, g4_params=[0.1, 1, 1])
    with pytest.raises(ValueError, match="g5_params.*NaN"):
        ACSF(["Pt"], 5.0, g5_params=[[np.nan, 1, 1]])
    with pytest.raises(ValueError, match="cutoff"):
        ACSF(["Pt"], 5.0, cutoff="gaussian")
    with pytest.raises(ValueError, match="Au"):
        acsf.create(Atoms("Au2", positions=[[0, 0, 0], [0, 0, 2.5]]))
    with pytest.raises(ValueError, match="Au"):
        acsf.encode_species(["Pt", "Au"])
    for bad in (np.nan, np.inf):
        a = cluster.copy()
        a.positions[3, 1] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            acsf.create(a)
    periodic = ACSF(["Pt"], 5.0, G2, periodic=True)
    flat = Atoms("Pt", positions=[[0, 0, 0]], cell=[[1, 0, 0], [2, 0, 0], [0, 0, 1]], pbc=True)
    with pytest.raises(ValueError, match="singular"):
        periodic.create(flat)
    with pytest.raises(ValueError, match="3x3"):
        periodic.fn(jnp.zeros((1, 3)), jnp.zeros(1, dtype=jnp.int32), np.eye(2))
    for bad in ([0, 2], [-1, 0]):  # acsf has 2 species: index 2 and -1 are no species
        with pytest.raises(ValueError, match=r"species indices must lie in \[0, 2\)"):
            acsf.fn(jnp.zeros((2, 3)), jnp.asarray(bad))
    with pytest.raises(ValueError, match="same position"):
        acsf.create(Atoms("Pt2", positions=[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]))
    with pytest.raises(ValueError, match="zero lattice vector"):  # ase's default cell
        periodic.create(Atoms("Pt", positions=[[0, 0, 0]], pbc=True))
    one_site = Atoms("Pt2", positions=[[0.5, 0, 0], [3.5, 0, 0]], cell=3 * np.eye(3), pbc=True)
    with pytest.raises(ValueError, match="same site"):  # one lattice vector apart
        periodic.create(one_site)
    one_site.pbc = False  # not periodic: two distinct atoms
    assert np.all(np.isfinite(ACSF(["Pt"], 5.0, G2).create(one_site)))
    nan_pos = jnp.array([[0.0, 0, 0], [np.nan, 0, 0]])
    with pytest.raises(ValueError, match="NaN or inf"):  # it zeroed every row, silently
        acsf.fn(nan_pos, jnp.array([0, 1]))
    with pytest.raises(ValueError, match="pad with finite"):  # NaN padding poisons the rest
        acsf.fn(nan_pos, jnp.array([0, 1]), mask=jnp.array([True, False]))
    # each of these was accepted: 0.5 matched no species, "5" and True read as numbers
    with pytest.raises(ValueError, match="species must be integer indices"):
        acsf.fn(jnp.zeros((2, 3)) + jnp.arange(2.0)[:, None], np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="r_cut must be a number"):
        ACSF(["Pt"], "5")
    with pytest.raises(ValueError, match="unknown chemical element True"):
        ACSF([True], 5.0)
    for centers in ([1.7], [cluster.get_global_number_of_atoms()], [True]):
        with pytest.raises(ValueError, match="centers must be a list of integer atom indices"):
            acsf.create(cluster, centers=centers)
    np.testing.assert_array_equal(acsf.create(cluster, centers=[-1]), acsf.create(cluster)[-1:])
    two = jnp.array([[0.0, 0, 0], [0, 0, 2.5]])
    with pytest.raises(ValueError, match=r"mask must have shape \[2\]"):
        acsf.fn(two, jnp.array([0, 1]), mask=jnp.ones(3, bool))
    with pytest.raises(ValueError, match="pbc must be a bool or 3 bools"):
        periodic.fn(two, jnp.array([0, 0]), 5 * np.eye(3), pbc=(True, False))
    # the batched path checks the same things (it gave NaN rows or numpy broadcast errors)
    batch = acsf.batch([cluster, cluster[:5]])
    for args, match in (
        ((jnp.asarray(batch.positions).at[0, 1, 0].set(np.nan), batch.species, batch.mask), "NaN"),
        ((batch.positions, batch.species, batch.mask[:, :-1]), r"mask must have shape \[B, N\]"),
        ((batch.positions[0], batch.species, batch.mask), r"\[B, N, 3\]"),
    ):
        with pytest.raises(ValueError, match=match):
            acsf.batch_fn(*args)


def test_periodic_fn_wraps_atoms_outside_the_cell():
    """fn on positions moved by whole lattice vectors (in any direction) equals fn inside
    the cell, and its gradient is the same: the wrap happens in the graph."""
    desc = ACSF(["Pt", "Cu"], R_CUT, G2, [1.5], G4, G5, periodic=True)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.numbers[1] = 78
    atoms.rattle(0.05, seed=1)
    cell = np.asarray(atoms.cell)
    s = desc.encode_species(atoms.numbers)
    moved = atoms.positions + np.array([[2, 0, 0], [0, -3, 1], [0, 0, 0], [-1, 1, 5]]) @ cell
    with jax.enable_x64(True):
        f = jax.jit(lambda x: desc.fn(x, s, cell))  # traced positions: wrapped in the graph
        np.testing.assert_allclose(
            f(jnp.asarray(moved)), f(jnp.asarray(atoms.positions)), rtol=1e-10, atol=1e-12
        )
        g = jax.grad(lambda x: jnp.sum(f(x) ** 2))
        np.testing.assert_allclose(
            g(jnp.asarray(moved)), g(jnp.asarray(atoms.positions)), rtol=1e-8, atol=1e-10
        )


def test_empty_structures_have_no_rows(acsf):
    periodic = ACSF(["Pt"], 5.0, G2, None, G4, periodic=True)
    assert acsf.create(Atoms()).shape == (0, acsf.n_features)
    assert periodic.create(Atoms(cell=5.0 * np.eye(3), pbc=True)).shape == (0, periodic.n_features)
    assert acsf.fn(jnp.zeros((0, 3)), jnp.zeros(0, jnp.int32)).shape == (0, acsf.n_features)
    np.testing.assert_array_equal(pool(acsf.create(Atoms())), np.zeros(2 * acsf.n_features))


def test_angular_terms_are_never_negative_for_unit_lambda():
    """(1 + lambda cos)^zeta >= 0 for |lambda| <= 1; the moment expansion's round-off made
    nearly linear Pt3 (true G4 of the middle atom 0) come out down to -8e-8 in float32."""
    params = [[0.005, z, lam] for z in (1.0, 2.0, 4.0, 6.0) for lam in (1.0, -1.0)]
    desc = ACSF(["Pt"], 6.0, [[0.1, 0.0]], None, params, params)
    rng = np.random.default_rng(0)
    line = np.array([[-2.5, 0.0, 0.0], [0.0, 0.0, 0.0], [2.5, 0.0, 0.0]])
    feats = np.stack(
        [desc.create(Atoms("Pt3", positions=line + rng.normal(0, 1e-7, (3, 3)))) for _ in range(50)]
    )
    assert feats.min() >= 0.0
    # The middle atom's lambda = +1 terms are (1 + cos 180)^zeta = 0, up to round-off.
    assert np.abs(feats[:, 1, 2:][..., 0::2]).max() < 1e-6


def test_traced_capacity_keeps_the_nearest_neighbours():
    """fn(capacity=K) under jit equals the exact (all images) features whenever K covers
    every atom's neighbours, and its gradient too; a capacity below that drops only the
    farthest neighbours (a small change, not garbage) and says so: ValueError naming the
    count needed for concrete input, the overflow flag under jit (it was silent); a bad
    capacity raises."""
    from jaxsci.geometry import (
        count_within,
        dense_slots,
        image_shifts,
        max_neighbor_count,
        neighbor_capacity,
    )

    desc = ACSF(["Cu"], 6.0, G2, None, G4, periodic=True)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.1, seed=2)
    cell = np.asarray(atoms.cell)
    s = desc.encode_species(atoms.numbers)
    cap = neighbor_capacity(len(atoms), cell, 6.0)
    assert cap == 104  # 1.2 x 76.9 + 8, rounded up to 8; the atoms have 76-79 here
    shifts = image_shifts(cell, 6.0)
    slots = dense_slots(jnp.asarray(atoms.positions), jnp.asarray(cell), jnp.asarray(shifts))
    most = max_neighbor_count(atoms.positions, cell, shifts, 6.0)
    assert most == int(jnp.max(count_within(slots, 6.0))) == 79
    with jax.enable_x64(True):
        x = jnp.asarray(atoms.positions)
        exact = jax.jit(lambda x: desc.fn(x, s, cell))(x)  # traced: every image slot (600)
        pruned = jax.jit(lambda x: desc.fn(x, s, cell, capacity=cap))(x)
        np.testing.assert_allclose(pruned, exact, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(pruned, desc.create(atoms), rtol=1e-12, atol=1e-12)
        g_exact = jax.grad(lambda x: jnp.sum(desc.fn(x, s, cell) ** 2))(x)
        g_pruned = jax.grad(lambda x: jnp.sum(desc.fn(x, s, cell, capacity=cap) ** 2))(x)
        np.testing.assert_allclose(g_pruned, g_exact, rtol=1e-10, atol=1e-10)
        b = desc.batch([atoms, atoms])
        args = (b.positions, b.species, b.mask, b.cells, b.pbc)
        eager = desc.batch_fn(*args)  # concrete: the batch's exact largest count
        traced = jax.jit(lambda p: desc.batch_fn(p, *args[1:], capacity=cap))(b.positions)
        for out in (eager, traced):
            np.testing.assert_allclose(out[:, : len(atoms)], np.stack([exact] * 2), rtol=1e-12)
        with pytest.raises(ValueError, match="capacity=72 .* the 79 neighbours .* >= 79"):
            desc.fn(x, s, cell, capacity=72)  # below every atom's count
        with pytest.raises(ValueError, match="capacity=72 .* the 79 neighbours"):
            desc.batch_fn(*args, capacity=72)
        short_fn = jax.jit(
            lambda x: desc.fn(x, s, cell, capacity=72, return_overflow=True)
        )  # traced: cannot raise, so the flag
        short, flag = short_fn(x)
        assert bool(flag)
        rel = np.abs(np.asarray(short) - np.asarray(exact)) / np.abs(np.asarray(exact))
        assert 0 < rel.max() < 0.05
        full, flag = jax.jit(lambda x: desc.fn(x, s, cell, capacity=cap, return_overflow=True))(x)
        assert not bool(flag)
        np.testing.assert_allclose(full, exact, rtol=1e-12, atol=1e-12)
        flags = jax.jit(
            lambda p: desc.batch_fn(p, *args[1:], capacity=72, return_overflow=True)[1]
        )(b.positions)
        assert flags.shape == (2,) and bool(np.all(flags))
    for bad in (0, -8, 1.5, True):
        with pytest.raises(ValueError, match="capacity must be a positive integer"):
            desc.fn(jnp.asarray(atoms.positions), s, cell, capacity=bad)
        with pytest.raises(ValueError, match="capacity must be a positive integer"):
            desc.batch_fn(*args, capacity=bad)
    with pytest.raises(ValueError, match="neighbor_capacity"):
        neighbor_capacity(4, np.zeros((3, 3)), 6.0)


def _vacuum_slab(pbc):
    from ase.build import fcc111

    a = fcc111("Pt", size=(2, 2, 4), vacuum=10.0, periodic=True)  # 20 A of vacuum in c
    a.pbc = pbc
    a.rattle(0.02, seed=0)
    return a


@pytest.mark.parametrize("pbc", [(True, True, False), (True, True, True)], ids=["TTF", "TTT"])
def test_neighbor_capacity_from_positions_covers_a_slab_with_vacuum(pbc):
    """The density of the whole cell (vacuum included) gave 40 slots where atoms have 48
    neighbours (features off by 1%, silently); counted from the positions the capacity
    covers every atom, and the features under jit are exact."""
    from jaxsci.geometry import image_shifts, max_neighbor_count, neighbor_capacity

    desc = ACSF(["Pt"], 6.0, G2, None, G4, periodic=True)
    atoms = _vacuum_slab(pbc)
    cell, pos = np.asarray(atoms.cell), atoms.positions
    cap = neighbor_capacity(len(atoms), cell, 6.0, positions=pos, pbc=pbc)
    most = max_neighbor_count(pos, cell, image_shifts(cell, 6.0, pbc), 6.0)
    assert most == 48 and cap == 72  # 1.2 x 48 + 8, rounded up to 8
    if all(pbc):  # the density estimate (no positions) cannot see the vacuum
        assert neighbor_capacity(len(atoms), cell, 6.0) == 40
    s = desc.encode_species(atoms.numbers)
    with jax.enable_x64(True):
        fn = jax.jit(lambda x: desc.fn(x, s, cell, pbc=pbc, capacity=cap, return_overflow=True))
        out, flag = fn(jnp.asarray(pos))
        exact = desc.create(atoms)
    assert not bool(flag)
    np.testing.assert_allclose(out, exact, rtol=1e-12, atol=1e-12)
    if not all(pbc):
        with pytest.raises(ValueError, match="pass positions="):
            neighbor_capacity(len(atoms), cell, 6.0, pbc=pbc)
    with pytest.raises(ValueError, match=r"positions must be a finite \[16, 3\]"):
        neighbor_capacity(len(atoms), cell, 6.0, positions=pos[:3], pbc=pbc)


def _args(bb):
    """A Batch's positional arguments of batch_fn."""
    return bb.positions, bb.species, bb.mask, bb.cells, bb.pbc


def test_batch_fn_under_jit_with_traced_cells():
    """A Batch passed whole through jit traces its cells: batch_fn raised an obscure
    TracerArrayConversionError; with the batch's static ``images`` it now works (values and
    position gradients as with concrete cells, slabs with a zero cell row too), a cell too
    small for those images sets the overflow flag, and without them a clear error says
    what to pass."""
    desc = ACSF(["Cu"], 4.0, G2, None, G4, periodic=True)
    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    b = a.copy()
    b.rattle(0.05, seed=1)
    slab = Atoms("Cu2", [[0, 0, 0], [1.8, 1.8, 1.9]], cell=[3.6, 3.6, 0.0], pbc=(1, 1, 0))
    with jax.enable_x64(True):
        for batch in (desc.batch([a, b]), desc.batch([slab, slab])):
            assert batch.images == ((2, 2, 2) if all(batch.pbc) else (2, 2, 0))
            eager = desc.batch_fn(*_args(batch))
            traced = jax.jit(lambda bb: desc.batch_fn(*_args(bb), images=bb.images))(batch)
            np.testing.assert_allclose(traced, eager, rtol=1e-10, atol=1e-12)

            def loss(p, c, bb=batch):
                out = desc.batch_fn(p, bb.species, bb.mask, c, bb.pbc, images=bb.images)
                return jnp.sum(out**2)

            g_traced = jax.jit(jax.grad(loss))(batch.positions, batch.cells)
            g_eager = jax.grad(loss)(jnp.asarray(batch.positions), np.asarray(batch.cells))
            np.testing.assert_allclose(g_traced, g_eager, rtol=1e-8, atol=1e-10)
            with pytest.raises(ValueError, match="cells are traced .* pass images="):
                jax.jit(lambda bb: desc.batch_fn(*_args(bb)))(batch)
        batch = desc.batch([a, b])
        shrink = jax.jit(
            lambda bb, f: desc.batch_fn(
                *_args(bb)[:3], bb.cells * f, bb.pbc, images=bb.images, return_overflow=True
            )[1]
        )
        assert not np.any(shrink(batch, 1.0)) and np.all(shrink(batch, 0.5))
        with pytest.raises(ValueError, match=r"images=\(1, 1, 1\) .* need .*\(2, 2, 2\)"):
            desc.batch_fn(*_args(batch), images=(1, 1, 1))
        with pytest.raises(ValueError, match="images must be three non-negative integers"):
            desc.batch_fn(*_args(batch), images=(1.5, 1, 1))


def test_periodic_descriptor_without_a_cell_is_refused_not_computed_as_a_cluster():
    # before: fn silently returned the free-cluster features (G2 of atom 0: 1.67 vs 9.68)
    desc = ACSF(["Cu"], 6.0, G2, None, G4, periodic=True)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    s = desc.encode_species(atoms.numbers)
    x = jnp.asarray(atoms.positions)
    with pytest.raises(ValueError, match="periodic and pbc=.*no cell was given"):
        desc.fn(x, s)
    with pytest.raises(ValueError, match="no cell was given"):
        desc.fn(x, s, pbc=(True, True, False))
    with pytest.raises(ValueError, match="no cells was given"):
        desc.batch_fn(x[None], s[None], jnp.ones((1, 4), bool))
    # with the cell it is the periodic value; an explicit free cluster is still allowed
    np.testing.assert_allclose(desc.fn(x, s, np.asarray(atoms.cell)), desc.create(atoms), 1e-5)
    free = desc.fn(x, s, pbc=(False, False, False))
    np.testing.assert_allclose(free, ACSF(["Cu"], 6.0, G2, None, G4).fn(x, s), 1e-6)


def test_pool_refuses_a_single_row_and_a_mismatched_mask():
    f = jnp.arange(12.0).reshape(3, 4)
    with pytest.raises(ValueError, match=r"per-atom rows \[..., N, F\], got shape \(4,\)"):
        pool(f[0])
    with pytest.raises(ValueError, match=r"mask must have shape \[3\]"):
        pool(f, mask=jnp.ones(4, bool))
    np.testing.assert_array_equal(pool(f[:1]), jnp.concatenate([f[0], f[0]]))


def test_fn_refuses_overlapping_atoms_and_a_cell_that_is_not_3x3():
    """s28 (DESIGN: overlapping atoms and a non-3x3 cell raise): ``create`` refused both,
    ``fn`` on concrete inputs counted the r = 0 pair and ignored a 2x2 cell."""
    import jax

    free = ACSF(["Pt"], 5.0, g2_params=[[0.5, 0.0]])
    x = np.array([[0.0, 0, 0], [0, 0, 0], [2.5, 0, 0]])
    with pytest.raises(ValueError, match="two atoms sit at the same position"):
        free.fn(x, np.zeros(3, int))
    with pytest.raises(ValueError, match="cell must be a 3x3 matrix"):
        free.fn(x[1:], np.zeros(2, int), cell=np.eye(2))
    periodic = ACSF(["Pt"], 5.0, g2_params=[[0.5, 0.0]], periodic=True)
    with pytest.raises(ValueError, match="the same site \\(modulo the cell\\)"):
        periodic.fn(np.array([[0.0, 0, 0], [4, 0, 0]]), np.zeros(2, int), cell=4 * np.eye(3))
    # a padding row may sit anywhere; traced inputs are not checked (jit, grad)
    masked = free.fn(x, np.zeros(3, int), mask=np.array([True, False, True]))
    np.testing.assert_allclose(
        np.asarray(masked)[[0, 2]], free.fn(x[[0, 2]], np.zeros(2, int)), rtol=1e-6
    )
    jitted = jax.jit(lambda p: free.fn(p, np.zeros(3, int)))(x)
    assert np.all(np.isfinite(np.asarray(jitted)))


def test_cutoff_functions_have_their_closed_forms_and_vanish_from_r_cut_on():
    """Public helpers (used beyond ACSF, whose pair mask would hide an error past r_cut)."""
    rc = 5.0
    r = np.array([0.0, 1.0, 2.5, 4.0, 4.999, 5.0, 6.0, 7.5, 10.0, 12.5])
    x = r / rc
    inside = r < rc
    cosine = np.where(inside, 0.5 * (np.cos(np.pi * x) + 1.0), 0.0)
    poly = np.where(inside, 1.0 - 10.0 * x**3 + 15.0 * x**4 - 6.0 * x**5, 0.0)
    np.testing.assert_allclose(cosine_cutoff(jnp.asarray(r), rc), cosine, atol=1e-6)  # float32
    np.testing.assert_allclose(polynomial_cutoff(jnp.asarray(r), rc), poly, atol=1e-6)
    assert np.all(np.asarray(cosine_cutoff(jnp.asarray(r[~inside]), rc)) == 0.0)
    assert np.all(np.asarray(polynomial_cutoff(jnp.asarray(r[~inside]), rc)) == 0.0)


def test_bucket_size_is_the_smallest_bucket_that_holds_the_atoms():
    from jaxsci.descriptors.batching import BUCKETS

    for n in range(1, 1100):
        want = min((b for b in BUCKETS if b >= n), default=-(-n // 128) * 128)
        assert bucket_size(n) == want, n
