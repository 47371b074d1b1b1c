"""Data-parallel MLP on scikit-learn digits: 1/2 processes x 1/4 devices, same loss curve."""
