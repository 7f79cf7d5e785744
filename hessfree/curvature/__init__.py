"""Curvature-vector products: GGN, Hessian and empirical Fisher times a vector.

No optimizer logic lives here. See :mod:`hessfree.curvature.operator` for the operators and
:mod:`hessfree.curvature.products` for the per-chunk factories and the two ``J v`` backends.
"""

from hessfree.curvature import losses
from hessfree.curvature.diagonal import fisher_diagonal
from hessfree.curvature.operator import (
    GGN,
    CurvatureOperator,
    DampedOperator,
    EmpiricalFisher,
    Hessian,
    resolve_backend,
)
from hessfree.curvature.problem import Problem

__all__ = [
    "CurvatureOperator",
    "DampedOperator",
    "EmpiricalFisher",
    "GGN",
    "Hessian",
    "Problem",
    "fisher_diagonal",
    "losses",
    "resolve_backend",
]
