"""Configuration of the data-parallel digits experiment."""

from __future__ import annotations

import math
from dataclasses import dataclass

from jaxsci._checks import is_int_at_least

N_DIGITS = 1797  # samples in scikit-learn's digits


def n_train(test_fraction: float) -> int:
    """Training samples left by ``train_test_split(test_size=test_fraction)`` (it rounds the
    test set up)."""
    return N_DIGITS - math.ceil(test_fraction * N_DIGITS)


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

    def __post_init__(self) -> None:
        if not self.hidden or not all(is_int_at_least(h, 1) for h in self.hidden):
            raise ValueError(f"hidden must be a non-empty tuple of widths >= 1, got {self.hidden}")
        for name in ("global_batch", "steps", "eval_every"):
            value = getattr(self, name)
            if not is_int_at_least(value, 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must lie in (0, 1), got {self.test_fraction}")
        if self.devices is not None and self.devices < 1:
            raise ValueError(f"devices must be >= 1 or None (all visible), got {self.devices}")
        if self.bucket_bytes is not None and self.bucket_bytes < 0:
            raise ValueError(f"bucket_bytes must be >= 0 or None, got {self.bucket_bytes}")
        if not self.target_accuracy >= 0:  # above 1: never reached (a full-length run)
            raise ValueError(f"target_accuracy must be >= 0, got {self.target_accuracy}")
        if self.global_batch > n_train(self.test_fraction):
            raise ValueError(
                f"global_batch {self.global_batch} is larger than the "
                f"{n_train(self.test_fraction)} training samples (test_fraction "
                f"{self.test_fraction} of {N_DIGITS} digits): not one step per epoch"
            )


def tiny() -> Config:
    """Smoke-test size (seconds)."""
    return Config(hidden=(32,), global_batch=16, steps=12, eval_every=6)
