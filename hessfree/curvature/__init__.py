"""Curvature-vector products: GGN, Hessian and empirical Fisher times a vector.

No optimizer logic lives here. See :mod:`hessfree.curvature.operator` for the operators,
:mod:`hessfree.curvature.products` for the per-chunk factories and the ``J v`` backends,
:mod:`hessfree.curvature.spectral` for ``eigsh``, ``trace`` and ``density`` on any operator,
:mod:`hessfree.curvature.sequence_loss` for the token cross-entropy of language models and
:mod:`hessfree.curvature.attention` for how attention is made differentiable.
"""

from hessfree.curvature import losses
from hessfree.curvature.attention import differentiable_attention
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
from hessfree.curvature.sequence_loss import TokenCrossEntropy
from hessfree.curvature.spectral import SpectralDensity, TraceEstimate, density, eigsh, trace

__all__ = [
    "CurvatureOperator",
    "DampedOperator",
    "EmpiricalFisher",
    "GGN",
    "Hessian",
    "Problem",
    "SpectralDensity",
    "TokenCrossEntropy",
    "TraceEstimate",
    "density",
    "differentiable_attention",
    "eigsh",
    "fisher_diagonal",
    "losses",
    "resolve_backend",
    "trace",
]
