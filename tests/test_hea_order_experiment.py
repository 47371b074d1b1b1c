"""Smoke and physics tests of experiments/hea_order (one tiny run, shared by the tests)."""

import json
from collections import Counter

import numpy as np
import pytest

from experiments.hea_order import run
from experiments.hea_order.config import Config, tiny_config
from experiments.hea_order.pipeline import (
    b2_order,
    block_error,
    compare_with_anchors,
    mark_suspect,
    one_hot,
    train_and_evaluate,
)
from jaxsci.alloys import bcc_lattice
from jaxsci.metrics.thermo import (
    drift_z,
    heat_capacity,
    local_peaks,
    manhattan_order_parameter,
    peak_temperature,
    susceptibility,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hea") / "run"
    config = tiny_config()
    results = train_and_evaluate(config, folder)
    return config, results, folder


def test_run_folder_has_every_file(tiny_run):
    _, results, folder = tiny_run
    assert results["run_dir"] == str(folder)
    names = {p.name for p in folder.iterdir()}
    expected = {
        "config.json",
        "results.json",
        "structures.extxyz",
        "samples.npz",
        "vae_metrics.jsonl",
        "heat_capacity.png",
        "susceptibility.png",
        "order_parameter.png",
        "latent_means.png",
        "warren_cowley.png",
        "vae_training.png",
    }
    assert expected <= names
    for name in expected:
        assert (folder / name).stat().st_size > 0


def test_results_json_has_finite_values_of_the_right_shapes(tiny_run):
    config, _, folder = tiny_run
    res = json.loads((folder / "results.json").read_text())
    r = len(config.temperatures)
    np.testing.assert_allclose(res["temperatures_K"], config.temperatures)
    for key in (
        "heat_capacity",
        "heat_capacity_err",
        "order_parameter_mean",
        "order_parameter_err",
        "susceptibility",
        "susceptibility_err",
        "energy_per_site_eV",
        "swap_acceptance",
        "warren_cowley_pair_alpha",
        "b2_order_mean",
        "b2_susceptibility",
        "energy_drift_z",
    ):
        v = np.asarray(res[key], float)  # a None (NaN/inf written as null) fails here
        assert v.shape == (r,), key
        assert np.all(np.isfinite(v)), key
    assert np.all(np.asarray(res["heat_capacity"]) > 0)
    assert np.all(np.asarray(res["susceptibility"]) >= 0)
    ex = np.asarray(res["exchange_acceptance"], float)
    assert ex.shape == (r - 1,) and np.all((ex >= 0) & (ex <= 1))
    swap = np.asarray(res["swap_acceptance"], float)
    assert np.all((swap > 0) & (swap < 1))
    assert np.asarray(res["warren_cowley_first_shell"], float).shape == (r, 4, 4)
    for name in ("heat_capacity", "susceptibility", "b2_susceptibility"):
        peaks = res["peaks"][name]
        assert set(peaks["suspect_K"]) <= set(peaks["local_K"])
        assert config.temperatures[0] <= peaks["global_K"] <= config.temperatures[-1]
        assert all(config.temperatures[0] < p < config.temperatures[-1] for p in peaks["local_K"])
    (win,) = res["vae_windows"]
    assert win["t_range_K"] == [600.0, 2500.0]
    np.testing.assert_allclose(win["temperatures_K"], [600.0, 900.0, 1400.0, 2500.0])
    for key in ("order_parameter_mean", "order_parameter_err", "susceptibility"):
        v = np.asarray(win[key], float)
        assert v.shape == (4,) and np.all(np.isfinite(v)), key
    assert (folder / "susceptibility_600-2500K.png").stat().st_size > 0
    assert (folder / "vae_metrics_600-2500K.jsonl").read_text().count("\n") == config.epochs
    assert res["anchors"]["heat_capacity_T2_K"] == [880.0, 960.0]
    assert set(res["comparison"]) == {
        "heat_capacity_T2_K",
        "heat_capacity_T1_K",
        "susceptibility_238_K",
        "susceptibility_964_K",
    }
    assert np.isfinite(res["vae"]["final_loss"]) and np.isfinite(res["vae"]["final_val_loss"])
    assert res["config"]["latent_dim"] == 3
    with np.load(folder / "samples.npz") as npz:
        n = config.n_samples
        assert npz["occupations"].shape == (n, r, 250)
        assert npz["latent_means"].shape == (n, r, 3)
        m = np.abs(npz["latent_means"]).sum(-1)
        np.testing.assert_allclose(npz["order_parameter"], m, rtol=1e-6)
        np.testing.assert_allclose(res["order_parameter_mean"], m.mean(0), rtol=1e-6)


def test_results_json_recomputes_from_the_saved_samples(tiny_run):
    """C(T), chi(T), the drift z and the hot-centroid quantities in results.json are the
    jaxsci.metrics.thermo functions of the saved samples, at the configured temperatures
    (increasing: a reversed ladder, a zeroed z or the coldest centroid would differ)."""
    config, _, folder = tiny_run
    res = json.loads((folder / "results.json").read_text())
    t = np.asarray(config.temperatures)
    n_sites = 2 * config.n_cells**3  # BCC: two sites per conventional cell
    assert res["n_sites"] == n_sites == 250
    with np.load(folder / "samples.npz") as npz:
        np.testing.assert_array_equal(npz["temperatures"], t)
        energies, m, mu = npz["energies"], npz["order_parameter"], npz["latent_means"]
        occupations = npz["occupations"]
    n_blocks = config.n_blocks

    def close(key, want):
        np.testing.assert_allclose(np.asarray(res[key], float), want, rtol=1e-9, err_msg=key)

    close("heat_capacity", heat_capacity(energies, t, n_sites))
    close(
        "heat_capacity_err",
        block_error(lambda e: heat_capacity(e, t, n_sites), energies, n_blocks),
    )
    close("energy_per_site_eV", energies.mean(0) / n_sites)
    close("susceptibility", susceptibility(m, t, n_sites))
    close("order_parameter_mean", m.mean(0))
    z = drift_z(energies, n_batches=n_blocks)
    close("energy_drift_z", z)
    assert np.any(z != 0)
    np.testing.assert_allclose(
        res["not_equilibrated_K"], t[np.abs(z) > config.max_drift_z], rtol=1e-12
    )
    hot = mu[:, -1].mean(0)  # the hottest temperature's latent centroid [latent_dim]
    close("hot_centroid", hot)
    m_hot = manhattan_order_parameter(mu - hot)
    close("order_parameter_from_hot_centroid_mean", m_hot.mean(0))
    close("susceptibility_from_hot_centroid", susceptibility(m_hot, t, n_sites))
    # the B2 order's susceptibility, from the saved occupations
    eta = b2_order(occupations, bcc_lattice(config.n_cells, 1).positions, 4)
    close("b2_order_mean", eta.mean(0))
    close("b2_susceptibility", susceptibility(eta, t, n_sites))
    # the peaks, found again in the reported curves (a peak of -C, or of a reversed
    # ladder, would differ)
    for name in ("heat_capacity", "susceptibility", "b2_susceptibility"):
        values, peaks = np.asarray(res[name], float), res["peaks"][name]
        assert peaks["global_K"] == pytest.approx(peak_temperature(t, values)), name
        local = local_peaks(t, values, min_prominence=config.peak_prominence)
        np.testing.assert_allclose(peaks["local_K"], local, err_msg=name)
    # the comparison with the paper is that of the reported peaks
    chi_peaks = res["peaks"]["susceptibility"]["local_K"] + [
        p for w in res["vae_windows"] for p in w["peaks"]["local_K"]
    ]
    want = compare_with_anchors(res["peaks"]["heat_capacity"]["local_K"], chi_peaks)
    assert res["comparison"] == json.loads(json.dumps(want))


def test_compare_with_anchors_reports_only_peaks_near_each_anchor():
    # one C peak at 300 K: near T1 (240-260 K, window 177.5-322.5 K), not near T2 (880-960)
    out = compare_with_anchors([300.0], [250.0, 900.0, 2000.0])
    assert out["heat_capacity_T1_K"]["nearest_peak_K"] == 300.0
    assert "note" not in out["heat_capacity_T1_K"]
    t2 = out["heat_capacity_T2_K"]
    assert t2["nearest_peak_K"] is None and t2["note"] == "no peak near the anchor"
    assert t2["anchor_K"] == [880.0, 960.0] and t2["window_K"] == [650.0, 1190.0]
    assert out["susceptibility_238_K"]["nearest_peak_K"] == 250.0
    assert out["susceptibility_964_K"]["nearest_peak_K"] == 900.0
    # one peak between the anchors matches neither; none at all neither
    for peaks in ([500.0], []):
        out = compare_with_anchors(peaks, peaks)
        assert all(v["nearest_peak_K"] is None for v in out.values()), peaks
    # the window edge (964 K + 25% = 1205 K) is inside; the nearest of two inside wins
    out = compare_with_anchors([], [1205.0, 1206.0, 700.0])
    assert out["susceptibility_964_K"]["nearest_peak_K"] == 1205.0
    out = compare_with_anchors([900.0, 1100.0], [])
    assert out["heat_capacity_T2_K"]["nearest_peak_K"] == 900.0
    assert (
        compare_with_anchors([], [1100.0], tolerance=0.1)["susceptibility_964_K"]["nearest_peak_K"]
        is None
    )
    with pytest.raises(ValueError, match="tolerance"):
        compare_with_anchors([], [], tolerance=0.0)


def test_structures_read_back_with_symbols_cell_and_counts(tiny_run):
    from ase.io import read

    config, _, folder = tiny_run
    frames = read(folder / "structures.extxyz", index=":")
    assert len(frames) == 2
    lattice = bcc_lattice(config.n_cells, 1)
    a = config.lattice_constant
    for atoms, t in zip(frames, (config.temperatures[0], config.temperatures[-1]), strict=True):
        assert len(atoms) == 250
        assert Counter(atoms.get_chemical_symbols()) == {"Mo": 63, "Nb": 63, "Ta": 62, "W": 62}
        np.testing.assert_allclose(atoms.positions, lattice.positions * a, atol=1e-6)
        np.testing.assert_allclose(atoms.cell[:], np.eye(3) * 5 * a, atol=1e-6)
        assert atoms.pbc.all()
        assert atoms.info["temperature_K"] == pytest.approx(t)
        # nearest neighbours of BCC at a = 3.2 A: sqrt(3)/2 a = 2.77 A
        assert atoms.get_distance(0, 1, mic=True) >= 0.86 * a


def test_physics_mo_ta_order_and_order_parameters(tiny_run):
    """Mo-Ta first-shell pairs are strongly favoured when cold (B2 ordering, alpha far below
    0) and much less so when hot; the B2 long-range order and the VAE's <M> both differ
    between the coldest and the hottest temperature (M is larger when ordered)."""
    _, res, _ = tiny_run
    alpha = np.asarray(res["warren_cowley_pair_alpha"])
    assert alpha[0] < -1.0  # -3 is the bound (every Mo's neighbours all Ta)
    assert alpha[-1] > -0.5 and alpha[-1] > alpha[0] + 1.0
    eta = np.asarray(res["b2_order_mean"])
    assert eta[0] > 0.3 and eta[-1] < 0.2
    m, err = np.asarray(res["order_parameter_mean"]), np.asarray(res["order_parameter_err"])
    assert m[0] > m[-1] + 3 * np.hypot(err[0], err[-1])  # ordered: farther from the origin


def test_mark_suspect_flags_peaks_beside_a_drifting_chain():
    ladder = np.array([100.0, 120.0, 150.0, 200.0, 260.0, 340.0])
    ok = np.array([True, False, True, True, True, True])
    peaks = {"global_K": 250.0, "local_K": [150.0, 255.0]}
    mark_suspect(peaks, ladder, ok)
    assert peaks["suspect_K"] == [150.0]  # 150 K neighbours the drifting 120 K chain
    mark_suspect(peaks, ladder, np.ones(6, bool))
    assert peaks["suspect_K"] == []


def test_helpers():
    occ = np.array([[0, 2, 1], [3, 3, 0]])
    x = one_hot(occ, 4)
    assert x.shape == (2, 12) and x.dtype == np.float32
    np.testing.assert_array_equal(x.reshape(2, 3, 4).argmax(-1), occ)
    # B2 order: species 0/1 on corners, 2/3 on body centres -> 1; a shuffle -> ~0
    lat = bcc_lattice(4, 1)
    corner = np.round(2 * lat.positions[:, 0]).astype(int) % 2 == 0
    ordered = np.where(corner, np.arange(lat.n_sites) % 2, 2 + np.arange(lat.n_sites) % 2)
    assert b2_order(ordered, lat.positions, 4) == pytest.approx(1.0)
    shuffled = np.random.default_rng(0).permutation(ordered)
    assert b2_order(shuffled, lat.positions, 4) < 0.25
    err = block_error(lambda v: v.mean(0), np.arange(20.0)[:, None], 4)
    assert err.shape == (1,) and err[0] == pytest.approx(np.std([2, 7, 12, 17], ddof=1) / 2)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"n_cells": 0}, "n_cells"),
        ({"n_cells": 2, "n_shells": 6}, "too small"),
        ({"n_shells": 7}, "n_shells"),
        ({"temperatures": (300.0, 200.0)}, "increasing"),
        ({"temperatures": None, "t_min": 500.0, "t_max": 400.0}, "t_max"),
        ({"temperatures": None, "t_min": -1.0}, "t_min"),
        ({"n_samples": 5, "n_blocks": 4}, "n_blocks"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"hidden": ()}, "hidden"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"wc_pair": ("Mo", "Xx")}, "wc_pair"),
        ({"lattice_constant": 0.0}, "lattice_constant"),
        ({"run_name": "a/b"}, "run_name"),
        ({"vae_windows": ((900.0, 500.0),)}, "vae_windows"),
        ({"n_samples": 30, "n_blocks": 4}, "drift"),
        ({"max_drift_z": 0.0}, "max_drift_z"),
        ({"vae_windows": ((1000.0, 1100.0),)}, "fewer than 3"),
        ({"beta": float("inf")}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"beta": -1.0}, "beta"),
        ({"learning_rate": float("inf")}, "learning_rate"),
        ({"temperatures": None, "t_max": float("inf")}, r"t_max must be finite.*inf"),
        ({"temperatures": None, "t_max": float("nan")}, r"t_max must be finite.*nan"),
        ({"temperatures": None, "t_min": float("inf")}, r"t_min .*inf"),
        ({"vae_windows": ((600.0, float("inf")),)}, "vae_windows"),
        ({"vae_windows": ((float("-inf"), 2500.0),)}, "vae_windows"),
        ({"vae_windows": ((600.0, float("nan")),)}, "vae_windows"),
        ({"hidden": (16.5,)}, "hidden must be a tuple of ints"),
        # s28 probe: raw TypeErrors, or a crash after the run folder was written
        ({"hidden": 64}, "hidden must be a tuple of ints"),
        ({"vae_windows": (600.0, 2500.0)}, "vae_windows: each window is a finite"),
        ({"vae_windows": None}, "vae_windows must be a tuple"),
        ({"vae_windows": (("a", "b"),)}, "vae_windows: each window"),
        ({"vae_windows": ((600.0, 2500.0), (600.4, 2500.0))}, "same whole kelvins"),
        ({"vae_windows": ((600.0, 2500.0), (600.0, 2500.0))}, "overwrite each other"),
        ({"seed": 0.5}, r"seed must be an int in \[0, 2\*\*32\)"),
        ({"seed": 2**70}, "seed must be an int"),
        ({"seed": -1}, "seed must be an int"),
        ({"lattice_constant": "3.2"}, "lattice_constant must be a number"),  # was a TypeError
        ({"beta": None}, "beta must be a number"),
        ({"val_fraction": True}, "val_fraction must be a number"),
    ],
)
def test_bad_config_fails_before_any_work(tmp_path, changes, match):
    cfg = tiny_config(out_root=str(tmp_path / "runs"), **changes)
    with pytest.raises(ValueError, match=match):
        cfg.validate()
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(cfg)
    assert list(tmp_path.iterdir()) == []


def test_default_config_is_valid_and_cli_rejects_bad_flags(tmp_path, capsys):
    Config().validate()
    assert len(Config().ladder()) == 24
    t = Config().ladder()
    assert np.all(np.diff(t) > 0) and np.all(np.diff(np.diff(t)) > 0)  # denser at low T
    rc = run.main(["--n-temperatures", "1", "--out-root", str(tmp_path / "runs")])
    assert rc == 2 and "n_temperatures" in capsys.readouterr().err
    rc = run.main(["--t-min", "2500", "--out-root", str(tmp_path / "runs")])
    assert rc == 2 and "t_max" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "flags, match",
    [
        # --beta inf passed validation and crashed after the Monte Carlo and the VAE
        (["--beta", "inf"], "beta must be >= 0 and finite, got inf"),
        (["--beta", "nan"], "beta"),
        # --t-max inf was reported as a bad t_min
        (["--t-max", "inf"], "t_max must be finite (K), got inf"),
        (["--t-min", "inf"], "t_min must be > 0 K and finite, got inf"),
        # --vae-window 500 inf was accepted (files named susceptibility_500-infK.png)
        (["--vae-window", "500", "inf"], "vae_windows"),
        (["--vae-window", "600", "2000", "--vae-window", "500", "inf"], "(500.0, inf)"),
    ],
)
def test_cli_rejects_non_finite_flags_without_writing(tmp_path, capsys, flags, match):
    rc = run.main([*flags, "--out-root", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "bad config" in err and match in err
    assert list(tmp_path.iterdir()) == []


def test_cli_tiny_is_the_tiny_config_and_flags_override_it():
    """s28 probe: --tiny was missing (tiny_config reachable from Python only)."""
    a = run.build_parser().parse_args(["--tiny"])
    assert run.config_from_args(a) == tiny_config(progress=True)
    a = run.build_parser().parse_args(["--tiny", "--epochs", "3", "--no-progress"])
    assert run.config_from_args(a) == tiny_config(epochs=3)
    a = run.build_parser().parse_args(["--tiny", "--t-min", "200", "--n-temperatures", "8"])
    c = run.config_from_args(a)  # a ladder flag: the geometric ladder, not the tiny list
    assert c.temperatures is None and c.ladder()[0] == 200.0 and len(c.ladder()) == 8
    assert c.n_cells == tiny_config().n_cells
    assert run.config_from_args(run.build_parser().parse_args([])) == Config(progress=True)


def test_a_run_dir_holding_another_run_is_refused_before_any_work(tiny_run, tmp_path, capsys):
    """s28 probe: --run-dir into a finished run overwrote some of its files and left others
    (seed-0 samples.npz, another window's metrics and plot) beside the new run's."""
    from experiments.hea_order.pipeline import check_run_dir

    _, _, folder = tiny_run
    before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    with pytest.raises(ValueError, match="is not empty"):
        train_and_evaluate(tiny_config(seed=1), folder)
    with pytest.raises(SystemExit) as exc:
        run.main(["--tiny", "--seed", "1", "--run-dir", str(folder), "--no-progress"])
    assert exc.value.code == 2 and "is not empty" in capsys.readouterr().err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == before
    check_run_dir(tmp_path)  # an empty folder, or a new one, is fine
    check_run_dir(tmp_path / "new")


def test_numpy_windows_are_accepted_and_a_tiny_window_error_names_the_tiny_ladder(capsys):
    """s28 review: NumPy numbers in vae_windows were refused as not finite; with --tiny a
    window error described the geometric ladder --tiny does not use."""
    windows = tuple(map(tuple, np.array([[600.0, 2500.0]], np.float32)))
    tiny_config(vae_windows=windows).validate()
    tiny_config(vae_windows=tuple(map(tuple, np.array([[600, 2500]])))).validate()
    rc = run.main(["--tiny", "--vae-window", "100", "200", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "of --tiny's ladder (150 300 600 900 1400 2500 K)" in err, err
