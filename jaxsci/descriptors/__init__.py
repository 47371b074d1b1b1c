"""jaxsci.descriptors: DScribe-compatible, differentiable ACSF and fingerprint pooling."""

from jaxsci.descriptors.acsf import ACSF
from jaxsci.descriptors.acsf_kernel import KernelConfig, acsf_from_slots, validate_params
from jaxsci.descriptors.batching import Batch, bucket_size
from jaxsci.descriptors.cutoff import cosine_cutoff, polynomial_cutoff
from jaxsci.descriptors.pooling import POOL_OPS, pool

__all__ = [
    "ACSF",
    "Batch",
    "KernelConfig",
    "acsf_from_slots",
    "bucket_size",
    "cosine_cutoff",
    "polynomial_cutoff",
    "POOL_OPS",
    "pool",
    "validate_params",
]
