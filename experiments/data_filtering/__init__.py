"""Data filtering for large-batch training on digits (Gahlot, Yin & Shankar, arXiv 2012.09272)."""
