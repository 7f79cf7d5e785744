"""The HF driver: Martens' Hessian-free optimizer, its phases and the momentum-like variant."""

from hessfree.hf.backtrack import Backtracked, cg_backtrack
from hessfree.hf.config import HFConfig
from hessfree.hf.damping import lm_update, reduction_ratio
from hessfree.hf.measure import Measures
from hessfree.hf.optimizer import HessianFree
from hessfree.hf.phases import BatchSpec, Phase, PhaseSchedule
from hessfree.hf.precondition import inverse_preconditioner
from hessfree.hf.stats import ACCEPTED, REJECTIONS, StepStats
from hessfree.hf.stepsize import Judged, LineSearchResult, StepSize, armijo, fixed_rate, line_search

__all__ = [
    "ACCEPTED",
    "REJECTIONS",
    "Backtracked",
    "BatchSpec",
    "HFConfig",
    "HessianFree",
    "Judged",
    "LineSearchResult",
    "Measures",
    "Phase",
    "PhaseSchedule",
    "StepSize",
    "StepStats",
    "armijo",
    "cg_backtrack",
    "fixed_rate",
    "inverse_preconditioner",
    "line_search",
    "lm_update",
    "reduction_ratio",
]
