"""``--seconds S``: a wall-clock budget for the whole run, evaluations and checkpoints included.

The clock starts when the training loop starts (after the data and the model are built, which
the log reports separately) and counts every session of a resumed run. The run ends within
``max(1.1 S, S + 5 s)`` of the loop's start because nothing is started that is predicted not to
fit, from what this run has measured:

* the **final work** — one evaluation, a checkpoint and the final parameters — is reserved
  from the start (its cost is the largest evaluation and checkpoint measured so far);
* an **update** starts only when the time left before that reserve holds the largest of the
  last few updates; an update that can cut its own work (``Runner.stops_on_time``: HF, whose
  CG stops early, reason ``"deadline"``) gets the time left as its deadline and starts when
  that holds its smallest update so far;
* an **intermediate evaluation** (every ``eval_every`` updates) is made only when it fits
  before the reserve and evaluations have so far taken at most :data:`EVAL_SHARE` of the
  elapsed time (otherwise it is skipped: the optimizer keeps at least the rest);
* one **evaluation** costs at most :data:`EVAL_FRACTION` of S: a probe on a few cases measures
  the cost per case, and where the whole training and test sets would take longer, every
  evaluation of the session uses their first ``eval_limit`` cases (logged and recorded).

Under ``torchrun`` the ranks agree on stopping through one small all-reduce after each update,
and HF's CG is not cut (every rank must run the same iterations), so the run may end up to one
update later.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable

__all__ = ["EVAL_FRACTION", "EVAL_SHARE", "PROBE_CASES", "WallBudget", "eval_limit"]

#: the most one evaluation may take, as a fraction of the budget
EVAL_FRACTION = 0.1
#: the most evaluations together may take of the elapsed time (intermediate ones are skipped)
EVAL_SHARE = 0.2
#: cases per set of the probe evaluation that measures an evaluation's cost per case
PROBE_CASES = 256
#: updates whose time predicts the next one
RECENT = 5


class WallBudget:
    """The wall-clock budget of one session of a run (module docstring).

    Args:
        seconds: the budget S (a total over the run's sessions).
        spent: wall seconds the run's earlier sessions spent.
        clock: the clock (:func:`time.perf_counter`; a test may pass its own).
    """

    def __init__(self, seconds: float, spent: float = 0.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.limit, self.spent_before, self.clock = float(seconds), float(spent), clock
        self.start = clock()
        self.eval_cost = self.checkpoint_cost = self.eval_total = 0.0
        self.steps: collections.deque[float] = collections.deque(maxlen=RECENT)
        self.smallest_step = math.inf

    def elapsed(self) -> float:
        """Wall seconds of the run so far (earlier sessions included)."""
        return self.spent_before + self.clock() - self.start

    def end_by(self) -> float:
        """The clock value by which an update must end (the final work's reserve before S)."""
        return self.start + self.limit - self.spent_before - self.eval_cost - self.checkpoint_cost

    def room_for_update(self, stops_on_time: bool) -> bool:
        """Whether another update is predicted to end before the reserve."""
        room = self.end_by() - self.clock()
        if not self.steps:
            return room > 0
        return room > (self.smallest_step if stops_on_time else max(self.steps))

    def room_for_eval(self) -> bool:
        """Whether an intermediate evaluation fits, and evaluations stay within their share."""
        room = self.end_by() - self.clock()
        return room > self.eval_cost and \
            self.eval_total + self.eval_cost <= EVAL_SHARE * max(self.elapsed(), 1e-9)

    def update_took(self, seconds: float) -> None:
        """Record an update's wall time."""
        self.steps.append(seconds)
        self.smallest_step = min(self.smallest_step, seconds)

    def eval_took(self, seconds: float) -> None:
        """Record an evaluation's wall time."""
        self.eval_cost = max(self.eval_cost, seconds)
        self.eval_total += seconds

    def checkpoint_took(self, seconds: float) -> None:
        """Record a checkpoint's (and the parameters') wall time."""
        self.checkpoint_cost = max(self.checkpoint_cost, seconds)


def eval_limit(probe_seconds: float, probe_cases: tuple[int, int], sizes: tuple[int, int],
               budget: float) -> int | None:
    """Cases per set for evaluations within :data:`EVAL_FRACTION` of ``budget`` (None: all).

    An evaluation passes over the training cases twice (error and loss) and the test cases
    once; the probe's time over ``probe_cases`` (training, test) gives the cost per pass-case.

    Args:
        probe_seconds: the probe evaluation's time.
        probe_cases: its training and test cases.
        sizes: the whole evaluation's training and test cases.
        budget: the budget S.
    """
    passes = 2 * probe_cases[0] + probe_cases[1]
    per_case = probe_seconds / max(passes, 1)
    allowed = EVAL_FRACTION * budget

    def cost(limit: float) -> float:
        return per_case * (2 * min(sizes[0], limit) + min(sizes[1], limit))

    if cost(max(sizes)) <= allowed:
        return None
    lo, hi = max(1, min(probe_cases)), max(sizes)  # the probe's size always fits the run
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= allowed else (lo, mid)
    return lo
