"""Command-line checks of the experiments.

* An output folder that cannot be written (a regular file in the way, or a mount such as
  /sys) ends the command with argparse's one ``error:`` line and exit status 2, before any
  work and without creating anything; under MPI on every rank, none left waiting.
* ``--no-progress`` where it was missing; ``--help`` shows every flag's real default (from
  the ``Config`` dataclasses); descriptions are whole sentences without reST markup.
* hea_order's errors name the flags a user can change.

No test trains: the work functions are replaced by ones that fail the test if reached.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from experiments.acsf_fingerprints import run as acsf_run
from experiments.cgan_digits import run as cgan_run
from experiments.cgan_digits.config import Config as CganConfig
from experiments.data_filtering import run as filtering_run
from experiments.data_filtering.config import Config as FilteringConfig
from experiments.data_parallel import run as parallel_run
from experiments.data_parallel.config import Config as ParallelConfig
from experiments.data_parallel.config import tiny as parallel_tiny
from experiments.hea_order import pipeline as hea_pipeline
from experiments.hea_order import run as hea_run
from experiments.hea_order.config import Config as HeaConfig
from experiments.inverse_imaging import run as imaging_run
from experiments.inverse_imaging.config import Config as ImagingConfig
from experiments.inverse_imaging.config import tiny_config as imaging_tiny
from experiments.pt_nanoparticles import compare_representations as compare_run
from experiments.pt_nanoparticles import pipeline as pt_pipeline
from experiments.pt_nanoparticles import run as pt_run
from experiments.pt_nanoparticles.compare_representations import CompareConfig
from experiments.pt_nanoparticles.config import Config as PtConfig
from jaxsci.data.pt_clusters import default_cache_dir

SYS_TARGET = "/sys/jaxsci-x"
REAL_RUN_ONE, REAL_RUN_ALL = parallel_run.run_one, parallel_run.run_all
needs_sys = pytest.mark.skipif(
    not Path("/sys/kernel").is_dir(), reason="needs a sysfs mount at /sys"
)


class WorkStarted(AssertionError):
    """Raised by the stand-ins of the work functions: the command got past its checks."""


def _no_work(*args, **kwargs):
    raise WorkStarted("the command started its work")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Run in tmp_path (defaults such as runs/ or .cache/ land there) and never train."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")  # help lines unwrapped
    monkeypatch.delenv("JAXSCI_CACHE", raising=False)
    for module, name in [
        (hea_pipeline, "train_and_evaluate"),
        (filtering_run, "train_and_evaluate"),
        (imaging_run, "train_and_evaluate"),
        (parallel_run, "run_all"),
        (parallel_run, "run_one"),
        (cgan_run, "train_and_evaluate"),
        (pt_pipeline, "train_and_evaluate"),
        (compare_run, "compare"),
    ]:
        monkeypatch.setattr(module, name, _no_work)


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# (id, main, argv for an output target, where the other outputs go: tmp_path / "ok")
CASES = [
    ("hea_order --out-root", hea_run.main, lambda t, ok: ["--out-root", t]),
    ("hea_order --run-dir", hea_run.main, lambda t, ok: ["--run-dir", t, "--out-root", ok]),
    ("data_filtering --out-root", filtering_run.main, lambda t, ok: ["--tiny", "--out-root", t]),
    ("inverse_imaging --out-root", imaging_run.main, lambda t, ok: ["--tiny", "--out-root", t]),
    ("data_parallel --all --root", parallel_run.main, lambda t, ok: ["--all", "--root", t]),
    ("data_parallel --all --out-root", parallel_run.main, lambda t, ok: ["--all", "--out-root", t]),
    ("cgan_digits --out-root", cgan_run.main, lambda t, ok: ["--out-root", t]),
    ("cgan_digits --workdir", cgan_run.main, lambda t, ok: ["--workdir", t, "--out-root", ok]),
    ("pt --out-root", pt_run.main, lambda t, ok: ["--out-root", t, "--cache-dir", ok]),
    ("pt --cache-dir", pt_run.main, lambda t, ok: ["--cache-dir", t, "--out-root", ok]),
    ("pt --workdir", pt_run.main, lambda t, ok: ["--workdir", t, "--cache-dir", ok]),
    (
        "compare --out-root",
        compare_run.main,
        lambda t, ok: ["--tiny", "--out-root", t, "--cache-dir", ok],
    ),
    (
        "compare --cache-dir",
        compare_run.main,
        lambda t, ok: ["--tiny", "--cache-dir", t, "--out-root", ok],
    ),
]


def _exits_2_with_one_error_line(main, argv, capsys, target: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and target in errors[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("name, main, argv", CASES, ids=[c[0] for c in CASES])
def test_a_file_in_the_way_of_an_output_exits_2_before_any_work(name, main, argv, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    _exits_2_with_one_error_line(main, argv(str(blocker), str(tmp_path / "ok")), capsys, "afile")
    assert _listing(tmp_path) == ["afile"]  # nothing created, the file untouched
    assert blocker.read_text() == "x"


@needs_sys
@pytest.mark.parametrize("name, main, argv", CASES, ids=[c[0] for c in CASES])
def test_an_unwritable_output_exits_2_before_any_work(name, main, argv, tmp_path, capsys):
    _exits_2_with_one_error_line(main, argv(SYS_TARGET, str(tmp_path / "ok")), capsys, SYS_TARGET)
    assert _listing(tmp_path) == [] and not Path(SYS_TARGET).exists()


def test_data_parallel_one_layout_refuses_an_out_it_cannot_write(tmp_path, capsys):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    # a folder given as the curve file: written only after training before
    _exits_2_with_one_error_line(
        parallel_run.main, ["--tiny", "--out", str(folder)], capsys, str(folder)
    )
    assert _listing(tmp_path) == ["a_folder"]


@needs_sys
def test_data_parallel_one_layout_refuses_an_unwritable_out(tmp_path, capsys):
    target = SYS_TARGET + ".json"
    _exits_2_with_one_error_line(parallel_run.main, ["--tiny", "--out", target], capsys, target)
    assert not Path(target).exists()


# ---- --no-progress


class Captured(Exception):
    """Stops main once the work function has been called with its arguments."""


def _capture(store: dict):
    def work(*args, **kwargs):
        store["args"], store["kwargs"] = args, kwargs
        raise Captured

    return work


@pytest.mark.parametrize("module", [filtering_run, imaging_run], ids=["filtering", "imaging"])
def test_no_progress_turns_the_bars_off(module, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(module, "train_and_evaluate", _capture(seen))
    for flags, progress in [([], True), (["--no-progress"], False), (["--tiny"], False)]:
        with pytest.raises(Captured):
            module.main([*flags, "--out-root", str(tmp_path / "runs")])
        assert seen["args"][0].progress is progress, flags
    assert module.parse_config(["--no-progress"]).progress is False


def test_data_parallel_no_progress_reaches_the_layouts(tmp_path, monkeypatch):
    import experiments.data_parallel.train as parallel_train

    seen = {}
    monkeypatch.setattr(parallel_run, "run_one", REAL_RUN_ONE)
    monkeypatch.setattr(parallel_run, "run_all", REAL_RUN_ALL)
    monkeypatch.setattr(parallel_train, "train_and_evaluate", _capture(seen))
    for flags, progress in [([], True), (["--no-progress"], False)]:
        with pytest.raises(Captured):
            parallel_run.main(["--tiny", *flags])
        assert seen["kwargs"]["progress"] is progress
    commands = []

    def child(cmd, **kwargs):
        commands.append(cmd)
        raise Captured

    monkeypatch.setattr(parallel_run.subprocess, "run", child)
    for flags in ([], ["--no-progress"]):
        with pytest.raises(Captured):
            parallel_run.main(["--all", "--tiny", "--root", str(tmp_path / "r"), *flags])
    assert "--no-progress" not in commands[0] and "--no-progress" in commands[1]


# ---- help: defaults and descriptions


def _help(main, capsys, flags=()) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*flags, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def _options(text: str) -> dict[str, str]:
    """Each long option's help text, whitespace normalised."""
    body = text.split("options:", 1)[1]
    found = {}
    for block in re.split(r"\n(?=  -)", body):
        m = re.match(r"\s*(?:-\w, )?(--[\w-]+)", block)
        if m and m.group(1) != "--help":
            found[m.group(1)] = " ".join(block.split())
    return found


def _description(text: str) -> str:
    return " ".join(text.split("\n\n")[1].split())


MAINS = {
    "hea_order": hea_run.main,
    "data_filtering": filtering_run.main,
    "inverse_imaging": imaging_run.main,
    "data_parallel": parallel_run.main,
    "cgan_digits": cgan_run.main,
    "pt_nanoparticles": pt_run.main,
    "compare_representations": compare_run.main,
    "acsf_fingerprints": acsf_run.main,
}


@pytest.mark.parametrize("name", list(MAINS))
def test_every_flag_shows_its_default(name, capsys):
    options = _options(_help(MAINS[name], capsys))
    assert options
    missing = [flag for flag, text in options.items() if "default" not in text]
    assert not missing, f"{name}: no default shown for {missing}"


def test_help_defaults_are_the_configs(capsys, monkeypatch):
    monkeypatch.delenv("JAXSCI_CACHE", raising=False)  # the cache default depends on it
    from experiments.hea_order.config import min_n_cells

    def opts(main):
        return _options(_help(main, capsys))

    hea, d = opts(hea_run.main), HeaConfig()
    assert f">= {min_n_cells(d.n_shells)}" in hea["--n-cells"] and min_n_cells(6) == 5
    from experiments.hea_order.config import tiny_config as hea_tiny

    t = hea_tiny()
    assert f"(default: {d.n_cells}; --tiny: {t.n_cells})" in hea["--n-cells"]
    assert f">= {d.min_n_samples}" in hea["--n-samples"] and d.min_n_samples == 100
    assert f"(default: {d.n_samples}; --tiny: {t.n_samples})" in hea["--n-samples"]
    assert f"(default: {d.epochs}; --tiny: {t.epochs})" in hea["--epochs"]
    assert f"(default: {d.out_root})" in hea["--out-root"]
    assert f"(default: {d.latent_dim})" in hea["--latent-dim"] and d.latent_dim == t.latent_dim

    assert f"(default: {FilteringConfig().out_root})" in opts(filtering_run.main)["--out-root"]

    imaging, full, tiny = opts(imaging_run.main), ImagingConfig(), imaging_tiny()
    for flag, field in [("--epochs", "epochs"), ("--n-train", "n_train")]:
        want = f"(default: {getattr(full, field)}; --tiny: {getattr(tiny, field)})"
        assert want in imaging[flag]
    assert f"default: {full.refine_iters}; --tiny: {tiny.refine_iters}" in imaging["--refine-iters"]

    steps = opts(parallel_run.main)["--steps"]
    assert f"default: {ParallelConfig().steps}; --tiny: {parallel_tiny().steps}" in steps

    cgan, c = opts(cgan_run.main), CganConfig()
    assert f"(default: {c.steps}; --tiny: " in cgan["--steps"] and c.steps == 400
    assert f"(default: {' '.join(c.models)})" in cgan["--models"]

    pt, p = opts(pt_run.main), PtConfig()
    assert p.cache_dir is None  # so the help must say where the cache really goes
    assert str(default_cache_dir()) == ".cache/jaxsci/pt_clusters"
    assert "(default: .cache/jaxsci/pt_clusters" in pt["--cache-dir"]
    assert f"(default: {p.epochs})" in pt["--epochs"]

    compare, cc = opts(compare_run.main), CompareConfig()
    assert f"default: {' '.join(map(str, cc.sizes))};" in compare["--sizes"]
    assert "(default: .cache/jaxsci/pt_clusters" in compare["--cache-dir"]


@pytest.mark.parametrize("name", list(MAINS))
def test_descriptions_are_sentences_without_rest_markup(name, capsys):
    text = _help(MAINS[name], capsys)
    description = _description(text)
    assert "``" not in text and ":func:" not in text and ":mod:" not in text
    if name != "data_parallel":  # a verbatim block with command lines
        assert description.endswith("."), description
    if name == "inverse_imaging":  # was cut after "reconstructs the"
        assert "reconstructs the projected potential of a crystal" in description


# ---- hea_order: messages in the flags' terms


@pytest.mark.parametrize(
    "flags, says, not_said",
    [
        (["--n-cells", "4"], "--n-cells must be >= 5", "n_shells"),
        (["--n-samples", "40"], "--n-samples must be >= 100", "n_blocks"),
        (
            ["--n-cells", "5", "--n-temperatures", "3"],
            "the default --vae-window 500 2000 (no --vae-window was given) holds 1 of",
            "vae_windows",
        ),
        (
            ["--n-temperatures", "3", "--vae-window", "600", "700"],
            "--vae-window 600 700 holds 0 of the 3",
            "default",
        ),
    ],
)
def test_hea_order_errors_name_the_flags(flags, says, not_said, tmp_path, capsys):
    rc = hea_run.main([*flags, "--out-root", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and says in err and not_said not in err, err
    assert len(err.strip().splitlines()) == 1
    assert _listing(tmp_path) == []


# ---- under MPI: rank 0 checks, every rank exits with status 2 (none left waiting)

MPI_CASES = [
    ("inverse_imaging", imaging_run.main, lambda t: ["--tiny", "--out-root", t]),
    ("cgan_digits", cgan_run.main, lambda t: ["--strategy", "mpi", "--out-root", t]),
    ("data_parallel", parallel_run.main, lambda t: ["--tiny", "--out", t]),
]


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name, main, argv", MPI_CASES, ids=[c[0] for c in MPI_CASES])
def test_every_rank_exits_2_when_rank_0_cannot_write(name, main, argv, tmp_path, capsys):
    from jaxsci.parallel import bootstrap

    info = bootstrap()
    assert info.size == 2
    root = Path(info.comm.bcast(str(tmp_path) if info.is_root else None, root=0))
    target = root / ("a_folder" if name == "data_parallel" else "afile")
    if info.is_root:  # a folder where data_parallel's curve file goes, else a file
        target.mkdir() if name == "data_parallel" else target.write_text("x")
    info.barrier()
    with pytest.raises(SystemExit) as exc:
        main(argv(str(target)))
    assert exc.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == (1 if info.is_root else 0)
    info.barrier()  # both ranks got here: none waits in a collective
    if info.is_root:
        assert _listing(root) == [target.name]


# ------------------------------------------- s28: a complete read-only data cache is accepted

PT_CASES = [
    ("pt", pt_run.main, PtConfig().data, []),
    ("compare --tiny", compare_run.main, compare_run.tiny_compare_config().data, ["--tiny"]),
]


@pytest.mark.parametrize("name, main, data, extra", PT_CASES, ids=[c[0] for c in PT_CASES])
def test_a_read_only_cache_is_refused_only_when_it_lacks_the_data(
    name, main, data, extra, tmp_path, capsys, read_only
):
    """A read-only cache was refused even when it held the data set (nothing to write)."""
    from jaxsci.data import is_cached
    from jaxsci.data.pt_clusters import emt_calculator

    argv = lambda cache: [*extra, "--cache-dir", str(cache), "--out-root", str(tmp_path / "ok")]
    empty, full = tmp_path / "empty", tmp_path / "full"
    empty.mkdir()
    folder = full / data.cache_key(emt_calculator()[1])
    folder.mkdir(parents=True)
    (folder / "structures.extxyz").write_text("")  # the files of a finished cache: what
    (folder / "meta.json").write_text("{}")  # is_cached looks for (the work is stubbed)
    assert is_cached(data, full) and not is_cached(data, empty)
    for f in (empty, full, folder):
        read_only(f)
    _exits_2_with_one_error_line(main, argv(empty), capsys, str(empty))  # must build: refused
    with pytest.raises(WorkStarted):  # only reads: past the checks, the work would start
        main(argv(full))
