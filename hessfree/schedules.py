"""Schedules: a value as a function of the update counter ``t``, for HF, momentum and comparisons.

One module for every schedule in the package (``docs/architecture.md``):

* the momentum coefficient μ_t of NAG/CM: :class:`SutskeverSchedule` (Sutskever et al. 2013
  Eq. 5 and its low-momentum final phase, ``docs/references.md`` [S13 §3]) and
  :class:`RNNSchedule` ([S13 §4]);
* the settings of the momentum-like HF ([S13 A.6]): learning rate ``ε_t = a/(t − t0)``
  (:class:`InverseDecay`), a CG hot-start decay ζ raised gradually (:class:`Ramp`, or stepped with
  :class:`Piecewise`);
* :class:`Constant` for anything fixed.

A schedule is a frozen dataclass with ``__call__(t) -> value``, so it is picklable, comparable and
written to results files as JSON (:func:`to_dict` / :func:`from_dict`). Any ``HFConfig`` field
documented as "number or schedule" accepts one of these (or any callable ``t -> value``, which
cannot be saved).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from hessfree import _checks
from hessfree.errors import InputError

__all__ = [
    "Constant",
    "InverseDecay",
    "Piecewise",
    "RNNSchedule",
    "Ramp",
    "Schedule",
    "SutskeverSchedule",
    "from_dict",
    "to_dict",
    "value_at",
]

Schedule = Callable[[int], float]


def _t(t: Any) -> int:
    return _checks.integer(t, "t", minimum=0)


@dataclass(frozen=True)
class Constant:
    """The same value at every step."""

    value: float

    def __post_init__(self) -> None:
        """Check the value."""
        _checks.number(self.value, "value")

    def __call__(self, t: int) -> float:
        """Value at step ``t``."""
        return self.value


@dataclass(frozen=True)
class InverseDecay:
    """``min(start, scale / (t − t0))`` from step ``begin`` on, ``start`` before ([S13 A.6]).

    A.6 anneals the CURVES learning rate as ``500/(t − 4000)`` from t = 4000 and MNIST's as
    ``250/t`` once its first 500 updates at ε = 1 are done (``t0=0, begin=500``); the cap
    ``start`` (1 there) keeps ``ε ≤ 1``. ``begin`` defaults to ``t0``.
    """

    scale: float
    t0: int = 0
    start: float = 1.0
    begin: int | None = None

    def __post_init__(self) -> None:
        """Check the arguments."""
        _checks.number(self.scale, "scale", 0.0, strict_min=True)
        _checks.integer(self.t0, "t0", minimum=0)
        _checks.number(self.start, "start", 0.0)
        if self.begin is not None:
            _checks.integer(self.begin, "begin", minimum=self.t0)

    def __call__(self, t: int) -> float:
        """Value at step ``t``."""
        begin = self.t0 if self.begin is None else self.begin
        if t <= begin or t <= self.t0:
            return self.start
        return min(self.start, self.scale / (t - self.t0))


@dataclass(frozen=True)
class Ramp:
    """Move from ``start`` to ``end`` between steps ``t0`` and ``t1``.

    ``kind="linear"`` interpolates the value; ``kind="momentum"`` interpolates ``log(1 − value)``
    so that a decay constant approaches 1 the way a momentum schedule does (0.95 → 0.99 → 0.999
    in equal steps of the effective horizon ``1/(1 − ζ)`` on a log scale; [S13 A.6]: ζ raised
    "gradually", "similarly to how we increased μ").
    """

    start: float
    end: float
    t0: int
    t1: int
    kind: str = "linear"

    def __post_init__(self) -> None:
        """Check the arguments."""
        _checks.number(self.start, "start")
        _checks.number(self.end, "end")
        _checks.integer(self.t0, "t0", minimum=0)
        _checks.integer(self.t1, "t1", minimum=self.t0)
        _checks.choice(self.kind, "kind", ("linear", "momentum"))
        if self.kind == "momentum" and not (self.start < 1 and self.end < 1):
            raise InputError("start/end: a 'momentum' ramp needs values below 1")

    def __call__(self, t: int) -> float:
        """Value at step ``t``."""
        if t <= self.t0 or self.t1 == self.t0:
            return self.start if t <= self.t0 else self.end
        if t >= self.t1:
            return self.end
        w = (t - self.t0) / (self.t1 - self.t0)
        if self.kind == "linear":
            return self.start + w * (self.end - self.start)
        a, b = math.log(1 - self.start), math.log(1 - self.end)
        return 1 - math.exp(a + w * (b - a))


@dataclass(frozen=True)
class Piecewise:
    """Constant pieces: ``values[k]`` from step ``boundaries[k-1]`` on (``values[0]`` before)."""

    boundaries: tuple[int, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        """Check the arguments."""
        object.__setattr__(self, "boundaries", tuple(self.boundaries))
        object.__setattr__(self, "values", tuple(self.values))
        if len(self.values) != len(self.boundaries) + 1:
            raise InputError("values: expected one more value than boundaries")
        for b in self.boundaries:
            _checks.integer(b, "boundaries", minimum=0)
        if list(self.boundaries) != sorted(self.boundaries):
            raise InputError("boundaries: expected increasing steps")

    def __call__(self, t: int) -> float:
        """Value at step ``t``."""
        k = sum(1 for b in self.boundaries if t >= b)
        return self.values[k]


@dataclass(frozen=True)
class SutskeverSchedule:
    """[S13 Eq. 5]: ``μ_t = min(1 − 2^(−1 − log2(⌊t/250⌋ + 1)), μ_max)``.

    Equivalently ``1 − 1/(2(k + 1))`` with ``k = ⌊t/warm⌋``: 0.5, 0.75, ..., 0.9 at t = 1000,
    0.99 at 12,250, 0.999 at 124,750 ([S13 §3]). When ``total_steps`` is given, μ is reduced to
    ``final_mu`` (0.9) during the last ``final_steps`` (1000) updates, "without reducing the
    learning rate" and "unless µ is 0": the final μ is ``min(μ_t, final_mu)``, so μ is never
    raised (μ_max = 0 stays 0).

    Args:
        mu_max: the cap, chosen in the paper from {0.999, 0.995, 0.99, 0.9, 0}.
        warm: updates per schedule stage (250).
        final_mu: the momentum of the final phase (0.9).
        final_steps: length of the final phase (1000).
        total_steps: the run's number of updates; ``None``: no final phase.
    """

    mu_max: float
    warm: int = 250
    final_mu: float = 0.9
    final_steps: int = 1000
    total_steps: int | None = None

    def __post_init__(self) -> None:
        """Check the arguments."""
        _checks.probability(self.mu_max, "mu_max")
        _checks.integer(self.warm, "warm", minimum=1)
        _checks.probability(self.final_mu, "final_mu")
        _checks.integer(self.final_steps, "final_steps", minimum=0)
        if self.total_steps is not None:
            _checks.integer(self.total_steps, "total_steps", minimum=0)

    def __call__(self, t: int) -> float:
        """μ at update ``t`` (``t = 0`` is the first update)."""
        k = _t(t) // self.warm
        mu = min(1.0 - 0.5 / (k + 1), float(self.mu_max))  # 2^(-1-log2(k+1)) = 1/(2(k+1))
        if self.total_steps is not None and t >= self.total_steps - self.final_steps:
            mu = min(mu, float(self.final_mu))
        return mu


@dataclass(frozen=True)
class RNNSchedule:
    """Sutskever et al. (2013) [S13 §4]: ``μ = 0.9`` for the first 1000 updates, then ``mu0``.

    Args:
        mu0: the momentum after the warm phase, in the paper from {0, 0.9, 0.98, 0.995}.
        warm_mu: the momentum of the warm phase (0.9).
        warm_steps: its length in updates (1000).
    """

    mu0: float
    warm_mu: float = 0.9
    warm_steps: int = 1000

    def __post_init__(self) -> None:
        """Check the arguments."""
        _checks.probability(self.mu0, "mu0")
        _checks.probability(self.warm_mu, "warm_mu")
        _checks.integer(self.warm_steps, "warm_steps", minimum=0)

    def __call__(self, t: int) -> float:
        """μ at update ``t``."""
        return float(self.warm_mu if _t(t) < self.warm_steps else self.mu0)


_KINDS: dict[str, type] = {c.__name__: c for c in (Constant, InverseDecay, Ramp, Piecewise,
                                                   SutskeverSchedule, RNNSchedule)}


def value_at(value: Any, t: int) -> Any:
    """``value(t)`` when ``value`` is a schedule (callable), else ``value`` itself."""
    return value(t) if callable(value) else value


def to_dict(value: Any) -> Any:
    """JSON-friendly form of a schedule (``{"schedule": name, ...}``); plain values pass."""
    if type(value).__name__ in _KINDS and hasattr(value, "__dataclass_fields__"):
        d = asdict(value)
        return {"schedule": type(value).__name__,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}}
    if callable(value):
        return {"schedule": "callable", "repr": repr(value)}
    return value


def from_dict(value: Any) -> Any:
    """Inverse of :func:`to_dict` (a ``"callable"`` entry cannot be rebuilt: ValueError)."""
    if isinstance(value, dict) and "schedule" in value:
        name = value["schedule"]
        if name not in _KINDS:
            raise InputError(f"schedule: cannot rebuild {name!r}; known: {sorted(_KINDS)}")
        cls = _KINDS[name]
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known - {"schedule"})
        if unknown:
            raise InputError(f"schedule {name}: unknown fields {unknown}")
        kw = {k: value[k] for k in known if k in value}
        for key in ("boundaries", "values"):
            if key in kw:
                kw[key] = tuple(kw[key])
        missing = sorted(f.name for f in fields(cls) if f.name not in kw
                         and f.default is dataclasses.MISSING)
        if missing:
            raise InputError(f"schedule {name}: missing fields {missing}")
        return cls(**kw)
    return value
