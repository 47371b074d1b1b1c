"""Reconstruct Pt clusters from their ACSF fingerprints (jaxsci.reconstruct)."""
