"""scikit-learn's diabetes regression data (shipped with the package, no download).

442 patients, 10 baseline features (age, sex, BMI, blood pressure and six serum
measurements) and a disease-progression score one year later. scikit-learn ships the
features already centred and scaled; :func:`load_diabetes_split` splits them at random
and standardises features and target with the *training* rows' mean and standard
deviation (the held-out rows never inform the scaling).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from jaxsci.data.digits import check_split

__all__ = ["RegressionSplit", "load_diabetes_split"]


class RegressionSplit(NamedTuple):
    """Train / held-out split: features ``[N, F]`` and targets ``[N]``, float32, standardised
    with the training rows' statistics (``x_mean``, ``x_std`` ``[F]``; ``y_mean``, ``y_std``
    scalars, in the data's own units) when asked; ``targets * y_std + y_mean`` undoes it."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: float
    y_std: float


def load_diabetes_split(
    *, test_fraction: float = 0.25, seed: int = 0, standardize: bool = True
) -> RegressionSplit:
    """scikit-learn's diabetes data, split at random (``seed``) and standardised.

    ``ceil(test_fraction * 442)`` rows are held out (as scikit-learn's ``train_test_split``;
    at least one row on each side).
    ``standardize=False`` returns scikit-learn's values (target: the progression score)
    with ``x_mean = 0``, ``x_std = 1``, ``y_mean = 0``, ``y_std = 1``. ValueError, naming
    the argument, unless ``0 < test_fraction < 1`` and ``seed`` is an int in ``[0, 2**32)``.
    """
    from sklearn.datasets import load_diabetes

    check_split("load_diabetes_split", test_fraction, seed)
    x, y = load_diabetes(return_X_y=True)
    n = len(y)
    n_test = min(max(math.ceil(test_fraction * n), 1), n - 1)  # scikit-learn's rounding
    order = np.random.default_rng(int(seed)).permutation(n)
    test, train = order[:n_test], order[n_test:]
    if standardize:
        x_mean, x_std = x[train].mean(0), x[train].std(0)
        y_mean, y_std = float(y[train].mean()), float(y[train].std())
    else:
        x_mean, x_std = np.zeros(x.shape[1]), np.ones(x.shape[1])
        y_mean, y_std = 0.0, 1.0
    fx = lambda rows: ((x[rows] - x_mean) / x_std).astype(np.float32)  # noqa: E731
    fy = lambda rows: ((y[rows] - y_mean) / y_std).astype(np.float32)  # noqa: E731
    return RegressionSplit(
        fx(train),
        fy(train),
        fx(test),
        fy(test),
        x_mean.astype(np.float32),
        x_std.astype(np.float32),
        y_mean,
        y_std,
    )
