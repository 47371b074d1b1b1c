"""pt_nanoparticles refuses a restart with fewer epochs than its checkpoint has done."""

import dataclasses
import re

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.pt_nanoparticles import pipeline
from experiments.pt_nanoparticles.config import tiny_config
from jaxsci.train import Checkpointer, check_resume


def _files(folder):
    return sorted(
        (str(p.relative_to(folder)), p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
        for p in folder.rglob("*")
    )


def test_restart_with_fewer_epochs_than_the_checkpoint_is_refused_before_writing(
    tmp_path, monkeypatch
):
    """It used to pass the resume check, overwrite config.json and train.extxyz, then fail
    inside fit with "start_epoch (6) is past num_epochs (3)"."""
    cfg = tiny_config(epochs=6, out_root=str(tmp_path / "runs"), cache_dir=str(tmp_path / "c"))
    workdir = tmp_path / "W"
    q = cfg.n_quantiles if cfg.n_quantiles is not None else cfg.data.max_size
    settings = pipeline.training_settings(cfg, q * pipeline.make_descriptor(cfg).n_features, 2)
    # the checkpoint a 6-epoch run leaves (only its step and settings are read), and a
    # run folder's files
    with Checkpointer(workdir / "checkpoints") as ck:
        ck.save(6, {"w": jnp.ones(2)}, metadata={"settings": settings})
    (workdir / "config.json").write_text('{"epochs": 6}\n')
    (workdir / "train.extxyz").write_text("old\n")
    before = _files(workdir)
    monkeypatch.setattr(pipeline, "build_pt_clusters", lambda *a, **k: pytest.fail("built"))
    ckpt_dir = re.escape(str(workdir / "checkpoints"))
    with pytest.raises(ValueError, match=rf"{ckpt_dir} are at epoch 6, past epochs=3"):
        pipeline.train_and_evaluate(dataclasses.replace(cfg, epochs=3), workdir)
    assert _files(workdir) == before
    assert not (tmp_path / "runs").exists() and not (tmp_path / "c").exists()
    # train_cvae (the same check) refuses as well, and the same epochs pass the check
    x = np.zeros((4, settings["data_dim"]), np.float32)
    c = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="past epochs=5"):
        pipeline.train_cvae(dataclasses.replace(cfg, epochs=5), x, c, None, None, workdir)
    check_resume(workdir / "checkpoints", settings, 6)
    assert _files(workdir) == before
