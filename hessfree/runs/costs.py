"""How long a planned run will take, from per-update costs measured on the built-in experiments.

``reproduce`` prints its plan with an estimate before the first run starts (:func:`estimate`
per job). The costs are in :data:`hessfree.runs.presets.step_costs.COSTS`, written by
``benchmarks/plan_costs.py``
(a few updates and one evaluation of each experiment and family, through ``hessfree train``'s
path, one thread): seconds per update (NAG/CM/SGD, the momentum-like HF), seconds per
gradient-equivalent and gradient-equivalents per update (Martens' HF), seconds per evaluation.
SGD and CM cost what NAG costs (the same update).

A job's estimate is its updates' time plus its evaluations' (``reproduce`` evaluates about 50
times a run, and at least once an update for short runs). Measured and current loads differ:
a single-threaded run on ``C`` cores with load average ``L`` gets about ``C / max(L, C)`` of a
core, so the measured times are scaled by ``max(L_now, C) / max(L_then, C)``. The estimate is
a plan's first guess; the plan's progress line corrects it with the rate the runs show.
"""

from __future__ import annotations

from typing import Any

from hessfree.runs import families
from hessfree.runs.presets.step_costs import COSTS
from hessfree.runs.threads import cores, load

__all__ = ["estimate", "load_factor", "measured"]


def measured() -> str:
    """Where the costs come from (date, cores, load, threads, command)."""
    m = COSTS.get("measured", {})
    return (f"per-update costs measured {m.get('date', '?')} on {m.get('cores', '?')} cores at "
            f"load {m.get('load', '?')}, {m.get('threads', '?')} thread "
            f"(`{m.get('command', 'python benchmarks/plan_costs.py')}`)")


def load_factor() -> float:
    """How much slower than at the measurement this machine's load makes a run (module doc)."""
    have, now = cores(), load()
    then = float(COSTS.get("measured", {}).get("load", have))
    if now is None:
        return 1.0
    return max(now, have) / max(then, have)


def _grid(family: str) -> bool:
    """Whether ``family`` is a registered grid family (SGD/CM/NAG: the same update's cost)."""
    return family in families.names() and isinstance(families.get(family).table, families.Grid)


def _per(table: dict[str, float], family: str) -> float | None:
    """A family's entry, or, for a grid family, a measured grid family's (the same update)."""
    if family in table:
        return float(table[family])
    if _grid(family):
        return next((float(v) for name, v in table.items() if _grid(name)), None)
    return None


def estimate(experiment: str, family: str, steps: int | None, budget: float | None,
             eval_every: int, factor: float = 1.0) -> float | None:
    """Seconds a run of ``steps`` updates (or ``budget`` gradient-equivalents) will take.

    None when no cost of that experiment and family was measured.
    """
    costs: dict[str, Any] | None = COSTS.get("experiments", {}).get(experiment)
    if costs is None:
        return None
    if steps is not None:
        per = _per(costs.get("update", {}), family)
        if per is None:
            return None
        updates, seconds = float(steps), steps * per
    elif budget is not None:
        per_ge = _per(costs.get("grad_equiv", {}), family)
        ge_up = _per(costs.get("ge_per_update", {}), family)
        if per_ge is None or not ge_up:
            return None
        updates, seconds = budget / ge_up, budget * per_ge
    else:
        return None
    evals = updates // max(1, eval_every) + 2
    return factor * (seconds + evals * float(costs["eval"]))
