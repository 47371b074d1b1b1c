"""jaxsci.optim: Anderson acceleration as optax transformations, and noise tests."""

from jaxsci.optim.anderson import (
    AndersonState,
    ScaleByAndersonState,
    anderson,
    scale_by_anderson,
)
from jaxsci.optim.averaging import aadl_statistic, step_rsd

__all__ = [
    "AndersonState",
    "ScaleByAndersonState",
    "aadl_statistic",
    "anderson",
    "scale_by_anderson",
    "step_rsd",
]
