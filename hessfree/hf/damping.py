"""Levenberg-Marquardt adjustment of the Tikhonov damping λ ([M10 §4.1]).

[HFDemo]: ``if rho < 0.25 || isnan(rho): lambda *= boost; elseif rho > 0.75:
lambda *= drop`` with ``drop = 2/3``, ``boost = 3/2``; [HF-RNN]: "copied verbatim from the
original HF paper". Structural damping keeps μ fixed relative to λ, so both move together.
"""

from __future__ import annotations

import math

from hessfree.hf.config import HFConfig

__all__ = ["lm_update", "reduction_ratio"]


def lm_update(lam: float, rho: float, config: HFConfig) -> float:
    """λ after a step with reduction ratio ``rho`` (NaN counts as a bad step), clipped to bounds."""
    if math.isnan(rho) or rho < config.lm_lower:
        lam *= config.lm_boost
    elif rho > config.lm_upper:
        lam *= config.lm_drop
    return min(max(lam, config.lambda_min), config.lambda_max)


def reduction_ratio(f_new: float, f_old: float, model_change: float) -> float:
    """ρ = (f(θ+p) − f(θ)) / (q(p) − q(0)); −∞ if the objective went up (HFDemo), NaN if undefined.

    ``model_change`` is q(p) − q(0), negative for a useful step.
    """
    if not (math.isfinite(f_new) and math.isfinite(f_old) and math.isfinite(model_change)):
        return math.nan
    if f_new > f_old:
        return -math.inf
    if model_change >= 0:
        return math.nan if f_new == f_old else math.inf
    return (f_new - f_old) / model_change
