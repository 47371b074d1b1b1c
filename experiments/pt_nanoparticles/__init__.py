"""Generate Pt nanoparticles with a conditional VAE in ACSF space (``make demo``)."""
