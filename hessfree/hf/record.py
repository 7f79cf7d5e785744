"""The record one HF step fills in as it goes, frozen into :class:`~hessfree.hf.stats.StepStats`.

Counts of gradients, objective evaluations (forwards) and curvature products with the cases each
covered — the units of every gradient-equivalents column — and the wall time by part. Products
reach it through :class:`hessfree.linops.Counted` (:meth:`StepRecord.counted`), the one
counting wrapper.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import Any

from hessfree.hf.stats import ACCEPTED, StepStats
from hessfree.linops import Counted, FlatOperator

__all__ = ["StepRecord", "Timer"]


@dataclass
class StepRecord:
    """What one step has found so far; frozen into :class:`StepStats` at the end.

    Defaults are the values of a step that stopped before reaching a field.
    """

    step: int
    phase: int
    lambda_before: float
    cg_decay: float
    loss_before: float = math.nan
    loss_after: float = math.nan
    curv_loss_before: float = math.nan
    curv_loss_after: float = math.nan
    rho: float = math.nan
    model_change: float = math.nan
    cg_iters: int = 0
    cg_reason: str = ""
    backtrack_iter: int = -1
    backtrack_evals: int = 0
    step_size: float = 0.0
    ls_evals: int = 0
    grad_norm: float = math.nan
    step_norm: float = 0.0
    heldout_loss_before: float = math.nan
    heldout_loss_after: float = math.nan
    heldout_model_change: float = math.nan
    gradients: int = 0
    forwards: int = 0
    products: int = 0
    grad_cases: int = 0
    forward_cases: int = 0
    product_cases: int = 0
    seconds_gradient: float = 0.0
    seconds_precond: float = 0.0
    seconds_setup: float = 0.0
    seconds_cg: float = 0.0
    seconds_products: float = 0.0
    seconds_backtrack: float = 0.0
    seconds_stepsize: float = 0.0

    def gradient(self, cases: int) -> None:
        """Count a gradient evaluation (or its equivalent) over ``cases`` cases."""
        self.gradients += 1
        self.grad_cases += cases

    def forward(self, cases: int) -> None:
        """Count an objective evaluation over ``cases`` cases."""
        self.forwards += 1
        self.forward_cases += cases

    def product(self, cases: int, seconds: float) -> None:
        """Count a curvature product over ``cases`` cases and its time."""
        self.products += 1
        self.product_cases += cases
        self.seconds_products += seconds

    def counted(self, op: FlatOperator, cases: int) -> Counted:
        """``op`` with each of its products counted here (over ``cases`` cases) and timed."""
        return Counted(op, lambda columns, seconds: self.product(cases, seconds))

    def freeze(self, reason: str, lambda_after: float, seconds: float) -> StepStats:
        """The :class:`StepStats` of the step (a rejected step has step size and norm 0)."""
        accepted = reason == ACCEPTED
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if not accepted:
            values["step_size"] = values["step_norm"] = 0.0
        return StepStats(accepted=accepted, reason=reason, lambda_after=lambda_after,
                         seconds=seconds, **values)


class Timer:
    """``with Timer(record, "seconds_cg"):`` adds the block's wall time to that field."""

    def __init__(self, record: StepRecord, name: str) -> None:
        self.record, self.name = record, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        setattr(self.record, self.name,
                getattr(self.record, self.name) + time.perf_counter() - self.t0)
