"""jaxsci.reconstruct: atomic coordinates from a target ACSF fingerprint."""

from jaxsci.reconstruct.program import default_optimizer
from jaxsci.reconstruct.solver import ReconstructResult, reconstruct

__all__ = ["ReconstructResult", "default_optimizer", "reconstruct"]
