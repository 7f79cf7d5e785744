"""The HF driver: Martens' Hessian-free optimizer and the momentum-like variant."""

from hessfree.hf import schedules
from hessfree.hf.backtrack import Backtracked, cg_backtrack
from hessfree.hf.config import HFConfig
from hessfree.hf.damping import lm_update, reduction_ratio
from hessfree.hf.linesearch import LineSearchResult, armijo
from hessfree.hf.optimizer import HessianFree
from hessfree.hf.precondition import inverse_preconditioner
from hessfree.hf.stats import ACCEPTED, REJECTIONS, StepStats

__all__ = [
    "ACCEPTED",
    "REJECTIONS",
    "Backtracked",
    "HFConfig",
    "HessianFree",
    "LineSearchResult",
    "StepStats",
    "armijo",
    "cg_backtrack",
    "inverse_preconditioner",
    "lm_update",
    "reduction_ratio",
    "schedules",
]
