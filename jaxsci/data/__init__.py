"""jaxsci.data."""
