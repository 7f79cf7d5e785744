"""Which CG iterates to keep for CG-backtracking (Martens 2010 §4.6, ``conjgrad_1.m``).

A storage policy is any object with ``grid(limit) -> frozenset[int]``: the iteration indices
``1 <= i <= limit`` at which ``solve`` keeps a copy of x_i. The last iterate is always kept in
addition, whatever the policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Union

from hessfree import _checks
from hessfree.errors import InputError, InputTypeError

__all__ = ["Every", "Geometric", "Never", "StorePolicy", "as_store_policy"]


class StorePolicy(Protocol):
    """Iteration indices at which to keep a copy of x_i."""

    def grid(self, limit: int) -> frozenset[int]:  # pragma: no cover - protocol
        """Indices in ``1..limit`` to keep."""
        ...


@dataclass(frozen=True)
class Geometric:
    """Martens' geometric grid: keep x_i at i = ⌈first·ratioʲ⌉, j = 0, 1, ...

    ``conjgrad_1.m``: ``inext = 5; imult = 1.3``; store when ``i == ceil(inext)``, then
    ``inext = inext*imult`` (same double arithmetic here). Where ⌈·⌉ repeats (small ``first``
    or ``ratio``) the index is kept once and the grid moves on; Martens' ``==`` test would stall
    at the repeat and store nothing more. For the defaults (5, 7, 9, 11, 15, 19, 25, 32, ...) the
    two agree.

    Args:
        ratio: growth factor, > 1 (``imult = 1.3``).
        first: first grid value, > 0 (``inext = 5``).
    """

    ratio: float = 1.3
    first: float = 5

    def __post_init__(self) -> None:
        """Check the constants."""
        if not (isinstance(self.ratio, (int, float)) and self.ratio > 1):
            raise InputError(f"Geometric.ratio: expected a number > 1, got {self.ratio!r}")
        if not (isinstance(self.first, (int, float)) and 0 < self.first < math.inf):
            raise InputError(f"Geometric.first: expected a finite number > 0, got {self.first!r}")

    def grid(self, limit: int) -> frozenset[int]:
        """Indices ⌈first·ratioʲ⌉ <= limit (deduplicated)."""
        out = set()
        nxt = float(self.first)
        while math.ceil(nxt) <= limit:
            out.add(math.ceil(nxt))
            nxt *= self.ratio
        return frozenset(out)


@dataclass(frozen=True)
class Every:
    """Keep every ``step``-th iterate (x_step, x_2step, ...); ``Every()`` keeps them all.

    ``first`` moves the start: ``Every(10, first=1)`` keeps x_1, x_11, x_21, ..., the iterates
    Sutskever's HF-RNN code evaluates for backtracking (``i % cg_eval_freq == 0`` with a 0-based
    ``i``, [HF-RNN]).

    Args:
        step: spacing, >= 1.
        first: the first index kept, >= 1 (default: ``step``).
    """

    step: int = 1
    first: int | None = None

    def __post_init__(self) -> None:
        """Check ``step`` and ``first``."""
        _checks.integer(self.step, "Every.step", minimum=1)
        if self.first is not None:
            _checks.integer(self.first, "Every.first", minimum=1)

    def grid(self, limit: int) -> frozenset[int]:
        """Indices first, first + step, ... <= limit."""
        start = self.step if self.first is None else self.first
        return frozenset(range(start, limit + 1, self.step))


@dataclass(frozen=True)
class Never:
    """Keep no intermediate iterate (only the last one, which ``solve`` always keeps)."""

    def grid(self, limit: int) -> frozenset[int]:
        """No indices."""
        return frozenset()


StoreSpec = Union[StorePolicy, bool, None]


def as_store_policy(store: StoreSpec) -> StorePolicy:
    """Turn the ``store`` argument of ``solve`` into a policy.

    ``None`` or ``True`` give Martens' ``Geometric(1.3, first=5)``; ``False`` gives ``Never()``.

    Raises:
        TypeError: ``store`` is not a policy, a bool or None.
    """
    if store is None or store is True:
        return Geometric()
    if store is False:
        return Never()
    if callable(getattr(store, "grid", None)):
        return store
    raise InputTypeError(
        "store: expected a storage policy (Geometric, Every, Never), a bool or None, "
        f"got {type(store).__name__}"
    )
