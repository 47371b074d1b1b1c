"""Order-disorder transitions of MoNbTaW: swap Monte Carlo, heat capacity, VAE order parameter."""
