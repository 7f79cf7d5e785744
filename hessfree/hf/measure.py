"""Which batch measures what in one HF step — the measurement policy — and the step's values.

A step is given (or draws, :class:`~hessfree.hf.phases.BatchSource`) one batch per role of
:data:`~hessfree.hf.phases.ROLES`. Its config's switches decide which batch measures each
quantity; :func:`resolve` reads them once per step into a :class:`Measures` record, which the
optimizer follows ([M10 §4]; [HFDemo]; [HF-RNN]; [S13 A.6]):

==============================  =========================================  =====================
measurement                     batch (role)                               switches
==============================  =========================================  =====================
objective and gradient at θ     gradient                                   —
curvature operator              curvature, else the gradient batch         ``curvature_batch``
preconditioner's diagonal       gradient (fused with the gradient pass     ``preconditioner``,
                                where it can) or curvature                 ``precond_batch``
CG-backtracking                 gradient, curvature or backtrack           ``backtrack_batch``,
                                (held out)                                 ``backtracking``
ρ: f(θ + p) − f(θ) over the     heldout when given (its own gradient in    ``heldout_batch``,
model's prediction              the model), else curvature                 ``rho_after_back...``
step-size search                gradient or search (held out)              ``line_search``,
                                                                           ``ls_rule``,
                                                                           ``ls_batch``
a fixed rate's rejection        heldout (``reject_on_heldout``), else the  ``reject_worse``,
                                backtracking batch at rate 1, else         ``learning_rate``
                                curvature
==============================  =========================================  =====================

Roles resolve to batches: without a curvature batch, "curvature" is the gradient batch, so
measurements that name either share their values. :class:`Values` holds the step's objective
values by (role, point) — θ, or ``θ + α·x_i`` for CG iterate ``i`` — so each is evaluated at most
once and every later measurement reads it (the backtracking's value at rate 1 is the line
search's first one when both are on the gradient batch, as in HFDemo).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from torch import Tensor

from hessfree.batches import Chunks
from hessfree.curvature.problem import Evaluation, Problem
from hessfree.errors import InputError
from hessfree.hf.config import HFConfig
from hessfree.hf.phases import ROLES
from hessfree.hf.record import StepRecord
from hessfree.vectors import ParamLayout

__all__ = ["BACKTRACK", "CURVATURE", "GRADIENT", "HELDOUT", "SEARCH", "THETA", "Measures",
           "Values", "resolve"]

GRADIENT, CURVATURE, HELDOUT, BACKTRACK, SEARCH = ROLES
#: the point θ itself; every other point is ``(i, α)``: θ + α·x_i for the CG iterate x_i
THETA = (-1, 0.0)
Point = tuple[int, float]


@dataclass(frozen=True)
class Measures:
    """The batch (role) of each measurement of one step (module docstring).

    Attributes:
        curvature: the curvature operator's: ``"curvature"``, or ``"gradient"`` when the step
            has no curvature batch.
        precondition: the preconditioner's diagonal's (None: no preconditioner).
        fused: the diagonal comes from the gradient pass (HFDemo's ``grad2``).
        backtrack: CG-backtracking's.
        rho: ρ's: ``"heldout"`` or the curvature role.
        rho_backtracked: ρ measures the backtracked step (else the last CG iterate).
        search: the step-size search's (None: a fixed rate).
        search_rule: ``"armijo"`` or ``"first-decrease"`` (None: a fixed rate).
        reject: the role judging a fixed rate (None: no test, or a search decides).
        rate: the step's rate ε (the search's first rate).
    """

    curvature: str
    precondition: str | None
    fused: bool
    backtrack: str
    rho: str
    rho_backtracked: bool
    search: str | None
    search_rule: str | None
    reject: str | None
    rate: float


def resolve(config: HFConfig, given: Collection[str], rate: float = 1.0,
            held_out: bool = True) -> Measures:
    """The measurement policy of a step with ``config``, the roles ``given`` and rate ``rate``.

    ``held_out=False``: the local model alone is wanted (``HessianFree.quadratic``), so the
    held-out batches the config evaluates on need not be given.

    Raises:
        InputError: the config evaluates on a held-out batch the step was not given.
    """
    heldout_bt = config.backtracking and config.backtrack_batch == "heldout"
    heldout_ls = config.line_search and config.ls_batch == "heldout"
    for role, field, needed in ((BACKTRACK, "backtrack_batch", heldout_bt),
                                (SEARCH, "ls_batch", heldout_ls)):
        if needed and held_out and role not in given:
            raise InputError(f"{role}_batch: the config evaluates on a held-out batch "
                             f"({field}='heldout'); pass {role}_batch=<batch>")
    curvature = CURVATURE if CURVATURE in given else GRADIENT
    on_gradient = config.precond_batch == "gradient"
    precondition = None if not config.preconditioner else \
        (GRADIENT if on_gradient else curvature)
    backtrack = BACKTRACK if heldout_bt else \
        (GRADIENT if config.backtrack_batch == "gradient" else curvature)
    reject = None
    if not config.line_search and config.reject_worse:
        reject = HELDOUT if HELDOUT in given and config.reject_on_heldout else \
            (backtrack if rate == 1.0 else curvature)
    return Measures(
        curvature=curvature, precondition=precondition,
        fused=config.preconditioner and on_gradient and curvature == CURVATURE,
        backtrack=backtrack, rho=HELDOUT if HELDOUT in given else curvature,
        rho_backtracked=config.rho_after_backtracking,
        search=(SEARCH if heldout_ls else GRADIENT) if config.line_search else None,
        search_rule=config.ls_rule if config.line_search else None, reject=reject, rate=rate)


class Values:
    """The objective values of one step by (role, point), each evaluated at most once.

    Args:
        objective: the step's problem.
        theta: the parameters θ (detached).
        layout: their flat layout.
        batches: the step's checked batches by role.
        record: the step's record (each evaluation counts a forward pass over its cases).
    """

    def __init__(self, objective: Problem, theta: dict[str, Tensor], layout: ParamLayout,
                 batches: Mapping[str, Chunks], record: StepRecord) -> None:
        self.objective, self.theta, self.layout = objective, theta, layout
        self.batches, self.record = batches, record
        self._values: dict[tuple[str, Point], float] = {}

    def known(self, role: str, point: Point) -> float | None:
        """The value on ``role``'s batch at ``point`` if it was measured, else None."""
        return self._values.get((role, point))

    def put(self, role: str, point: Point, value: float) -> None:
        """Record a value measured elsewhere (a gradient pass, an operator's set-up)."""
        self._values[(role, point)] = value

    def evaluate(self, role: str, step: Tensor, alpha: float = 1.0) -> float:
        """The objective on ``role``'s batch at ``θ + α·step`` (one forward pass, not kept).

        The batch's targets were checked by the step's first pass over it.
        """
        parts = self.layout.split(step)
        at = {n: t.add(parts[n], alpha=alpha) for n, t in self.theta.items()}
        return self._count(self.objective.evaluate(at, self.batches[role], check=False))

    def at(self, role: str, point: Point, step: Tensor) -> float:
        """The value at ``point`` (``step`` is its iterate), evaluated unless known."""
        value = self.known(role, point)
        if value is None:
            value = self.evaluate(role, step, point[1])
            self.put(role, point, value)
        return value

    def at_theta(self, role: str, grad: bool = False) -> Evaluation:
        """The objective at θ on a held-out batch (its first pass: targets checked)."""
        e = self.objective.evaluate(self.theta, self.batches[role], grad=grad)
        if grad:
            self.record.gradient(e.cases)
        else:
            self._count(e)
        self.put(role, THETA, e.value)
        return e

    def along(self, role: str, iteration: int, step: Tensor) -> Callable[[float], float]:
        """``α -> f(θ + α·step)`` on ``role``'s batch, for a search (known values reused)."""
        return lambda alpha: self.at(role, (iteration, alpha), step)

    def _count(self, e: Evaluation) -> float:
        self.record.forward(e.cases)
        return e.value


def nan_if_none(value: float | None) -> float:
    """``value``, or NaN when it is unknown."""
    return math.nan if value is None else value
