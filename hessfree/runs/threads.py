"""How many threads a run's tensor operations use: chosen for the run, never inherited.

PyTorch starts with one intra-op thread per core. On a machine other jobs keep busy, a thread
that waits for a preempted sibling at every operation's barrier makes small operations many
times slower: ``benchmarks/bench_threads.py`` measured the built-in experiments' updates,
steps and products at 1 and 2 threads (``benchmarks/RESULTS.md``, "Threads").

``--threads auto`` (the default of ``hessfree train``, ``reproduce``, ``demo``, ``compare``
and ``check-products``, and of :class:`~hessfree.runs.trainer.RunSpec`) chooses
:func:`choose`'s number: ``$OMP_NUM_THREADS`` when the user set it (an explicit choice), else
the cores nobody else is using — the cores this process may run on less the one-minute load
average, rounded, at least 1 and at most :data:`MOST` — so an idle 2-core machine gets 2 and a
busy one 1. ``--threads N`` takes N.

Only the command line and the trainer set threads, where the process is theirs, and the
trainer restores the previous number when the run returns (:func:`using`);
``import hessfree`` changes nothing. :func:`busy` is the note the progress line shows when
the machine looks oversubscribed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from hessfree import _checks
from hessfree.errors import InputError

__all__ = ["AUTO", "MOST", "Threads", "busy", "choose", "cores", "load", "using"]

AUTO = "auto"
#: the most threads ``auto`` gives a run: every core it may use (``benchmarks/RESULTS.md``,
#: "Threads": more threads than idle cores was slower in every workload measured there)
MOST: int | None = None
#: load above ``cores × BUSY`` counts as oversubscribed in the progress line
BUSY = 1.25


@dataclass(frozen=True)
class Threads:
    """The chosen number of threads and why.

    ``why``: ``"--threads 2"``, ``"auto: load 9.9 on 2 cores"``, ``"OMP_NUM_THREADS=1"``.
    """

    n: int
    why: str


def cores() -> int:
    """Cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def load() -> float | None:
    """The one-minute load average (None where the system does not report one)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def _env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def choose(threads: int | str | None = AUTO, share: int = 1) -> Threads:
    """The number of threads for a run (module docstring).

    Args:
        threads: a positive integer, or ``"auto"`` (None means ``"auto"``).
        share: runs started side by side (``reproduce --jobs N``): ``auto`` divides the free
            cores among them.
    """
    if threads is None:
        threads = AUTO
    if isinstance(threads, str) and threads.strip().lower() != AUTO:
        try:
            threads = int(threads)
        except ValueError:
            raise InputError(f"--threads: expected a positive integer or 'auto', got "
                             f"{threads!r}") from None
    if not isinstance(threads, str):
        n = _checks.integer(threads, "--threads", minimum=1)
        return Threads(n, f"--threads {n}")
    env = _env_threads()
    if env is not None:
        return Threads(env, f"OMP_NUM_THREADS={env}")
    have, now = cores(), load()
    free = have if now is None else have - int(round(now))
    n = max(1, min(free // max(1, share), MOST or have, have))
    seen = "no load average" if now is None else f"load {now:.1f}"
    return Threads(n, f"auto: {seen} on {have} core{'s' * (have != 1)}"
                      + (f", {share} runs side by side" if share > 1 else ""))


@contextlib.contextmanager
def using(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads; the previous number is restored after it."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def busy(threads: int) -> str:
    """A note for the progress line when the machine looks oversubscribed, else ``""``.

    ``"busy: load 9.9 on 2 cores"`` when the load average exceeds the cores by more than
    :data:`BUSY` (times are then slower than on an idle machine).
    """
    now, have = load(), cores()
    if now is None or now <= have * BUSY:
        return ""
    return f"busy: load {now:.1f} on {have} cores"
