"""Progress lines for long work: a run, a plan of runs, a comparison on a quadratic.

One place for how progress is shown (tqdm on stderr, nothing when quiet):

* :func:`bar` — a bar over any units (runs, estimated seconds of a plan);
* :func:`products` — a bar over the curvature products an operator spends in a block (a
  comparison on a quadratic, a reference solve), read from the operator's product counter;
* :class:`RunBar` — the training loop's line: steps, wall seconds or gradient-equivalents of the
  budget, the runner's postfix (loss, λ, CG), the threads and, when the machine looks
  oversubscribed, a ``busy: load L on N cores`` note (:func:`hessfree.runs.threads.busy`);
  while an evaluation runs the line says so and keeps ticking.

Time estimates: tqdm's remaining time is the units left divided by the average rate since the
bar's clock started (``smoothing=0``). The bar's clock restarts after the run's first
evaluation (its cost would otherwise weigh on the first updates' rate), so after a few updates
of steady cost the estimate is the remaining updates' time plus their evaluations'. With
``--seconds`` the units are wall seconds and the estimate is the budget left.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from hessfree.runs.threads import Threads, busy

__all__ = ["RunBar", "bar", "products", "ticking"]

#: seconds between two looks at the load average
BUSY_EVERY = 5.0


def bar(total: float | None, desc: str, unit: str = "it", quiet: bool = False,
        **kwargs: Any) -> Any:
    """A tqdm bar (average-rate estimates, ``smoothing=0``), or None when ``quiet``."""
    if quiet:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, smoothing=0, dynamic_ncols=True, **kwargs)


@contextlib.contextmanager
def ticking(progress: Any, every: float = 1.0, tick: Any = None) -> Iterator[None]:
    """Refresh ``progress`` every ``every`` seconds while the block runs (``tick()`` first).

    For blocking work that reports nothing itself (an evaluation, a reference solve), so the
    line's elapsed time keeps moving. A no-op when ``progress`` is None.
    """
    if progress is None:
        yield
        return
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            if tick is not None:
                tick()
            progress.refresh()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def products(op: Any, total: float | None, desc: str, quiet: bool = False) -> Iterator[None]:
    """A bar over the curvature products ``op`` spends in the block.

    ``op`` is any counted operator (``op.products``), looked at twice a second; ``total`` is
    an estimate (None: a count and a rate).
    """
    progress = bar(total, desc, "product", quiet)
    if progress is None:
        yield
        return
    start = op.products

    def tick() -> None:
        progress.update(op.products - start - progress.n)

    try:
        with ticking(progress, every=0.5, tick=tick):
            yield
        tick()
    finally:
        progress.close()


class RunBar:
    """The training loop's progress line (module docstring).

    Args:
        desc: ``"<experiment> <optimizer>"``.
        mode: ``"steps"``, ``"seconds"`` or ``"budget"`` (the budget that ends the run first
            to be shown: steps, else seconds, else gradient-equivalents).
        total: that budget.
        done: the units already spent (a resumed run).
        threads: the run's threads (shown).
        quiet: no line at all.
    """

    def __init__(self, desc: str, mode: str, total: float, done: float, threads: Threads,
                 quiet: bool = False) -> None:
        self.mode, self.threads = mode, threads
        self.note, self._looked = "", -BUSY_EVERY
        self._postfix = ""
        fmt = {"seconds": "{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]",
               "budget": "{l_bar}{bar}| {n:.1f}/{total:.0f} grad-equiv [{elapsed}<{remaining}"
                         "{postfix}]"}.get(mode)
        unit = {"steps": "step", "seconds": "s", "budget": "ge"}[mode]
        self.bar = bar(total, desc, unit, quiet, initial=min(done, total),
                       **({"bar_format": fmt} if fmt else {}))

    def to(self, value: float) -> None:
        """Move the bar to ``value`` units (never past the total: tqdm would drop it)."""
        if self.bar is not None:
            self.bar.update(max(0.0, min(value, self.bar.total) - self.bar.n))

    def restart_clock(self) -> None:
        """Start the rate estimate afresh (after the first evaluation), keeping the count."""
        if self.bar is not None and self.mode != "seconds":
            self.bar.start_t = self.bar.last_print_t = self.bar._time()
            self.bar.last_print_n = self.bar.n
            self.bar.initial = self.bar.n  # tqdm's rate counts units from here

    def stepped(self, value: float, postfix: dict[str, str]) -> None:
        """After an update: the count, the runner's postfix, threads and the busy note."""
        if self.bar is None:
            return
        now = time.monotonic()
        if now - self._looked >= BUSY_EVERY:
            self._looked, self.note = now, busy(self.threads.n)
        self._postfix = ", ".join([*(f"{k}={v}" for k, v in postfix.items()),
                                   f"{self.threads.n} thread{'s' * (self.threads.n != 1)}",
                                   *([self.note] if self.note else [])])
        self.bar.set_postfix_str(self._postfix, refresh=False)
        self.to(value)

    @contextlib.contextmanager
    def evaluating(self, clock: Any = None) -> Iterator[None]:
        """The line says ``evaluating`` (and keeps ticking) while the block runs."""
        if self.bar is None:
            yield
            return
        self.bar.set_postfix_str(", ".join(filter(None, [self._postfix, "evaluating"])),
                                 refresh=True)

        def tick() -> None:
            if clock is not None and self.mode == "seconds":
                self.to(clock())

        try:
            with ticking(self.bar, tick=tick):
                yield
        finally:
            self.bar.set_postfix_str(self._postfix, refresh=False)

    def close(self) -> None:
        """End the line."""
        if self.bar is not None:
            self.bar.close()
