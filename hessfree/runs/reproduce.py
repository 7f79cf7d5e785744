"""``hessfree reproduce table1`` / ``table5``: the protocols of [S13] at a fraction of their budget.

The protocols, the fraction rule and the checks of a plan are in :mod:`hessfree.runs.protocols`;
the summary in :mod:`hessfree.runs.summary`. This module runs a plan:

1. the whole plan is checked before any run starts (:func:`~hessfree.runs.protocols.plan`: every
   ``--set`` value through the typed settings of ``hessfree train``; the grids; the seeds),
   then the run options (device, dtype, ``--jobs``), the output folder, and with ``resume`` every
   results file already there (a damaged one is refused here, not half-way through);
2. the plan is printed before the first run starts (:func:`describe`: runs per experiment and
   family, the budget of each, and the time estimated from measured per-update costs,
   :mod:`hessfree.runs.costs`), and one progress line follows the whole plan in estimated
   seconds (also with ``--jobs N``: the workers report each update's progress through a queue),
   so its remaining time is the estimate corrected by the rate the runs show;
3. every job runs by one path, :func:`run_job`: a new run is ``trainer.train`` of the job's
   :class:`~hessfree.runs.trainer.RunSpec`, an unfinished one ``trainer.resume``, a finished one
   is read; with ``jobs > 1`` the same function runs in that many worker processes (started
   fresh, ``spawn``), the long HF runs first, and ``--threads auto`` shares the free cores
   among them;
4. ``summary.md``, ``summary.h5`` and one figure per experiment are written.

Every run writes its own results file under ``<out>/<experiment>/<name>/``. ``resume=True``
continues unfinished runs and skips finished ones; ``summary_only`` runs nothing and summarizes
the runs already there.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import os
import queue as queues
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hessfree import _checks
from hessfree._files import write_text
from hessfree.errors import InputError, RunError
from hessfree.runs import costs, families
from hessfree.runs import threads as run_threads
from hessfree.runs.progress import bar
from hessfree.runs.protocols import MU_STAGES, TABLES, Job, plan
from hessfree.runs.report import run_status
from hessfree.runs.results import read_results
from hessfree.runs.session import RESULTS_NAME
from hessfree.runs.summary import Outcome, outcome, summarize
from hessfree.runs.trainer import DTYPES, RunSpec, resolve_device, resume, train

__all__ = ["Job", "MU_STAGES", "Outcome", "TABLES", "describe", "plan", "reproduce", "run_job",
           "summarize"]

log = logging.getLogger(__name__)


def _eval_every(job: Job) -> int:
    """About 50 evaluations a run (at least every update for short runs)."""
    return max(1, (job.steps or 50) // 50)


def run_spec(job: Job, out: Path, device: str, dtype: str,
             threads: int | str = run_threads.AUTO) -> RunSpec:
    """The ``hessfree train`` specification of ``job``."""
    return RunSpec(experiment=job.experiment, optimizer=job.optimizer, steps=job.steps,
                   budget=job.budget, seed=job.seed, device=device, dtype=dtype, out=str(out),
                   overrides=dict(job.overrides), quiet=True, name=job.name,
                   eval_every=_eval_every(job), threads=threads)


#: seconds between two progress reports of a worker
REPORT_EVERY = 1.0


def _reporter(index: int, report: Any) -> Callable[[float], None] | None:
    """``on_progress`` of job ``index``: a callable, or a queue of a worker process."""
    if report is None or callable(report):
        return None if report is None else (lambda f: report(index, f))
    last = [0.0]

    def put(fraction: float) -> None:
        now = time.monotonic()
        if fraction >= 1.0 or now - last[0] >= REPORT_EVERY:
            last[0] = now
            report.put((index, fraction))

    return put


def run_job(job: Job, out: Path, device: str, dtype: str,
            threads: int | str = run_threads.AUTO, report: Any = None, index: int = 0
            ) -> Outcome:
    """Run ``job`` (new: train; unfinished: resume; finished: read) and say what it reached.

    A run that fails cleanly (:class:`InputError`, :class:`RunError`) is a ``failed`` outcome;
    anything else is a bug and propagates. ``report`` receives ``(index, fraction done)`` as
    the run goes: a callable, or a queue (from a worker process).
    """
    folder = out / job.experiment / job.name
    results = folder / RESULTS_NAME
    on_progress = _reporter(index, report)
    try:
        if not results.exists():
            train(run_spec(job, out, device, dtype, threads), on_progress=on_progress)
        elif not run_status(read_results(results)).startswith("finished"):
            resume(folder, steps=job.steps, budget=job.budget, quiet=True,
                   experiment=job.experiment, optimizer=job.optimizer, seed=job.seed,
                   dtype=dtype, overrides=dict(job.overrides), threads=threads,
                   on_progress=on_progress)
    except (InputError, RunError) as err:
        log.warning("%s %s: %s", job.experiment, job.name, err)
        return Outcome(job, results if results.exists() else None, "failed", error=str(err))
    return outcome(job, results)


def _long_first(job: Job) -> bool:
    """Grid runs after the others (the long HF runs start first, the short ones fill in)."""
    return isinstance(families.get(job.optimizer).table, families.Grid)


class _PlanBar:
    """The plan's progress line, in estimated seconds.

    Job ``i`` at fraction ``f`` counts ``f × estimate[i]``; a job without an estimate counts as
    the mean of the others.
    """

    def __init__(self, estimates: list[float | None], quiet: bool) -> None:
        known = [e for e in estimates if e is not None]
        fill = sum(known) / len(known) if known else 1.0
        self.weights = [fill if e is None else max(e, 1e-3) for e in estimates]
        self.done = [0.0] * len(estimates)
        self.finished = 0
        self.bar = bar(sum(self.weights), "plan", "s", quiet,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
        self._show()

    def _show(self) -> None:
        if self.bar is not None:
            self.bar.set_description_str(f"plan, {self.finished}/{len(self.done)} runs done",
                                         refresh=False)

    def report(self, index: int, fraction: float) -> None:
        """Job ``index`` has done ``fraction`` of its budget."""
        if self.bar is None:
            return
        fraction = min(1.0, max(self.done[index], fraction))
        self.done[index] = fraction
        value = sum(w * f for w, f in zip(self.weights, self.done))
        self.bar.update(max(0.0, min(value, self.bar.total) - self.bar.n))

    def finish(self, index: int) -> None:
        """Job ``index`` ended (finished, failed or found finished)."""
        self.finished += 1
        self._show()
        self.report(index, 1.0)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_jobs(job_list: list[Job], out: Path, device: str, dtype: str, jobs: int,
             threads: int | str = run_threads.AUTO, estimates: list[float | None] | None = None,
             quiet: bool = False) -> list[Outcome]:
    """Every job through :func:`run_job`, ``jobs`` at a time, under one progress line.

    More than one at a time: in worker processes. The line is :class:`_PlanBar`.
    """
    progress = _PlanBar(estimates or [None] * len(job_list), quiet)
    try:
        if jobs == 1:
            done = []
            for i, j in enumerate(job_list):
                done.append(run_job(j, out, device, dtype, threads, progress.report, i))
                progress.finish(i)
            return done
        return _in_workers(job_list, out, device, dtype, jobs, threads, progress)
    finally:
        progress.close()


def _in_workers(job_list: list[Job], out: Path, device: str, dtype: str, jobs: int,
                threads: int | str, progress: _PlanBar) -> list[Outcome]:
    """The jobs in ``jobs`` worker processes (spawned), their progress read from a queue."""
    if threads == run_threads.AUTO:  # the free cores shared among the workers, chosen here
        threads = run_threads.choose(threads, share=jobs).n
    order = sorted(range(len(job_list)), key=lambda i: _long_first(job_list[i]))
    done: dict[int, Outcome] = {}
    context = multiprocessing.get_context("spawn")  # fresh processes: safe with threads, CUDA
    with context.Manager() as manager, concurrent.futures.ProcessPoolExecutor(
            jobs, mp_context=context) as pool:
        reports = manager.Queue()
        futures = {pool.submit(run_job, job_list[i], out, device, dtype, threads, reports, i): i
                   for i in order}
        pending = set(futures)
        while pending:
            finished, pending = concurrent.futures.wait(
                pending, timeout=REPORT_EVERY, return_when=concurrent.futures.FIRST_COMPLETED)
            _drain(reports, progress)
            for future in finished:
                i = futures[future]
                try:
                    done[i] = future.result()
                except concurrent.futures.process.BrokenProcessPool as err:
                    done[i] = Outcome(job_list[i], None, "failed",
                                      error=f"its worker process died ({err}); continue with "
                                            "--resume")
                progress.finish(i)
    return [done[i] for i in range(len(job_list))]


def _drain(reports: Any, progress: _PlanBar) -> None:
    while True:
        try:
            index, fraction = reports.get_nowait()
        except queues.Empty:
            return
        progress.report(index, fraction)


def describe(table: str, fraction: float, job_list: list[Job], jobs: int
             ) -> tuple[str, list[float | None]]:
    """The plan in words, and each job's estimated seconds (None: no cost measured).

    The words: runs per experiment and family, the budget of each, the estimated time.
    """
    factor = costs.load_factor()
    estimates = [costs.estimate(j.experiment, j.optimizer, j.steps, j.budget, _eval_every(j),
                                factor) for j in job_list]
    lines = [f"reproduce {table} at f = {fraction:g}: {len(job_list)} runs"]
    groups = Counter((j.experiment, j.optimizer) for j in job_list)
    for (exp, opt), count in groups.items():
        mine = [(j, e) for j, e in zip(job_list, estimates)
                if (j.experiment, j.optimizer) == (exp, opt)]
        j0 = mine[0][0]
        each = f"{j0.steps:,} updates" if j0.steps is not None else \
            f"{j0.budget:.4g} gradient-equivalents"
        known = [e for _, e in mine if e is not None]
        took = f"about {_duration(sum(known) / len(known))} each" if known else \
            "no measured cost"
        lines.append(f"  {exp:20s} {opt:12s} {count:3d} run{'s' * (count != 1)} of {each}: "
                     f"{took}")
    known = [e for e in estimates if e is not None]
    if known:
        total = sum(known) / jobs
        missing = len(estimates) - len(known)
        lines.append(f"estimated {_duration(total)} with --jobs {jobs}"
                     + (f" (and {missing} runs without an estimate)" if missing else "")
                     + f"; from {costs.measured()}, scaled by this machine's load "
                       f"(x{factor:.2g})")
    else:
        lines.append("no estimate: no per-update cost was measured for these runs "
                     "(python benchmarks/plan_costs.py)")
    return "\n".join(lines), estimates


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _check_existing(out: Path, job_list: list[Job], resume_: bool) -> None:
    """Refuse a non-empty ``out`` without ``resume``; with it, read every results file there."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {out} exists and is not a folder")
    if not resume_:
        if out.exists() and any(out.iterdir()):
            raise InputError(f"--out: {out} is not empty; continue it with --resume or choose "
                             "another folder")
        return
    for j in job_list:
        path = out / j.experiment / j.name / RESULTS_NAME
        if path.exists():
            read_results(path)  # a damaged file: one line now, before any run starts


def reproduce(table: str, fraction: float, out: str | os.PathLike = "reproduce",
              experiments_: Sequence[str] | None = None,
              optimizers: Sequence[str] | None = None, mus: Sequence[float] | None = None,
              lrs: Sequence[float] | None = None, device: str = "cpu", dtype: str = "float32",
              jobs: int = 1, resume: bool = False, seed: int = 0,
              overrides: dict[str, Any] | None = None, summary_only: bool = False,
              seeds: Sequence[int] | int | None = None, mu_stages: str = "scaled",
              threads: int | str = run_threads.AUTO, quiet: bool = False) -> Path:
    """Run ``table``'s protocol at ``fraction`` of its budget; returns ``summary.md``'s path.

    Args:
        table: ``"table1"`` or ``"table5"``.
        fraction: the fraction of the papers' budget, in (0, 1] (the fraction rule).
        out: the folder for every run and the summary.
        experiments_: a subset of the table's experiments (default: all).
        optimizers: a subset of its optimizer families (default: all).
        mus: μ_max (table 1) or μ0 (table 5) values for CM and NAG (default: the paper's).
        lrs: the learning-rate grid (default: the paper's).
        device: where every run trains (``cpu``, ``cuda``).
        dtype: ``float32`` or ``float64``.
        jobs: runs at a time (1: one after another in this process; more: worker processes,
            where cores or devices allow).
        resume: continue unfinished runs, skip finished ones.
        seed: the seed of every run (with ``seeds`` a count: the first seed).
        overrides: extra settings for every run (e.g. a smaller ``n_train`` for a test).
        summary_only: run nothing; summarize the runs already in ``out``, finished or not
            (e.g. while the protocol runs, or after it was stopped), marking the unfinished
            and the missing ones.
        seeds: a count of seeds or a list of seeds: every cell runs once per seed.
        mu_stages: ``"scaled"`` or ``"unscaled"`` warm-up of the μ schedules.
        threads: every run's threads (``"auto"``: :func:`hessfree.runs.threads.choose`,
            the free cores shared among ``jobs`` runs).
        quiet: no plan progress line (the plan is still logged).
    """
    job_list = plan(table, fraction, experiments_, optimizers, mus, lrs, overrides, seeds, seed,
                    mu_stages)
    _checks.integer(jobs, "--jobs", minimum=1)
    _checks.choice(dtype, "--dtype", tuple(DTYPES))
    out = Path(out)
    if summary_only:
        return _summarize_existing(table, fraction, out, job_list, mu_stages)
    resolve_device(device)  # every run would fail on it: say so once, before any starts
    _check_existing(out, job_list, resume)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "plan.json", json.dumps(
        {"table": table, "fraction": fraction, "device": device, "dtype": dtype, "seed": seed,
         "mu_stages": mu_stages, "jobs": [dataclasses.asdict(j) for j in job_list]}, indent=1))
    text, estimates = describe(table, fraction, job_list, jobs)
    log.info("%s", text)
    outcomes = run_jobs(job_list, out, device, dtype, jobs, threads, estimates, quiet)
    return summarize(table, fraction, out, outcomes, mu_stages=mu_stages)


def _summarize_existing(table: str, fraction: float, out: Path, job_list: list[Job],
                        mu_stages: str) -> Path:
    if not out.is_dir():
        raise InputError(f"--out: {out} is not a folder of runs")
    planned = out / "plan.json"
    if planned.is_file():  # say how the runs there were scheduled, whatever was asked now
        mu_stages = json.loads(planned.read_text()).get("mu_stages", "unscaled")
    outcomes, missing = [], []
    for j in job_list:
        path = out / j.experiment / j.name / RESULTS_NAME
        if path.is_file():
            outcomes.append(outcome(j, path))
        else:
            missing.append(j)
    if not outcomes:
        raise InputError(f"--out: {out} holds none of the runs of this plan")
    return summarize(table, fraction, out, outcomes, missing, mu_stages)
