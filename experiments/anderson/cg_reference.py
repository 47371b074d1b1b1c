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

from experiments.anderson import problems as P

#: name -> (rows, parameters) of the study's least-squares problems (experiments.anderson.run)
SIZES = {"least_squares": (500, 200), "least_squares_large": (5000, 500)}


def cg_iterations(n: int, d: int, seed: int, rel_target: float = 1e-6, max_iter: int = 5000):
    """CG iterations from the study's start (``seed``) to ``f* + rel_target (f0 - f*)``."""
    prob = P.least_squares(n=n, d=d)
    a, b = (np.asarray(v, np.float64) for v in prob.data)
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


def main() -> None:
    for name, (n, d) in SIZES.items():
        its = [cg_iterations(n, d, seed) for seed in range(3)]
        print(f"{name} ({n} x {d}): CG iterations to target, seeds 0-2: {its}")


if __name__ == "__main__":
    main()
