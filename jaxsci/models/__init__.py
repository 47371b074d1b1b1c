"""jaxsci.models."""

from jaxsci.models.classifier import MLPClassifier  # issue 6: metric classifier
from jaxsci.models.cvae import (  # issue 4: conditional VAE
    CVAE,
    CVAEState,
    cvae_loss,
    init_cvae_state,
    make_epoch_fn,
    make_eval_fn,
)
from jaxsci.models.gan import (  # issue 6: conditional GANs
    CGAN,
    CondDiscriminator,
    CondGenerator,
    PatchConv,
    dc_cgan,
    w_cgan,
)
from jaxsci.models.mlp import MLP

__all__ = [
    "CGAN",
    "CVAE",
    "CVAEState",
    "CondDiscriminator",
    "CondGenerator",
    "MLP",
    "MLPClassifier",
    "PatchConv",
    "cvae_loss",
    "dc_cgan",
    "init_cvae_state",
    "make_epoch_fn",
    "make_eval_fn",
    "w_cgan",
]
