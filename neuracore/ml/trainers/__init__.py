"""The accelerate training loop as plain functions (the only package that imports accelerate)."""
