"""jaxsci.models."""
