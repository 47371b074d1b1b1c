"""Command-line checks of reconstruct_pt, anderson and six benchmarks.

Output roots that cannot be written end in argparse's one-line ``error:`` (status 2) before
any work; ``--no-progress`` reaches the config; ``--help`` shows every default (the real
one: reconstruct_pt's and anderson's come from their ``Config``); bad ``--seed`` and
``--results`` are refused.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYS_ROOT = "/sys/jaxsci-cli-check"  # mkdir there fails (EPERM) even for root
HAS_SYS = os.path.isdir("/sys/kernel")


class WorkStarted(Exception):
    """Raised by a stand-in for a command's first piece of work."""


def _bench(name: str):
    """benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def _module(name: str):
    return _bench(name) if name.startswith("bench_") else importlib.import_module(name)


def _stop(*args, **kwargs):
    raise WorkStarted


# (command, its first piece of work, argv with {root} for the output root)
OUTPUT_CASES = [
    ("experiments.reconstruct_pt.run", "train_and_evaluate", ["--out-root", "{root}"]),
    (
        "experiments.reconstruct_pt.labels",
        "diagnose",
        ["--n-atoms", "6", "--n-starts", "1", "--out-root", "{root}"],
    ),
    (
        "experiments.anderson.run",
        "train_and_evaluate",
        ["--problems", "least_squares", "--seeds", "1", "--out-root", "{root}"],
    ),
    ("experiments.anderson.minibatch", "check", ["--seeds", "1", "--out-root", "{root}"]),
    (
        "bench_reconstruct",
        "relaxed_cluster",
        ["--sizes", "6", "--per-size", "1", "--json", "{root}/r.json"],
    ),
    (
        "bench_allreduce",
        "_model",
        ["--no-mpi", "--layers", "2", "--width", "4", "--steps", "1", "--json", "{root}/a.json"],
    ),
]


@pytest.fixture
def keep_env(monkeypatch):
    """bench_allreduce sets JAX_PLATFORMS and XLA_FLAGS for its run: restore them after."""
    for var, default in (("JAX_PLATFORMS", "cpu"), ("XLA_FLAGS", "")):
        monkeypatch.setenv(var, os.environ.get(var, default))


@pytest.mark.parametrize("kind", ["file", "sys"])
@pytest.mark.parametrize("name, work, argv", OUTPUT_CASES, ids=[c[0] for c in OUTPUT_CASES])
def test_unwritable_output_root_is_a_usage_error_before_any_work(
    tmp_path, monkeypatch, capsys, keep_env, kind, name, work, argv
):
    if kind == "sys" and not HAS_SYS:
        pytest.skip("no sysfs here")
    module = _module(name)
    monkeypatch.setattr(module, work, _stop)
    (tmp_path / "afile").write_text("x")
    root = SYS_ROOT if kind == "sys" else str(tmp_path / "afile" / "sub")
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exc:
        module.main([a.format(root=root) for a in argv])
    assert exc.value.code == 2
    assert time.perf_counter() - t0 < 10
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    shown = SYS_ROOT if kind == "sys" else str(tmp_path / "afile")
    assert len(errors) == 1 and shown in errors[0], errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    assert (tmp_path / "afile").read_text() == "x"
    assert not os.path.exists(SYS_ROOT)


@pytest.mark.skipif(
    not (REPO / ".venv" / "bin" / "mpirun").exists() or importlib.util.find_spec("mpi4py") is None,
    reason="no mpirun / mpi4py",
)
def test_bench_allreduce_under_mpi_every_rank_stops_on_an_unwritable_json(tmp_path):
    (tmp_path / "afile").write_text("x")
    cmd = [str(REPO / ".venv" / "bin" / "mpirun"), "-n", "2", sys.executable]
    cmd += [str(REPO / "benchmarks" / "bench_allreduce.py"), "--layers", "2", "--width", "4"]
    cmd += ["--batch", "4", "--steps", "1", "--rounds", "1"]
    cmd += ["--json", str(tmp_path / "afile" / "a.json")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    errors = [ln for ln in (out.stdout + out.stderr).splitlines() if "error:" in ln]
    assert out.returncode == 2, out.stdout + out.stderr
    assert len(errors) == 1 and "is not a folder" in errors[0], errors  # rank 0 only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_bench_anderson_results_must_be_a_file(tmp_path, capsys, kind):
    path = tmp_path / "nope" / "results.json" if kind == "missing" else tmp_path
    with pytest.raises(SystemExit) as exc:
        _bench("bench_anderson").main(["--results", str(path)])
    assert exc.value.code == 2
    why = "no such file" if kind == "missing" else "is a folder"
    assert f"error: --results {path}: {why}" in capsys.readouterr().err


def _capture(monkeypatch, module, attr: str) -> list:
    """Stand in for ``module.attr``: record its arguments, then stop the command."""
    calls = []

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        raise WorkStarted

    monkeypatch.setattr(module, attr, record)
    return calls


@pytest.mark.parametrize("off", [False, True])
def test_no_progress_reaches_the_config(tmp_path, monkeypatch, off):
    flag = ["--no-progress"] if off else []
    recon = importlib.import_module("experiments.reconstruct_pt.run")
    calls = _capture(monkeypatch, recon, "train_and_evaluate")
    with pytest.raises(WorkStarted):
        recon.main(["--sizes", "6", "--out-dir", str(tmp_path / "r"), *flag])
    assert calls[0][0][0].progress is not off

    labels = importlib.import_module("experiments.reconstruct_pt.labels")
    calls = _capture(monkeypatch, labels, "diagnose")
    with pytest.raises(WorkStarted):
        labels.main(["--n-atoms", "6", "--out-dir", str(tmp_path / "l"), *flag])
    assert calls[0][1]["progress"] is not off

    study = importlib.import_module("experiments.anderson.run")
    calls = _capture(monkeypatch, study, "train_and_evaluate")
    with pytest.raises(WorkStarted):
        study.main(["--problems", "least_squares", "--out", str(tmp_path / "a"), *flag])
    assert calls[0][0][0].progress is not off


def test_anderson_study_bar_follows_config_progress(tmp_path, monkeypatch):
    study = importlib.import_module("experiments.anderson.run")
    bars = []

    def fake_tqdm(*args, **kwargs):
        bars.append(kwargs)
        from tqdm import tqdm

        return tqdm(*args, **kwargs)

    monkeypatch.setattr(study, "tqdm", fake_tqdm)
    study.train_and_evaluate(study.Config(problems=[], out=str(tmp_path), progress=False))
    assert bars == [{"total": 0, "desc": "anderson study", "disable": True}]


def _help(capsys, monkeypatch, name: str) -> str:
    monkeypatch.setenv("COLUMNS", "1000")  # one option per line where not raw text
    with pytest.raises(SystemExit) as exc:
        _module(name).main(["--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def _options(text: str) -> dict[str, tuple[bool, str]]:
    """flag -> (takes a value, its help text, whitespace collapsed) from ``--help``."""
    blocks: list[list[str]] = []
    for line in text.split("options:", 1)[1].splitlines():
        if line.startswith("  -"):
            blocks.append([line.strip()])
        elif blocks and line.strip():
            blocks[-1].append(line.strip())
    out = {}
    for lines in blocks:
        invocation, *rest = re.split(r"\s{2,}", lines[0], maxsplit=1)
        flag, *value = invocation.replace(",", "").split()
        out[flag] = (bool(value) and flag != "-h", " ".join(rest + lines[1:]))
    return out


COMMANDS = [
    "experiments.reconstruct_pt.run",
    "experiments.reconstruct_pt.labels",
    "experiments.anderson.run",
    "experiments.anderson.minibatch",
    "bench_reconstruct",
    "bench_anderson",
    "bench_allreduce",
    "bench_acsf",
    "bench_cgan",
    "bench_swap_mc",
]


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_every_default_and_no_rest_markup(capsys, monkeypatch, name):
    text = _help(capsys, monkeypatch, name)
    options = _options(text)
    assert len(options) > 2
    for flag, (takes_value, help_text) in options.items():
        assert help_text, f"{flag} has no help"
        if takes_value:
            assert "default: " in help_text, (flag, help_text)
    assert "``" not in text and ":func:" not in text


def _default(options: dict, flag: str) -> str:
    m = re.search(r"\(default: ([^)]*)\)", options[flag][1])
    assert m, (flag, options[flag])
    return m.group(1)


def test_reconstruct_help_defaults_are_configs(capsys, monkeypatch):
    from experiments.reconstruct_pt.config import SHAPES, Config

    d = Config()
    options = _options(_help(capsys, monkeypatch, "experiments.reconstruct_pt.run"))
    assert _default(options, "--sizes") == " ".join(map(str, d.sizes))
    assert d.shapes == SHAPES and _default(options, "--shapes") == "all"
    for flag, value in [
        ("--per-shape", d.per_shape),
        ("--time-limit", d.time_limit),
        ("--n-starts", d.n_starts),
        ("--out-root", d.out_dir),
        ("--seed", d.seed),
    ]:
        assert _default(options, flag) == str(value)


def test_anderson_help_defaults_are_configs(capsys, monkeypatch):
    from experiments.anderson.run import ALL, Config, tiny_config

    d, t = Config(), tiny_config()  # "(default: 3; --tiny: 1)", as every --tiny experiment
    options = _options(_help(capsys, monkeypatch, "experiments.anderson.run"))
    assert d.problems == ALL and t.problems == ("least_squares",)
    assert _default(options, "--problems") == "all; --tiny: least_squares"
    for flag, name in [("--seeds", "seeds"), ("--scale", "scale"), ("--out-root", "out")]:
        full, tiny = str(getattr(d, name)), str(getattr(t, name))
        assert _default(options, flag) == full + ("" if tiny == full else f"; --tiny: {tiny}")


@pytest.mark.parametrize(
    "name",
    [
        "experiments.reconstruct_pt.run",
        "experiments.reconstruct_pt.labels",
        "bench_reconstruct",
        "bench_cgan",
        "bench_swap_mc",
    ],
)
def test_one_line_descriptions_are_whole_sentences(capsys, monkeypatch, name):
    text = _help(capsys, monkeypatch, name)
    description = text.split("\n\n")[1]  # after the usage paragraph
    assert description.rstrip().endswith("."), description


def test_reconstruct_refuses_a_negative_seed(tmp_path, capsys):
    from experiments.reconstruct_pt.config import Config
    from experiments.reconstruct_pt.run import main

    with pytest.raises(ValueError, match="seed must be >= 0"):
        Config(seed=-1).validate()
    with pytest.raises(SystemExit) as exc:
        main(["--seed", "-1", "--out-dir", str(tmp_path / "runs")])
    assert exc.value.code == 2 and "seed must be >= 0, got -1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --out-root is every experiment's spelling; these four also keep their old one
OLD_SPELLINGS = [
    ("experiments.reconstruct_pt.run", "train_and_evaluate", "--out-dir"),
    ("experiments.reconstruct_pt.labels", "diagnose", "--out-dir"),
    ("experiments.anderson.run", "train_and_evaluate", "--out"),
    ("experiments.anderson.minibatch", "check", "--out"),
]


@pytest.mark.parametrize("name, work, old", OLD_SPELLINGS, ids=[c[0] for c in OLD_SPELLINGS])
def test_the_old_output_flag_still_works(tmp_path, monkeypatch, capsys, name, work, old):
    module = _module(name)
    monkeypatch.setattr(module, work, _stop)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as exc:
        module.main([old, str(tmp_path / "afile" / "sub")])
    assert exc.value.code == 2
    assert str(tmp_path / "afile") in capsys.readouterr().err
    text = _help(capsys, monkeypatch, name)
    assert f"--out-root DIR, {old} DIR" in text
