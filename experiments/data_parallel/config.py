"""Configuration of the data-parallel digits experiment."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    """Hyper-parameters; the global batch is split over processes x devices.

    Attributes:
      hidden: widths of the hidden layers of the MLP (64 pixel inputs, 10 classes).
      global_batch: samples per step over all ranks and devices (must divide over them).
      steps: optimizer steps.
      lr: Adam learning rate.
      eval_every: steps between test-accuracy evaluations.
      test_fraction: held-out share of the 1797 digits (stratified split).
      seed: data order and parameter initialisation.
      devices: local devices per process (None: all visible).
      bucket_bytes: cross-process message size (None: one flat message).
      target_accuracy: test accuracy that ends the timed run (MLPerf-style time to train).
    """

    hidden: tuple[int, ...] = (128, 128)
    global_batch: int = 64
    steps: int = 300
    lr: float = 3e-3
    eval_every: int = 25
    test_fraction: float = 0.25
    seed: int = 0
    devices: int | None = None
    bucket_bytes: int | None = None
    target_accuracy: float = 0.95


def tiny() -> Config:
    """Smoke-test size (seconds)."""
    return Config(hidden=(32,), global_batch=16, steps=12, eval_every=6)
