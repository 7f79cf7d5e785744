"""CG-backtracking over the stored iterates ([M10 §4.6]).

Two rules (``HFConfig.backtrack_rule``):

* ``"walk-back"`` ([HFDemo], "full training set version"): evaluate the objective at the last
  stored iterate, then walk backwards through earlier ones while the earlier one is not worse
  (``if ll > lowll, j = j+1; break``); stop at the first one that is worse.
* ``"best"`` ([HF-RNN] ``get_new_direction``): evaluate every stored iterate and keep the one with
  the lowest objective (``if BT_cur < BT_best``: the first one on ties).

Later iterates fit the curvature batch more closely and can overfit it; backtracking picks the
step that best generalises to the evaluation batch.
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
    """The chosen iterate: its CG index, position in the list, the step and its objective.

    ``values`` holds ``(CG iteration, objective)`` of every iterate evaluated, in the order of
    evaluation (so a caller reads, e.g., the objective at the last iterate from it).
    """

    iteration: int
    position: int
    step: Tensor
    value: float
    evaluations: int
    values: tuple[tuple[int, float], ...] = ()


def cg_backtrack(objective: Callable[[Tensor], float],
                 iterates: Sequence[tuple[int, Tensor]], rule: str = "walk-back") -> Backtracked:
    """The iterate ``rule`` chooses (module docstring); never a non-finite one over a finite one."""
    if not iterates:
        raise InputError("iterates: expected at least one stored CG iterate")
    if rule == "best":
        return _best(objective, iterates)
    if rule != "walk-back":
        raise InputError(f"rule: expected 'walk-back' or 'best', got {rule!r}")
    j = len(iterates) - 1
    best = objective(iterates[j][1])
    seen = [(iterates[j][0], best)]
    while j > 0:
        value = objective(iterates[j - 1][1])
        seen.append((iterates[j - 1][0], value))
        if not (math.isfinite(value) and (value <= best or not math.isfinite(best))):
            break
        j, best = j - 1, value
    return Backtracked(iterates[j][0], j, iterates[j][1], best, len(seen), tuple(seen))


def _best(objective: Callable[[Tensor], float],
          iterates: Sequence[tuple[int, Tensor]]) -> Backtracked:
    values = [objective(x) for _, x in iterates]
    j = 0
    for i, v in enumerate(values):
        if math.isfinite(v) and (v < values[j] or not math.isfinite(values[j])):
            j = i
    return Backtracked(iterates[j][0], j, iterates[j][1], values[j], len(values),
                       tuple((i, v) for (i, _), v in zip(iterates, values)))
