"""jaxsci.parallel."""
