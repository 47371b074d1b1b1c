"""Configuration of the data-filtering experiment (scikit-learn digits, MLP classifier)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import optax

from jaxsci._checks import is_int_at_least

__all__ = ["METHODS", "SCORES", "Config", "tiny_config"]

SCORES = ("el2n", "forgetting", "grand")  # importance scores, jaxsci.data.filtering
METHODS = ("full", *SCORES, "random")  # "full": all data; "random": same-size random control


@dataclass(frozen=True)
class Config:
    """Everything the experiment does; ``validate()`` checks it before any work.

    Every method trains a fresh MLP for ``steps`` SGD-momentum steps at batch ``batch_size``
    with the linearly scaled learning rate ``base_lr * batch_size / base_batch``, reached by a
    linear warm-up over ``lr_warmup_steps`` (Goyal et al.), on all training data (``full``)
    or on the ``keep = 1 - drop_fraction`` share that a score keeps (dropping the easiest)
    or on a random subset of that size (``random``). Scores come from ``warmup_steps``
    (score warm-up, not the learning-rate one) of large-batch training on all data, EL2N averaged
    over ``n_ensemble`` warm-up runs, forgetting events counted on the whole training set
    after each step of the first one, GraNd at its end. ``reference_small_batch`` adds one
    full-data run at ``base_batch`` (``<= batch_size``) for the same number of epochs (is
    there a large-batch gap at all?).
    """

    out_root: str = "runs"
    run_name: str = "data_filtering"
    progress: bool = True
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    test_fraction: float = 0.25  # of the 1797 digits, stratified (seed 0 split for all)

    hidden: tuple[int, ...] = (128, 64)
    batch_size: int = 512
    base_batch: int = 32
    base_lr: float = 0.0125  # SGD rate at base_batch (0.025: lr 0.4 at 512 collapses runs)
    momentum: float = 0.9
    steps: int = 200
    lr_warmup_steps: int = 10  # linear ramp 0 -> lr (Goyal et al.'s warm-up); 0: none
    eval_every: int = 10

    scores: tuple[str, ...] = ("el2n", "forgetting")
    drop_fractions: tuple[float, ...] = (0.1, 0.2, 0.3)
    warmup_steps: int = 20
    n_ensemble: int = 2
    reference_small_batch: bool = True

    @property
    def lr(self) -> float:
        """The learning rate at ``batch_size`` (linear scaling)."""
        return self.base_lr * self.batch_size / self.base_batch

    def optimizer(self, batch: int) -> optax.GradientTransformation:
        """SGD with momentum at ``batch``: linearly scaled rate, warm-up of equal epochs."""
        lr = self.base_lr * batch / self.base_batch
        warmup = -(-self.lr_warmup_steps * self.batch_size // batch)
        schedule = optax.linear_schedule(0.0, lr, warmup) if warmup else lr
        return optax.sgd(schedule, momentum=self.momentum)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first problem (nothing is built or written)."""
        if not self.run_name or "/" in self.run_name or self.run_name in (".", ".."):
            raise ValueError(f"run_name must be a plain folder name, got {self.run_name!r}")
        ints = {
            "batch_size": self.batch_size,
            "base_batch": self.base_batch,
            "steps": self.steps,
            "eval_every": self.eval_every,
            "warmup_steps": self.warmup_steps,
            "n_ensemble": self.n_ensemble,
        }
        lr_warmup = self.lr_warmup_steps
        if not is_int_at_least(lr_warmup, 0):
            raise ValueError(f"lr_warmup_steps must be an int >= 0, got {lr_warmup!r}")
        for name, value in ints.items():
            if not is_int_at_least(value, 1):
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.reference_small_batch and self.base_batch > self.batch_size:
            raise ValueError(
                f"base_batch ({self.base_batch}) must be <= batch_size ({self.batch_size}) "
                "with reference_small_batch: the reference run trains at the small batch "
                "base_batch (and evaluates every eval_every * batch_size / base_batch steps)"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        for seed in self.seeds:
            if not is_int_at_least(seed, 0):
                raise ValueError(f"seeds must be ints >= 0, got {self.seeds!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        for name in ("base_lr", "momentum"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (name == "base_lr" and value == 0):
                raise ValueError(f"{name} must be finite and positive, got {value}")
        if self.momentum >= 1:
            raise ValueError(f"momentum must be < 1, got {self.momentum}")
        if not self.hidden or not all(is_int_at_least(h, 1) for h in self.hidden):
            raise ValueError(f"hidden layer widths must be ints >= 1, got {self.hidden!r}")
        unknown = set(self.scores) - set(SCORES)
        if not self.scores or unknown:
            raise ValueError(f"scores must be a non-empty subset of {SCORES}, got {self.scores}")
        if not self.drop_fractions or any(not 0.0 < f < 1.0 for f in self.drop_fractions):
            raise ValueError(f"drop_fractions must be in (0, 1), got {self.drop_fractions}")
        shown = [f"{f:g}" for f in self.drop_fractions]  # as the method labels print them
        if len(set(shown)) != len(shown):  # else runs share a label and overwrite each other
            raise ValueError(f"drop_fractions must be distinct (as printed), got {shown}")


def tiny_config() -> Config:
    """Smoke-test size (seconds)."""
    return Config(
        seeds=(0, 1),
        hidden=(16,),
        batch_size=64,
        steps=6,
        lr_warmup_steps=2,
        eval_every=3,
        scores=("el2n", "forgetting", "grand"),
        drop_fractions=(0.2,),
        warmup_steps=3,
        n_ensemble=2,
        progress=False,
    )
