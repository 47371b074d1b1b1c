"""Smoke test of experiments/cgan_digits with a tiny config."""

import dataclasses
import json

import numpy as np
import pytest

from experiments.cgan_digits.config import tiny
from experiments.cgan_digits.run import main
from experiments.cgan_digits.train import CompileTimer, train_and_evaluate


def test_tiny_run_writes_the_run_folder(tmp_path):
    config = dataclasses.replace(tiny(), models=("perlabel_wcgan", "baseline_dcgan"))
    run_dir, metrics = train_and_evaluate(config, tmp_path / "run", progress=False)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert set(saved["models"]) == {"perlabel_wcgan", "baseline_dcgan"}
    assert "definition" in saved["equal_compute"]
    ec = saved["equal_compute"]
    assert (
        ec["perlabel_wcgan"]["generator_examples_total"]
        == ec["baseline_dcgan"]["generator_examples_total"]
    )
    for name in ("perlabel_wcgan", "baseline_dcgan"):
        d = np.load(run_dir / f"samples_{name}.npz")
        assert d["images"].shape == (10 * config.samples_per_label, 8, 8)
        assert 0.0 <= d["images"].min() and d["images"].max() <= 16.0
        assert np.bincount(d["labels"]).tolist() == [config.samples_per_label] * 10
        assert (run_dir / f"samples_{name}.png").stat().st_size > 0
        assert (run_dir / f"losses_{name}.png").stat().st_size > 0
        m = saved["models"][name]
        assert np.isfinite(m["fid"]) and np.isfinite(m["inception_score"])
        # every model compiles its trainer: train_seconds leaves that time out
        assert m["compile_seconds"] > 0 and m["train_seconds"] >= 0
        total = m["compile_seconds"] + m["train_seconds"]
        assert total == pytest.approx(m["train_wall_seconds"])
        assert len(m["per_label"]) == 10
    assert (
        saved["reference_fid"]["real_heldout_vs_train"]
        < saved["reference_fid"]["uniform_noise_vs_train"]
    )


def test_main_prints_run_folder_last(tmp_path, capsys):
    main(
        [
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--samples-per-label",
            "3",
            "--models",
            "baseline_dcgan",
            "--out-root",
            str(tmp_path),
            "--no-progress",
            "--tiny",  # the tiny models and classifier, the flags above overriding it
        ]
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(str(tmp_path)) and "cgan_digits-" in last


def test_a_models_samples_do_not_depend_on_its_place_in_models(tmp_path):
    """Each model's key derives from its name: listed alone or after another, same samples."""
    base = dataclasses.replace(tiny(), steps=2, samples_per_label=2)
    alone = dataclasses.replace(base, models=("perlabel_dcgan",))
    second = dataclasses.replace(base, models=("baseline_dcgan", "perlabel_dcgan"))
    run_a, _ = train_and_evaluate(alone, tmp_path / "a", progress=False)
    run_b, _ = train_and_evaluate(second, tmp_path / "b", progress=False)
    a = np.load(run_a / "samples_perlabel_dcgan.npz")["images"]
    b = np.load(run_b / "samples_perlabel_dcgan.npz")["images"]
    np.testing.assert_array_equal(a, b)


def test_bad_config_fails_before_any_run_folder(tmp_path, capsys):
    for flags in (["--image-size", "12"], ["--n-critic", "0"], ["--steps", "0"]):
        assert main([*flags, "--out-root", str(tmp_path), "--no-progress"]) == 2
        assert "error: bad config" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_resume_refuses_other_training_settings_and_keeps_other_models(tmp_path):
    base = dataclasses.replace(tiny(), steps=2, samples_per_label=2, models=("baseline_dcgan",))
    run_dir, _ = train_and_evaluate(base, tmp_path / "run", progress=False)
    other = dataclasses.replace(base, batch_size=base.batch_size + 1)
    with pytest.raises(ValueError, match="batch_size"):
        train_and_evaluate(other, run_dir, progress=False)
    more = dataclasses.replace(base, models=("perlabel_dcgan",))  # same settings, one more model
    _, metrics = train_and_evaluate(more, run_dir, progress=False)
    assert set(metrics["models"]) == {"baseline_dcgan", "perlabel_dcgan"}
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert set(saved["models"]) == {"baseline_dcgan", "perlabel_dcgan"}


def test_compile_timer_counts_compilation_once():
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T)
    x = jnp.ones((8, 8))
    with CompileTimer() as first:
        f(x).block_until_ready()
    with CompileTimer() as again:  # cached: no compilation
        f(x).block_until_ready()
    assert first.seconds > 0 and again.seconds == 0
    timer = CompileTimer()
    timer.spans = [(1.0, 3.0), (0.0, 2.0), (1.5, 2.5), (5.0, 6.0)]  # overlaps count once
    assert timer.seconds == pytest.approx(4.0)


def test_resume_may_extend_training_and_fids_compare_at_equal_n(tmp_path):
    """More steps on a rerun extend the run (they were refused as another setting); the
    real-vs-real floor was FID at n=450 while the models were scored at n=2000 (FID falls
    with n): now every FID of the run is at one n and label mix."""
    base = dataclasses.replace(tiny(), steps=2, samples_per_label=12, models=("baseline_dcgan",))
    run_dir, _ = train_and_evaluate(base, tmp_path / "run", progress=False)
    longer = dataclasses.replace(base, steps=4)
    _, metrics = train_and_evaluate(longer, run_dir, progress=False)
    assert sorted(p.name for p in (run_dir / "checkpoints" / "baseline_dcgan").iterdir()) == [
        "2",
        "4",
    ]
    ref, model = metrics["reference_fid"], metrics["models"]["baseline_dcgan"]
    assert ref["n"] == model["fid_n"] == 10 * 12  # 12 of each label (held-out: 44-46)
    assert ref["per_label_n"] == {lab: 12 for lab in range(10)}
    assert ref["real_heldout_subsets"] == 3 and model["fid_subsets"] == 1
    assert np.isfinite(model["fid_all_samples"]) and model["n"] == 120
    assert ref["real_heldout_vs_train"] < ref["uniform_noise_vs_train"]


def test_models_of_an_earlier_invocation_are_rescored_at_this_runs_fid_n(tmp_path):
    """An earlier invocation's entries were kept as scored then: a model at fid_n=120 beside
    a reference_fid at n=60. Now they are re-scored from their samples at this run's n, or
    dropped with a warning when their samples are too few for it."""
    base = dataclasses.replace(tiny(), steps=2, models=("baseline_dcgan",), samples_per_label=12)
    run_dir, first = train_and_evaluate(base, tmp_path / "run", progress=False)
    fewer = dataclasses.replace(base, models=("perlabel_dcgan",), samples_per_label=6)
    _, metrics = train_and_evaluate(fewer, run_dir, progress=False)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["reference_fid"]["n"] == 60
    assert {k: v["fid_n"] for k, v in saved["models"].items()} == {
        "baseline_dcgan": 60,
        "perlabel_dcgan": 60,
    }
    old, new = first["models"]["baseline_dcgan"], saved["models"]["baseline_dcgan"]
    assert new["rescored_from_samples"] and new["fid_subsets"] == 2 and new["n"] == 120
    assert new["train_seconds"] == old["train_seconds"]  # the training's own record stays
    assert new["fid_all_samples"] == pytest.approx(old["fid_all_samples"], rel=1e-4)
    assert set(saved["equal_compute"]) >= {"baseline_dcgan", "perlabel_dcgan"}
    # 12 of each label now: perlabel_dcgan's 6 per label cannot be scored at n=120
    more = dataclasses.replace(base, samples_per_label=12)
    with pytest.warns(UserWarning, match="perlabel_dcgan: dropped from metrics.json"):
        _, metrics = train_and_evaluate(more, run_dir, progress=False)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert set(saved["models"]) == {"baseline_dcgan"} and saved["reference_fid"]["n"] == 120
    assert "perlabel_dcgan" not in saved["equal_compute"]


# ---- s28 probe: a rerun that cannot resume is refused before any training


def _fake_checkpoint(folder, step):
    """A complete checkpoint at ``step`` (all the resume check reads of it)."""
    from jaxsci.parallel.bootstrap import ProcessInfo
    from jaxsci.train import Checkpointer

    with Checkpointer(folder, keep=None, info=ProcessInfo(0, 1, 1)) as ckpt:
        ckpt.save(step, {"w": np.zeros(2, np.float32)}, force=True)


def test_fewer_steps_than_a_checkpoint_holds_is_refused_before_any_training(tmp_path, capsys):
    """A rerun asking fewer --steps than baseline_dcgan's checkpoint trained perlabel_dcgan
    fully, then died with a traceback (status 1); now one error line, status 2, nothing
    trained or written."""
    run = tmp_path / "run"
    _fake_checkpoint(run / "checkpoints" / "baseline_dcgan", 4)
    flags = ["--batch-size", "8", "--n-critic", "2", "--samples-per-label", "2", "--no-progress"]
    argv = [*flags, "--workdir", str(run), "--steps", "2"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--models", "perlabel_dcgan", "baseline_dcgan"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "baseline_dcgan" in errors[0] and "at step 4" in errors[0]
    assert "--steps >= 4" in errors[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["baseline_dcgan"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]  # no settings file either
    # the library says so too, in the baseline's schedule: 10 x steps generator updates
    config = dataclasses.replace(
        tiny(), steps=2, baseline_schedule="more_steps", models=("baseline_dcgan",)
    )
    _fake_checkpoint(run / "checkpoints" / "baseline_dcgan", 25)
    with pytest.raises(ValueError, match=r"past the 20 generator updates.*--steps >= 3"):
        train_and_evaluate(config, run, progress=False)


class _Reached(Exception):
    """Raised in place of training: the run got past its resume checks."""


def test_settings_of_a_run_stopped_before_any_checkpoint_bind_nothing(
    tmp_path, capsys, monkeypatch
):
    """training_config.json was written before any training: a run stopped before its
    first checkpoint left it, and a rerun with another batch size was refused though no
    checkpoint existed. Once one does, other settings are refused (exit 2 from the CLI)."""
    import experiments.cgan_digits.train as train

    def stop(*_a, **_k):
        raise KeyboardInterrupt

    def reached(*_a, **_k):
        raise _Reached

    base = dataclasses.replace(tiny(), steps=2, models=("baseline_dcgan",))
    run = tmp_path / "run"
    monkeypatch.setattr(train, "_train_one", stop)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(base, run, progress=False)
    assert (run / "training_config.json").exists()
    monkeypatch.setattr(train, "_train_one", reached)
    other = dataclasses.replace(base, batch_size=base.batch_size + 1)
    with pytest.raises(_Reached):  # no complete checkpoint: nothing to be consistent with
        train_and_evaluate(other, run, progress=False)
    assert json.loads((run / "training_config.json").read_text())["batch_size"] == 9
    _fake_checkpoint(run / "checkpoints" / "baseline_dcgan", 2)
    with pytest.raises(ValueError, match=r"holds models \(baseline_dcgan\).*batch_size"):
        train_and_evaluate(base, run, progress=False)
    with pytest.raises(SystemExit) as exc:
        main(["--tiny", "--workdir", str(run), "--models", "baseline_dcgan", "--no-progress"])
    assert exc.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "'batch_size': (9, 8)" in errors[0]
    # s28 review: a finished run whose checkpoints were deleted still holds its samples,
    # which a rerun re-scores into metrics.json beside models trained with other settings
    import shutil

    shutil.rmtree(run / "checkpoints")
    np.savez(run / "samples_baseline_dcgan.npz", images=np.zeros((1, 8, 8)), labels=[0])
    with pytest.raises(ValueError, match=r"holds models \(baseline_dcgan\).*batch_size"):
        train_and_evaluate(
            dataclasses.replace(base, models=("perlabel_dcgan",)), run, progress=False
        )


def test_tiny_flag_gives_the_tiny_config_and_flags_override_it(capsys):
    """cgan_digits had no --tiny, although its config module has tiny()."""
    from experiments.cgan_digits.config import Config
    from experiments.cgan_digits.run import build_parser, config_from_args

    def config(*argv):
        return config_from_args(build_parser().parse_args(list(argv)))

    assert config() == Config()
    assert config("--tiny") == tiny()
    got = config("--tiny", "--steps", "3", "--models", "baseline_dcgan", "--seed", "2")
    assert got == dataclasses.replace(tiny(), steps=3, models=("baseline_dcgan",), seed=2)
    assert config("--steps", "3") == dataclasses.replace(Config(), steps=3)
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {Config().steps}; --tiny: {tiny().steps})" in text
    assert f"(default: {Config().batch_size}; --tiny: {tiny().batch_size})" in text
