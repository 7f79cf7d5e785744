"""CG-backtracking over the stored iterates ([M10 §4.6]).

[HFDemo] ("full training set version"): evaluate the objective at the last stored iterate, then walk
backwards through earlier ones while the objective keeps improving; stop at the first one that is
worse. Later iterates fit the curvature batch more closely and can overfit it; the walk-back picks
the step that best generalises to the evaluation batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from hessfree.errors import InputError

__all__ = ["Backtracked", "cg_backtrack"]


@dataclass(frozen=True)
class Backtracked:
    """The chosen iterate: its CG index, position in the list, the step and its objective."""

    iteration: int
    position: int
    step: Tensor
    value: float
    evaluations: int


def cg_backtrack(objective: Callable[[Tensor], float],
                 iterates: Sequence[tuple[int, Tensor]]) -> Backtracked:
    """Walk back from the last iterate while ``objective`` improves (non-finite never improves)."""
    if not iterates:
        raise InputError("iterates: expected at least one stored CG iterate")
    j = len(iterates) - 1
    best = objective(iterates[j][1])
    evaluations = 1
    while j > 0:
        value = objective(iterates[j - 1][1])
        evaluations += 1
        if not (math.isfinite(value) and (value < best or not math.isfinite(best))):
            break
        j, best = j - 1, value
    return Backtracked(iterates[j][0], j, iterates[j][1], best, evaluations)
