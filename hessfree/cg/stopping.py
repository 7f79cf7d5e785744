"""Stopping rules for CG, and the reasons CG stops, as values.

A stopping rule is any callable ``rule(state) -> str | None``: it looks at a :class:`CGState`
(the iteration index ``i``, the quadratic values φ_0..φ_i, lazily the residual norm) and returns
a reason string when CG should stop after iteration ``i``, else ``None``. Rules are small frozen
dataclasses; combine them with :class:`AnyOf` or by passing a list to :func:`hessfree.cg.solve`.

Iteration indexing: φ_0 is the value at the start point x_0; iteration ``i`` (``i >= 1``) spends
one product A p_{i-1} and produces x_i and φ_i. Rules are asked at ``i = 0, 1, 2, ...``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, Union

from hessfree import _checks
from hessfree.errors import InputError, InputTypeError

__all__ = [
    "CONVERGED",
    "DEADLINE",
    "MARTENS_PROGRESS",
    "MAX_ITERATIONS",
    "NEGATIVE_CURVATURE",
    "NON_FINITE",
    "REASONS",
    "RESIDUAL_TOLERANCE",
    "AnyOf",
    "CGState",
    "Deadline",
    "MartensProgress",
    "MaxIters",
    "ResidualTolerance",
    "StopRule",
    "as_stop_rule",
    "capped",
    "martens_gap",
    "martens_progress",
]

#: Martens' relative-progress rule fired (:class:`MartensProgress`).
MARTENS_PROGRESS = "martens progress"
#: ‖r‖ <= max(rtol‖b‖, atol) (:class:`ResidualTolerance`).
RESIDUAL_TOLERANCE = "residual tolerance"
#: The iteration cap was reached (``max_iters`` of ``solve``, or :class:`MaxIters`).
MAX_ITERATIONS = "max iterations"
#: pᵀAp <= 0: the next direction has non-positive curvature (``conjgrad_1.m``: "Bailing...").
NEGATIVE_CURVATURE = "negative curvature"
#: A product, α, β, rᵀz or φ was NaN or infinite; the last finite iterate is returned.
NON_FINITE = "non-finite"
#: rᵀz == 0 exactly (the residual is exactly zero for a positive preconditioner).
CONVERGED = "converged"
#: The caller's time was up (:class:`Deadline`: a wall-clock budget).
DEADLINE = "deadline"
#: Every reason :func:`hessfree.cg.solve` can report.
REASONS = (
    MARTENS_PROGRESS,
    RESIDUAL_TOLERANCE,
    MAX_ITERATIONS,
    NEGATIVE_CURVATURE,
    NON_FINITE,
    CONVERGED,
    DEADLINE,
)


class CGState:
    """What a stopping rule sees after iteration ``i``.

    Args:
        i: the iteration just completed (0 = the start point).
        phi: φ_0..φ_i as Python floats (``phi[j]`` is the value at x_j).
        residual_norm: ‖r_i‖, or a zero-argument callable computing it on first use (a device
            reduction and a host sync, so rules that do not need it never pay for it).
        b_norm: ‖b‖, or a callable computing it on first use.
    """

    __slots__ = ("i", "phi", "_residual_norm", "_b_norm")

    def __init__(
        self,
        i: int,
        phi: Sequence[float],
        residual_norm: float | Callable[[], float] | None = None,
        b_norm: float | Callable[[], float] | None = None,
    ) -> None:
        """Hold the state; norms may be callables evaluated on first use."""
        self.i = i
        self.phi = phi
        self._residual_norm = residual_norm
        self._b_norm = b_norm

    @staticmethod
    def _resolve(value: float | Callable[[], float] | None, name: str) -> float:
        if value is None:
            raise InputError(f"CGState.{name}: not available in this state")
        return float(value() if callable(value) else value)

    @property
    def residual_norm(self) -> float:
        """‖r_i‖ (Euclidean norm of the residual at x_i), computed once on first use."""
        self._residual_norm = self._resolve(self._residual_norm, "residual_norm")
        return self._residual_norm

    @property
    def b_norm(self) -> float:
        """‖b‖, computed once on first use."""
        self._b_norm = self._resolve(self._b_norm, "b_norm")
        return self._b_norm


class StopRule(Protocol):
    """A stopping rule: returns a reason string to stop after iteration ``state.i``, else None."""

    def __call__(self, state: CGState) -> str | None:  # pragma: no cover - protocol
        """Decide whether to stop after iteration ``state.i``."""
        ...


def martens_gap(i: int, min_gap: int = 10, gap_ratio: float = 0.1) -> int:
    """The look-back k = max(⌈gap_ratio·i⌉, min_gap) of Martens' rule.

    ``conjgrad_1.m``: ``testgap = max(ceil(i * gapratio), mingap)`` (same double arithmetic).
    """
    return max(math.ceil(i * gap_ratio), min_gap)


def martens_progress(
    phi: Sequence[float], i: int, eps: float = 5e-4, min_gap: int = 10, gap_ratio: float = 0.1
) -> bool:
    """Martens' relative-progress test at iteration ``i`` (Martens 2010 §4.4, ``conjgrad_1.m``).

    Stop when ``i > k``, ``φ_{i-k} < 0`` and ``(φ_i - φ_{i-k}) / φ_i < k·eps`` with
    ``k = max(⌈gap_ratio·i⌉, min_gap)``. The sign test is on φ_{i-k} (``prevval < 0`` in
    ``conjgrad_1.m``) as in Martens' code; Sutskever's ``progress_heuristic`` tests φ_i < 0.
    While ``k·eps < 1`` the two agree: with φ_{i-k} < 0 <= φ_i or φ_i < 0 <= φ_{i-k} the ratio is
    >= 1 (or undefined at φ_i = 0, which never stops). Martens' ``i >= miniters`` (1) always holds.

    Args:
        phi: φ_0..φ_i at least (``phi[j]`` is the quadratic value at x_j).
        i: the iteration just completed.
        eps: tolerance per iteration of look-back (``tolerance = 5e-4``).
        min_gap: smallest look-back (``mingap = 10``).
        gap_ratio: look-back as a fraction of ``i`` (``gapratio = 0.1``).

    Returns:
        True when CG should stop after iteration ``i``.
    """
    k = martens_gap(i, min_gap, gap_ratio)
    if i <= k:
        return False
    now, before = phi[i], phi[i - k]
    if not before < 0 or now == 0:
        return False
    return (now - before) / now < k * eps


@dataclass(frozen=True)
class MartensProgress:
    """Martens' relative-progress stopping rule (reason ``"martens progress"``).

    Defaults are Martens' (``conjgrad_1.m``: ``tolerance = 5e-4; gapratio = 0.1; mingap = 10``);
    see :func:`martens_progress` for the exact test.

    Args:
        eps: tolerance per iteration of look-back.
        min_gap: smallest look-back k.
        gap_ratio: look-back as a fraction of the iteration index.
    """

    eps: float = 5e-4
    min_gap: int = 10
    gap_ratio: float = 0.1

    def __post_init__(self) -> None:
        """Check the constants."""
        if not (isinstance(self.eps, (int, float)) and self.eps > 0):
            raise InputError(f"MartensProgress.eps: expected a positive number, got {self.eps!r}")
        _checks.integer(self.min_gap, "MartensProgress.min_gap", minimum=1)
        if not (isinstance(self.gap_ratio, (int, float)) and self.gap_ratio >= 0):
            raise InputError(
                f"MartensProgress.gap_ratio: expected a number >= 0, got {self.gap_ratio!r}"
            )

    def __call__(self, state: CGState) -> str | None:
        """Return ``"martens progress"`` when the test holds at ``state.i``."""
        if martens_progress(state.phi, state.i, self.eps, self.min_gap, self.gap_ratio):
            return MARTENS_PROGRESS
        return None


@dataclass(frozen=True)
class ResidualTolerance:
    """Stop when ‖r_i‖ <= max(rtol·‖b‖, atol) (reason ``"residual tolerance"``).

    The usual scipy/ltatzel residual test (``tol``, ``atol``). ``r`` is CG's recursively updated
    residual; it can drift from b - A x_i by rounding on ill-conditioned systems.

    Args:
        rtol: tolerance relative to ‖b‖.
        atol: absolute tolerance.
    """

    rtol: float = 1e-5
    atol: float = 0.0

    def __post_init__(self) -> None:
        """Check the tolerances."""
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise InputError(
                    f"ResidualTolerance.{name}: expected a number >= 0, got {value!r}"
                )

    def __call__(self, state: CGState) -> str | None:
        """Return ``"residual tolerance"`` when the residual is small enough."""
        if state.residual_norm <= max(self.rtol * state.b_norm, self.atol):
            return RESIDUAL_TOLERANCE
        return None


@dataclass(frozen=True)
class MaxIters:
    """Stop once ``n`` iterations are done (reason ``"max iterations"``).

    Args:
        n: the number of iterations (``conjgrad_1.m``: ``maxiters = 250``).
    """

    n: int = 250

    def __post_init__(self) -> None:
        """Check ``n``."""
        _checks.integer(self.n, "MaxIters.n", minimum=0)

    def __call__(self, state: CGState) -> str | None:
        """Return ``"max iterations"`` when ``state.i >= n``."""
        return MAX_ITERATIONS if state.i >= self.n else None


@dataclass(frozen=True)
class Deadline:
    """Stop once the clock passes ``at`` (reason ``"deadline"``), after at least one iteration.

    For callers with a wall-clock budget (``hessfree train --seconds``): CG's iterate when time
    is up is as valid a CG iterate as any other, only a shorter one.

    Args:
        at: a :func:`time.perf_counter` value.
    """

    at: float

    def __call__(self, state: CGState) -> str | None:
        """Return ``"deadline"`` when ``state.i >= 1`` and the time is past ``at``."""
        return DEADLINE if state.i >= 1 and time.perf_counter() >= self.at else None


class AnyOf:
    """Stop when any rule says so; the first rule (in order) that fires gives the reason.

    Args:
        *rules: stopping rules.
    """

    __slots__ = ("rules",)

    def __init__(self, *rules: StopRule) -> None:
        """Check that every rule is callable."""
        for j, rule in enumerate(rules):
            if not callable(rule):
                raise InputTypeError(
                    f"stop[{j}]: expected a stopping rule (callable state -> reason or None), "
                    f"got {type(rule).__name__}"
                )
        self.rules = tuple(rules)

    def __call__(self, state: CGState) -> str | None:
        """Return the reason of the first rule that fires, else None."""
        for rule in self.rules:
            reason = rule(state)
            if reason is not None:
                return reason
        return None

    def __repr__(self) -> str:
        """Show the rules."""
        return f"AnyOf({', '.join(map(repr, self.rules))})"


StopSpec = Union[StopRule, Sequence[StopRule], None]


def as_stop_rule(stop: StopSpec) -> StopRule:
    """Turn the ``stop`` argument of ``solve`` into one rule.

    ``None`` gives Martens' default ``MartensProgress()``; a list or tuple gives ``AnyOf``; an
    empty list leaves only the iteration cap of ``solve``.

    Raises:
        TypeError: ``stop`` is neither a rule, a list/tuple of rules nor None.
    """
    if stop is None:
        return MartensProgress()
    if isinstance(stop, (list, tuple)):
        return AnyOf(*stop)
    if callable(stop):
        return stop
    raise InputTypeError(
        f"stop: expected a stopping rule, a list of rules or None, got {type(stop).__name__}"
    )


def capped(stop: StopSpec, max_iters: object) -> StopRule:
    """``stop`` (as :func:`as_stop_rule` reads it) or the iteration cap ``max_iters``."""
    return AnyOf(as_stop_rule(stop), MaxIters(_checks.integer(max_iters, "max_iters", minimum=0)))
