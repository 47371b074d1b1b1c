"""jaxsci.train."""
