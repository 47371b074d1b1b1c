"""jaxsci.geometry: cells, displacements, dense and cell-list neighbour lists."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsci.geometry import (
    cell_list_allocate,
    cell_list_update,
    complete_nonperiodic,
    dense_slots,
    image_multipliers,
    image_shifts,
    minimum_image,
    periodic_displacement,
    perpendicular_widths,
    validate_cell,
    wrap_positions,
)

TRICLINIC = np.array([[5.0, 0.0, 0.0], [2.1, 4.6, 0.0], [-1.2, 0.8, 5.3]])


def _neighbour_set(index, shift, n):
    out = set()
    for i in range(index.shape[0]):
        for j, s in zip(index[i], shift[i], strict=True):
            if j < n:
                out.add((i, int(j), *map(int, s)))
    return out


def _brute_set(pos, cell, r_cut, pbc=(True, True, True)):
    """All (i, j, shift) with |R_j + shift @ cell - R_i| <= r_cut, excluding self (shifts
    only along the periodic axes)."""
    out = set()
    ranges = [range(-3, 4) if p else range(1) for p in pbc]
    for s in itertools.product(*ranges):
        d = pos[None, :, :] + np.array(s) @ cell - pos[:, None, :]
        r = np.linalg.norm(d, axis=-1)
        for i, j in zip(*np.nonzero(r <= r_cut), strict=True):
            if not (i == j and s == (0, 0, 0)):
                out.add((int(i), int(j), *s))
    return out


def test_validate_cell_errors():
    with pytest.raises(ValueError, match="3x3"):
        validate_cell(np.eye(2))
    with pytest.raises(ValueError, match="singular"):
        validate_cell([[1, 0, 0], [2, 0, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match="NaN"):
        validate_cell([[np.nan, 0, 0], [0, 1, 0], [0, 0, 1]])
    # a zero vector along a non-periodic axis is completed, not rejected
    c = validate_cell([[3, 0, 0], [0, 3, 0], [0, 0, 0]], pbc=(True, True, False))
    assert abs(np.linalg.det(c)) > 0
    # along a periodic axis it is refused (completing it invented a 1 A period)
    with pytest.raises(ValueError, match=r"zero lattice vector\(s\) \[2\] along periodic"):
        validate_cell([[3, 0, 0], [0, 3, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match=r"\[0, 1, 2\]"):  # ase's default cell
        validate_cell(np.zeros((3, 3)), pbc=True)
    np.testing.assert_array_equal(validate_cell(np.zeros((3, 3)), pbc=False), np.eye(3))


def test_widths_and_images():
    w = perpendicular_widths(TRICLINIC)
    vol = abs(np.linalg.det(TRICLINIC))
    assert np.allclose(w[2], vol / np.linalg.norm(np.cross(TRICLINIC[0], TRICLINIC[1])))
    n = image_multipliers(TRICLINIC, 6.0)
    assert np.array_equal(n, np.ceil(6.0 / w))
    shifts = image_shifts(TRICLINIC, 6.0, pbc=(True, False, True))
    assert np.all(shifts[0] == 0) and np.all(shifts[:, 1] == 0)
    assert len(shifts) == (2 * n[0] + 1) * (2 * n[2] + 1)


def test_periodic_displacement_is_minimum_image_triclinic():
    rng = np.random.default_rng(0)
    frac = rng.random((20, 3))
    pos = frac @ TRICLINIC
    disp = periodic_displacement(jnp.asarray(TRICLINIC))
    d = np.asarray(disp(jnp.asarray(pos)[:, None], jnp.asarray(pos)[None]))
    shifts = np.array(list(itertools.product(range(-2, 3), repeat=3))) @ TRICLINIC
    brute = pos[:, None, None] - pos[None, :, None] + shifts[None, None]
    best = np.min(np.linalg.norm(brute, axis=-1), axis=-1)
    assert np.allclose(np.linalg.norm(d, axis=-1), best, atol=1e-5)


def test_minimum_image_exact_for_long_vectors_in_sheared_cells():
    """A concrete cell is reduced on the host: exact beyond half the smallest width too
    (the 27 images of the rounded guess were not enough there)."""
    rng = np.random.default_rng(3)
    for cell in (np.array([[3.0, 0, 0], [8.7, 2.5, 0], [-5.1, 3.3, 4.0]]), 1.7 * TRICLINIC):
        d = rng.uniform(-2.0, 2.0, (300, 3)) @ cell
        got = np.asarray(periodic_displacement(cell)(jnp.asarray(d), jnp.zeros(3)))
        frac = d @ np.linalg.inv(cell)
        reach = np.linalg.norm(got, axis=-1).max() + 1e-3  # every n that can beat it:
        k = int(np.ceil(np.abs(frac).max() + reach / perpendicular_widths(cell).min()))
        brute = d[:, None] + np.array(list(itertools.product(range(-k, k + 1), repeat=3))) @ cell
        best = np.min(np.linalg.norm(brute, axis=-1), axis=-1)
        np.testing.assert_allclose(np.linalg.norm(got, axis=-1), best, atol=1e-5)


def test_minimum_image_skewed_slab_traced_cell_and_grad():
    # a slab with a skewed in-plane lattice and a tilted vacuum row: only in-plane shifts
    cell = np.array([[3.0, 0.0, 0.0], [2.6, 1.5, 0.0], [1.0, 0.5, 9.0]])
    pbc = (True, True, False)
    rng = np.random.default_rng(4)
    d = rng.uniform(-5.0, 5.0, (200, 3))
    got = np.asarray(minimum_image(cell, pbc)(jnp.asarray(d)))
    grid = np.array([(i, j, 0) for i in range(-8, 9) for j in range(-8, 9)]) @ cell
    brute = d[:, None] + grid[None]
    best = np.min(np.linalg.norm(brute, axis=-1), axis=1)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), best, atol=1e-5)
    np.testing.assert_allclose(got[:, 2], d[:, 2], atol=1e-5)  # the vacuum axis never wraps
    # a traced cell falls back to the 27 neighbouring images: right for short vectors
    short = np.array([[2.6, 1.2, 0.1], [-0.4, 1.4, -0.2]])
    traced = jax.jit(lambda c, x: minimum_image(c)(x))(jnp.asarray(TRICLINIC), jnp.asarray(short))
    concrete = minimum_image(TRICLINIC)(jnp.asarray(short))
    np.testing.assert_allclose(traced, concrete, atol=1e-5)
    # differentiable in dr: the image is dr plus a constant, so the Jacobian is the identity
    jac = jax.jacobian(minimum_image(cell, pbc))(jnp.array([2.9, 1.4, 0.3]))
    np.testing.assert_allclose(jac, np.eye(3), atol=1e-6)


def test_periodic_displacement_slab_and_bad_cells():
    """A slab's zero vacuum row is completed (it gave NaN); bad cells raise."""
    disp = periodic_displacement(np.diag([5.0, 5.0, 0.0]), (True, True, False))
    d = np.asarray(disp(jnp.array([4.5, 0.0, 7.0]), jnp.array([0.5, 0.0, 1.0])))
    np.testing.assert_allclose(d, [-1.0, 0.0, 6.0], atol=1e-6)  # x wraps, z does not
    with pytest.raises(ValueError, match="3x3"):
        periodic_displacement(np.eye(2))
    with pytest.raises(ValueError, match="singular"):
        periodic_displacement(np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]]))


def test_ase_slab_cell_with_a_zero_vacuum_row():
    # ase's slabs have a zero row along the vacuum: the traced minimum image gave NaN,
    # image_multipliers INT_MIN, wrap_positions a singular-matrix error
    cell, pbc = np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 0]]), (True, True, False)
    d = jnp.array([[2.9, 0.1, 7.0]])
    traced = jax.jit(lambda c, x: minimum_image(c, pbc)(x))(jnp.asarray(cell), d)
    np.testing.assert_allclose(traced, [[-0.1, 0.1, 7.0]], atol=1e-6)
    np.testing.assert_allclose(traced, minimum_image(cell, pbc)(d), atol=1e-6)
    np.testing.assert_array_equal(image_multipliers(cell, 5.0, pbc), [2, 2, 0])
    pos = np.array([[3.5, -0.5, 7.0], [1.0, 1.0, -2.0]])
    np.testing.assert_allclose(wrap_positions(pos, cell, pbc), [[0.5, 2.5, 7.0], [1, 1, -2]])
    with pytest.raises(ValueError, match="complete_nonperiodic"):
        perpendicular_widths(cell)
    np.testing.assert_allclose(perpendicular_widths(complete_nonperiodic(cell, pbc)), [3, 3, 1])


def test_wrap_positions_keeps_images():
    pos = np.array([[7.3, -1.0, 12.0], [-0.5, 0.2, 0.1]])
    w = wrap_positions(pos, TRICLINIC)
    frac = np.linalg.solve(TRICLINIC.T, w.T).T
    assert np.all((frac >= 0) & (frac < 1))
    n = np.linalg.solve(TRICLINIC.T, (pos - w).T).T
    assert np.allclose(n, np.round(n))


@pytest.mark.parametrize("cell", [np.diag([8.0, 9.0, 10.0]), 1.7 * TRICLINIC], ids=["ortho", "tri"])
def test_cell_list_matches_brute_force(cell):
    rng = np.random.default_rng(1)
    pos = rng.random((40, 3)) @ cell
    r_cut = 3.5
    with jax.enable_x64(True):
        nbrs = cell_list_allocate(pos, cell, r_cut)
    got = _neighbour_set(np.asarray(nbrs.index), np.asarray(nbrs.shift), len(pos))
    assert got == _brute_set(pos, cell, r_cut)


@pytest.mark.parametrize(
    "pbc",
    [(True, True, False), (True, False, False), (False, False, False)],
    ids=["slab", "wire", "free"],
)
def test_cell_list_with_open_axes_matches_brute_force(pbc):
    """Non-periodic axes (slabs, wires, clusters) are binned over the atoms' extent without
    wrap; they were refused ("needs a fully periodic cell"). Their cell rows may be zero
    (ase's slabs), and an atom moved past the allocation's extent is still found."""
    rng = np.random.default_rng(3)
    open_axes = ~np.asarray(pbc)
    pos = rng.random((80, 3)) @ (1.7 * TRICLINIC)
    pos[:, open_axes] *= 1.6  # beyond the cell along the open axes
    cell = np.where(open_axes[:, None], 0.0, 1.7 * TRICLINIC)
    full, r_cut = validate_cell(cell, pbc), 3.5
    with jax.enable_x64(True):
        nbrs = cell_list_allocate(pos, cell, r_cut, pbc)
        assert nbrs.spec.pbc == pbc and max(nbrs.spec.n_bins) >= 2
        moved = pos.copy()
        moved[0, open_axes] += 5.0
        moved[1, open_axes] -= 5.0
        up = cell_list_update(jnp.asarray(moved), jnp.asarray(cell), nbrs.spec)
        assert not bool(up.did_overflow)
    got = _neighbour_set(np.asarray(nbrs.index), np.asarray(nbrs.shift), len(pos))
    assert got == _brute_set(pos, full, r_cut, pbc)
    assert all(s[2 + k] == 0 for s in got for k in np.flatnonzero(open_axes))
    got = _neighbour_set(np.asarray(up.index), np.asarray(up.shift), len(pos))
    assert got == _brute_set(moved, full, r_cut, pbc)


def test_cell_list_flags_a_shrunk_cell():
    """Bins sized for a 12 A cube are narrower than r_cut once the cube is 9 A: the update
    must say so (neighbours two bins away are missed), and a grown cell stays exact."""
    rng = np.random.default_rng(7)
    frac = rng.random((200, 3))
    r_cut, big = 3.5, np.diag([12.0, 12.0, 12.0])
    with jax.enable_x64(True):
        nbrs = cell_list_allocate(frac @ big, big, r_cut, capacity_multiplier=3.0)
        assert nbrs.spec.n_bins == (3, 3, 3)
        for side, flagged in ((9.0, True), (13.0, False)):
            cell = np.diag([side] * 3)
            up = cell_list_update(jnp.asarray(frac @ cell), jnp.asarray(cell), nbrs.spec)
            assert bool(up.did_overflow) == flagged
            if not flagged:
                got = _neighbour_set(np.asarray(up.index), np.asarray(up.shift), 200)
                assert got == _brute_set(frac @ cell, cell, r_cut)


def test_dense_slots_include_own_images():
    cell = np.diag([2.5, 2.5, 2.5])
    pos = np.array([[0.1, 0.2, 0.3]])
    shifts = image_shifts(cell, 3.0)
    slots = dense_slots(jnp.asarray(pos), jnp.asarray(cell), jnp.asarray(shifts))
    r = np.linalg.norm(np.asarray(slots.disp), axis=-1)[0]
    valid = np.asarray(slots.valid)[0]
    assert not valid[0]  # itself, zero shift
    assert np.sum(valid & (r <= 3.0)) == 6  # the 6 face-sharing images at 2.5 A


def test_cell_list_overflow_flag_and_reallocation():
    cell = np.diag([9.0, 9.0, 9.0])
    rng = np.random.default_rng(2)
    spread = rng.random((60, 3)) @ cell
    with jax.enable_x64(True):
        nbrs = cell_list_allocate(spread, cell, 3.0, capacity_multiplier=1.0)
        assert not bool(nbrs.did_overflow)
        squeezed = 0.3 * spread  # density up 37x: bins and neighbour slots overflow
        update = jax.jit(cell_list_update, static_argnames="spec")
        stale = update(jnp.asarray(squeezed), jnp.asarray(cell), nbrs.spec)
        assert bool(stale.did_overflow)
        fresh = cell_list_allocate(squeezed, cell, 3.0)  # the host answers by reallocating
        assert not bool(fresh.did_overflow)
        assert fresh.spec.capacity > nbrs.spec.capacity
    got = _neighbour_set(np.asarray(fresh.index), np.asarray(fresh.shift), 60)
    assert got == _brute_set(squeezed, cell, 3.0)


def test_cell_list_refuses_bad_input_on_the_host():
    """NaN positions or r_cut were accepted silently; a multiplier below 1, [N, 2] positions
    gave a RuntimeError / TypeError from deep inside (user probe)."""
    cell = np.diag([9.0, 9.0, 9.0])
    pos = np.random.default_rng(0).random((20, 3)) @ cell
    bad = pos.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"positions contain NaN or inf \(atoms \[3\]\)"):
        cell_list_allocate(bad, cell, 3.0)
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        cell_list_allocate(bad, cell, 3.0)
    for r_cut in (np.nan, np.inf, 0.0, -1.0):
        with pytest.raises(ValueError, match="r_cut must be positive and finite"):
            cell_list_allocate(pos, cell, r_cut)
    for mult in (0.5, 0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="capacity_multiplier must be finite and >= 1"):
            cell_list_allocate(pos, cell, 3.0, capacity_multiplier=mult)
    for shape in ((20, 2), (60,), (20, 3, 1)):
        with pytest.raises(ValueError, match=r"positions must be an \[N, 3\] array"):
            cell_list_allocate(np.zeros(shape), cell, 3.0)


def test_cell_list_update_flags_non_finite_input():
    """The jitted update cannot raise: NaN positions or cell set did_overflow, so the host
    reallocates, and that raises."""
    cell = np.diag([9.0, 9.0, 9.0])
    pos = np.random.default_rng(0).random((20, 3)) @ cell
    nbrs = cell_list_allocate(pos, cell, 3.0)
    assert not bool(nbrs.did_overflow)
    bad = pos.copy()
    bad[5] = np.nan
    update = jax.jit(cell_list_update, static_argnames="spec")
    assert bool(update(jnp.asarray(bad), jnp.asarray(cell), nbrs.spec).did_overflow)
    nan_cell = cell.copy()
    nan_cell[0, 0] = np.nan
    assert bool(update(jnp.asarray(pos), jnp.asarray(nan_cell), nbrs.spec).did_overflow)
    assert not bool(update(jnp.asarray(pos), jnp.asarray(cell), nbrs.spec).did_overflow)


def test_cell_list_of_zero_atoms_is_empty():
    """Zero atoms: an empty list (no error), which the jitted update and the ACSF cell-list
    path handle too (it gave ZeroDivisionError)."""
    from jaxsci.descriptors import ACSF
    from jaxsci.geometry import neighbor_list_slots

    cell = np.diag([9.0, 9.0, 9.0])
    nbrs = cell_list_allocate(np.zeros((0, 3)), cell, 3.0)
    assert nbrs.index.shape[0] == 0 and nbrs.shift.shape[0] == 0 and nbrs.shift.shape[2] == 3
    assert not bool(nbrs.did_overflow)
    update = jax.jit(cell_list_update, static_argnames="spec")
    again = update(jnp.zeros((0, 3)), jnp.asarray(cell), nbrs.spec)
    assert again.index.shape == nbrs.index.shape and not bool(again.did_overflow)
    assert neighbor_list_slots(jnp.zeros((0, 3)), jnp.asarray(cell), nbrs).disp.shape[0] == 0
    acsf = ACSF(["Pt"], 3.0, [[0.1, 0.0]], periodic=True)
    empty = acsf.neighbor_list(np.zeros((0, 3)), cell)
    out = acsf.neighbor_fn(jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32), jnp.asarray(cell), empty)
    assert out.shape == (0, acsf.n_features)
    # the list of a non-empty system sharing the cell is unaffected
    full = cell_list_allocate(np.array([[1.0, 1.0, 1.0], [2.0, 1.0, 1.0]]), cell, 3.0)
    assert _neighbour_set(np.asarray(full.index), np.asarray(full.shift), 2) == {
        (0, 1, 0, 0, 0),
        (1, 0, 0, 0, 0),
    }


def test_image_slots_finds_neighbours_of_unwrapped_positions():
    """An atom stored a period out: its neighbour 1 A away across the boundary was missed
    (the images reached r_cut only from atoms inside the cell)."""
    from jaxsci.geometry import count_within, image_slots

    cell = np.eye(3) * 10.0
    pos = jnp.asarray([[0.5, 0.0, 0.0], [19.5, 0.0, 0.0]])  # 1 A apart through the boundary
    np.testing.assert_array_equal(count_within(image_slots(pos, cell, 3.0), 3.0), [1, 1])
    rng = np.random.default_rng(0)
    tri = np.array([[7.0, 0.0, 0.0], [2.0, 6.5, 0.0], [1.0, -1.5, 6.0]])
    frac = rng.uniform(-1.5, 2.5, size=(12, 3))  # most atoms outside the cell
    out = frac @ tri
    inside = (frac % 1.0) @ tri
    got = count_within(image_slots(jnp.asarray(out), tri, 4.0), 4.0)
    want = count_within(image_slots(jnp.asarray(inside), tri, 4.0), 4.0)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("r_cut", [float("nan"), float("inf"), -1.0, 0.0, True])
def test_neighbour_helpers_refuse_a_bad_cutoff(r_cut):
    from jaxsci.geometry import cell_list_usable, image_shifts, neighbor_capacity

    cell = np.eye(3) * 10.0
    for call in (
        lambda: image_shifts(cell, r_cut),
        lambda: cell_list_usable(cell, r_cut),
        lambda: neighbor_capacity(4, cell, r_cut),
    ):
        with pytest.raises(ValueError, match="r_cut"):
            call()


def test_a_nearly_flat_cell_is_refused_not_expanded_into_billions_of_images():
    from jaxsci.geometry import image_shifts

    flat = np.array([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [5.0, 5.0, 1e-9]])
    with pytest.raises(ValueError, match="nearly singular"):
        image_shifts(flat, 6.0)


def test_neighbor_capacity_names_the_real_problem():
    from jaxsci.geometry import neighbor_capacity

    cell = np.eye(3) * 10.0
    pos = np.zeros((2, 3))
    pos[1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        neighbor_capacity(2, cell, 3.0, positions=pos)
    with pytest.raises(ValueError, match="n_atoms must be an int"):
        neighbor_capacity(2.5, cell, 3.0)
    with pytest.raises(ValueError, match="multiplier"):
        neighbor_capacity(2, cell, 3.0, multiplier=-1.0)
    with pytest.raises(ValueError, match="3x3"):
        neighbor_capacity(2, np.ones(3), 3.0)
