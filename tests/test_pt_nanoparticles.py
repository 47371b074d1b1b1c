"""Tests for experiments/pt_nanoparticles: config checks, CLI, representation, exact resume."""

import dataclasses

import jax
import numpy as np
import pytest

from experiments.pt_nanoparticles import run
from experiments.pt_nanoparticles.config import tiny_config
from experiments.pt_nanoparticles.pipeline import train_and_evaluate, train_cvae
from experiments.pt_nanoparticles.representation import from_quantiles, to_quantiles
from jaxsci.data.pt_clusters import PtClusterConfig


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"data": PtClusterConfig(min_size=-4)}, "min_size"),
        ({"data": PtClusterConfig(element="Xx")}, "unknown element"),
        ({"data": PtClusterConfig(shapes=())}, "empty data set"),
        ({"epochs": 0}, "epochs"),
        ({"target_range": (0.9, 0.1)}, "target_range"),
    ],
)
def test_bad_config_fails_before_any_work(tmp_path, changes, match):
    cfg = tiny_config(out_root=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"), **changes)
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(cfg)
    assert list(tmp_path.iterdir()) == []


def test_cli_rejects_bad_flags_without_writing(tmp_path, capsys):
    rc = run.main(["--min-size", "-3", "--out-root", str(tmp_path / "runs")])
    assert rc == 2
    assert "min_size" in capsys.readouterr().err
    rc = run.main(["--element", "Unobtainium", "--out-root", str(tmp_path / "runs")])
    assert rc == 2
    assert list(tmp_path.iterdir()) == []


def test_quantile_representation_round_trips_sorted_columns():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(17, 5))
    q = to_quantiles(feats, 17)
    np.testing.assert_allclose(q, np.sort(feats, axis=0), atol=1e-12)
    # permuting atoms changes nothing; resampling preserves column ranges
    np.testing.assert_allclose(to_quantiles(feats[rng.permutation(17)], 8), to_quantiles(feats, 8))
    back = from_quantiles(to_quantiles(feats, 8), 30)
    assert back.shape == (30, 5)
    assert np.all(np.diff(back, axis=0) >= 0)
    srt = np.sort(feats, axis=0)
    # nearest rank with Q >= N is exact for every size; linear interpolation is not
    for n in (5, 11, 17):
        f = feats[:n]
        np.testing.assert_array_equal(from_quantiles(to_quantiles(f, 20), n), np.sort(f, axis=0))
    lin = from_quantiles(to_quantiles(feats, 20, "linear"), 17, "linear")
    assert not np.allclose(lin, srt) and np.abs(lin - srt).max() < np.ptp(srt)
    assert np.all(back.min(0) >= srt[0] - 1e-12) and np.all(back.max(0) <= srt[-1] + 1e-12)


def test_training_resumes_from_checkpoint_with_identical_parameters(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    c = rng.normal(size=(40, 2)).astype(np.float32)
    cfg = tiny_config(epochs=6, checkpoint_every=2, hidden=(16,), latent_dim=2, batch_size=8)
    _, straight, hist_a = train_cvae(cfg, x, c, x[:8], c[:8], tmp_path / "a")
    # a run stopped after 3 epochs (checkpoint at 2, forced one at 3), then restarted
    _, _, _ = train_cvae(dataclasses.replace(cfg, epochs=3), x, c, x[:8], c[:8], tmp_path / "b")
    _, resumed, hist_b = train_cvae(cfg, x, c, x[:8], c[:8], tmp_path / "b")
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [r["epoch"] for r in hist_b] == list(range(6))
    assert [r["loss"] for r in hist_b] == [r["loss"] for r in hist_a]


def _files(folder):
    return sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_resume_with_other_training_settings_is_refused(tmp_path, monkeypatch):
    """A restart with another learning rate, batch size, latent size, architecture or seed
    resumed the other run's checkpoint silently; now it raises naming the settings, before
    anything is built or written. More epochs and another checkpoint interval are fine."""
    from experiments.pt_nanoparticles import pipeline

    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    c = rng.normal(size=(40, 2)).astype(np.float32)
    cfg = tiny_config(epochs=2, checkpoint_every=2, hidden=(16,), latent_dim=2, batch_size=8)
    train_cvae(cfg, x, c, None, None, tmp_path)
    before = _files(tmp_path)
    for changes, names in (
        ({"learning_rate": 2e-3}, "learning_rate"),
        ({"batch_size": 4, "seed": 3}, "batch_size, seed"),
        ({"latent_dim": 3, "hidden": (8,)}, "hidden, latent_dim"),
    ):
        with pytest.raises(ValueError, match=rf"other settings \({names} differ\)"):
            train_cvae(dataclasses.replace(cfg, epochs=4, **changes), x, c, None, None, tmp_path)
        assert _files(tmp_path) == before
    with pytest.raises(ValueError, match=r"other settings \(data_dim differ\)"):
        train_cvae(dataclasses.replace(cfg, epochs=4), x[:, :5], c, None, None, tmp_path)
    # the whole study refuses before building the data set or writing into the run folder
    monkeypatch.setattr(pipeline, "build_pt_clusters", lambda *a, **k: pytest.fail("built"))
    other = dataclasses.replace(cfg, learning_rate=2e-3)  # (and its data_dim is not 6)
    with pytest.raises(ValueError, match=r"other settings \(.*learning_rate differ\)"):
        train_and_evaluate(other, tmp_path)
    assert _files(tmp_path) == before
    monkeypatch.undo()
    allowed = dataclasses.replace(cfg, epochs=4, checkpoint_every=1, progress=True)
    _, state, history = train_cvae(allowed, x, c, None, None, tmp_path)
    assert int(state.step) == 4 * (40 // 8) and len(history) == 4
