"""pi0.5: pi0's PaliGemma + action expert with adaRMS time conditioning and the state in the prompt."""

from neuracore.ml.algorithms.pi05.model import Pi05

__all__ = ["Pi05"]
