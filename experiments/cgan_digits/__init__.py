"""Per-label vs single conditional GANs (W-CGAN, DC-CGAN) on scikit-learn digits."""
