"""Neuracore: open-source training of robot-learning policies."""

__version__ = "0.1.0"
