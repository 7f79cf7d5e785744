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
  evaluation of the session uses their first ``eval_limit`` cases (logged and recorded);
* an update that is **still running** half the slack after its deadline (its indivisible part
  was longer than predicted: the first update, or an HF step's gradient and operator set-up
  on a busy machine) is stopped by an alarm (:func:`alarm`, ``SIGALRM``) and undone — the
  runner's state and the parameters are restored from a copy taken before it — and the run
  ends there, its status saying so. The alarm is armed only for updates that might overrun
  (:meth:`WallBudget.risky`), in the main thread of a one-process run, never while an update
  writes a quadratic to the results file; elsewhere the run ends up to one update late.

Under ``torchrun`` the ranks agree on stopping through one small all-reduce after each update,
and HF's CG is not cut (every rank must run the same iterations), so the run may end up to one
update later.
"""

from __future__ import annotations

import collections
import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["EVAL_FRACTION", "EVAL_SHARE", "PROBE_CASES", "OutOfTime", "WallBudget", "alarm",
           "can_interrupt", "eval_limit"]

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

    def slack(self) -> float:
        """The contract's slack over S: max(0.1 S, 5 s)."""
        return max(0.1 * self.limit, 5.0)

    def alarm_in(self) -> float:
        """Seconds from now to the alarm that stops an overrunning update.

        Half the slack after the update's deadline: the other half is for undoing it and for
        the final work.
        """
        return self.end_by() + 0.5 * self.slack() - self.clock()

    def risky(self) -> bool:
        """Whether the next update might overrun: none measured yet, or little room left."""
        return not self.steps or self.end_by() - self.clock() < 2 * max(self.steps)

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


class OutOfTime(BaseException):  # not an Exception: no `except Exception` may swallow it
    """The budget's time was up while an update was running (it is undone)."""


def can_interrupt() -> bool:
    """Whether :func:`alarm` can work here (a ``SIGALRM`` timer, the main thread)."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise :class:`OutOfTime` in the block after ``seconds``; the old handler restored."""
    def ring(signum: int, frame: FrameType | None) -> None:
        raise OutOfTime(f"the time was up after {seconds:.1f} s")

    before = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


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
