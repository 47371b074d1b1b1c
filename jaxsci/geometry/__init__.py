"""jaxsci.geometry."""
