"""Experiment tracking: training history, result packages and metrics, saving."""
