"""jaxsci.descriptors."""
