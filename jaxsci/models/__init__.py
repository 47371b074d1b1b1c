"""jaxsci.models."""

from jaxsci.models.cvae import (  # issue 4: conditional VAE
    CVAE,
    CVAEState,
    cvae_loss,
    init_cvae_state,
    make_epoch_fn,
    make_eval_fn,
)
from jaxsci.models.mlp import MLP

__all__ = [
    "CVAE",
    "CVAEState",
    "MLP",
    "cvae_loss",
    "init_cvae_state",
    "make_epoch_fn",
    "make_eval_fn",
]
