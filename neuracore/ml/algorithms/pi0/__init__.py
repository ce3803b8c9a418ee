"""pi0: PaliGemma + action expert vision-language-action policy trained by flow matching."""

from neuracore.ml.algorithms.pi0.model import Pi0

__all__ = ["Pi0"]
