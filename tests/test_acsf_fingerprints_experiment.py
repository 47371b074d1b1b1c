"""experiments.acsf_fingerprints.run writes a run folder like every experiment (s28 probe:
it wrote none, and bad flags ended in a traceback)."""

import json

import ase.io
import numpy as np
import pytest
from matplotlib.image import imread

from experiments.acsf_fingerprints import run
from jaxsci.descriptors import ACSF


def _not_json(token: str):
    raise AssertionError(f"{token} is not strict JSON")


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--r-cut", "0"], "--r-cut must be a finite number > 0"),
        (["--r-cut", "nan"], "--r-cut must be a finite number > 0"),
        (["--rattle", "-1"], "--rattle must be a finite number >= 0"),
    ],
)
def test_bad_flags_exit_2_before_any_work(flags, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run.main([*flags, "--out-root", str(tmp_path / "runs")])
    assert exc.value.code == 2 and says in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- config and CLI


def test_tiny_run_writes_a_run_folder_of_finite_fingerprints(tmp_path, capsys):
    from dataclasses import asdict

    from experiments.acsf_fingerprints.config import tiny_config

    fps = run.main(["--tiny", "--out-root", str(tmp_path), "--rattle", "0.02"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    (folder,) = tmp_path.iterdir()
    assert last == str(folder) and folder.name.startswith("acsf_fingerprints-")
    assert sorted(p.name for p in folder.iterdir()) == [
        "fingerprints.png",
        "particles.extxyz",
        "per_atom.npz",
        "results.json",
    ]
    res = json.loads((folder / "results.json").read_text(), parse_constant=_not_json)
    assert set(res) == {"r_cut_A", "rattle_A", "g2_params", "g4_params", "particles", "config"}
    config = tiny_config(out_root=str(tmp_path), rattle=0.02)
    assert res["config"] == json.loads(json.dumps(asdict(config)))
    assert res["r_cut_A"] == config.r_cut == 6.0 and res["rattle_A"] == config.rattle == 0.02
    names = ["Pt13 icosahedron", "Pt7 decahedron", "Pt6 octahedron"]
    assert list(res["particles"]) == names and list(fps) == names
    n_features = 1 + len(config.g2_params) + len(config.g4_params)  # G1, G2s, G4s (one species)
    for name, entry in res["particles"].items():
        fp = np.asarray(entry["fingerprint_max_min"])
        assert fp.shape == (2 * n_features,) and np.all(np.isfinite(fp))
        np.testing.assert_allclose(fps[name], fp, rtol=1e-6)
        assert entry["n_atoms"] == int(name.split()[0][2:])
    structures = ase.io.read(folder / "particles.extxyz", index=":")
    g2, g4 = [list(p) for p in config.g2_params], [list(p) for p in config.g4_params]
    oracle = ACSF(["Pt"], config.r_cut, g2_params=g2, g4_params=g4)
    assert [len(a) for a in structures] == [p["n_atoms"] for p in res["particles"].values()]
    with np.load(folder / "per_atom.npz") as z:
        for (name, entry), atoms in zip(res["particles"].items(), structures, strict=True):
            rows = z[name.replace(" ", "_")]
            assert rows.shape[0] == len(atoms)
            # the rows are the config's ACSF of the structure written beside them
            np.testing.assert_allclose(rows, oracle.create(atoms), rtol=1e-5, atol=1e-6)
            pooled = np.concatenate([rows.max(0), rows.min(0)])
            np.testing.assert_allclose(entry["fingerprint_max_min"], pooled, rtol=1e-6)
    assert (folder / "fingerprints.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(folder / "fingerprints.png")
    assert image.shape[0] > 100 and image.std() > 0.01


@pytest.mark.parametrize(
    "field, value",
    [
        ("r_cut", 0.0),
        ("r_cut", float("inf")),
        ("r_cut", "6"),
        ("r_cut", True),
        ("rattle", -0.1),
        ("rattle", float("nan")),
        ("seed", -1),
        ("seed", 1.5),
        ("seed", 2**32 - 1),  # particle 1 would be rattled with seed 2**32
        ("g2_params", ((0.1,),)),
        ("g2_params", ((-0.1, 0.0),)),
        ("g2_params", (("a", 0.0),)),
        ("g4_params", ((0.01, 1, 2),)),
        ("g4_params", ((0.01, -1, 1),)),
        ("g4_params", ((0.01, 1, 1), (float("nan"), 1, 1))),
        ("particles", ()),
        ("particles", (("cube", (2,)),)),
        ("particles", (("icosahedron", (2.0,)),)),
        ("particles", (("decahedron", (2, 2)),)),
        ("particles", (("icosahedron", (0,)),)),
        ("particles", (("icosahedron", (2,)), ("icosahedron", (2,)))),
        ("out_root", ""),
        ("run_name", "a/b"),
    ],
)
def test_bad_config_values_raise_naming_the_field_before_any_work(field, value, tmp_path):
    from experiments.acsf_fingerprints.config import Config, tiny_config

    Config().validate()
    tiny_config().validate()
    config = tiny_config(**{"out_root": str(tmp_path / "runs"), field: value})
    with pytest.raises(ValueError, match=field):
        config.validate()
    with pytest.raises(ValueError, match=field):
        run.evaluate(config)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--tiny", "--seed", "-1"], "--seed must be an int >= 0"),
        (["--tiny", "--r-cut", "inf"], "--r-cut must be a finite number > 0"),
        (["--tiny", "--rattle", "x"], "--rattle: invalid float value"),
        (["--tiny", "--seed", "1.5"], "--seed: invalid int value"),
        (["--tiny", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_tiny_flags_exit_2_before_anything_is_written(
    flags, says, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(run, "evaluate", lambda *a: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exc:
        run.main([*flags, "--out-root", str(tmp_path / "runs")])
    assert exc.value.code == 2 and says in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_tiny_flag_gives_the_tiny_config_and_flags_override_it():
    from experiments.acsf_fingerprints.config import Config, tiny_config

    parse = lambda *flags: run.config_from_args(run.build_parser().parse_args(list(flags)))
    assert parse() == Config()
    assert parse("--tiny") == tiny_config()
    assert parse("--tiny", "--r-cut", "5", "--rattle", "0", "--seed", "7") == tiny_config(
        r_cut=5.0, rattle=0.0, seed=7
    )
    # the module's G2 and G4 lists are the default config's functions
    assert run.G2 == [list(r) for r in Config().g2_params] and len(run.G4) == 12
