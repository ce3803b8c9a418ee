"""Built-in algorithms; importing this package registers them."""

from neuracore.ml.algorithms.cnnmlp import CNNMLP

__all__ = ["CNNMLP"]
