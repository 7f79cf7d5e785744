"""hessfree: Hessian-free optimization and momentum methods in PyTorch.

The public API is re-exported here; see the README for a tour.
"""

from hessfree import vectors
from hessfree.curvature import (
    GGN,
    CurvatureOperator,
    DampedOperator,
    EmpiricalFisher,
    Hessian,
    Problem,
    losses,
)

__version__ = "0.1.0"

__all__ = [
    "GGN",
    "CurvatureOperator",
    "DampedOperator",
    "EmpiricalFisher",
    "Hessian",
    "Problem",
    "__version__",
    "losses",
    "vectors",
]
