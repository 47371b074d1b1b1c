"""Random crystal specimens (jaxsci.data.crystal_blocks): density, composition, orientation,
slicing, reproducibility and validation."""

import numpy as np
import pytest

from jaxsci.data.crystal_blocks import (
    LATTICE_CONSTANTS,
    MATERIALS,
    ZONE_AXES,
    CrystalBlock,
    bulk_density,
    crystal_block,
    material_cell,
    slice_block,
)

STOICHIOMETRY = {  # atomic number -> share of the formula unit
    "Pt": {78: 1},
    "Si": {14: 1},
    "GaAs": {31: 1, 33: 1},
    "MgO": {12: 1, 8: 1},
    "W": {74: 1},
    "SrTiO3": {38: 1, 22: 1, 8: 3},
}


def _rel_density_error(block: CrystalBlock) -> float:
    return block.n_atoms / (bulk_density(block.material) * block.volume) - 1.0


def test_registry():
    assert MATERIALS == ("Pt", "Si", "GaAs", "MgO", "W", "SrTiO3")
    assert LATTICE_CONSTANTS["Si"] == 5.431
    for name in MATERIALS:
        cell = material_cell(name)
        a = LATTICE_CONSTANTS[name]
        np.testing.assert_allclose(cell.cell.lengths(), [a, a, a])
        np.testing.assert_allclose(cell.cell.angles(), [90, 90, 90])
    assert [len(material_cell(n)) for n in MATERIALS] == [4, 8, 8, 8, 2, 5]


def test_block_fields_and_box():
    block = crystal_block("GaAs", extent=(12.0, 30.0), thickness=20.0, rng=np.random.default_rng(0))
    pos = block.positions
    assert pos.shape == (block.n_atoms, 3) and block.numbers.shape == (block.n_atoms,)
    assert block.n_atoms > 100
    assert np.all(pos >= 0) and np.all(pos < [30.0, 12.0, 20.0])  # extent is (Ly, Lx)
    assert pos[:, 0].max() > 25.0 and pos[:, 1].max() < 12.0  # x spans Lx, y spans Ly
    assert np.all(np.diff(pos[:, 2]) >= 0)  # sorted by z
    assert block.zone_axis == (0, 0, 1) and 0 <= block.rotation < 2 * np.pi
    assert block.extent == (12.0, 30.0) and block.thickness == 20.0
    assert not pos.flags.writeable and not block.numbers.flags.writeable
    # no two atoms closer than the shortest bond (Ga-As 2.45 A): no duplicates at the faces
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(block.n_atoms) * 1e9
    assert d.min() > 2.4


@pytest.mark.parametrize("material", MATERIALS)
def test_commensurate_box_is_exact(material):
    """A box of whole lattice periods along the cube axes ([001], rotation 0) holds exactly
    rho * V atoms in the exact stoichiometry, for any translation (half-open box)."""
    a = LATTICE_CONSTANTS[material]
    rng = np.random.default_rng(1)
    for _ in range(3):
        block = crystal_block(
            material, extent=(5 * a, 7 * a), thickness=6 * a, rotation=0.0, rng=rng
        )
        n_cells = 5 * 7 * 6
        assert block.n_atoms == n_cells * len(material_cell(material))
        per_formula = block.n_atoms // sum(STOICHIOMETRY[material].values())
        for z, share in STOICHIOMETRY[material].items():
            assert np.sum(block.numbers == z) == share * per_formula


@pytest.mark.parametrize("material", MATERIALS)
@pytest.mark.parametrize("zone_axis", ZONE_AXES)
def test_density_matches_bulk(material, zone_axis):
    """Atoms per A^3 within 6% of the bulk for an oblique 48 x 40 x 60 A box.

    The count differs from rho * V only through the six faces, each cutting the lattice
    somewhere inside a period: at most ~one atomic plane per pair of faces is gained or
    lost, i.e. |error| <~ sum_i d / L_i ~ 2 A * (1/48 + 1/40 + 1/60) ~ 12% in the worst case
    (faces parallel to dense planes), a few % for oblique cuts (measured over 900 random
    40 x 40 x 60 boxes: std 1.4%, max 7.2%, the largest nearly aligned).
    """
    seed = MATERIALS.index(material) * 10 + ZONE_AXES.index(zone_axis)
    block = crystal_block(
        material,
        extent=(40.0, 48.0),
        thickness=60.0,
        zone_axis=zone_axis,
        rotation=0.3,
        rng=np.random.default_rng(seed),
    )
    assert abs(_rel_density_error(block)) < 0.06


@pytest.mark.parametrize("material", ["Pt", "SrTiO3"])
def test_density_unbiased_over_translations(material):
    """Over the random translation the expected count is exactly rho * V: the mean of 40
    random blocks lies within 1% (std error ~0.2%)."""
    rng = np.random.default_rng(7)
    errs = [
        _rel_density_error(
            crystal_block(material, extent=(40.0, 40.0), thickness=60.0, zone_axis=None, rng=rng)
        )
        for _ in range(40)
    ]
    assert abs(np.mean(errs)) < 0.01


PER_BLOCK_RTOL = {"GaAs": 0.08, "MgO": 0.08, "SrTiO3": 0.15}


@pytest.mark.parametrize("material", ["GaAs", "MgO", "SrTiO3"])
def test_composition(material):
    """Species fractions of random 40 x 40 x 60 blocks: per block within 8% (relative) of the
    stoichiometry for GaAs and MgO, 15% for SrTiO3, and within 2% on the mean of 30 blocks.

    Face cuts again: a face parallel to atomic planes gains or loses part of a plane, and in
    SrTiO3 the (001) planes alternate SrO / TiO2 (different compositions), so a 60 A
    thickness (15.4 periods) shifts the Sr share by up to ~5% from z alone, more with x, y
    faces. Measured max over 200 blocks: GaAs 4%, MgO 3%, SrTiO3 8.6%."""
    rng = np.random.default_rng(3)
    stoich = STOICHIOMETRY[material]
    expected = np.array(list(stoich.values())) / sum(stoich.values())
    fractions = []
    for _ in range(30):
        block = crystal_block(
            material, extent=(40.0, 40.0), thickness=60.0, zone_axis=None, rng=rng
        )
        counts = np.array([np.sum(block.numbers == z) for z in stoich])
        assert counts.sum() == block.n_atoms  # no other species
        fractions.append(counts / counts.sum())
        np.testing.assert_allclose(fractions[-1], expected, rtol=PER_BLOCK_RTOL[material])
    np.testing.assert_allclose(np.mean(fractions, axis=0), expected, rtol=0.02)


def _columns(block: CrystalBlock) -> tuple[np.ndarray, np.ndarray]:
    """Distinct projected (x, y) positions (columns, ``[K, 2]``) and each atom's column."""
    keys = np.round(block.positions[:, :2] * 1e6).astype(np.int64)  # 1e-6 A grid
    uniq, labels = np.unique(keys, axis=0, return_inverse=True)
    return uniq / 1e6, labels.reshape(-1)


# fcc, cubic lattice constant a: nearest column distance and period along the column
FCC_COLUMNS = {
    (0, 0, 1): (0.5, 1.0),  # square lattice of a/2; period a
    (0, 1, 1): (np.sqrt(3 / 8), np.sqrt(1 / 2)),  # centred rectangle; period a/sqrt 2
    (1, 1, 1): (1 / np.sqrt(6), np.sqrt(3)),  # triangular lattice of a/sqrt 6; period a sqrt 3
}


@pytest.mark.parametrize("zone_axis", ZONE_AXES)
@pytest.mark.parametrize("rotation", [0.0, None])
def test_zone_axis_along_z_fcc(zone_axis, rotation):
    """Pt along [001], [011], [111]: atoms stack in columns along z (K columns << N atoms),
    with the fcc nearest-column distance and the lattice period along each column."""
    a = LATTICE_CONSTANTS["Pt"]
    block = crystal_block(
        "Pt",
        extent=(20.0, 24.0),
        thickness=40.0,
        zone_axis=zone_axis,
        rotation=rotation,
        rng=np.random.default_rng(11),
    )
    cols, labels = _columns(block)
    assert len(cols) < block.n_atoms / 5
    d_col, period = FCC_COLUMNS[zone_axis]
    dist = np.linalg.norm(cols[:, None] - cols[None], axis=-1) + np.eye(len(cols)) * 1e9
    np.testing.assert_allclose(dist.min(), d_col * a, rtol=1e-6)
    # number of columns ~ area / area per column (edge columns make the difference)
    area_per_column = block.volume / block.thickness / len(cols)
    expected_area = {(0, 0, 1): 0.25, (0, 1, 1): np.sqrt(2) / 4, (1, 1, 1): np.sqrt(3) / 12}
    assert area_per_column == pytest.approx(expected_area[zone_axis] * a**2, rel=0.1)
    gaps = np.concatenate([np.diff(block.positions[labels == k, 2]) for k in range(len(cols))])
    np.testing.assert_allclose(gaps, period * a, rtol=1e-6)


def test_in_plane_rotation():
    """Pt [001] rotated by 0.3 rad: the square column lattice (a/2) is rotated by 0.3 rad."""
    a = LATTICE_CONSTANTS["Pt"]
    block = crystal_block(
        "Pt", extent=(20.0, 20.0), thickness=10.0, rotation=0.3, rng=np.random.default_rng(0)
    )
    assert block.rotation == 0.3
    cols, _ = _columns(block)
    vec = cols[:, None] - cols[None]
    nn = vec[np.isclose(np.linalg.norm(vec, axis=-1), a / 2, rtol=1e-6)]
    assert len(nn) > 50
    angles = np.mod(np.arctan2(nn[:, 1], nn[:, 0]) - 0.3, np.pi / 2)
    assert np.all(np.minimum(angles, np.pi / 2 - angles) < 1e-6)


def test_random_zone_axis_and_rotation():
    rng = np.random.default_rng(5)
    blocks = [
        crystal_block("W", extent=(10.0, 10.0), thickness=10.0, zone_axis=None, rng=rng)
        for _ in range(30)
    ]
    assert {b.zone_axis for b in blocks} == set(ZONE_AXES)
    rotations = [b.rotation for b in blocks]
    assert len(set(rotations)) == 30 and all(0 <= r < 2 * np.pi for r in rotations)


def test_reproducible_and_seed_dependent():
    def make(seed):
        return crystal_block(
            "SrTiO3",
            extent=(15.0, 15.0),
            thickness=20.0,
            zone_axis=None,
            rng=np.random.default_rng(seed),
        )

    a, b, c = make(42), make(42), make(43)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.numbers, b.numbers)
    assert (a.zone_axis, a.rotation) == (b.zone_axis, b.rotation)
    assert a.rotation != c.rotation
    assert a.positions.shape != c.positions.shape or not np.allclose(a.positions, c.positions)


@pytest.mark.parametrize("n_slices", [1, 3, 8])
def test_slice_block_assigns_each_atom_once(n_slices):
    block = crystal_block(
        "MgO", extent=(12.0, 16.0), thickness=24.0, zone_axis=None, rng=np.random.default_rng(2)
    )
    sliced = slice_block(block, n_slices)
    pos, num = sliced
    m = pos.shape[1]
    assert pos.shape == (n_slices, m, 2) and num.shape == (n_slices, m)
    assert pos.dtype == np.float32 and num.dtype == np.int32
    dz = block.thickness / n_slices
    which = np.floor(block.positions[:, 2] / dz).astype(int)
    counts = np.bincount(which, minlength=n_slices)
    assert m == counts.max()  # max_atoms=None: the fullest slice
    assert np.sum(num > 0) == block.n_atoms
    for k in range(n_slices):
        real = num[k] > 0
        assert np.all(real[: counts[k]]) and not np.any(real[counts[k] :])  # atoms first
        assert np.all(pos[k, counts[k] :] == 0)  # padding rows: Z = 0 at (0, 0)
        got = np.column_stack([pos[k, real], num[k, real]])
        want = np.column_stack([block.positions[which == k, :2], block.numbers[which == k]])
        np.testing.assert_allclose(
            got[np.lexsort(got.T)], want[np.lexsort(want.T)].astype(np.float32), atol=1e-5
        )


def test_slice_block_max_atoms():
    block = crystal_block("Si", extent=(10.0, 10.0), thickness=20.0, rng=np.random.default_rng(4))
    needed = slice_block(block, 4).numbers.shape[1]
    padded = slice_block(block, 4, max_atoms=needed + 5)
    assert padded.numbers.shape == (4, needed + 5)
    assert np.all(padded.numbers[:, needed:] == 0)
    np.testing.assert_array_equal(padded.numbers[:, :needed], slice_block(block, 4).numbers)
    with pytest.raises(ValueError, match=f"max_atoms >= {needed}"):
        slice_block(block, 4, max_atoms=needed - 1)


def test_bad_input_raises():
    rng = np.random.default_rng(0)
    kw = {"extent": (10.0, 10.0), "thickness": 10.0, "rng": rng}
    with pytest.raises(ValueError, match="Pt, Si, GaAs, MgO, W, SrTiO3"):
        crystal_block("Cu", **kw)
    for extent in [(0.0, 10.0), (10.0, -1.0), (np.nan, 5.0)]:
        with pytest.raises(ValueError, match="extent"):
            crystal_block("Pt", extent=extent, thickness=10.0, rng=rng)
    for thickness in [0.0, -5.0]:
        with pytest.raises(ValueError, match="thickness"):
            crystal_block("Pt", extent=(10.0, 10.0), thickness=thickness, rng=rng)
    for axis in [(0, 0, 0), (1, 0), (0.5, 0, 1)]:
        with pytest.raises(ValueError, match="zone_axis"):
            crystal_block("Pt", zone_axis=axis, **kw)
    block = crystal_block("Pt", **kw)
    for n in [0, -1, 2.5]:
        with pytest.raises(ValueError, match="n_slices"):
            slice_block(block, n)


def _closest_periodic_xy(block: CrystalBlock) -> float:
    p = block.positions
    box = np.array([block.extent[1], block.extent[0]])
    d = p[:, None] - p[None]
    d[..., :2] -= box * np.round(d[..., :2] / box)
    r = np.sqrt((d**2).sum(-1))
    np.fill_diagonal(r, np.inf)
    return float(r.min())


@pytest.mark.parametrize("material", MATERIALS)
def test_min_distance_merges_the_seams_of_a_periodic_cell(material):
    # a rotated box is not a lattice period: across its x-y faces atoms come too close
    # (measured: 96 of 200 random 6.4 x 6.4 x 10 A blocks had a pair under 1.5 A)
    found = False
    for seed in range(12):
        kw = dict(extent=(6.4, 7.0), thickness=8.0, zone_axis=None, rng=None)
        raw = crystal_block(material, **{**kw, "rng": np.random.default_rng(seed)})
        merged = crystal_block(
            material, **{**kw, "rng": np.random.default_rng(seed)}, min_distance=1.5
        )
        assert _closest_periodic_xy(merged) >= 1.5
        found |= _closest_periodic_xy(raw) < 1.5 and merged.n_atoms < raw.n_atoms
        # only seam atoms go: every kept atom is one of the raw block's, in the same order
        idx = [int(np.flatnonzero(np.all(raw.positions == p, axis=1))[0]) for p in merged.positions]
        assert idx == sorted(idx)
        dropped = np.setdiff1d(np.arange(raw.n_atoms), idx)
        # each dropped atom had a kept partner closer than 1.5 A across a seam
        box = np.array([7.0, 6.4])
        for k in dropped:
            delta = merged.positions - raw.positions[k]
            wrap = np.round(delta[:, :2] / box)
            delta[:, :2] -= box * wrap
            close = np.linalg.norm(delta, axis=1) < 1.5
            assert np.any(close & np.any(wrap != 0, axis=1))
    assert found  # the seams did make close pairs, and they were merged


def test_min_distance_never_drops_a_pair_inside_the_box():
    # above the shortest bond (Ti-O 1.95 A) the crystal's own pairs are close too: only
    # pairs across a seam may go
    kw = dict(extent=(20.0, 20.0), thickness=4.0, rotation=0.3)
    raw = crystal_block("SrTiO3", **kw, rng=np.random.default_rng(0))
    merged = crystal_block("SrTiO3", **kw, rng=np.random.default_rng(0), min_distance=3.0)
    inner = np.all((raw.positions[:, :2] > 3.0) & (raw.positions[:, :2] < 17.0), axis=1)
    kept = {tuple(p) for p in merged.positions}
    assert all(tuple(p) in kept for p in raw.positions[inner])
    assert merged.n_atoms < raw.n_atoms  # seam pairs under 3 A did go


def test_min_distance_keeps_a_commensurate_box_whole():
    a = LATTICE_CONSTANTS["Pt"]
    kw = dict(extent=(3 * a, 4 * a), thickness=2 * a, rotation=0.0)
    raw = crystal_block("Pt", **kw, rng=np.random.default_rng(0))
    merged = crystal_block("Pt", **kw, rng=np.random.default_rng(0), min_distance=2.0)
    np.testing.assert_array_equal(raw.positions, merged.positions)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_bad_min_distance_raises(bad):
    with pytest.raises(ValueError, match="min_distance"):
        crystal_block("Si", extent=(5.0, 5.0), thickness=3.0, rng=np.random.default_rng(0),
                      min_distance=bad)  # fmt: skip
