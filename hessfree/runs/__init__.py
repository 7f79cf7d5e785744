"""Experiment presets, the training loop, HDF5 results, the command line and plots."""
