"""experiments.acsf_fingerprints.run writes a run folder like every experiment (s28 probe:
it wrote none, and bad flags ended in a traceback)."""

import json

import ase.io
import numpy as np
import pytest
from matplotlib.image import imread

from experiments.acsf_fingerprints import run


def _not_json(token: str):
    raise AssertionError(f"{token} is not strict JSON")


def test_run_folder_holds_json_structures_rows_and_a_plot(tmp_path, capsys):
    fps = run.main(["--out-root", str(tmp_path), "--rattle", "0.02"])
    folder = tmp_path / capsys.readouterr().out.strip().splitlines()[-1].split("/")[-1]
    assert sorted(p.name for p in folder.iterdir()) == [
        "fingerprints.png",
        "particles.extxyz",
        "per_atom.npz",
        "results.json",
    ]
    res = json.loads((folder / "results.json").read_text(), parse_constant=_not_json)
    assert res["r_cut_A"] == 6.0 and res["rattle_A"] == 0.02
    structures = ase.io.read(folder / "particles.extxyz", index=":")
    assert [len(a) for a in structures] == [p["n_atoms"] for p in res["particles"].values()]
    with np.load(folder / "per_atom.npz") as z:
        for (name, entry), atoms in zip(res["particles"].items(), structures, strict=True):
            rows = z[name.replace(" ", "_")]
            assert rows.shape[0] == len(atoms)
            pooled = np.concatenate([rows.max(0), rows.min(0)])
            np.testing.assert_allclose(entry["fingerprint_max_min"], pooled, rtol=1e-6)
            np.testing.assert_allclose(fps[name], pooled, rtol=1e-6)
    image = imread(folder / "fingerprints.png")
    assert image.shape[0] > 100 and image.std() > 0.01


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
