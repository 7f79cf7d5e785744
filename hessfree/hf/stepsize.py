"""How far to move along HF's chosen step: one function per policy.

* :func:`line_search`: Martens' Armijo backtracking on the gradient batch ([M10 §4.6]; HFDemo
  "bog-standard back-tracking", :func:`armijo`) from rate 1, or from the
  scheduled rate ε in the momentum-like HF's preset ([S13 A.6]; see
  :meth:`hessfree.hf.config.HFConfig.momentum_like`); the step is rejected when no rate within
  ``ls_max_tries`` reductions gives sufficient decrease.
* :func:`first_decrease`: Sutskever's search ([HF-RNN] ``HF.line_search``): the rates
  ``0.8^i`` for ``i < 50`` in turn, the first that lowers the objective at all is taken; when
  none does, the rate is 0 and the step is rejected;
* :func:`fixed_rate`: a given learning rate ε with no search, optionally rejecting an update
  that raises the objective (``reject_worse``) on the batch the measurement policy names
  (:mod:`hessfree.hf.measure`), given as a :class:`Judged` record.

Both return a :class:`StepSize`: the rate, the gradient-batch objective after the step when it was
evaluated (NaN otherwise), how many objective evaluations the policy spent, and why the step is
rejected (None when it is taken). :func:`armijo` is the Armijo search itself, on any objective
of the rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from hessfree.hf.config import HFConfig

__all__ = ["Judged", "LineSearchResult", "StepSize", "armijo", "first_decrease", "fixed_rate",
           "line_search", "LINE_SEARCH_FAILED", "LOSS_INCREASED"]

LINE_SEARCH_FAILED = "line search failed"
LOSS_INCREASED = "loss increased"


@dataclass(frozen=True)
class Judged:
    """The objective before and after an update on the batch that judges it.

    ``on_gradient``: that batch is the gradient batch (so ``after`` is the step's
    ``loss_after``).
    """

    before: float
    after: float
    on_gradient: bool = False


@dataclass(frozen=True)
class StepSize:
    """The outcome of a step-size policy (see the module docstring)."""

    alpha: float
    value: float
    evaluations: int
    rejection: str | None


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

    Armijo backtracking ([M10 §4.6]; [HFDemo] "bog-standard back-tracking"): ``rate = 1;
    c = 10^(-2)``; accept when ``f(θ + rate·p) <= f(θ) + c·rate·gᵀp``, else ``rate = 0.8·rate``;
    ``while j < 60`` tests the rates 0.8^0 ... 0.8^59 and the 60th reduction rejects the step
    (rate 0).

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


def line_search(objective: Callable[[float], float], f0: float, slope: float,
                first_value: float | None, config: HFConfig, alpha0: float = 1.0) -> StepSize:
    """Armijo backtracking from rate ``alpha0`` (``first_value``: the objective there if known).

    Martens' HF starts at 1; the momentum-like HF starts at its scheduled rate ε ([S13 A.6]).
    """
    ls = armijo(objective, f0, slope, config.ls_c, config.ls_shrink, config.ls_max_tries,
                alpha0=alpha0, first_value=first_value)
    if ls.accepted:
        return StepSize(ls.alpha, ls.value, ls.evaluations, None)
    return StepSize(0.0, f0, ls.evaluations, LINE_SEARCH_FAILED)


def first_decrease(objective: Callable[[float], float], f0: float, config: HFConfig,
                   alpha0: float = 1.0) -> StepSize:
    """The first of ``alpha0·ls_shrink^i``, ``i < ls_max_tries``, with ``objective < f0``.

    [HF-RNN]: ``distances = [.8**i for i in range(50)] + [0]``; the first distance whose
    reduction ``LS_loss(step·v) − LS_loss(0)`` is negative is taken, else 0 (no step).
    ``objective`` maps a rate to the objective there; ``f0`` is the objective at rate 0 on the
    same batch. A non-finite value never counts as a decrease.
    """
    alpha = alpha0
    for i in range(config.ls_max_tries):
        value = objective(alpha)
        if math.isfinite(value) and value < f0:
            return StepSize(alpha, value, i + 1, None)
        alpha *= config.ls_shrink
    return StepSize(0.0, f0, config.ls_max_tries, LINE_SEARCH_FAILED)


def fixed_rate(alpha: float, f0: float, known: float, judged: Judged | None = None
               ) -> StepSize:
    """Take rate ``alpha``; when ``judged``, refuse an update that raised the objective there.

    Args:
        alpha: the learning rate.
        f0: the gradient-batch objective before the update (reported on rejection).
        known: the gradient-batch objective after the update if it is already known without a
            new evaluation (CG-backtracking on the gradient batch, rate 1), else NaN.
        judged: the objective before and after the update on the batch that judges it
            (``reject_worse``; the measurement policy says which), or None: no test.
    """
    if judged is None:
        return StepSize(alpha, known, 0, None)
    if not (math.isfinite(judged.after) and judged.after <= judged.before):
        return StepSize(0.0, f0, 0, LOSS_INCREASED)
    return StepSize(alpha, judged.after if judged.on_gradient else math.nan, 0, None)
