"""Test problems for the Anderson study: losses, data, initial parameters, step-size scales.

Every problem is a :class:`Problem`: ``loss(params, batch)`` (batch: a tuple of arrays
indexed on axis 0, or ``None`` for problems without data), ``init(key)``, the full data
``data``, ``deterministic`` (full batch) or minibatch settings, and ``lr_sgd``: 1/L where
L is known (convex problems), else a hand-picked scale that the tuning grid multiplies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits


@dataclass(frozen=True)
class Problem:
    """One optimisation problem of the study."""

    name: str
    loss: Callable  # (params, batch) -> scalar
    init: Callable  # (key) -> params
    data: tuple | None  # full training data, arrays with samples on axis 0
    deterministic: bool
    lr_sgd: float  # 1/L (convex) or a base step for plain SGD
    lr_adam: float  # base step for Adam
    f_star: float | None = None  # known optimum (convex problems), else None
    batch_size: int = 0  # minibatch problems
    epochs: int = 0
    steps: int = 0  # deterministic problems: iterations per run
    rel_target: float = 1e-6  # target: f* + rel_target * (f0 - f*)
    extra: dict = field(default_factory=dict)  # e.g. the PINN reference solution
    # compiled programs of this problem (runner), keyed by method structure, steps and x64
    # mode; per problem object, not global (a problem rebuilt with other data compiles anew)
    compiled: dict = field(default_factory=dict, init=False, repr=False, compare=False)


def _mse(pred, y):
    return 0.5 * jnp.mean((pred - y) ** 2)


# ---------------------------------------------------------------- convex problems
def least_squares(n: int = 500, d: int = 200, cond: float = 2e3, seed: int = 0) -> Problem:
    """min 0.5 mean((A w - b)^2), A = U diag(s) V^T with random rotations and log-spaced
    singular values: the Hessian has condition ``cond`` in a *rotated* basis (column
    scaling would be undone by Adam's diagonal preconditioner). Seeds vary the start."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(n, d)))
    v, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a = np.sqrt(n) * (u * np.logspace(0, -0.5 * np.log10(cond), d)) @ v.T
    b = rng.normal(size=n)
    h = a.T @ a / n
    ev = np.linalg.eigvalsh(h)
    w_star = np.linalg.lstsq(a, b, rcond=None)[0]
    f_star = 0.5 * np.mean((a @ w_star - b) ** 2)
    loss = lambda p, batch: _mse(batch[0] @ p["w"], batch[1])
    return Problem(
        name="least_squares",
        loss=loss,
        init=lambda key: {"w": jax.random.normal(key, (d,))},
        data=(jnp.asarray(a), jnp.asarray(b)),
        deterministic=True,
        lr_sgd=1.0 / ev[-1],
        lr_adam=0.1,
        f_star=float(f_star),
        steps=2000,
        extra={"kappa": float(ev[-1] / ev[0])},
    )


def logistic_regression(l2: float = 1e-3) -> Problem:
    """L2-regularised logistic regression on scikit-learn's breast-cancer data."""
    from scipy.optimize import minimize

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    x = np.hstack([x, np.ones((len(x), 1))])
    y = y.astype(np.float64)

    def np_loss(w):
        z = x @ w
        return np.mean(np.logaddexp(0, z) - y * z) + 0.5 * l2 * w @ w

    def np_grad(w):
        p = 1 / (1 + np.exp(-(x @ w)))
        return x.T @ (p - y) / len(y) + l2 * w

    res = minimize(
        np_loss,
        np.zeros(x.shape[1]),
        jac=np_grad,
        method="L-BFGS-B",
        options={"gtol": 1e-12, "ftol": 1e-16, "maxiter": 100000},
    )
    lmax = np.linalg.eigvalsh(x.T @ x / len(y)).max() / 4 + l2

    def loss(p, batch):
        xb, yb = batch
        z = xb @ p["w"]
        return jnp.mean(jnp.logaddexp(0.0, z) - yb * z) + 0.5 * l2 * jnp.sum(p["w"] ** 2)

    return Problem(
        name="logistic_regression",
        loss=loss,
        init=lambda key: {"w": 0.3 * jax.random.normal(key, (x.shape[1],))},
        data=(jnp.asarray(x), jnp.asarray(y)),
        deterministic=True,
        lr_sgd=1.0 / lmax,
        lr_adam=0.1,
        f_star=float(res.fun),
        steps=1500,
    )


# ---------------------------------------------------------------- MLP regression
def _mlp_init(key, sizes):
    params = []
    for k, a, b in zip(jax.random.split(key, len(sizes) - 1), sizes[:-1], sizes[1:], strict=True):
        params.append({"w": jax.random.normal(k, (a, b)) * np.sqrt(1.0 / a), "b": jnp.zeros(b)})
    return params


def _mlp_apply(params, x):
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def mlp_diabetes(minibatch: bool, hidden: int = 32, epochs: int = 40, steps: int = 1500) -> Problem:
    """MLP regression (tanh, 2 hidden layers) on scikit-learn's diabetes data (standardised)."""
    x, y = load_diabetes(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    loss = lambda p, batch: _mse(_mlp_apply(p, batch[0])[:, 0], batch[1])
    return Problem(
        name="mlp_diabetes_" + ("minibatch" if minibatch else "fullbatch"),
        loss=loss,
        init=lambda key: _mlp_init(key, [10, hidden, hidden, 1]),
        data=(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)),
        deterministic=not minibatch,
        lr_sgd=0.1 if minibatch else 0.3,
        lr_adam=3e-3 if minibatch else 1e-2,
        batch_size=32,
        epochs=epochs,
        steps=steps,
        rel_target=1e-2,
    )


# ---------------------------------------------------------------- CNN on digits
def _cnn_init(key, channels=8):
    k1, k2 = jax.random.split(key)
    return {
        "conv": jax.random.normal(k1, (3, 3, 1, channels)) * np.sqrt(2 / 9),
        "bc": jnp.zeros(channels),
        "dense": jax.random.normal(k2, (4 * 4 * channels, 10)) * np.sqrt(1 / (16 * channels)),
        "bd": jnp.zeros(10),
    }


def _cnn_apply(p, x):
    h = jax.lax.conv_general_dilated(
        x, p["conv"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    h = jax.nn.relu(h + p["bc"])
    h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return h.reshape(h.shape[0], -1) @ p["dense"] + p["bd"]


def cnn_digits(epochs: int = 10, channels: int = 8) -> Problem:
    """Small CNN (conv 3x3, ReLU, max-pool, dense) on scikit-learn's 8x8 digits, minibatch."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8, 1).astype(np.float32)

    def loss(p, batch):
        logits = _cnn_apply(p, batch[0])
        return jnp.mean(
            jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, batch[1][:, None], -1)[:, 0]
        )

    return Problem(
        name="cnn_digits",
        loss=loss,
        init=lambda key: _cnn_init(key, channels),
        data=(jnp.asarray(x), jnp.asarray(y, jnp.int32)),
        deterministic=False,
        lr_sgd=0.1,
        lr_adam=3e-3,
        batch_size=64,
        epochs=epochs,
        rel_target=1e-2,
    )


# ---------------------------------------------------------------- Burgers PINNs
def burgers_cole_hopf(x: np.ndarray, t: np.ndarray, nu: float, n_quad: int = 200) -> np.ndarray:
    """Exact solution of u_t + u u_x = nu u_xx, u(x, 0) = -sin(pi x), u(+-1, t) = 0.

    Cole-Hopf: u = -int sin(pi(x-eta)) f(x-eta) G dEta / int f(x-eta) G dEta with
    f(y) = exp(-cos(pi y) / (2 pi nu)) and the heat kernel G; with eta = sqrt(4 nu t) z
    both integrals are Gauss-Hermite quadratures in z (``n_quad`` nodes). t > 0.
    """
    z, wq = np.polynomial.hermite.hermgauss(n_quad)
    x, t = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(t, np.float64))
    y = x[..., None] - np.sqrt(4 * nu * t)[..., None] * z
    logf = -np.cos(np.pi * y) / (2 * np.pi * nu)
    logf = logf - logf.max(axis=-1, keepdims=True)  # stable: common factor cancels
    f = np.exp(logf) * wq
    return -np.sum(np.sin(np.pi * y) * f, -1) / np.sum(f, -1)


def _pinn_init(key, n_in, width, depth, n_out):
    return _mlp_init(key, [n_in] + [width] * depth + [n_out])


def burgers_1d(
    n_colloc: int = 400, width: int = 16, depth: int = 3, steps: int = 1500, seed: int = 0
) -> Problem:
    """PINN for 1D viscous Burgers (nu = 0.01/pi) on x in [-1, 1], t in [0, 1]."""
    nu = 0.01 / np.pi
    rng = np.random.default_rng(seed)
    xc = rng.uniform(-1, 1, n_colloc)
    tc = rng.uniform(0, 1, n_colloc)
    xi = np.linspace(-1, 1, 64)
    tb = rng.uniform(0, 1, 32)
    colloc = jnp.asarray(np.stack([xc, tc], 1), jnp.float32)
    init_pts = jnp.asarray(np.stack([xi, np.zeros_like(xi)], 1), jnp.float32)
    init_u = jnp.asarray(-np.sin(np.pi * xi), jnp.float32)
    bnd = jnp.asarray(
        np.concatenate([np.stack([-np.ones(32), tb], 1), np.stack([np.ones(32), tb], 1)]),
        jnp.float32,
    )
    # Reference on a grid, t > 0 (Cole-Hopf by Gauss-Hermite quadrature).
    xg, tg = np.meshgrid(np.linspace(-1, 1, 101), np.linspace(0.05, 1.0, 20))
    ug = burgers_cole_hopf(xg, tg, nu)

    def u_fn(p, xt):
        return _mlp_apply(p, xt[None])[0, 0]

    def loss(p, batch):
        del batch

        def residual(xt):
            u = u_fn(p, xt)
            g = jax.grad(u_fn, argnums=1)(p, xt)
            uxx = jax.grad(lambda z: jax.grad(u_fn, argnums=1)(p, z)[0])(xt)[0]
            return g[1] + u * g[0] - nu * uxx

        r = jax.vmap(residual)(colloc)
        u0 = jax.vmap(lambda z: u_fn(p, z))(init_pts)
        ub = jax.vmap(lambda z: u_fn(p, z))(bnd)
        return jnp.mean(r**2) + jnp.mean((u0 - init_u) ** 2) + jnp.mean(ub**2)

    grid = jnp.asarray(np.stack([xg.ravel(), tg.ravel()], 1), jnp.float32)

    def rel_l2(p):
        pred = np.asarray(_mlp_apply(p, grid)[:, 0])
        return float(np.linalg.norm(pred - ug.ravel()) / np.linalg.norm(ug))

    return Problem(
        name="burgers_1d_pinn",
        loss=loss,
        init=lambda key: _pinn_init(key, 2, width, depth, 1),
        data=None,
        deterministic=True,
        lr_sgd=0.05,
        lr_adam=1e-2,
        steps=steps,
        rel_target=1e-2,
        extra={"rel_l2": rel_l2, "nu": nu},
    )


def burgers_2d_exact(x, y, t, re):
    """Exact coupled 2D Burgers solution (Fletcher): u, v for Reynolds number ``re``."""
    e = 1.0 / (4.0 * (1.0 + np.exp((-4 * x + 4 * y - t) * re / 32.0)))
    return 0.75 - e, 0.75 + e


def burgers_2d(
    n_colloc: int = 300,
    width: int = 16,
    depth: int = 3,
    steps: int = 1000,
    re: float = 20.0,
    seed: int = 0,
) -> Problem:
    """PINN for the coupled 2D viscous Burgers equations on [0,1]^2 x [0, 0.5]."""
    nu = 1.0 / re
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 1, (n_colloc, 3)) * np.array([1, 1, 0.5])
    colloc = jnp.asarray(pts, jnp.float32)
    # Initial and boundary data from the exact solution.
    nb = 200
    b = rng.uniform(0, 1, (nb, 3)) * np.array([1, 1, 0.5])
    face = rng.integers(0, 5, nb)
    b[face == 0, 2] = 0.0
    b[face == 1, 0] = 0.0
    b[face == 2, 0] = 1.0
    b[face == 3, 1] = 0.0
    b[face == 4, 1] = 1.0
    ub, vb = burgers_2d_exact(b[:, 0], b[:, 1], b[:, 2], re)
    bpts = jnp.asarray(b, jnp.float32)
    buv = jnp.asarray(np.stack([ub, vb], 1), jnp.float32)
    test = rng.uniform(0, 1, (2000, 3)) * np.array([1, 1, 0.5])
    ut, vt = burgers_2d_exact(test[:, 0], test[:, 1], test[:, 2], re)
    test_j = jnp.asarray(test, jnp.float32)

    def uv(p, z):
        return _mlp_apply(p, z[None])[0]

    def loss(p, batch):
        del batch

        def residual(z):
            jacm = jax.jacfwd(lambda q: uv(p, q))(z)  # [2, 3]: d(u,v)/d(x,y,t)
            hess = jax.jacfwd(jax.jacfwd(lambda q: uv(p, q)))(z)  # [2, 3, 3]
            u, v = uv(p, z)
            lap = hess[:, 0, 0] + hess[:, 1, 1]
            ru = jacm[0, 2] + u * jacm[0, 0] + v * jacm[0, 1] - nu * lap[0]
            rv = jacm[1, 2] + u * jacm[1, 0] + v * jacm[1, 1] - nu * lap[1]
            return ru**2 + rv**2

        r = jax.vmap(residual)(colloc)
        pb = jax.vmap(lambda z: uv(p, z))(bpts)
        return jnp.mean(r) + jnp.mean(jnp.sum((pb - buv) ** 2, 1))

    def rel_l2(p):
        pred = np.asarray(_mlp_apply(p, test_j))
        ref = np.stack([ut, vt], 1)
        return float(np.linalg.norm(pred - ref) / np.linalg.norm(ref))

    return Problem(
        name="burgers_2d_pinn",
        loss=loss,
        init=lambda key: _pinn_init(key, 3, width, depth, 2),
        data=None,
        deterministic=True,
        lr_sgd=0.05,
        lr_adam=1e-2,
        steps=steps,
        rel_target=1e-2,
        extra={"rel_l2": rel_l2},
    )
