"""Armijo backtracking line search ([M10 §4.6]; [HFDemo] "bog-standard back-tracking").

[HFDemo]: ``rate = 1; c = 10^(-2)``; accept when ``f(θ + rate·p) <= f(θ) + c·rate·gᵀp``, else
``rate = 0.8·rate``; ``while j < 60`` tests the rates 0.8^0 ... 0.8^59 and the 60th reduction
rejects the step (rate 0). Evaluated on the gradient batch (the full training set in HFDemo).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LineSearchResult", "armijo"]


@dataclass(frozen=True)
class LineSearchResult:
    """Step size (0 if none was acceptable), the objective there, evaluations used."""

    alpha: float
    value: float
    evaluations: int
    accepted: bool


def armijo(objective: Callable[[float], float], f0: float, slope: float, c: float = 1e-2,
           shrink: float = 0.8, max_tries: int = 60, alpha0: float = 1.0,
           first_value: float | None = None) -> LineSearchResult:
    """Largest ``alpha0·shrink^k`` (k < ``max_tries``) with sufficient decrease.

    Args:
        objective: ``alpha -> f(θ + alpha·p)``.
        f0: ``f(θ)``.
        slope: ``gᵀp`` (negative for a descent direction).
        c: sufficient-decrease constant.
        shrink: reduction factor.
        max_tries: rates tested (HFDemo: 60, rates 0.8^0 ... 0.8^59).
        alpha0: first step size.
        first_value: ``f(θ + alpha0·p)`` if already known (saves one evaluation).
    """
    alpha = alpha0
    evaluations = 0
    for k in range(max_tries):
        if k == 0 and first_value is not None:
            value = first_value
        else:
            value = objective(alpha)
            evaluations += 1
        if math.isfinite(value) and value <= f0 + c * alpha * slope:
            return LineSearchResult(alpha, value, evaluations, True)
        alpha *= shrink
    return LineSearchResult(0.0, f0, evaluations, False)
