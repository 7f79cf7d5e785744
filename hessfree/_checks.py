"""Argument checks shared by every module: one place, one wording.

Every public entry point validates its arguments once, with these helpers, and raises an error
that names the argument and says what was expected (``docs/architecture.md``, Rules and
"Validation"). ``bool`` is never accepted where a number is expected (``True`` is an ``int`` in
Python), numpy scalars are accepted where Python numbers are.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hessfree.errors import InputError

__all__ = [
    "accepts_renamed",
    "all_finite",
    "boolean",
    "choice",
    "integer",
    "is_finite",
    "number",
    "probability",
    "renamed",
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


def all_finite(*tensors: Tensor) -> bool:
    """Whether every entry of every tensor is finite, with one host sync for all of them.

    A cheap sum of each first (NaN/Inf propagate; the sums are read together), exact only if a
    sum is not finite (it can overflow on finite entries).
    """
    ts = [t for t in tensors if t.is_floating_point() or t.is_complex()]
    if not ts:
        return True
    if len({t.device for t in ts}) == 1 and not any(t.is_complex() for t in ts):
        sums = torch.stack([t.sum().to(torch.float64) for t in ts])
        if bool(torch.isfinite(sums).all()):
            return True
    elif all(bool(torch.isfinite(t.sum())) for t in ts):
        return True
    return all(bool(torch.isfinite(t).all()) for t in ts)


def is_finite(x: float | Tensor) -> bool:
    """:func:`all_finite` for tensors, ``math.isfinite`` for numbers."""
    if isinstance(x, Tensor):
        return all_finite(x)
    return math.isfinite(x)


def renamed(new_value: Any, old_value: Any, new: str, old: str, where: str) -> Any:
    """A keyword argument given under its old name: the value, with a ``DeprecationWarning``.

    ``new_value``/``old_value``: what the caller passed as ``new``/``old`` (None: nothing).
    Both given is an ``InputError``.
    """
    if old_value is None:
        return new_value
    if new_value is not None:
        raise InputError(f"{old}: the old name of {new}; give only {new}")
    warnings.warn(f"{where}: {old}= is now called {new}=; the old name goes in the next release",
                  DeprecationWarning, stacklevel=3)
    return old_value


def accepts_renamed(cls: type) -> type:
    """Class decorator: ``cls(old=...)`` reads as ``cls(new=...)`` for ``cls.RENAMED``'s pairs.

    The old keyword warns (:func:`renamed`); apply it above ``@dataclass``.
    """
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        for old, new in cls.RENAMED.items():
            if old in kwargs:
                kwargs[new] = renamed(kwargs.get(new), kwargs.pop(old), new, old, cls.__name__)
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls
