"""Curvature-vector products: GGN, Hessian and empirical Fisher times a vector.

No optimizer logic lives here. See :mod:`hessfree.curvature.operator` for the operators,
:mod:`hessfree.curvature.products` for the per-chunk factories and the ``J v`` backends,
:mod:`hessfree.curvature.accumulate` for the one accumulator of every sum over cases, and
:mod:`hessfree.curvature.spectral` for ``eigsh``, ``trace`` and ``density`` on any operator.
"""

from hessfree.curvature import accumulate, losses
from hessfree.curvature.diagonal import fisher_diagonal
from hessfree.curvature.operator import (
    GGN,
    CurvatureOperator,
    DampedOperator,
    EmpiricalFisher,
    Hessian,
    resolve_backend,
)
from hessfree.curvature.problem import Evaluation, Problem
from hessfree.curvature.spectral import SpectralDensity, TraceEstimate, density, eigsh, trace

__all__ = [
    "CurvatureOperator",
    "DampedOperator",
    "EmpiricalFisher",
    "Evaluation",
    "GGN",
    "Hessian",
    "Problem",
    "SpectralDensity",
    "TraceEstimate",
    "accumulate",
    "density",
    "eigsh",
    "fisher_diagonal",
    "losses",
    "resolve_backend",
    "trace",
]
