"""Curvature-vector products: GGN, Hessian and empirical Fisher times a vector.

No optimizer logic lives here. See :mod:`hessfree.curvature.operator` for the operators,
:mod:`hessfree.curvature.products` for the per-chunk factories and the ``J v`` backends,
:mod:`hessfree.curvature.accumulate` for the one accumulator of every sum over cases,
:mod:`hessfree.curvature.spectral` for ``eigsh``, ``trace`` and ``density`` on any operator,
:mod:`hessfree.curvature.solves` for damped solves (many right-hand sides and dampings),
:mod:`hessfree.curvature.diagonals` for diagonals (exact, Monte-Carlo, Gauss-Newton-Bartlett,
Hutchinson) with standard errors, :mod:`hessfree.curvature.blocks` for blocks chosen by
module name or pattern (``param_filter``) and :mod:`hessfree.curvature.report` for per-module
reports, :mod:`hessfree.curvature.sequence_loss` for the token cross-entropy of language models
and :mod:`hessfree.curvature.attention` for how attention is made differentiable.
"""

from hessfree.curvature import accumulate, losses
from hessfree.curvature.attention import differentiable_attention
from hessfree.curvature.blocks import module_groups, restrict, select_params
from hessfree.curvature.diagonal import fisher_diagonal
from hessfree.curvature.diagonals import DiagonalEstimate, diag
from hessfree.curvature.jacobians import jacobian
from hessfree.curvature.operator import (
    GGN,
    CurvatureOperator,
    DampedOperator,
    EmpiricalFisher,
    Hessian,
    resolve_backend,
)
from hessfree.curvature.problem import Evaluation, Problem
from hessfree.curvature.report import BlockStats, CurvatureReport, report
from hessfree.curvature.sequence_loss import TokenCrossEntropy
from hessfree.curvature.solves import LowRankInverse, SolveResult, lowrank_inverse, solve
from hessfree.curvature.spectral import SpectralDensity, TraceEstimate, density, eigsh, trace

__all__ = [
    "BlockStats",
    "CurvatureOperator",
    "CurvatureReport",
    "DampedOperator",
    "DiagonalEstimate",
    "EmpiricalFisher",
    "Evaluation",
    "GGN",
    "Hessian",
    "LowRankInverse",
    "Problem",
    "SolveResult",
    "SpectralDensity",
    "TokenCrossEntropy",
    "TraceEstimate",
    "accumulate",
    "density",
    "diag",
    "differentiable_attention",
    "eigsh",
    "fisher_diagonal",
    "jacobian",
    "losses",
    "lowrank_inverse",
    "module_groups",
    "report",
    "resolve_backend",
    "restrict",
    "select_params",
    "solve",
    "trace",
]
