"""jaxsci.imaging.refine_potential: multislice inversion against specimens whose slices are
identical (the model is exact there, so the truth is the oracle)."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsci.imaging import (
    Grid,
    RefineResult,
    band_limit_mask,
    cbed_stack,
    epie,
    potential_from_object,
    probe,
    projected_potential,
    refine_potential,
)

E = 200e3
GRID = Grid((32, 32), (6.4, 6.4))
OPTICS = dict(semiangle=20.0, defocus=100.0)
DZ = 2.0
_STEPS = (np.arange(4) + 0.5) * 1.6
XY = np.stack(np.meshgrid(_STEPS, _STEPS), -1).reshape(-1, 2).astype(np.float32)
# one 2 Å slice of a periodic cell: Pt columns, a Si and an O
COLUMNS = np.array([[1.6, 1.6], [4.8, 1.6], [1.6, 4.8], [4.8, 4.8], [3.2, 3.2], [0.2, 3.3]])
SLICE = projected_potential(
    COLUMNS.astype(np.float32), np.array([78, 78, 78, 78, 14, 8]), GRID, rms_displacement=0.08
)


def _patterns(n_slices: int):
    return cbed_stack(
        jnp.broadcast_to(SLICE, (n_slices, *GRID.shape)), XY, GRID, E, dz=DZ, **OPTICS
    )


def _lowpass(v):
    out = np.fft.ifft2(np.fft.fft2(np.asarray(v)) * band_limit_mask(GRID, 0.5)).real
    return out - out.mean()


def _error(v, truth):
    return np.linalg.norm(_lowpass(v) - _lowpass(truth)) / np.linalg.norm(_lowpass(truth))


def _start(truth):
    noise = np.random.default_rng(0).normal(size=GRID.shape) * 0.1 * float(np.std(truth))
    return 0.8 * np.asarray(truth) + _lowpass(noise)  # 20% too weak, smooth noise


@pytest.mark.parametrize("n_slices", [1, 4, 8])
def test_recovers_the_potential_of_identical_slices(n_slices):
    truth = n_slices * SLICE
    start = _start(truth)
    res = refine_potential(
        start, _patterns(n_slices), XY, GRID, E, dz=DZ, n_slices=n_slices, n_iter=20, **OPTICS
    )
    assert isinstance(res, RefineResult) and res.losses.shape == (21,)
    assert _error(start, truth) > 0.2
    assert _error(res.potential, truth) < 2e-3
    assert float(res.losses.min()) < 1e-4 * float(res.losses[0])
    # a constant potential is a global phase: the mean is not measured and stays the guess's
    np.testing.assert_allclose(float(jnp.mean(res.potential)), float(np.mean(start)), rtol=1e-5)


def test_the_truth_is_a_fixed_point_and_the_result_never_fits_worse():
    truth = 4 * SLICE
    patterns = _patterns(4)
    res = refine_potential(truth, patterns, XY, GRID, E, dz=DZ, n_slices=4, n_iter=5, **OPTICS)
    assert float(res.losses[0]) < 1e-10
    assert _error(res.potential, truth) < 1e-5
    # the wrong thickness fits worse than the right one: its misfit can choose the thickness
    wrong = [
        refine_potential(truth, patterns, XY, GRID, E, dz=DZ, n_slices=k, n_iter=20, **OPTICS)
        for k in (3, 5)
    ]
    assert all(float(w.losses.min()) > 1e3 * float(res.losses.min()) for w in wrong)
    for k, w in zip((3, 5), wrong, strict=True):  # the result is the best-fitting iterate
        direct = cbed_stack(
            jnp.broadcast_to(w.potential / k, (k, *GRID.shape)), XY, GRID, E, dz=DZ, **OPTICS
        )
        misfit = jnp.sum((jnp.sqrt(direct) - jnp.sqrt(patterns)) ** 2) / jnp.sum(patterns)
        np.testing.assert_allclose(float(misfit), float(w.losses.min()), rtol=1e-3)


def test_losses_are_the_misfits_of_the_iterates():
    truth, patterns = 4 * SLICE, _patterns(4)
    start = _start(truth)
    res = refine_potential(start, patterns, XY, GRID, E, dz=DZ, n_slices=4, n_iter=1, **OPTICS)

    def misfit(v):
        direct = cbed_stack(jnp.broadcast_to(v / 4, (4, *GRID.shape)), XY, GRID, E, dz=DZ, **OPTICS)
        return float(jnp.sum((jnp.sqrt(direct) - jnp.sqrt(patterns)) ** 2) / jnp.sum(patterns))

    assert float(res.losses[1]) < float(res.losses[0])  # one step downhill
    np.testing.assert_allclose(res.losses, [misfit(start), misfit(res.potential)], rtol=1e-3)


def test_a_diverging_optimizer_returns_the_best_iterate_not_the_last():
    truth, patterns = 4 * SLICE, _patterns(4)
    start = _start(truth)
    kw = dict(dz=DZ, n_slices=4, n_iter=5, **OPTICS)
    wild = refine_potential(start, patterns, XY, GRID, E, optimizer=optax.sgd(1e4), **kw)
    assert float(wild.losses[-1]) > 10 * float(wild.losses[0])  # it went uphill
    assert int(np.argmin(wild.losses)) == 0 and float(wild.misfit) == float(wild.losses[0])
    np.testing.assert_allclose(wild.potential, start, rtol=1e-5, atol=1e-3)  # the guess
    # another optimizer works too, and the misfit is that of the returned potential
    adam = refine_potential(start, patterns, XY, GRID, E, optimizer=optax.adam(1e-2), **kw)
    assert float(adam.misfit) == float(adam.losses.min()) < float(adam.losses[0])


def test_per_slice_refinement_fits_slices_that_differ():
    # alternating planes (as along [011]): identical slices cannot fit them, free ones can
    other = projected_potential(
        (COLUMNS + [1.6, 0.0]).astype(np.float32) % 6.4,
        np.array([78, 78, 78, 78, 14, 8]),
        GRID,
        rms_displacement=0.08,
    )
    layers = jnp.stack([SLICE, other, SLICE, other])
    truth = layers.sum(0)
    patterns = cbed_stack(layers, XY, GRID, E, dz=DZ, **OPTICS)
    kw = dict(dz=DZ, n_slices=4, n_iter=30, **OPTICS)
    tied = refine_potential(_start(truth), patterns, XY, GRID, E, **kw)
    free = refine_potential(tied.potential, patterns, XY, GRID, E, per_slice=True, **kw)
    assert tied.slices.shape == free.slices.shape == (4, *GRID.shape)
    np.testing.assert_allclose(tied.slices, jnp.broadcast_to(tied.potential / 4, (4, 32, 32)))
    np.testing.assert_allclose(free.potential, free.slices.sum(0), rtol=1e-5, atol=1e-3)
    assert float(free.misfit) < 0.25 * float(tied.misfit)  # measured 0.09
    assert _error(free.potential, truth) < 0.5 * _error(tied.potential, truth)  # 0.23
    # a [n_slices, ny, nx] start is taken as it is
    again = refine_potential(free.slices, patterns, XY, GRID, E, per_slice=True, **kw)
    assert float(again.losses[0]) == pytest.approx(float(free.misfit), rel=1e-3)
    with pytest.raises(ValueError, match=r"or, with per_slice=True, \[n_slices, ny, nx\]"):
        refine_potential(free.slices[:3], patterns, XY, GRID, E, per_slice=True, **kw)
    with pytest.raises(ValueError, match="potential0 must be"):  # slices, but tied
        refine_potential(free.slices, patterns, XY, GRID, E, **kw)


def test_beats_epie_on_a_thick_specimen():
    # ePIE's single slice (the projection approximation) fails as the specimen thickens;
    # the multislice model started from ePIE's answer does not
    n_slices = 8
    truth = n_slices * SLICE
    patterns = _patterns(n_slices)
    obj = epie(patterns, XY, probe(GRID, E, **OPTICS), GRID, n_iter=50).object
    v_epie = potential_from_object(obj, E)
    res = refine_potential(
        v_epie, patterns, XY, GRID, E, dz=DZ, n_slices=n_slices, n_iter=30, **OPTICS
    )
    assert _error(v_epie, truth) > 0.05
    assert _error(res.potential, truth) < 0.2 * _error(v_epie, truth)


def test_rejects_bad_input():
    patterns = _patterns(1)
    kw = dict(dz=DZ, n_slices=1, **OPTICS)
    ok = (SLICE, patterns, XY, GRID, E)
    cases = [
        ((SLICE[:-1], patterns, XY, GRID, E), kw, "potential0 must be"),
        ((SLICE, patterns[0], XY, GRID, E), kw, "patterns must be"),
        ((SLICE, patterns, XY[:-1], GRID, E), kw, "probe_positions must be"),
        ((SLICE, patterns, XY, (32, 32), E), kw, "grid must be a Grid"),
        ((SLICE.at[0, 0].set(jnp.nan), patterns, XY, GRID, E), kw, "potential0 contains NaN"),
        ((SLICE, patterns.at[0, 0, 0].set(jnp.nan), XY, GRID, E), kw, "patterns contain NaN"),
        ((SLICE, -patterns, XY, GRID, E), kw, "non-negative"),
        ((SLICE, 0 * patterns, XY, GRID, E), kw, "all zero"),
        (ok, {**kw, "n_slices": 0}, "n_slices must be an int >= 1"),
        (ok, {**kw, "n_slices": 2.0}, "n_slices must be an int >= 1"),
        (ok, {**kw, "n_iter": 0}, "n_iter must be an int >= 1"),
        (ok, {**kw, "dz": -1.0}, "dz"),
        ((SLICE, patterns, XY, GRID, 0.0), kw, "energy"),
        (ok, {**kw, "defocus": float("nan")}, "defocus contains NaN"),
        (ok, {**kw, "cs": float("inf")}, "cs contains NaN or inf"),
    ]
    for args, kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            refine_potential(*args, **kwargs)
