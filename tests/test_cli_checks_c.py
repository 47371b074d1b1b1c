"""Command lines and run folders: non-finite numbers that passed the
checks and failed after the run folder was made, and anderson's nonconvex target."""

from __future__ import annotations

import dataclasses
import math

import pytest

from experiments.anderson import minibatch as anderson_minibatch
from experiments.anderson import run as anderson_run
from experiments.pt_nanoparticles.config import tiny_config as pt_tiny
from experiments.reconstruct_pt.config import Config as ReconstructConfig

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("main", [anderson_run.main, anderson_minibatch.main])
@pytest.mark.parametrize("scale", ["inf", "nan", "0"])
def test_anderson_commands_refuse_a_non_finite_scale_before_any_folder(
    main, scale, tmp_path, capsys
):
    """--scale inf made an empty run folder, then an OverflowError traceback."""
    with pytest.raises(SystemExit) as exc:
        main(["--scale", scale, "--seeds", "1", "--out-root", str(tmp_path / "runs")])
    assert exc.value.code == 2 and "a finite --scale > 0" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("time_limit", [NAN, 0.0, -1.0])
def test_reconstruct_pt_config_refuses_a_nan_time_limit(time_limit):
    """--time-limit nan passed validate() and failed in reconstruct after the run folder;
    inf stays "no limit", as reconstruct defines it."""
    with pytest.raises(ValueError, match=r"time_limit > 0 s \(inf: no limit\)"):
        dataclasses.replace(ReconstructConfig(), time_limit=time_limit).validate()
    dataclasses.replace(ReconstructConfig(), time_limit=INF).validate()
    pt_tiny(reconstruct_time_limit=INF).validate()


@pytest.mark.parametrize(
    "field, value, says",
    [
        ("beta", NAN, "beta must be a finite number >= 0"),
        ("beta", INF, "beta must be a finite number >= 0"),
        ("learning_rate", NAN, "learning_rate a finite number > 0"),
        ("reconstruct_time_limit", NAN, r"reconstruct_time_limit must be > 0 s \(inf"),
        ("relax_fmax", INF, "relax_fmax and novelty_tol must be finite"),
        ("novelty_tol", NAN, "relax_fmax and novelty_tol must be finite"),
    ],
)
def test_pt_config_refuses_non_finite_numbers(field, value, says):
    """--beta nan passed validate(); the run built the data set, wrote config.json and
    train.extxyz, then failed in the CVAE loss (minutes of work with the default data)."""
    with pytest.raises(ValueError, match=says):
        pt_tiny(**{field: value}).validate()
