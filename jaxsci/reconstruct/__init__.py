"""jaxsci.reconstruct: atomic coordinates from a target ACSF fingerprint."""

from jaxsci.reconstruct.solver import ReconstructResult, default_optimizer, reconstruct

__all__ = ["ReconstructResult", "default_optimizer", "reconstruct"]
