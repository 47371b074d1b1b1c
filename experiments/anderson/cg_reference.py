"""Conjugate gradients on the study's least-squares problems: the Krylov lower bound.

On a quadratic, every method whose iterate after k gradients lies in the Krylov space of
the gradients (gradient descent, heavy ball, Nesterov, Anderson on a linear map) reaches
``f - f*`` no faster than CG, which minimises exactly that error over the space. CG's
iteration count to the study's target is thus the best any of them can do.

    python -m experiments.anderson.cg_reference
"""

from __future__ import annotations

import jax
import numpy as np

from experiments._cli import interruptible
from experiments.anderson.problems import Problem
from experiments.anderson.run import build_problem

#: the study's least-squares problems (built as in ``experiments.anderson.run``)
NAMES = ("least_squares", "least_squares_large")


def cg_iterations(prob: Problem, seed: int, rel_target: float = 1e-6, max_iter: int = 5000):
    """CG iterations on a least-squares ``prob`` of the study from its start for ``seed`` to
    ``f* + rel_target (f0 - f*)``; None if not reached in ``max_iter``."""
    a, b = (np.asarray(v, np.float64) for v in prob.data)
    n = len(b)
    h, rhs = a.T @ a / n, a.T @ b / n

    def loss(w):
        return 0.5 * np.mean((a @ w - b) ** 2)

    with jax.enable_x64(True):
        w = np.asarray(prob.init(jax.random.PRNGKey(seed))["w"], np.float64)
    target = prob.f_star + rel_target * (loss(w) - prob.f_star)
    r = rhs - h @ w
    p = r.copy()
    for k in range(max_iter):
        if loss(w) <= target:
            return k
        hp = h @ p
        alpha = (r @ r) / (p @ hp)
        w = w + alpha * p
        r_new = r - alpha * hp
        p = r_new + (r_new @ r_new) / (r @ r) * p
        r = r_new
    return None


def main(argv: list[str] | None = None) -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__).parse_args(argv)  # --help, and no typos
    for name in NAMES:
        with jax.enable_x64(True):  # data in float64, as the study builds it
            prob = build_problem(name, 1.0)
        a = prob.data[0]
        its = [cg_iterations(prob, seed) for seed in range(3)]
        print(f"{name} ({a.shape[0]} x {a.shape[1]}): CG iterations to target, seeds 0-2: {its}")


if __name__ == "__main__":
    interruptible(main)
