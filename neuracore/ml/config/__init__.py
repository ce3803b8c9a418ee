"""Hydra configuration files and their start-up validation."""
