"""Argument checks shared by every module: one place, one wording.

Every public entry point validates its arguments once, with these helpers, and raises an error
that names the argument and says what was expected (``docs/architecture.md``, Rules and
"Validation"). ``bool`` is never accepted where a number is expected (``True`` is an ``int`` in
Python), numpy scalars are accepted where Python numbers are.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hessfree.errors import InputError

__all__ = [
    "all_finite",
    "boolean",
    "choice",
    "integer",
    "is_finite",
    "number",
    "probability",
]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _bounds(minimum: float | None, maximum: float | None, strict_min: bool, strict_max: bool
            ) -> str:
    if minimum is not None and maximum is not None:
        lo, hi = "(" if strict_min else "[", ")" if strict_max else "]"
        return f"in {lo}{minimum:g}, {maximum:g}{hi}"
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if strict_min else '>='} {minimum:g}")
    if maximum is not None:
        parts.append(f"{'<' if strict_max else '<='} {maximum:g}")
    return " and ".join(parts)


def integer(value: Any, name: str, minimum: int | None = None, maximum: int | None = None,
            ) -> int:
    """``value`` as an ``int`` (numpy integers too, never ``bool``) within the bounds.

    Raises:
        ValueError: naming ``name``: not an integer, or out of bounds.
    """
    ok = _is_int(value)
    if ok:
        value = int(value)
        ok = (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        rng = _bounds(minimum, maximum, False, False)
        raise InputError(f"{name}: expected an integer{' ' + rng if rng else ''}, got {value!r}")
    return value


def number(value: Any, name: str, minimum: float | None = None, maximum: float | None = None,
           strict_min: bool = False, strict_max: bool = False, allow_inf: bool = False) -> float:
    """``value`` as a finite ``float`` within the bounds (``allow_inf``: +-inf allowed too).

    NaN is never accepted.

    Raises:
        ValueError: naming ``name``: not a real number, NaN, infinite, or out of bounds.
    """
    ok = _is_real(value)
    if ok:
        value = float(value)
        ok = not math.isnan(value) and (allow_inf or math.isfinite(value))
        if ok and minimum is not None:
            ok = value > minimum if strict_min else value >= minimum
        if ok and maximum is not None:
            ok = value < maximum if strict_max else value <= maximum
    if not ok:
        rng = _bounds(minimum, maximum, strict_min, strict_max)
        kind = "a number" if allow_inf else "a finite number"
        raise InputError(f"{name}: expected {kind}{' ' + rng if rng else ''}, got {value!r}")
    return value


def probability(value: Any, name: str) -> float:
    """A number in [0, 1]."""
    return number(value, name, 0.0, 1.0)


def boolean(value: Any, name: str) -> bool:
    """``value`` if it is a ``bool`` (numpy bools too)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def choice(value: Any, name: str, options: Iterable[str]) -> str:
    """``value`` if it is one of ``options`` (the error lists them)."""
    options = tuple(options)
    if not isinstance(value, str) or value not in options:
        raise InputError(f"{name}: expected one of {', '.join(map(repr, options))}, "
                         f"got {value!r}")
    return value


def all_finite(t: Tensor) -> bool:
    """Whether every entry of ``t`` is finite.

    A cheap sum first (NaN/Inf propagate), exact only if the sum is not finite (it can overflow
    on finite entries).
    """
    if not t.is_floating_point() and not t.is_complex():
        return True
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def is_finite(x: float | Tensor) -> bool:
    """:func:`all_finite` for tensors, ``math.isfinite`` for numbers."""
    if isinstance(x, Tensor):
        return all_finite(x)
    return math.isfinite(x)
