"""jaxsci.optim: Anderson acceleration as optax transformations, and noise tests."""

from jaxsci.optim.anderson import (
    AndersonState,
    ScaleByAndersonState,
    anderson,
    scale_by_anderson,
)
from jaxsci.optim.averaging import (
    MovingAverageState,
    aadl_statistic,
    averaged_params,
    moving_average,
    step_rsd,
)

__all__ = [
    "AndersonState",
    "MovingAverageState",
    "ScaleByAndersonState",
    "aadl_statistic",
    "anderson",
    "averaged_params",
    "moving_average",
    "scale_by_anderson",
    "step_rsd",
]
