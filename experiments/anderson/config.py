"""Configuration of the Anderson acceleration study (``python -m experiments.anderson.run``).

The problems themselves (data, model, base iterations or epochs, precision) are defined by
``experiments.anderson.run.build_problem`` and ``experiments.anderson.problems``; ``scale``
stretches their lengths. ``experiments.anderson.minibatch``, ``cg_reference`` and
``benchmarks/bench_anderson.py`` rebuild the study's problems from a name and a scale (the
one a ``results.json`` records), so the lengths stay there, not here.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass

from jaxsci._checks import is_int_at_least

__all__ = ["ALL", "METHODS", "Config", "tiny_config"]

#: Every problem of the study, in the order it runs them.
ALL = (
    "least_squares",
    "least_squares_large",
    "logistic_regression",
    "mlp_diabetes_fullbatch",
    "mlp_diabetes_minibatch",
    "burgers_1d_pinn",
    "burgers_2d_pinn",
    "cnn_digits",
)
#: Every method the study knows: the tuned baselines, then the Anderson variants (m10 and m20
#: run on deterministic problems only, the moving-average ones on minibatch problems only).
METHODS = (
    "sgd",
    "nesterov",
    "adam",
    "lbfgs",
    "aa_sgd_m5",
    "aa_sgd_m10",
    "aa_sgd_m20",
    "aa_momentum_m5",
    "aa_adam_m5",
    "aa_sgd_m5_avg",
    "aa_adam_m5_avg",
)


@dataclass(frozen=True)
class Config:
    """Everything the study does; ``validate()`` checks it before any work.

    Attributes:
      problems: names from :data:`ALL`, run in this order (empty: none; the run folder then
        holds an empty ``results.json``).
      seeds: seeds per method (the baselines are tuned on seed 0; every method then runs
        seeds ``0 .. seeds - 1``), >= 1.
      scale: multiplies every problem's iterations (deterministic) or epochs (minibatch),
        each at least 2; a finite number > 0 (1.0: the study's lengths).
      methods: names from :data:`METHODS` to run (``None``: all). An Anderson variant brings
        the baselines its step and its ratio need
        (:func:`experiments.anderson.run.select_methods`); the target of a nonconvex problem
        is the best loss any run reached, so it depends on which methods ran.
      out: parent folder of the run folder.
      run_name: prefix of the run folder, ``<out>/<run_name>-<UTC timestamp>``.
      plots: write one ``<problem>.png`` per problem (median loss gap over seeds).
      progress: show the study's progress bar.
    """

    problems: tuple[str, ...] = ALL
    seeds: int = 3
    scale: float = 1.0  # multiplies iterations / epochs
    methods: tuple[str, ...] | None = None  # a subset of METHODS; None: all
    out: str = "runs/anderson"
    run_name: str = "study"
    plots: bool = True
    progress: bool = True  # the study's tqdm bar

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field (nothing is built or written)."""
        if not isinstance(self.problems, tuple | list):
            raise ValueError(f"problems must be a tuple of names from {ALL}, got {self.problems!r}")
        unknown = [p for p in self.problems if p not in ALL]
        if unknown:
            raise ValueError(f"problems: unknown {unknown}; choose from {list(ALL)}")
        twice = sorted({p for p in self.problems if self.problems.count(p) > 1})
        if twice:
            raise ValueError(f"problems: {twice} named more than once")
        if not is_int_at_least(self.seeds, 1):
            raise ValueError(f"seeds must be an int >= 1, got {self.seeds!r}")
        if (
            isinstance(self.scale, bool)
            or not isinstance(self.scale, numbers.Real)
            or not 0 < self.scale < math.inf  # nan too
        ):
            raise ValueError(f"scale must be a finite number > 0, got {self.scale!r}")
        if self.methods is not None:
            if not isinstance(self.methods, tuple | list) or not self.methods:
                raise ValueError(
                    f"methods must be None (all) or a non-empty tuple of names from {METHODS}, "
                    f"got {self.methods!r}"
                )
            unknown = [m for m in self.methods if m not in METHODS]
            if unknown:
                raise ValueError(f"methods: unknown {unknown}; choose from {list(METHODS)}")
        if not isinstance(self.out, str | os.PathLike) or not os.fspath(self.out):
            raise ValueError(f"out must be a folder path, got {self.out!r}")
        name = self.run_name
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise ValueError(f"run_name must be a plain folder name, got {name!r}")
        for flag in ("plots", "progress"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be a bool, got {getattr(self, flag)!r}")


def tiny_config(**changes) -> Config:
    """A smoke-test config of seconds: the small least-squares problem at 5% of its
    iterations (100), one seed, every method."""
    base = Config(problems=("least_squares",), seeds=1, scale=0.05, progress=False)
    return dataclasses.replace(base, **changes)
