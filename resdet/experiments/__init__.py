"""Experiment configs and the functions that run them."""
