"""experiments/inverse_imaging: the simulated data against the library's forward model, and
one tiny end-to-end run (shared by the tests)."""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.inverse_imaging.config import Config, tiny_config
from experiments.inverse_imaging.data import (
    TEST_SEED_OFFSET,
    _specimens,
    grid_of,
    log_patterns,
    lowpass,
    probe_positions,
    simulate,
    species_of,
)
from experiments.inverse_imaging.run import format_table, main, train_and_evaluate
from experiments.inverse_imaging.train import (
    epie_objects,
    epie_potential,
    fcn_inputs,
    relative_errors,
    residual_answer,
    train_fcn,
)
from jaxsci.imaging import (
    cbed_stack,
    epie,
    potential_from_object,
    probe,
    projected_potential,
    refine_potential,
)
from jaxsci.parallel import DataParallel, ProcessInfo, bootstrap, make_mesh


@pytest.fixture(scope="module")
def tiny_data():
    config = tiny_config()
    return config, simulate(config, 6, 3)


def test_simulated_patterns_match_the_forward_model_without_padding(tiny_data):
    # every specimen is padded to the thickest with empty slices (vacuum at the exit, a pure
    # phase in diffraction space): the patterns equal those of its own slices alone
    config, data = tiny_data
    pos, num, thickness, material, _ = _specimens(config, 6, np.random.default_rng(3))
    np.testing.assert_array_equal(thickness, data.thickness)
    grid = grid_of(config)
    for i in range(6):
        s = int(round(thickness[i] / config.dz))
        slices = jnp.stack(
            [
                projected_potential(pos[i, k], num[i, k], grid, rms_displacement=0.08)
                for k in range(s)
            ]
        )
        direct = cbed_stack(
            slices,
            probe_positions(config),
            grid,
            config.energy,
            semiangle=config.semiangle,
            defocus=config.defocus,
            dz=config.dz,
        )
        np.testing.assert_allclose(data.patterns[i], direct, atol=2e-6 * float(direct.max()))
        truth = np.asarray(lowpass(slices.sum(0), config)) / 1000.0
        np.testing.assert_allclose(data.targets[i], truth, atol=1e-4 * np.abs(truth).max())
        assert np.all(num[i, s:] == 0)  # the padding holds no atom


def test_simulated_data_set_is_deterministic_and_well_formed(tiny_data):
    config, data = tiny_data
    again = simulate(config, 6, 3)
    np.testing.assert_array_equal(data.patterns, again.patterns)
    p, n = config.n_positions, config.grid
    assert data.patterns.shape == (6, p, n, n) and data.targets.shape == (6, n, n)
    total = data.patterns.sum(axis=(2, 3))
    assert np.all(total <= 1.0 + 1e-5) and np.all(total > 0.5)  # band limit loses a little
    np.testing.assert_allclose(data.targets.mean(axis=(1, 2)), 0.0, atol=1e-6)
    assert np.all(np.abs(data.targets).max(axis=(1, 2)) > 0)  # no empty specimen
    lo, hi = config.slices
    assert set(np.round(data.thickness / config.dz).astype(int)) <= set(range(lo, hi + 1))
    x = log_patterns(data.patterns)
    assert x.shape == (6, n, n, p) and np.all(np.isfinite(x))
    assert species_of(config) == (8, 12, 14, 22, 31, 33, 38, 74, 78)


def test_dose_adds_poisson_noise_of_that_many_electrons():
    config = dataclasses.replace(tiny_config(), dose=1e4)
    clean = simulate(dataclasses.replace(config, dose=None), 4, 1)
    noisy = simulate(config, 4, 1)
    counts = noisy.patterns * 1e4
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-2)  # whole electrons
    # Poisson: variance = mean, so the standardised residual has unit variance
    lit = clean.patterns * 1e4 > 20
    z = (counts - clean.patterns * 1e4)[lit] / np.sqrt(clean.patterns[lit] * 1e4)
    assert 0.9 < z.std() < 1.1 and abs(z.mean()) < 0.1


def test_epie_objects_equal_one_call_per_specimen_and_feed_the_fcn(tiny_data):
    # chunked, vmapped and padded to one compiled shape: the same as ePIE on each stack
    config, data = tiny_data
    objects, seconds = epie_objects(config, data.patterns)
    grid = grid_of(config)
    p0 = probe(grid, config.energy, semiangle=config.semiangle, defocus=config.defocus)
    for i in (0, 5):
        one = epie(data.patterns[i], probe_positions(config), p0, grid, n_iter=config.epie_iters)
        np.testing.assert_allclose(objects[i], one.object, atol=1e-5)
    assert seconds > 0
    pot = epie_potential(config, objects)
    direct = lowpass(potential_from_object(jnp.asarray(objects[2]), config.energy), config)
    np.testing.assert_allclose(pot[2], np.asarray(direct) / 1000.0, atol=1e-5)
    x = fcn_inputs(config, data.patterns, objects)
    assert x.shape == (6, config.grid, config.grid, 2)
    np.testing.assert_array_equal(x[..., 0] + 1j * x[..., 1], objects)
    cbed_config = dataclasses.replace(config, fcn_input="cbed")
    assert fcn_inputs(cbed_config, data.patterns, None).shape[-1] == config.n_positions


def test_residual_training_needs_both_bases(tiny_data):
    config, data = tiny_data
    x = np.zeros((6, config.grid, config.grid, 2), np.float32)
    with pytest.raises(ValueError, match="together"):
        train_fcn(config, x, data.targets, x, data.targets, train_base=data.targets)


def test_relative_errors():
    t = np.random.default_rng(0).normal(size=(3, 4, 4))
    np.testing.assert_allclose(relative_errors(t, t), 0.0)
    np.testing.assert_allclose(relative_errors(np.zeros_like(t), t), 1.0)
    np.testing.assert_allclose(relative_errors(1.5 * t, t), 0.5)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imaging") / "run"
    config = tiny_config()
    return config, train_and_evaluate(config, folder), folder


def test_tiny_run_writes_its_folder(tiny_run):
    config, results, folder = tiny_run
    for name in ("config.json", "results.json", "test_predictions.npz", "training.png",
                 "examples.png", "error_vs_thickness.png"):  # fmt: skip
        assert (folder / name).stat().st_size > 0
    res = json.loads((folder / "results.json").read_text())
    assert set(res["summary"]) == {"FCN(ePIE)", "ePIE", "ePIE+MS"}
    assert res["fcn_method"] == "FCN(ePIE)"
    assert res["residual"] is True
    assert res["n_parameters"] > 0 and 0.0 <= res["fcn_better_fraction"] <= 1.0
    assert len(res["history"]["train_loss"]) == config.epochs
    assert np.all(np.isfinite(res["history"]["train_loss"]))
    saved = np.load(folder / "test_predictions.npz")
    errors = {}
    for name in ("FCN(ePIE)", "ePIE", "ePIE+MS"):
        err = errors[name] = relative_errors(saved[name], saved["truth"])
        summary = res["summary"][name]
        assert summary["all"]["median"] == pytest.approx(float(np.median(err)))
        assert summary["all"]["n"] == config.n_test
        # per thickness and per material: the specimens of that thickness / material only
        for key, column, names in (
            ("by_thickness", saved["thickness"], lambda v: f"{v:g}"),
            ("by_material", saved["material"], lambda v: config.materials[int(v)]),
        ):
            values = np.unique(column)
            assert sorted(summary[key]) == sorted(names(v) for v in values)
            for v in values:
                part = summary[key][names(v)]
                assert part["n"] == int(np.sum(column == v))
                assert part["median"] == pytest.approx(float(np.median(err[column == v])))
    better = float(np.mean(errors["FCN(ePIE)"] < errors["ePIE"]))
    assert res["fcn_better_fraction"] == pytest.approx(better)
    assert "median relative error" in format_table(res)
    # the last epoch's score is the final answer's: same residual form, same low-pass
    assert res["history"]["test_median_error"][-1] == pytest.approx(
        res["summary"]["FCN(ePIE)"]["all"]["median"], rel=1e-6
    )


def test_tiny_run_holds_out_its_test_specimens_and_scores_fairly(tiny_run):
    config, results, folder = tiny_run
    res = json.loads((folder / "results.json").read_text())
    assert res["seeds"] == {"train": config.seed, "test": config.seed + TEST_SEED_OFFSET}
    saved = np.load(folder / "test_predictions.npz")
    test = simulate(config, config.n_test, config.seed + TEST_SEED_OFFSET)
    np.testing.assert_array_equal(saved["truth"], test.targets)  # the held-out specimens
    train = simulate(config, config.n_train, config.seed)
    assert not any(np.allclose(t, u, atol=1e-6) for t in test.targets for u in train.targets)
    for name in ("FCN(ePIE)", "ePIE", "ePIE+MS"):  # scored in the truth's form
        scale = float(np.abs(saved[name]).max())
        np.testing.assert_allclose(lowpass(saved[name], config), saved[name], atol=1e-5 * scale)
    # the inputs are standardised with the training specimens' statistics only
    objects, _ = epie_objects(config, train.patterns)
    raw = fcn_inputs(config, train.patterns, objects)
    stats = res["input_standardization"]
    assert stats["mean"] == pytest.approx(float(raw.mean()), rel=1e-5, abs=1e-6)
    assert stats["std"] == pytest.approx(float(raw.std()), rel=1e-5)
    t = res["timings"]  # FCN(ePIE) reads ePIE's answer: its cost includes ePIE's
    assert t["fcn_pipeline_s_per_specimen"] == pytest.approx(
        t["fcn_s_per_specimen"] + t["epie_s_per_specimen"]
    )


def test_refinement_starts_from_epie_and_keeps_the_best_fitting_thickness(tiny_run):
    config, results, folder = tiny_run
    saved = np.load(folder / "test_predictions.npz")
    test = simulate(config, config.n_test, config.seed + TEST_SEED_OFFSET)
    grid, xy = grid_of(config), probe_positions(config)
    optics = dict(semiangle=config.semiangle, defocus=config.defocus, dz=config.dz)
    kw = dict(n_iter=config.refine_iters, **optics)
    assert config.refine_per_slice
    for i in range(2):  # recomputed with the library, every candidate thickness
        fits = [
            refine_potential(
                1000.0 * saved["ePIE"][i], test.patterns[i], xy, grid, config.energy,
                n_slices=k, **kw,
            )
            for k in range(config.slices[0], config.slices[1] + 1)
        ]  # fmt: skip
        best = int(np.argmin([float(f.misfit) for f in fits]))
        k = config.slices[0] + best
        free = refine_potential(
            fits[best].potential, test.patterns[i], xy, grid, config.energy, n_slices=k,
            per_slice=True, **kw,
        )  # fmt: skip
        want = np.asarray(lowpass(free.potential, config)) / 1000.0
        np.testing.assert_allclose(saved["ePIE+MS"][i], want, rtol=1e-4, atol=1e-6)
        assert int(saved["ePIE+MS_slices"][i]) == k  # the saved choice is the best fit's
    res = json.loads((folder / "results.json").read_text())
    assert res["refine"]["iters_per_thickness"] == config.refine_iters
    assert res["refine"]["per_slice"] is True
    off = saved["ePIE+MS_slices"] * config.dz - saved["thickness"]
    right, within = np.mean(np.abs(off) < 1e-3), np.mean(np.abs(off) < config.dz + 1e-3)
    assert res["refine"]["thickness_right_fraction"] == pytest.approx(right)
    assert res["refine"]["thickness_within_one_slice_fraction"] == pytest.approx(within)
    assert res["timings"]["refine_s_per_specimen"] > 0


def test_refinement_off_leaves_two_methods(tmp_path):
    config = dataclasses.replace(tiny_config(), refine_iters=0, epochs=1)
    res = train_and_evaluate(config, tmp_path / "run")
    assert set(res["summary"]) == {"FCN(ePIE)", "ePIE"} and res["refine"] == {}
    saved = np.load(tmp_path / "run" / "test_predictions.npz")
    assert "ePIE+MS" not in saved and "ePIE+MS_slices" not in saved


@pytest.mark.parametrize(
    "change",
    [
        {"refine_iters": -1},
        {"refine_per_slice": "yes"},
        {"grid": 31},  # not divisible by 2 for two levels
        {"slices": (3, 2)},
        {"resolution": 0.9},
        {"dose": -1.0},
        {"materials": ("Unobtainium",)},
        {"n_examples": 99},
        {"epochs": 0},
        {"bottleneck": "global"},
        {"fcn_input": "pixels"},
        {"n_train": 4},  # fewer than one batch
        {"features": (8, 0)},
        {"semiangle": 60.0},  # beyond the band limit of 32 px over 8 Å at 200 keV
        {"min_distance": 0.0},
        {"min_distance": 2.5},  # above the shortest bond: would merge real pairs
        {"seed": -1},
        {"run_name": "a/b"},
    ],
)
def test_bad_config_raises_before_any_work(change, tmp_path):
    config = dataclasses.replace(tiny_config(), **change)
    with pytest.raises(ValueError):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_main_tiny_from_raw_cbed(tmp_path, capsys):
    # the paper's formulation: the FCN reads the CBED stack itself (dense bottleneck)
    run_dir = main(["--tiny", "--out-root", str(tmp_path), "--fcn-input", "cbed",
                    "--bottleneck", "dense"])  # fmt: skip
    res = json.loads((run_dir / "results.json").read_text())
    assert res["fcn_method"] == "FCN(CBED)"
    assert "per specimen: FCN" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags", [["--epochs", "0"], ["--seed", "-1"], ["--dose", "nan"], ["--refine-iters", "-1"]]
)
def test_main_with_a_bad_value_exits_2_and_writes_nothing(flags, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--tiny", "--out-root", str(tmp_path / "out"), *flags])
    assert exit_.value.code == 2 and "bad config" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_default_config_is_valid():
    Config().validate()


def test_residual_answer_is_the_base_plus_its_rms_times_the_output():
    rng = np.random.default_rng(1)
    base, out = rng.normal(size=(2, 3, 5, 5))
    base[1] *= 100.0  # the unit is each specimen's own RMS
    got = residual_answer(base, out)
    for i in range(3):
        want = base[i] + np.sqrt(np.mean(base[i] ** 2)) * out[i]
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(residual_answer(base, np.zeros_like(out)), base)


@pytest.mark.mpi
def test_two_ranks_train_the_same_model_as_one_process_and_rank_0_writes(tmp_path, monkeypatch):
    info = bootstrap()
    assert info.size == 2
    root = Path(info.comm.bcast(str(tmp_path) if info.is_root else None, root=0))
    config = tiny_config()
    seen = []  # (global rows, local rows) of every batch this rank trained on
    shard_batch = DataParallel.shard_batch

    def spy(self, global_batch):
        local = shard_batch(self, global_batch)
        if self.info.size > 1:
            seen.append((np.asarray(global_batch[0]), np.asarray(local[0])))
        return local

    monkeypatch.setattr(DataParallel, "shard_batch", spy)
    res = train_and_evaluate(config, root / "run", info=info)
    # each rank trained on its own half of every global batch, and the halves make the whole
    assert len(seen) == config.epochs * (config.n_train // config.batch_size)
    halves = info.comm.allgather([local for _, local in seen])
    for (whole, local), h0, h1 in zip(seen, *halves, strict=True):
        assert len(local) == config.batch_size // 2
        np.testing.assert_array_equal(np.concatenate([h0, h1]), whole)
    medians = info.comm.allgather(res["summary"]["FCN(ePIE)"]["all"]["median"])
    assert medians[0] == medians[1]  # every rank holds the same model
    # gradients all-reduced over the ranks: the same losses as one process (run by rank 0
    # alone, for both: the two ranks' models are equal, and two such runs on two cores
    # took twice the time)
    single = ProcessInfo(0, 1, jax.local_device_count())
    alone = train_and_evaluate(config, root / "alone", info=single) if info.is_root else None
    alone = info.comm.bcast(alone, root=0)
    np.testing.assert_allclose(
        res["history"]["train_loss"], alone["history"]["train_loss"], rtol=1e-3
    )
    # ePIE+MS, gathered from the blocks the ranks refined: the same as one process
    for stat in ("median", "mean", "p90"):
        got, want = (r["summary"]["ePIE+MS"]["all"][stat] for r in (res, alone))
        assert got == pytest.approx(want, rel=1e-6)
    info.barrier()
    assert sorted(p.name for p in (root / "run").iterdir()) == sorted(
        ["config.json", "results.json", "test_predictions.npz", "training.png",
         "examples.png", "error_vs_thickness.png"]
    )  # fmt: skip


@pytest.mark.multidevice
def test_four_devices_train_the_same_model_as_one(tiny_data):
    # GroupNorm, no batch statistics: splitting each batch over 4 devices changes nothing
    # but the summation order of the gradient
    config, data = tiny_data
    config = dataclasses.replace(config, n_train=4, batch_size=4, epochs=3)
    x = log_patterns(data.patterns)[:4]
    x = (x - x.mean()) / x.std()
    y = data.targets[:4]
    runs = [train_fcn(config, x, y, x, y, mesh=make_mesh(n))[2]["train_loss"] for n in (1, 4)]
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-4)


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_a_run_folder_rank_0_cannot_write_fails_on_every_rank(tmp_path):
    # rank 0 alone writes; a failure there must not leave the other rank in a collective
    info = bootstrap()
    root = Path(info.comm.bcast(str(tmp_path) if info.is_root else None, root=0))
    if info.is_root:
        (root / "a_file").write_text("")
    info.barrier()
    with pytest.raises(OSError, match="rank 0 could not write"):
        train_and_evaluate(tiny_config(), root / "a_file" / "run", info=info)
    # from the command line it is a usage error (status 2) on every rank, before any work
    with pytest.raises(SystemExit) as exc:
        main(["--tiny", "--out-root", str(root / "a_file")])
    assert exc.value.code == 2
