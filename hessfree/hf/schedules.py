"""Schedules: plain objects the HF driver asks for a value at outer step ``t``.

The momentum-like HF variant of Sutskever et al. (2013, §5 and appendix A.6) replaces Martens'
line search by a fixed learning rate that is decayed late in training (e.g. ``ε_t = 500/(t − t0)``
after ``t0``), raises the CG decay constant ζ gradually like a momentum schedule (0.95 → 0.999),
and runs a fixed number of CG steps per update. Any ``HFConfig`` field documented as
"float or schedule" accepts one of these (or any callable ``t -> value``).

Schedules are frozen dataclasses so they are picklable and can be written to results files as
JSON (:func:`schedule_to_dict`, :func:`schedule_from_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = [
    "Constant",
    "InverseDecay",
    "Ramp",
    "Piecewise",
    "value_at",
    "schedule_to_dict",
    "schedule_from_dict",
]


@dataclass(frozen=True)
class Constant:
    """The same value at every step."""

    value: float

    def __call__(self, t: int) -> float:
        """Value at step ``t``."""
        return self.value


@dataclass(frozen=True)
class InverseDecay:
    """``min(start, scale / (t − t0))`` after ``t0``, ``start`` before (Sutskever et al. 2013 A.6).

    A.6 anneals the CURVES learning rate as ``500/(t − 4000)`` and MNIST as ``250/t``.
    """

    scale: float
    t0: int = 0
    start: float = 1.0

    def __call__(self, t: int) -> float:
        """Value at step ``t``."""
        if t <= self.t0:
            return self.start
        return min(self.start, self.scale / (t - self.t0))


@dataclass(frozen=True)
class Ramp:
    """Move from ``start`` to ``end`` between steps ``t0`` and ``t1``.

    ``kind="linear"`` interpolates the value; ``kind="momentum"`` interpolates ``log(1 − value)``
    so that a decay constant approaches 1 the way a momentum schedule does (0.95 → 0.99 → 0.999
    in equal steps of the effective horizon ``1/(1 − ζ)`` on a log scale).
    """

    start: float
    end: float
    t0: int
    t1: int
    kind: str = "linear"

    def __post_init__(self) -> None:
        """Check the arguments."""
        if self.t1 < self.t0:
            raise ValueError(f"t1: expected >= t0 ({self.t0}), got {self.t1}")
        if self.kind not in ("linear", "momentum"):
            raise ValueError(f"kind: expected 'linear' or 'momentum', got {self.kind!r}")
        if self.kind == "momentum" and not (self.start < 1 and self.end < 1):
            raise ValueError("start/end: a 'momentum' ramp needs values below 1")

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
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError("values: expected one more value than boundaries")
        if list(self.boundaries) != sorted(self.boundaries):
            raise ValueError("boundaries: expected increasing steps")

    def __call__(self, t: int) -> float:
        """Value at step ``t``."""
        k = sum(1 for b in self.boundaries if t >= b)
        return self.values[k]


_KINDS: dict[str, type] = {c.__name__: c for c in (Constant, InverseDecay, Ramp, Piecewise)}


def value_at(value: Any, t: int) -> Any:
    """``value(t)`` when ``value`` is a schedule (callable), else ``value`` itself."""
    return value(t) if callable(value) else value


def schedule_to_dict(value: Any) -> Any:
    """JSON-friendly form of a schedule (``{"schedule": name, ...}``); plain values pass."""
    if type(value).__name__ in _KINDS and hasattr(value, "__dataclass_fields__"):
        return {"schedule": type(value).__name__, **asdict(value)}
    if callable(value):
        return {"schedule": "callable", "repr": repr(value)}
    return value


def schedule_from_dict(value: Any) -> Any:
    """Inverse of :func:`schedule_to_dict` (a ``"callable"`` entry cannot be rebuilt)."""
    if isinstance(value, dict) and "schedule" in value:
        name = value["schedule"]
        if name not in _KINDS:
            raise ValueError(f"schedule: cannot rebuild {name!r}; known: {sorted(_KINDS)}")
        cls = _KINDS[name]
        kw = {f.name: value[f.name] for f in fields(cls) if f.name in value}
        for key in ("boundaries", "values"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)
    return value


Schedule = Callable[[int], float]
