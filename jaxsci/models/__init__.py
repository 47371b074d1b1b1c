"""jaxsci.models."""

from jaxsci.models.classifier import MLPClassifier  # issue 6: metric classifier
from jaxsci.models.cvae import (  # issue 4: conditional VAE
    CVAE,
    CVAEState,
    cvae_loss,
    encode,
    init_cvae_state,
    kl_divergence,
    make_epoch_fn,
    make_eval_fn,
    sample,
    with_validation,
)
from jaxsci.models.fcn import (  # inverse imaging (Laanait et al. 2019)
    BOTTLENECKS,
    DOWNSAMPLES,
    NORMS,
    PADDINGS,
    UNet,
)
from jaxsci.models.gan import (  # issue 6: conditional GANs
    CGAN,
    CondDiscriminator,
    CondGenerator,
    PatchConv,
    check_labels,
    dc_cgan,
    w_cgan,
)
from jaxsci.models.mlp import MLP

__all__ = [
    "BOTTLENECKS",
    "DOWNSAMPLES",
    "NORMS",
    "PADDINGS",
    "check_labels",
    "CGAN",
    "CVAE",
    "CVAEState",
    "CondDiscriminator",
    "CondGenerator",
    "MLP",
    "MLPClassifier",
    "PatchConv",
    "UNet",
    "cvae_loss",
    "dc_cgan",
    "encode",
    "init_cvae_state",
    "kl_divergence",
    "make_epoch_fn",
    "make_eval_fn",
    "sample",
    "w_cgan",
    "with_validation",
]
