"""ACSF fingerprints of Pt nanoparticles built with ase.cluster (a small demo)."""
