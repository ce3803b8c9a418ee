"""ACT (Zhao et al. 2023): CVAE transformer that predicts whole action chunks."""

from neuracore.ml.algorithms.act.model import ACT
from neuracore.ml.export.temporal_ensemble import TemporalEnsembler

__all__ = ["ACT", "TemporalEnsembler"]
