"""hessfree: Hessian-free optimization and momentum methods in PyTorch.

The public API is re-exported here; see the README for a tour.
"""

from hessfree import cg, models, momentum, vectors
from hessfree.curvature import (
    GGN,
    CurvatureOperator,
    DampedOperator,
    EmpiricalFisher,
    Hessian,
    Problem,
    losses,
)
from hessfree.hf import HessianFree, HFConfig, StepStats
from hessfree.momentum import CM, NAG, SGD, ConstantSchedule, RNNSchedule, SutskeverSchedule

__version__ = "0.1.0"

__all__ = [
    "CM",
    "GGN",
    "NAG",
    "SGD",
    "ConstantSchedule",
    "CurvatureOperator",
    "DampedOperator",
    "EmpiricalFisher",
    "HFConfig",
    "Hessian",
    "HessianFree",
    "Problem",
    "RNNSchedule",
    "StepStats",
    "SutskeverSchedule",
    "__version__",
    "cg",
    "losses",
    "models",
    "momentum",
    "vectors",
]
