"""``hessfree reproduce table1`` / ``table5``: the protocols of [S13] at a fraction of their budget.

Table 1 ([S13 §3, Table 1]) on ``curves-ae``, ``mnist-ae``, ``faces-ae``:

* SGD, CM and NAG: minibatches of 200, the Eq. 5 μ schedule capped at each μ_max of
  {0.9, 0.99, 0.995, 0.999} (SGD: μ = 0), μ reduced to 0.9 for the last updates, and for each
  cell the best learning rate of {0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001} by final training
  error;
* HF* (Martens 2010, HFDemo settings) at the same gradient-equivalents as one NAG run;
* HF† (the momentum-like HF of [S13 A.6]) on its own phase schedule.

Table 5 ([S13 §4, Table 5]) on ``addition``, ``multiplication``, ``memorization-5bit`` and
``memorization-20bit``: NAG and CM with minibatches of 100 sequences, μ = 0.9 for 1000 updates
then μ0 of {0, 0.9, 0.98, 0.995}, the best learning rate of {1e-3, 1e-4, 1e-5, 1e-6}; and HF with
structural damping ([M&S11], [HF-RNN]) at the same gradient-equivalents as one NAG run.

**The fraction rule** (one rule for every schedule): at ``fraction = f``, everything that counts
updates over the whole run is multiplied by ``f`` — NAG's 750,000 (Table 5: 50,000) updates and
its final low-μ stretch of 1000 updates, HF*'s budget (which is NAG's in gradient-equivalents),
and every length and time point of the A.6 phases (``MomentumHFSettings.fraction``). What
happens *per update* is unchanged: minibatch sizes, Eq. 5's 250-update stages (μ's warm-up is a
count of updates, so short runs reach a lower μ, which the table reports), the RNN schedule's
1000 warm updates, learning rates, CG steps per update, ζ and ε values, weight decay. So ``f = 1``
is the papers' protocol and a small ``f`` is the same protocol cut short, never a different one.

Every run writes its own results file under ``<out>/<experiment>/<cell>-lr<lr>/``; at the end
``summary.md`` (the table's layout with the papers' numbers beside ours, the budget used, the
best learning rate per cell), ``summary.h5`` (the same numbers) and one figure per experiment
(training error against gradient-equivalents and against seconds, every cell's best run).
``resume=True`` continues unfinished runs and skips finished ones.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hessfree import _checks
from hessfree._files import save_figure
from hessfree.errors import InputError, RunError
from hessfree.runs import experiments
from hessfree.runs.presets.autoencoders import TABLE1_FULL
from hessfree.runs.presets.rnn import TABLE5_FULL
from hessfree.runs.report import run_status
from hessfree.runs.results import read_results

__all__ = ["Job", "Outcome", "TABLES", "plan", "reproduce", "summarize"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Protocol:
    """One of the papers' tables: what runs, on what, with which grids."""

    name: str
    experiments: tuple[str, ...]
    updates: int             # NAG updates at f = 1
    batch_size: int          # NAG minibatch
    mus: tuple[float, ...]   # μ_max (Eq. 5) or μ0 (RNN schedule) values, 0 = SGD
    lrs: tuple[float, ...]   # learning-rate grid
    optimizers: tuple[str, ...]
    final_steps: int         # Eq. 5's final low-μ stretch at f = 1 (0: none)
    schedule: str            # "sutskever" or "rnn"


TABLES = {
    # [S13 §3, Table 1]
    "table1": Protocol("table1", ("curves-ae", "mnist-ae", "faces-ae"), 750_000, 200,
                       (0.0, 0.9, 0.99, 0.995, 0.999),
                       (0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001),
                       ("sgd", "cm", "nag", "hf", "hf-momentum"), 1000, "sutskever"),
    # [S13 §4, Table 5]
    "table5": Protocol("table5", ("addition", "multiplication", "memorization-5bit",
                                  "memorization-20bit"), 50_000, 100,
                       (0.0, 0.9, 0.98, 0.995), (1e-3, 1e-4, 1e-5, 1e-6),
                       ("sgd", "cm", "nag", "hf"), 0, "rnn"),
}


@dataclass(frozen=True)
class Job:
    """One training run of a protocol.

    Attributes:
        experiment: the experiment.
        cell: the table's column (``"0.99N"``, ``"0.9M"``, ``"0"`` for SGD, ``"HF*"``,
            ``"HF†"`` / ``"HF"``).
        optimizer: the optimizer.
        name: the run folder's name.
        overrides: settings (``--set``).
        steps / budget: the run's budget (updates, or gradient-equivalents).
        lr: the learning rate (momentum methods), else None.
    """

    experiment: str
    cell: str
    optimizer: str
    name: str
    overrides: dict[str, Any]
    steps: int | None = None
    budget: float | None = None
    lr: float | None = None


@dataclass
class Outcome:
    """A job and what its run reached."""

    job: Job
    path: Path | None
    status: str
    train_error: float = math.nan
    test_error: float = math.nan
    updates: int = 0
    grad_equiv: float = math.nan
    seconds: float = math.nan
    error: str = ""


def _cell(optimizer: str, mu: float, protocol: Protocol) -> str:
    if optimizer == "sgd":
        return "0"
    return f"{mu:g}{'N' if optimizer == 'nag' else 'M'}"


def _applicable(experiment: str, optimizer: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides that ``optimizer``'s settings on ``experiment`` have."""
    exp = experiments.get(experiment)
    data, opt = exp.data_defaults(), exp.optimizer_defaults(optimizer)
    keys = set(data.keys()) | set(opt.keys())
    return {k: v for k, v in overrides.items() if k in keys}


def _n_train(experiment: str, overrides: dict[str, Any]) -> int:
    exp = experiments.get(experiment)
    data, _ = exp.settings_for("nag", {k: v for k, v in overrides.items()
                                       if k in exp.data_defaults().keys()})
    return int(data.n_train)


def plan(table: str, fraction: float, experiments_: Sequence[str] | None = None,
         optimizers: Sequence[str] | None = None, mus: Sequence[float] | None = None,
         lrs: Sequence[float] | None = None, overrides: dict[str, Any] | None = None
         ) -> list[Job]:
    """The jobs of ``table`` at ``fraction`` of its budget (see the module docstring)."""
    if table not in TABLES:
        raise InputError(f"table: expected one of {sorted(TABLES)}, got {table!r}")
    p = TABLES[table]
    f = _checks.number(fraction, "--fraction", 0.0, 1.0, strict_min=True)
    exps = tuple(experiments_ or p.experiments)
    for e in exps:
        if e not in p.experiments:
            raise InputError(f"--experiments: {e!r} is not in {table}; choose from "
                             f"{', '.join(p.experiments)}")
    opts = tuple(optimizers or p.optimizers)
    for o in opts:
        if o not in p.optimizers:
            raise InputError(f"--optimizers: {o!r} is not in {table}; choose from "
                             f"{', '.join(p.optimizers)}")
    mu_grid = tuple(mus if mus is not None else (m for m in p.mus if m > 0))
    for m in mu_grid:
        _checks.probability(m, "--mu")
    lr_grid = tuple(lrs or p.lrs)
    for lr in lr_grid:
        _checks.number(lr, "--lrs", 0.0, strict_min=True)
    given = dict(overrides or {})
    steps = max(1, int(round(p.updates * f)))
    jobs: list[Job] = []
    used: set[str] = set()
    for exp in exps:
        n_train = _n_train(exp, given)
        for opt in opts:
            extra = _applicable(exp, opt, given)
            used |= set(extra)
            if opt in ("sgd", "cm", "nag"):
                for mu in ((0.0,) if opt == "sgd" else mu_grid):
                    cell = _cell(opt, mu, p)
                    for lr in lr_grid:
                        sched = ({"schedule": "sutskever", "mu_max": mu,
                                  "final_steps": int(round(p.final_steps * f))}
                                 if p.schedule == "sutskever" else
                                 {"schedule": "rnn", "mu0": mu})
                        over = {**extra, "lr": lr, "batch_size": p.batch_size,
                                **({} if opt == "sgd" else sched)}
                        jobs.append(Job(exp, cell, opt, f"{opt}-{cell}-lr{lr:g}", over,
                                        steps=steps, lr=lr))
            elif opt == "hf":
                budget = steps * p.batch_size / n_train
                jobs.append(Job(exp, "HF*" if table == "table1" else "HF", "hf", "hf", extra,
                                budget=budget))
            elif opt == "hf-momentum":
                exp_ = experiments.get(exp)
                over = {**extra, "fraction": f}
                _, settings = exp_.settings_for("hf-momentum", over)
                updates = settings.total_updates(n_train)
                if updates is None:
                    raise InputError(f"{exp}: its hf-momentum settings have no bounded phases")
                jobs.append(Job(exp, "HF†", "hf-momentum", "hf-momentum", over, steps=updates))
    unused = sorted(set(given) - used)
    if unused:
        raise InputError(f"--set: no run of {table} has the setting(s) {unused}")
    return jobs


def _outcome(job: Job, path: Path) -> Outcome:
    res = read_results(path)
    ev, st = res.eval, res.steps
    last = {k: (float(v[-1]) if len(v) else math.nan) for k, v in ev.items()}
    return Outcome(job, path, run_status(res), last.get("train_error", math.nan),
                   last.get("test_error", math.nan), len(st.get("step", [])),
                   float(np.sum(st["grad_equiv"])) if "grad_equiv" in st else math.nan,
                   float(np.sum(st["seconds"])) if "seconds" in st else math.nan)


def _argv(job: Job, out: Path, device: str, dtype: str, seed: int, eval_every: int) -> list[str]:
    argv = ["train", job.experiment, "--optimizer", job.optimizer, "--out", str(out),
            "--name", job.name, "--device", device, "--dtype", dtype, "--seed", str(seed),
            "--eval-every", str(eval_every), "--quiet"]
    argv += ["--steps", str(job.steps)] if job.steps is not None else \
        ["--budget", repr(job.budget)]
    for k, v in job.overrides.items():
        argv += ["--set", f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}"]
    return argv


def _eval_every(job: Job) -> int:
    """About 50 evaluations a run (at least every update for short runs)."""
    return max(1, (job.steps or 50) // 50)


def _run_one(job: Job, out: Path, device: str, dtype: str, seed: int, resume: bool,
             subprocess_: bool) -> Outcome:
    folder = out / job.experiment / job.name
    results = folder / "results.h5"
    if results.exists():
        status = run_status(read_results(results))
        if status.startswith("finished"):
            return _outcome(job, results)
        if not resume:
            raise InputError(f"{folder} holds an unfinished run; continue with --resume")
    from hessfree.runs.trainer import RunSpec, train
    from hessfree.runs.trainer import resume as resume_run

    try:
        if subprocess_:
            budget = ["--steps", str(job.steps)] if job.steps is not None else \
                ["--budget", repr(job.budget)]
            argv = ["train", "--resume", str(folder), *budget, "--quiet"] if results.exists() \
                else _argv(job, out, device, dtype, seed, _eval_every(job))
            cmd = [sys.executable, "-m", "hessfree", *argv]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines()
                raise RunError(lines[-1] if lines else f"exit code {done.returncode}")
        elif results.exists():
            resume_run(folder, steps=job.steps, budget=job.budget, quiet=True)
        else:
            train(RunSpec(experiment=job.experiment, optimizer=job.optimizer, steps=job.steps,
                          budget=job.budget, seed=seed, device=device, dtype=dtype,
                          out=str(out), overrides=dict(job.overrides), quiet=True,
                          name=job.name, eval_every=_eval_every(job)))
    except (InputError, RunError) as err:
        log.warning("%s %s: %s", job.experiment, job.name, err)
        return Outcome(job, results if results.exists() else None, "failed", error=str(err))
    return _outcome(job, results)


def reproduce(table: str, fraction: float, out: str | os.PathLike = "reproduce",
              experiments_: Sequence[str] | None = None,
              optimizers: Sequence[str] | None = None, mus: Sequence[float] | None = None,
              lrs: Sequence[float] | None = None, device: str = "cpu", dtype: str = "float32",
              jobs: int = 1, resume: bool = False, seed: int = 0,
              overrides: dict[str, Any] | None = None, summary_only: bool = False) -> Path:
    """Run ``table``'s protocol at ``fraction`` of its budget; returns ``summary.md``'s path.

    Args:
        table: ``"table1"`` or ``"table5"``.
        fraction: the fraction of the papers' budget, in (0, 1] (the module's rule).
        out: the folder for every run and the summary.
        experiments_: a subset of the table's experiments (default: all).
        optimizers: a subset of its optimizers (default: all).
        mus: μ_max (table 1) or μ0 (table 5) values for CM and NAG (default: the paper's).
        lrs: the learning-rate grid (default: the paper's).
        device: where every run trains (``cpu``, ``cuda``).
        dtype: ``float32`` or ``float64``.
        jobs: runs at a time (1: one after another in this process; more: subprocesses,
            where cores or devices allow).
        resume: continue unfinished runs, skip finished ones.
        seed: the seed of every run.
        overrides: extra settings for every run (e.g. a smaller ``n_train`` for a test).
        summary_only: run nothing; summarize the runs already in ``out``, finished or not
            (e.g. while the protocol runs, or after it was stopped), marking the unfinished
            and the missing ones.
    """
    from hessfree.runs.trainer import DTYPES, MAX_SEED, resolve_device

    job_list = plan(table, fraction, experiments_, optimizers, mus, lrs, overrides)
    _checks.integer(jobs, "--jobs", minimum=1)
    _checks.integer(seed, "--seed", 0, MAX_SEED)
    _checks.choice(dtype, "--dtype", tuple(DTYPES))
    out = Path(out)
    if summary_only:
        return _summarize_existing(table, fraction, out, job_list)
    resolve_device(device)  # every run would fail on it: say so once, before any starts
    if out.exists() and any(out.iterdir()) and not resume:
        raise InputError(f"--out: {out} is not empty; continue it with --resume or choose "
                         "another folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps(
        {"table": table, "fraction": fraction, "device": device, "dtype": dtype, "seed": seed,
         "jobs": [dataclasses.asdict(j) for j in job_list]}, indent=1))
    if jobs == 1:
        outcomes = [_run_one(j, out, device, dtype, seed, resume, False) for j in job_list]
    else:  # the long HF runs first, so the short ones fill the gaps at the end
        order = sorted(job_list, key=lambda j: j.optimizer not in ("hf-momentum", "hf"))
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            done = dict(zip(map(id, order), pool.map(
                lambda j: _run_one(j, out, device, dtype, seed, resume, True), order)))
        outcomes = [done[id(j)] for j in job_list]
    return summarize(table, fraction, out, outcomes)


def _summarize_existing(table: str, fraction: float, out: Path, job_list: list[Job]) -> Path:
    if not out.is_dir():
        raise InputError(f"--out: {out} is not a folder of runs")
    outcomes, missing = [], []
    for j in job_list:
        path = out / j.experiment / j.name / "results.h5"
        if path.is_file():
            outcomes.append(_outcome(j, path))
        else:
            missing.append(j)
    if not outcomes:
        raise InputError(f"--out: {out} holds none of the runs of this plan")
    return summarize(table, fraction, out, outcomes, missing)


# -- the summary --------------------------------------------------------------------------------
def _paper(table: str, experiment: str, cell: str) -> float | None:
    if table == "table1":
        return TABLE1_FULL.get(experiment, {}).get(cell)
    return TABLE5_FULL.get(experiment.replace("-", "_"), {}).get(cell)


def _columns(table: str, outcomes: list[Outcome]) -> list[str]:
    order = (["0"] + [f"{m:g}N" for m in TABLES[table].mus if m] +
             [f"{m:g}M" for m in TABLES[table].mus if m] + ["HF†", "HF*", "HF"])
    present = {o.job.cell for o in outcomes}
    return [c for c in order if c in present]


def _best(outcomes: list[Outcome], experiment: str, cell: str) -> Outcome | None:
    runs = [o for o in outcomes if o.job.experiment == experiment and o.job.cell == cell
            and math.isfinite(o.train_error)]
    return min(runs, key=lambda o: o.train_error) if runs else None


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.3g}"


def summarize(table: str, fraction: float, out: Path, outcomes: list[Outcome],
              missing: Sequence[Job] = ()) -> Path:
    """Write ``summary.md``, ``summary.h5`` and one figure per experiment; return the markdown.

    ``missing``: planned runs that have no results yet (listed, not tabled).
    """
    exps = list(dict.fromkeys(o.job.experiment for o in outcomes))
    cols = _columns(table, outcomes)
    metric = "training squared error" if table == "table1" else "zero-one error (test)"
    lines = [f"# {table} at fraction {fraction:g} of the papers' budget", "",
             f"Each cell: ours (the paper's) — {metric}; for CM/NAG the best learning rate of "
             "the grid. Columns: μ_max (Table 1) or μ0 (Table 5) with N = NAG, M = CM; 0 = "
             "SGD.", "",
             "| experiment | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    best: dict[tuple[str, str], Outcome] = {}
    for exp in exps:
        cells = []
        for c in cols:
            b = _best(outcomes, exp, c)
            if b is not None:
                best[exp, c] = b
            value = b.test_error if (b and table == "table5") else (b.train_error if b else None)
            cells.append(f"{_fmt(value)} ({_fmt(_paper(table, exp, c))})")
        lines.append(f"| {exp} | " + " | ".join(cells) + " |")
    lines += ["", "Budget used and best learning rate:", "",
              "| experiment | cell | optimizer | best lr | updates | gradient-equivalents | "
              "seconds | status |", "|---|---|---|---|---|---|---|---|"]
    for (exp, c), b in best.items():
        lines.append(f"| {exp} | {c} | {b.job.optimizer} | {_fmt(b.job.lr)} | {b.updates} | "
                     f"{_fmt(b.grad_equiv)} | {_fmt(b.seconds)} | {b.status} |")
    unfinished = [o for o in outcomes
                  if o.status != "failed" and not o.status.startswith("finished")]
    if unfinished:
        lines += ["", "Unfinished runs (their last evaluation is tabled): " + "; ".join(
            f"{o.job.experiment} {o.job.name} ({o.updates} updates)" for o in unfinished)]
    if missing:
        lines += ["", "Not started: " + ", ".join(f"{j.experiment} {j.name}" for j in missing)]
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        lines += ["", "Runs that failed: " + "; ".join(f"{o.job.experiment} {o.job.name}: "
                                                       f"{o.error}" for o in failed)]
    figures = _figures(table, out, exps, cols, best)
    lines += [""] + [f"![{e}]({p.name})" for e, p in figures.items()]
    md = out / "summary.md"
    md.write_text("\n".join(lines) + "\n")
    _write_h5(out / "summary.h5", table, fraction, exps, cols, best)
    return md


def _write_h5(path: Path, table: str, fraction: float, exps: list[str], cols: list[str],
              best: dict[tuple[str, str], Outcome]) -> None:
    import h5py

    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs.update({"table": table, "fraction": fraction,
                        "experiments": json.dumps(exps), "cells": json.dumps(cols)})
        for name, get in (("train_error", lambda b: b.train_error),
                          ("test_error", lambda b: b.test_error),
                          ("best_lr", lambda b: b.job.lr if b.job.lr else math.nan),
                          ("updates", lambda b: float(b.updates)),
                          ("grad_equiv", lambda b: b.grad_equiv),
                          ("seconds", lambda b: b.seconds)):
            f[name] = np.array([[get(best[e, c]) if (e, c) in best else math.nan for c in cols]
                                for e in exps])
        f["paper"] = np.array([[v if (v := _paper(table, e, c)) is not None else math.nan
                                for c in cols] for e in exps])
        f.create_dataset("runs", data=np.array(
            [[str(best[e, c].path) if (e, c) in best else "" for c in cols] for e in exps],
            dtype=h5py.string_dtype()))
    os.replace(tmp, path)


def _figures(table: str, out: Path, exps: list[str], cols: list[str],
             best: dict[tuple[str, str], Outcome]) -> dict[str, Path]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # the [plot] extra is not installed: the tables are still written
        log.warning("matplotlib is not installed: no figures")
        return {}
    written = {}
    for exp in exps:
        fig = Figure(figsize=(11, 4.2), dpi=100)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2)
        drawn = False
        for c in cols:
            b = best.get((exp, c))
            if b is None or b.path is None:
                continue
            ev = read_results(b.path).eval
            y = ev["test_error" if table == "table5" else "train_error"]
            label = f"{c} ({b.job.optimizer}{'' if b.job.lr is None else f', lr {b.job.lr:g}'})"
            for ax, x in zip(axes, ("grad_equiv", "seconds")):
                ax.plot(ev[x], y, label=label)
            drawn = True
        if not drawn:
            continue
        for ax, x in zip(axes, ("gradient-equivalents", "seconds")):
            ax.set_xlabel(x)
            ax.set_ylabel("test zero-one error" if table == "table5" else "training error")
            ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{exp}: {table} protocol")
        fig.tight_layout()
        written[exp] = save_figure(fig, out / f"{exp}.png")
    return written

