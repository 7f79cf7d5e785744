"""hessfree: Hessian-free optimization and momentum methods in PyTorch.

The public API is re-exported here; see the README for a tour.
"""

from hessfree import cg, integrations, models, momentum, quadratic, schedules, vectors
from hessfree._version import __version__
from hessfree.curvature import (
    GGN,
    CurvatureOperator,
    DampedOperator,
    EmpiricalFisher,
    Hessian,
    Problem,
    TokenCrossEntropy,
    losses,
)
from hessfree.hf import BatchSpec, HessianFree, HFConfig, Phase, PhaseSchedule, StepStats
from hessfree.momentum import CM, NAG, SGD
from hessfree.quadratic import Quadratic
from hessfree.schedules import RNNSchedule, SutskeverSchedule

_LAZY = ("data", "runs")  # imported on first use (``hessfree.data.curves(...)``)


def __getattr__(name: str) -> object:
    """Import the ``data`` and ``runs`` subpackages on first attribute access."""
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"hessfree.{name}")
    raise AttributeError(f"module 'hessfree' has no attribute {name!r}")

__all__ = [
    "CM",
    "BatchSpec",
    "GGN",
    "NAG",
    "Phase",
    "PhaseSchedule",
    "SGD",
    "CurvatureOperator",
    "DampedOperator",
    "EmpiricalFisher",
    "HFConfig",
    "Hessian",
    "HessianFree",
    "Problem",
    "Quadratic",
    "RNNSchedule",
    "StepStats",
    "SutskeverSchedule",
    "TokenCrossEntropy",
    "__version__",
    "cg",
    "data",
    "integrations",
    "losses",
    "models",
    "momentum",
    "quadratic",
    "schedules",
    "vectors",
]
