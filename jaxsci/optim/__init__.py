"""jaxsci.optim."""
