"""Experiments: one folder per study (config + run script writing a run folder)."""
