"""``hessfree reproduce table1`` / ``table5``: the protocols of [S13] at a fraction of their budget.

The protocols, the fraction rule and the checks of a plan are in :mod:`hessfree.runs.protocols`;
the summary in :mod:`hessfree.runs.summary`. This module runs a plan:

1. the whole plan is checked before any run starts (:func:`~hessfree.runs.protocols.plan`: every
   ``--set`` value through the typed settings of ``hessfree train``; the grids; the seeds),
   then the run options (device, dtype, ``--jobs``), the output folder, and with ``resume`` every
   results file already there (a damaged one is refused here, not half-way through);
2. every job runs by one path, :func:`run_job`: a new run is ``trainer.train`` of the job's
   :class:`~hessfree.runs.trainer.RunSpec`, an unfinished one ``trainer.resume``, a finished one
   is read; with ``jobs > 1`` the same function runs in that many worker processes (started
   fresh, ``spawn``), the long HF runs first;
3. ``summary.md``, ``summary.h5`` and one figure per experiment are written.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hessfree import _checks
from hessfree._files import write_text
from hessfree.errors import InputError, RunError
from hessfree.runs import families
from hessfree.runs.protocols import MU_STAGES, TABLES, Job, plan
from hessfree.runs.report import run_status
from hessfree.runs.results import read_results
from hessfree.runs.session import RESULTS_NAME
from hessfree.runs.summary import Outcome, outcome, summarize
from hessfree.runs.trainer import DTYPES, RunSpec, resolve_device, resume, train

__all__ = ["Job", "MU_STAGES", "Outcome", "TABLES", "plan", "reproduce", "run_job", "summarize"]

log = logging.getLogger(__name__)


def _eval_every(job: Job) -> int:
    """About 50 evaluations a run (at least every update for short runs)."""
    return max(1, (job.steps or 50) // 50)


def run_spec(job: Job, out: Path, device: str, dtype: str) -> RunSpec:
    """The ``hessfree train`` specification of ``job``."""
    return RunSpec(experiment=job.experiment, optimizer=job.optimizer, steps=job.steps,
                   budget=job.budget, seed=job.seed, device=device, dtype=dtype, out=str(out),
                   overrides=dict(job.overrides), quiet=True, name=job.name,
                   eval_every=_eval_every(job))


def run_job(job: Job, out: Path, device: str, dtype: str) -> Outcome:
    """Run ``job`` (new: train; unfinished: resume; finished: read) and say what it reached.

    A run that fails cleanly (:class:`InputError`, :class:`RunError`) is a ``failed`` outcome;
    anything else is a bug and propagates.
    """
    folder = out / job.experiment / job.name
    results = folder / RESULTS_NAME
    try:
        if not results.exists():
            train(run_spec(job, out, device, dtype))
        elif not run_status(read_results(results)).startswith("finished"):
            resume(folder, steps=job.steps, budget=job.budget, quiet=True,
                   experiment=job.experiment, optimizer=job.optimizer, seed=job.seed,
                   dtype=dtype, overrides=dict(job.overrides))
    except (InputError, RunError) as err:
        log.warning("%s %s: %s", job.experiment, job.name, err)
        return Outcome(job, results if results.exists() else None, "failed", error=str(err))
    return outcome(job, results)


def _long_first(job: Job) -> bool:
    """Grid runs after the others (the long HF runs start first, the short ones fill in)."""
    return isinstance(families.get(job.optimizer).table, families.Grid)


def run_jobs(job_list: list[Job], out: Path, device: str, dtype: str, jobs: int
             ) -> list[Outcome]:
    """Every job through :func:`run_job`, ``jobs`` at a time (in worker processes when > 1)."""
    if jobs == 1:
        return [run_job(j, out, device, dtype) for j in job_list]
    order = sorted(range(len(job_list)), key=lambda i: _long_first(job_list[i]))
    done: dict[int, Outcome] = {}
    context = multiprocessing.get_context("spawn")  # fresh processes: safe with threads, CUDA
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = {pool.submit(run_job, job_list[i], out, device, dtype): i for i in order}
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            try:
                done[i] = future.result()
            except concurrent.futures.process.BrokenProcessPool as err:
                job = job_list[i]
                done[i] = Outcome(job, None, "failed",
                                  error=f"its worker process died ({err}); continue with "
                                        "--resume")
    return [done[i] for i in range(len(job_list))]


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
              seeds: Sequence[int] | int | None = None, mu_stages: str = "scaled") -> Path:
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
    outcomes = run_jobs(job_list, out, device, dtype, jobs)
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
