"""jaxsci.metrics."""
