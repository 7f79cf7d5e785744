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
every length and time point of the A.6 phases (``MomentumHFSettings.fraction``), and (with
``mu_stages="scaled"``, the default) the μ schedules' warm-up: Eq. 5's 250-update stages become
``max(1, round(250 f))`` updates and the RNN schedule's 1000 warm updates ``round(1000 f)``, so
μ reaches μ_max (0.999 from update 124,750 of 750,000 at f = 1, i.e. after the same sixth of
the run) and a "0.999" cell means 0.999. ``mu_stages="unscaled"`` keeps them at 250 and 1000
updates, as a count per update; then a short run never reaches the higher μ_max (at f = 0.02,
k = ⌊t/250⌋ ≤ 59, so μ ≤ 1 − 1/120 ≈ 0.992). Either way ``summary.md`` and ``summary.h5`` give
the largest μ each cell's runs reached (read from their rows), and say which was used. What
happens *per update* is unchanged: minibatch sizes, learning rates, CG steps per update, ζ and
ε values, weight decay. So ``f = 1`` is the papers' protocol and a small ``f`` is the same
protocol on a shorter clock, never a different one.

``seeds`` runs every cell once per seed (run folders ``<name>-seed<s>`` when there is more than
one); the summary gives the mean and the spread (standard deviation, min and max) over seeds of
each learning rate, the best learning rate by mean, and whether it lies on the edge of the grid
searched (then a better one may lie outside it).

Every run writes its own results file under ``<out>/<experiment>/<name>/``; at the end
``summary.md`` (the table's layout with the papers' numbers beside ours, the budget used, the
best learning rate per cell, the μ reached), ``summary.h5`` (the same numbers, and one row per
run) and one figure per experiment (training error against gradient-equivalents and against
seconds, every cell's best learning rate, one line per seed). ``resume=True`` continues
unfinished runs and skips finished ones.
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

__all__ = ["Job", "MU_STAGES", "Outcome", "TABLES", "outcome", "plan", "reproduce", "summarize"]

log = logging.getLogger(__name__)


#: how the μ schedules' warm-up follows the fraction (module docstring)
MU_STAGES = ("scaled", "unscaled")
#: Eq. 5's stage and the RNN schedule's warm phase at f = 1, in updates ([S13 §3, §4])
EQ5_STAGE, RNN_WARM = 250, 1000


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
        seed: the run's seed.
    """

    experiment: str
    cell: str
    optimizer: str
    name: str
    overrides: dict[str, Any]
    steps: int | None = None
    budget: float | None = None
    lr: float | None = None
    seed: int = 0


@dataclass
class Outcome:
    """A job and what its run reached (``mu_reached``: the largest μ in its rows, momentum)."""

    job: Job
    path: Path | None
    status: str
    train_error: float = math.nan
    test_error: float = math.nan
    updates: int = 0
    grad_equiv: float = math.nan
    seconds: float = math.nan
    error: str = ""
    mu_reached: float = math.nan


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


def _seeds(seeds: Sequence[int] | int | None, seed: int) -> tuple[int, ...]:
    """``None``: ``(seed,)``; an integer N: N seeds from ``seed``; a list: those seeds."""
    from hessfree.runs.trainer import MAX_SEED

    if seeds is None:
        return (seed,)
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        _checks.integer(seeds, "--seeds", minimum=1)
        seeds = range(seed, seed + seeds)
    out = tuple(_checks.integer(s, "--seeds", 0, MAX_SEED) for s in seeds)
    if not out or len(set(out)) != len(out):
        raise InputError(f"--seeds: expected a count or distinct seeds, got {list(out)}")
    return out


def _schedule(p: Protocol, mu: float, f: float, mu_stages: str) -> dict[str, Any]:
    """The μ-schedule settings of a CM/NAG cell at fraction ``f`` (module docstring)."""
    scaled = mu_stages == "scaled"
    if p.schedule == "sutskever":
        return {"schedule": "sutskever", "mu_max": mu,
                "final_steps": int(round(p.final_steps * f)),
                "mu_stage": max(1, int(round(EQ5_STAGE * f))) if scaled else EQ5_STAGE}
    return {"schedule": "rnn", "mu0": mu,
            "warm_steps": int(round(RNN_WARM * f)) if scaled else RNN_WARM}


def plan(table: str, fraction: float, experiments_: Sequence[str] | None = None,
         optimizers: Sequence[str] | None = None, mus: Sequence[float] | None = None,
         lrs: Sequence[float] | None = None, overrides: dict[str, Any] | None = None,
         seeds: Sequence[int] | int | None = None, seed: int = 0,
         mu_stages: str = "scaled") -> list[Job]:
    """The jobs of ``table`` at ``fraction`` of its budget (see the module docstring).

    ``seeds``: a count (that many seeds from ``seed``) or a list; None: ``seed`` alone.
    """
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
    _checks.choice(mu_stages, "--mu-stages", MU_STAGES)
    seed_list = _seeds(seeds, seed)
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
                        sched = _schedule(p, mu, f, mu_stages)
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
    many = len(seed_list) > 1
    return [dataclasses.replace(j, seed=s, name=f"{j.name}-seed{s}" if many else j.name)
            for j in jobs for s in seed_list]


def outcome(job: Job, path: Path) -> Outcome:
    """What the run of ``job`` in ``path`` reached (its last evaluation, its rows' totals)."""
    res = read_results(path)
    ev, st = res.eval, res.steps
    last = {k: (float(v[-1]) if len(v) else math.nan) for k, v in ev.items()}
    mu = st.get("mu")
    return Outcome(job, path, run_status(res), last.get("train_error", math.nan),
                   last.get("test_error", math.nan), len(st.get("step", [])),
                   float(np.sum(st["grad_equiv"])) if "grad_equiv" in st else math.nan,
                   float(np.sum(st["seconds"])) if "seconds" in st else math.nan,
                   mu_reached=float(np.max(mu)) if mu is not None and len(mu) else math.nan)


def _argv(job: Job, out: Path, device: str, dtype: str, eval_every: int) -> list[str]:
    argv = ["train", job.experiment, "--optimizer", job.optimizer, "--out", str(out),
            "--name", job.name, "--device", device, "--dtype", dtype, "--seed", str(job.seed),
            "--eval-every", str(eval_every), "--quiet"]
    argv += ["--steps", str(job.steps)] if job.steps is not None else \
        ["--budget", repr(job.budget)]
    for k, v in job.overrides.items():
        argv += ["--set", f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}"]
    return argv


def _eval_every(job: Job) -> int:
    """About 50 evaluations a run (at least every update for short runs)."""
    return max(1, (job.steps or 50) // 50)


def _run_one(job: Job, out: Path, device: str, dtype: str, resume: bool,
             subprocess_: bool) -> Outcome:
    folder = out / job.experiment / job.name
    results = folder / "results.h5"
    if results.exists():
        status = run_status(read_results(results))
        if status.startswith("finished"):
            return outcome(job, results)
        if not resume:
            raise InputError(f"{folder} holds an unfinished run; continue with --resume")
    from hessfree.runs.trainer import RunSpec, train
    from hessfree.runs.trainer import resume as resume_run

    try:
        if subprocess_:
            budget = ["--steps", str(job.steps)] if job.steps is not None else \
                ["--budget", repr(job.budget)]
            argv = ["train", "--resume", str(folder), *budget, "--quiet"] if results.exists() \
                else _argv(job, out, device, dtype, _eval_every(job))
            cmd = [sys.executable, "-m", "hessfree", *argv]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines()
                raise RunError(lines[-1] if lines else f"exit code {done.returncode}")
        elif results.exists():
            resume_run(folder, steps=job.steps, budget=job.budget, quiet=True)
        else:
            train(RunSpec(experiment=job.experiment, optimizer=job.optimizer, steps=job.steps,
                          budget=job.budget, seed=job.seed, device=device, dtype=dtype,
                          out=str(out), overrides=dict(job.overrides), quiet=True,
                          name=job.name, eval_every=_eval_every(job)))
    except (InputError, RunError) as err:
        log.warning("%s %s: %s", job.experiment, job.name, err)
        return Outcome(job, results if results.exists() else None, "failed", error=str(err))
    return outcome(job, results)


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
        seed: the seed of every run (with ``seeds`` a count: the first seed).
        seeds: a count of seeds or a list of seeds: every cell runs once per seed.
        mu_stages: ``"scaled"`` or ``"unscaled"`` warm-up of the μ schedules (module docstring).
        overrides: extra settings for every run (e.g. a smaller ``n_train`` for a test).
        summary_only: run nothing; summarize the runs already in ``out``, finished or not
            (e.g. while the protocol runs, or after it was stopped), marking the unfinished
            and the missing ones.
    """
    from hessfree.runs.trainer import DTYPES, MAX_SEED, resolve_device

    _checks.integer(seed, "--seed", 0, MAX_SEED)
    job_list = plan(table, fraction, experiments_, optimizers, mus, lrs, overrides, seeds, seed,
                    mu_stages)
    _checks.integer(jobs, "--jobs", minimum=1)
    _checks.choice(dtype, "--dtype", tuple(DTYPES))
    out = Path(out)
    if summary_only:
        return _summarize_existing(table, fraction, out, job_list, mu_stages)
    resolve_device(device)  # every run would fail on it: say so once, before any starts
    if out.exists() and any(out.iterdir()) and not resume:
        raise InputError(f"--out: {out} is not empty; continue it with --resume or choose "
                         "another folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps(
        {"table": table, "fraction": fraction, "device": device, "dtype": dtype, "seed": seed,
         "mu_stages": mu_stages, "jobs": [dataclasses.asdict(j) for j in job_list]}, indent=1))
    if jobs == 1:
        outcomes = [_run_one(j, out, device, dtype, resume, False) for j in job_list]
    else:  # the long HF runs first, so the short ones fill the gaps at the end
        order = sorted(job_list, key=lambda j: j.optimizer not in ("hf-momentum", "hf"))
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            done = dict(zip(map(id, order), pool.map(
                lambda j: _run_one(j, out, device, dtype, resume, True), order)))
        outcomes = [done[id(j)] for j in job_list]
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
        path = out / j.experiment / j.name / "results.h5"
        if path.is_file():
            outcomes.append(outcome(j, path))
        else:
            missing.append(j)
    if not outcomes:
        raise InputError(f"--out: {out} holds none of the runs of this plan")
    return summarize(table, fraction, out, outcomes, missing, mu_stages)


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


def _metric(table: str, o: Outcome) -> float:
    """The number a cell reports: training error (Table 1), test zero-one error (Table 5)."""
    return o.train_error if table == "table1" else o.test_error


@dataclass
class Cell:
    """One cell of the table: its runs at the best learning rate (by the mean over seeds).

    Attributes:
        runs: the runs at the chosen learning rate, one per seed, that reached an evaluation.
        lr: the chosen learning rate (None for HF).
        grid: the learning rates searched for the cell (that reached an evaluation).
        mean / std / low / high: the reported metric over ``runs`` (std 0 for one seed).
        mu_reached: the largest μ any of ``runs`` used (NaN for HF).
    """

    runs: list[Outcome]
    lr: float | None
    grid: tuple[float, ...]
    mean: float
    std: float
    low: float
    high: float
    mu_reached: float

    @property
    def on_edge(self) -> bool:
        """The best learning rate is the grid's largest or smallest (a grid of at least two)."""
        return self.lr is not None and len(self.grid) > 1 and self.lr in (min(self.grid),
                                                                           max(self.grid))


def _cell_of(table: str, outcomes: list[Outcome], experiment: str, cell: str) -> Cell | None:
    runs = [o for o in outcomes if o.job.experiment == experiment and o.job.cell == cell
            and math.isfinite(_metric(table, o))]
    if not runs:
        return None
    by_lr: dict[float | None, list[Outcome]] = {}
    for o in runs:
        by_lr.setdefault(o.job.lr, []).append(o)
    means = {lr: float(np.mean([_metric(table, o) for o in rs])) for lr, rs in by_lr.items()}
    lr = min(means, key=lambda k: means[k])
    values = np.array([_metric(table, o) for o in by_lr[lr]])
    mus = [o.mu_reached for o in by_lr[lr] if math.isfinite(o.mu_reached)]
    grid = tuple(sorted(k for k in by_lr if k is not None))
    return Cell(sorted(by_lr[lr], key=lambda o: o.job.seed), lr, grid, means[lr],
                float(values.std(ddof=1)) if len(values) > 1 else 0.0, float(values.min()),
                float(values.max()), max(mus) if mus else math.nan)


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.3g}"


def _value(c: Cell) -> str:
    return _fmt(c.mean) if len(c.runs) == 1 else f"{_fmt(c.mean)} ± {_fmt(c.std)}"


def summarize(table: str, fraction: float, out: Path, outcomes: list[Outcome],
              missing: Sequence[Job] = (), mu_stages: str = "scaled") -> Path:
    """Write ``summary.md``, ``summary.h5`` and one figure per experiment; return the markdown.

    ``missing``: planned runs that have no results yet (listed, not tabled). ``mu_stages``: the
    warm-up the momentum runs used (said in the summary).
    """
    exps = list(dict.fromkeys(o.job.experiment for o in outcomes))
    cols = _columns(table, outcomes)
    metric = "training squared error" if table == "table1" else "zero-one error (test)"
    seeds = sorted({o.job.seed for o in outcomes})
    stages = (f"Eq. 5's stages and the RNN warm-up scaled with the fraction "
              f"({max(1, round(EQ5_STAGE * fraction))} and {round(RNN_WARM * fraction)} "
              "updates)" if mu_stages == "scaled" else
              f"Eq. 5's stages and the RNN warm-up unscaled ({EQ5_STAGE} and {RNN_WARM} "
              "updates)")
    lines = [f"# {table} at fraction {fraction:g} of the papers' budget", "",
             f"Each cell: ours (the paper's) — {metric}; for CM/NAG at the learning rate of the "
             f"grid with the best mean over {len(seeds)} seed(s) {seeds}, as mean ± standard "
             "deviation when there are several. Columns: μ_max (Table 1) or μ0 (Table 5) with "
             f"N = NAG, M = CM; 0 = SGD. μ schedules: {stages}; the μ each cell reached is "
             "tabled below.", "",
             "| experiment | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    best: dict[tuple[str, str], Cell] = {}
    for exp in exps:
        cells = []
        for c in cols:
            b = _cell_of(table, outcomes, exp, c)
            if b is not None:
                best[exp, c] = b
            cells.append(f"{_value(b) if b else '-'} ({_fmt(_paper(table, exp, c))})")
        lines.append(f"| {exp} | " + " | ".join(cells) + " |")
    lines += ["", "Per cell: the best learning rate (by the mean over seeds; \\* = on the edge of "
              "the grid searched), the grid, the μ reached, the spread over seeds and the "
              "budget used (the first seed's run):", "",
              "| experiment | cell | optimizer | best lr | grid | μ reached | seeds | min | max "
              "| updates | gradient-equivalents | seconds | status |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (exp, c), b in best.items():
        r = b.runs[0]
        lr = "-" if b.lr is None else f"{_fmt(b.lr)}{' *' if b.on_edge else ''}"
        grid = ", ".join(_fmt(x) for x in b.grid) or "-"
        lines.append(f"| {exp} | {c} | {r.job.optimizer} | {lr} | {grid} | "
                     f"{_fmt(b.mu_reached)} | {len(b.runs)} | {_fmt(b.low)} | {_fmt(b.high)} | "
                     f"{r.updates} | {_fmt(r.grad_equiv)} | {_fmt(r.seconds)} | {r.status} |")
    edges = [f"{e} {c} ({_fmt(b.lr)})" for (e, c), b in best.items() if b.on_edge]
    if edges:
        lines += ["", "The best learning rate lies on the edge of the grid searched for: "
                  + "; ".join(edges) + " (a better one may lie outside it)."]
    lines += _run_notes(outcomes, missing)
    figures = _figures(table, out, exps, cols, best)
    lines += [""] + [f"![{e}]({p.name})" for e, p in figures.items()]
    md = out / "summary.md"
    md.write_text("\n".join(lines) + "\n")
    _write_h5(out / "summary.h5", table, fraction, exps, cols, best, outcomes, mu_stages)
    return md


def _run_notes(outcomes: list[Outcome], missing: Sequence[Job]) -> list[str]:
    lines: list[str] = []
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
    return lines


def _write_h5(path: Path, table: str, fraction: float, exps: list[str], cols: list[str],
              best: dict[tuple[str, str], Cell], outcomes: list[Outcome], mu_stages: str
              ) -> None:
    """The table as (experiment × cell) arrays, and ``/runs``: one row per run."""
    import h5py

    def grid(get: Any) -> np.ndarray:
        return np.array([[get(best[e, c]) if (e, c) in best else math.nan for c in cols]
                         for e in exps], dtype=float)

    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs.update({"table": table, "fraction": fraction, "mu_stages": mu_stages,
                        "metric": "train_error" if table == "table1" else "test_error",
                        "experiments": json.dumps(exps), "cells": json.dumps(cols),
                        "seeds": json.dumps(sorted({o.job.seed for o in outcomes}))})
        f["mean"] = grid(lambda b: b.mean)
        f["std"] = grid(lambda b: b.std)
        f["min"] = grid(lambda b: b.low)
        f["max"] = grid(lambda b: b.high)
        f["n_seeds"] = grid(lambda b: float(len(b.runs)))
        f["train_error"] = grid(lambda b: float(np.mean([o.train_error for o in b.runs])))
        f["test_error"] = grid(lambda b: float(np.mean([o.test_error for o in b.runs])))
        f["best_lr"] = grid(lambda b: b.lr if b.lr else math.nan)
        f["best_lr_on_edge"] = grid(lambda b: float(b.on_edge))
        f["mu_reached"] = grid(lambda b: b.mu_reached)
        f["updates"] = grid(lambda b: float(b.runs[0].updates))
        f["grad_equiv"] = grid(lambda b: b.runs[0].grad_equiv)
        f["seconds"] = grid(lambda b: b.runs[0].seconds)
        f["paper"] = np.array([[v if (v := _paper(table, e, c)) is not None else math.nan
                                for c in cols] for e in exps])
        runs = f.create_group("runs")
        strings = {"experiment": lambda o: o.job.experiment, "cell": lambda o: o.job.cell,
                   "optimizer": lambda o: o.job.optimizer, "name": lambda o: o.job.name,
                   "status": lambda o: o.status, "path": lambda o: str(o.path or "")}
        for name, get in strings.items():
            runs.create_dataset(name, data=np.array([get(o) for o in outcomes], dtype=object),
                                dtype=h5py.string_dtype())
        numbers = {"lr": lambda o: o.job.lr if o.job.lr else math.nan,
                   "seed": lambda o: float(o.job.seed), "train_error": lambda o: o.train_error,
                   "test_error": lambda o: o.test_error, "mu_reached": lambda o: o.mu_reached,
                   "updates": lambda o: float(o.updates), "grad_equiv": lambda o: o.grad_equiv,
                   "seconds": lambda o: o.seconds}
        for name, get in numbers.items():
            runs[name] = np.array([get(o) for o in outcomes], dtype=float)
    os.replace(tmp, path)


def _figures(table: str, out: Path, exps: list[str], cols: list[str],
             best: dict[tuple[str, str], Cell]) -> dict[str, Path]:
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
        for k, c in enumerate(cols):
            b = best.get((exp, c))
            if b is None:
                continue
            label = f"{c} ({b.runs[0].job.optimizer}{'' if b.lr is None else f', lr {b.lr:g}'})"
            for i, r in enumerate(o for o in b.runs if o.path is not None):
                ev = read_results(r.path).eval
                y = ev["test_error" if table == "table5" else "train_error"]
                for ax, x in zip(axes, ("grad_equiv", "seconds")):
                    ax.plot(ev[x], y, color=f"C{k % 10}", lw=1.2 if i == 0 else 0.6,
                            label=label if i == 0 else None)
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
