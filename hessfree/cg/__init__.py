"""The linear solver of HF: preconditioned CG with Martens' stopping rule and iterate grid.

``hessfree.cg.solve(A, b, x0=None, M=None, stop=None, max_iters=250, store=None,
callback=None) -> CGResult`` (Martens 2010 §4, his ``conjgrad_1.m``). This package knows nothing
about networks: ``A`` is anything with ``A @ v`` on flat 1-D tensors.

Example:
    >>> import torch
    >>> from hessfree import cg
    >>> A = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    >>> b = torch.ones(3, dtype=torch.float64)
    >>> res = cg.solve(A, b, stop=cg.ResidualTolerance(1e-12))
    >>> res.reason, res.iters, [round(v, 12) for v in res.x.tolist()]
    ('residual tolerance', 3, [1.0, 0.5, 0.25])
"""

from hessfree.cg.operators import (
    DiagonalPreconditioner,
    FunctionOperator,
    FunctionPreconditioner,
    LinearOperator,
    as_operator,
    as_preconditioner,
    quadratic_value,
)
from hessfree.cg.solver import CGResult, solve
from hessfree.cg.stopping import (
    CONVERGED,
    DEADLINE,
    MARTENS_PROGRESS,
    MAX_ITERATIONS,
    NEGATIVE_CURVATURE,
    NON_FINITE,
    REASONS,
    RESIDUAL_TOLERANCE,
    AnyOf,
    CGState,
    Deadline,
    MartensProgress,
    MaxIters,
    ResidualTolerance,
    StopRule,
    martens_gap,
    martens_progress,
)
from hessfree.cg.storage import Every, Geometric, Never, StorePolicy

__all__ = [
    "CGResult", "DiagonalPreconditioner", "Every", "FunctionOperator", "FunctionPreconditioner",
    "Geometric", "LinearOperator", "Never", "StorePolicy", "as_operator", "as_preconditioner",
    "quadratic_value", "solve",
    # the stopping rules and reasons (hessfree.cg.stopping)
    "CONVERGED", "DEADLINE", "MARTENS_PROGRESS", "MAX_ITERATIONS", "NEGATIVE_CURVATURE",
    "NON_FINITE", "REASONS", "RESIDUAL_TOLERANCE", "AnyOf", "CGState", "Deadline",
    "MartensProgress", "MaxIters", "ResidualTolerance", "StopRule", "martens_gap",
    "martens_progress",
]
