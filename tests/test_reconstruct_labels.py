"""experiments/reconstruct_pt/labels and the matched descent it runs (polish.matched_descent)."""

import numpy as np
import pytest

from experiments.reconstruct_pt.config import Config
from experiments.reconstruct_pt.labels import diagnose, main, plot
from experiments.reconstruct_pt.run import descriptor
from jaxsci.reconstruct.losses import feature_scales
from jaxsci.reconstruct.polish import matched_descent


@pytest.fixture(scope="module")
def pt10():
    from jaxsci.data.pt_clusters import relax, seed_cluster

    atoms, _, _ = relax(seed_cluster("random", 10, seed=3))
    return atoms


def test_matched_descent_recovers_with_the_true_labels(pt10):
    acsf = descriptor(Config())
    t = np.asarray(acsf.create(pt10), np.float64)
    rng = np.random.default_rng(0)
    order = rng.permutation(10)  # trial atom k sits near target atom order[k]
    start = pt10.positions[order] + 0.15 * rng.standard_normal((10, 3))
    labels = np.argsort(order)  # target row i <- trial atom labels[i]
    species, scale = np.zeros(10, np.int32), feature_scales(t)
    x, err = matched_descent(start, t, labels, species, acsf, scale=scale)
    assert err < 1e-4
    assert x.shape == (10, 3)
    # swapping the labels of two atoms far apart in the cluster leaves a wrong structure
    d = np.linalg.norm(pt10.positions[:, None] - pt10.positions[None], axis=-1)
    i, j = np.unravel_index(np.argmax(d), d.shape)
    wrong = labels.copy()
    wrong[i], wrong[j] = wrong[j], wrong[i]
    _, err_wrong = matched_descent(start, t, wrong, species, acsf, scale=scale)
    assert err_wrong > 10 * err


def test_diagnose_reports_every_labeling(tmp_path):
    out = diagnose(8, 1, n_starts=2, transpositions=(1,))
    assert out["n_starts"] == 2 and set(out["recovered"]) == {"oracle", "features", "oracle_1"}
    assert all(0 <= v <= 2 for v in out["recovered"].values())
    rec = out["per_start"][0]
    assert rec["start_rmsd"] > 0 and 0 <= rec["wrong_feature_labels"] <= 8
    assert all(np.isfinite(rec[k]) and rec[k] >= 0 for k in out["recovered"])
    plot(out, tmp_path / "labels.png")
    assert (tmp_path / "labels.png").stat().st_size > 0


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--n-atoms", "2"], "--n-atoms must be >= 4"),
        (["--n-starts", "0"], "--n-starts and --search-steps must be >= 1"),
        (["--search-steps", "-1"], "--n-starts and --search-steps must be >= 1"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--n-atoms", "8", "--transpositions", "5"], "--transpositions must lie in 1..4"),
        (["--transpositions", "0"], "--transpositions must lie in 1..12"),
        (["--transpositions", "1", "1"], "--transpositions must be distinct"),
        (["--out-dir", "FILE"], "exists and is not a folder"),
    ],
)
def test_bad_arguments_fail_before_any_work(tmp_path, capsys, flags, match):
    (tmp_path / "FILE").write_text("")
    flags = [str(tmp_path / "FILE") if f == "FILE" else f for f in flags]
    with pytest.raises(SystemExit) as exc:
        main([*flags, *([] if "--out-dir" in flags else ["--out-dir", str(tmp_path / "runs")])])
    assert exc.value.code == 2 and match in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["FILE"]


def test_diagnose_refuses_repeated_transpositions():
    with pytest.raises(ValueError, match="distinct"):
        diagnose(8, 1, transpositions=(1, 1))
