"""jaxsci.reconstruct."""
