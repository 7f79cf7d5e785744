"""The summary of a reproduced table: ``summary.md``, ``summary.h5`` and one figure per experiment.

Every run of a plan (:mod:`hessfree.runs.protocols`) ends as an :class:`Outcome` read from its
results file. A cell of the table is the runs of one column at the learning rate with the best
mean over seeds (:class:`Cell`); the summary gives, beside the paper's number (the experiment's
``paper`` row, the one source of the published tables), the mean and spread over seeds, the best
learning rate and whether it lies on the edge of the grid searched, the μ each cell reached
(read from its rows), the budget used, and the runs that are unfinished, missing or failed.
``summary.h5`` holds the same numbers as (experiment × cell) arrays and one row per run.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hessfree._files import atomic_path, figure, label_axes, save_figure, write_text
from hessfree._h5 import open_file
from hessfree.runs import experiments
from hessfree.runs.protocols import EQ5_STAGE, RNN_WARM, TABLES, Job, Protocol
from hessfree.runs.report import run_status
from hessfree.runs.results import read_results

__all__ = ["Cell", "Outcome", "outcome", "summarize"]

log = logging.getLogger(__name__)


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


def _metric(p: Protocol, o: Outcome) -> float:
    """The number a cell reports (Table 1: training error; Table 5: test zero-one error)."""
    return getattr(o, p.metric)


def _cell_of(p: Protocol, outcomes: list[Outcome], experiment: str, cell: str) -> Cell | None:
    runs = [o for o in outcomes if o.job.experiment == experiment and o.job.cell == cell
            and math.isfinite(_metric(p, o))]
    if not runs:
        return None
    by_lr: dict[float | None, list[Outcome]] = {}
    for o in runs:
        by_lr.setdefault(o.job.lr, []).append(o)
    means = {lr: float(np.mean([_metric(p, o) for o in rs])) for lr, rs in by_lr.items()}
    lr = min(means, key=lambda k: means[k])
    values = np.array([_metric(p, o) for o in by_lr[lr]])
    mus = [o.mu_reached for o in by_lr[lr] if math.isfinite(o.mu_reached)]
    grid = tuple(sorted(k for k in by_lr if k is not None))
    return Cell(sorted(by_lr[lr], key=lambda o: o.job.seed), lr, grid, means[lr],
                float(values.std(ddof=1)) if len(values) > 1 else 0.0, float(values.min()),
                float(values.max()), max(mus) if mus else math.nan)


def _paper(experiment: str, cell: str) -> float | None:
    """The published number of a cell: the experiment's ``paper`` row."""
    return experiments.get(experiment).paper.get(cell)


def _columns(exps: list[str], outcomes: list[Outcome]) -> list[str]:
    """The columns that have runs, in the order of the papers' rows (others after them)."""
    order = list(dict.fromkeys(c for e in exps for c in experiments.get(e).paper))
    present = list(dict.fromkeys(o.job.cell for o in outcomes))
    return sorted(present, key=lambda c: (order.index(c) if c in order else len(order),
                                          present.index(c)))


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.3g}"


def _value(c: Cell) -> str:
    return _fmt(c.mean) if len(c.runs) == 1 else f"{_fmt(c.mean)} ± {_fmt(c.std)}"


def _intro(p: Protocol, fraction: float, outcomes: list[Outcome], mu_stages: str) -> list[str]:
    seeds = sorted({o.job.seed for o in outcomes})
    stages = (f"Eq. 5's stages and the RNN warm-up scaled with the fraction "
              f"({max(1, round(EQ5_STAGE * fraction))} and {round(RNN_WARM * fraction)} "
              "updates)" if mu_stages == "scaled" else
              f"Eq. 5's stages and the RNN warm-up unscaled ({EQ5_STAGE} and {RNN_WARM} "
              "updates)")
    return [f"# {p.name} at fraction {fraction:g} of the papers' budget", "",
            f"Each cell: ours (the paper's) — {p.metric_name}; for CM/NAG at the learning rate "
            f"of the grid with the best mean over {len(seeds)} seed(s) {seeds}, as mean ± "
            "standard deviation when there are several. Columns: μ_max (Table 1) or μ0 (Table "
            f"5) with N = NAG, M = CM; 0 = SGD. μ schedules: {stages}; the μ each cell reached "
            "is tabled below.", ""]


def _cells_table(exps: list[str], cols: list[str], best: dict[tuple[str, str], Cell]
                 ) -> list[str]:
    lines = ["| experiment | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for exp in exps:
        cells = [f"{_value(b) if (b := best.get((exp, c))) else '-'} "
                 f"({_fmt(_paper(exp, c))})" for c in cols]
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
    return lines


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


def summarize(table: str, fraction: float, out: Path, outcomes: list[Outcome],
              missing: Sequence[Job] = (), mu_stages: str = "scaled") -> Path:
    """Write ``summary.md``, ``summary.h5`` and one figure per experiment; return the markdown.

    ``missing``: planned runs that have no results yet (listed, not tabled). ``mu_stages``: the
    warm-up the momentum runs used (said in the summary).
    """
    p = TABLES[table]
    exps = list(dict.fromkeys(o.job.experiment for o in outcomes))
    cols = _columns(exps, outcomes)
    best = {(e, c): b for e in exps for c in cols
            if (b := _cell_of(p, outcomes, e, c)) is not None}
    lines = (_intro(p, fraction, outcomes, mu_stages) + _cells_table(exps, cols, best)
             + _run_notes(outcomes, missing))
    figures = _figures(p, out, exps, cols, best)
    lines += [""] + [f"![{e}]({path.name})" for e, path in figures.items()]
    md = write_text(out / "summary.md", "\n".join(lines) + "\n")
    _write_h5(out / "summary.h5", p, fraction, exps, cols, best, outcomes, mu_stages)
    return md


def _write_h5(path: Path, p: Protocol, fraction: float, exps: list[str], cols: list[str],
              best: dict[tuple[str, str], Cell], outcomes: list[Outcome], mu_stages: str
              ) -> None:
    """The table as (experiment × cell) arrays, and ``/runs``: one row per run (atomically)."""
    def grid(get: Any) -> np.ndarray:
        return np.array([[get(best[e, c]) if (e, c) in best else math.nan for c in cols]
                         for e in exps], dtype=float)

    cells = {"mean": lambda b: b.mean, "std": lambda b: b.std, "min": lambda b: b.low,
             "max": lambda b: b.high, "n_seeds": lambda b: float(len(b.runs)),
             "train_error": lambda b: float(np.mean([o.train_error for o in b.runs])),
             "test_error": lambda b: float(np.mean([o.test_error for o in b.runs])),
             "best_lr": lambda b: b.lr if b.lr else math.nan,
             "best_lr_on_edge": lambda b: float(b.on_edge), "mu_reached": lambda b: b.mu_reached,
             "updates": lambda b: float(b.runs[0].updates),
             "grad_equiv": lambda b: b.runs[0].grad_equiv, "seconds": lambda b: b.runs[0].seconds}
    strings = {"experiment": lambda o: o.job.experiment, "cell": lambda o: o.job.cell,
               "optimizer": lambda o: o.job.optimizer, "name": lambda o: o.job.name,
               "status": lambda o: o.status, "path": lambda o: str(o.path or "")}
    numbers = {"lr": lambda o: o.job.lr if o.job.lr else math.nan,
               "seed": lambda o: float(o.job.seed), "train_error": lambda o: o.train_error,
               "test_error": lambda o: o.test_error, "mu_reached": lambda o: o.mu_reached,
               "updates": lambda o: float(o.updates), "grad_equiv": lambda o: o.grad_equiv,
               "seconds": lambda o: o.seconds}
    with atomic_path(path) as tmp, open_file(tmp, "w") as f:
        f.attrs.update({"table": p.name, "fraction": fraction, "mu_stages": mu_stages,
                        "metric": p.metric, "experiments": json.dumps(exps),
                        "cells": json.dumps(cols),
                        "seeds": json.dumps(sorted({o.job.seed for o in outcomes}))})
        for name, get in cells.items():
            f[name] = grid(get)
        f["paper"] = np.array([[v if (v := _paper(e, c)) is not None else math.nan
                                for c in cols] for e in exps], dtype=float)
        runs = f.create_group("runs")
        for name, get in strings.items():
            runs.create_dataset(name, data=np.array([get(o) for o in outcomes], dtype=object),
                                dtype=h5py.string_dtype())
        for name, get in numbers.items():
            runs[name] = np.array([get(o) for o in outcomes], dtype=float)


def _figures(p: Protocol, out: Path, exps: list[str], cols: list[str],
             best: dict[tuple[str, str], Cell]) -> dict[str, Path]:
    """One figure per experiment: the metric against gradient-equivalents and seconds.

    Every cell's runs at its best learning rate; no figure when matplotlib (the ``[plot]``
    extra) is missing.
    """
    written = {}
    for exp in exps:
        try:
            fig, axes = figure(11, 4.2, panels=2)
        except ImportError:  # the tables are still written
            log.warning("matplotlib is not installed: no figures")
            return {}
        drawn = False
        for k, c in enumerate(cols):
            b = best.get((exp, c))
            if b is None:
                continue
            label = f"{c} ({b.runs[0].job.optimizer}{'' if b.lr is None else f', lr {b.lr:g}'})"
            for i, r in enumerate(o for o in b.runs if o.path is not None):
                ev = read_results(r.path).eval
                for ax, x in zip(axes, ("grad_equiv", "seconds")):
                    ax.plot(ev[x], ev[p.metric], color=f"C{k % 10}", lw=1.2 if i == 0 else 0.6,
                            label=label if i == 0 else None)
                drawn = True
        if not drawn:
            continue
        ylabel = "training error" if p.metric == "train_error" else "test zero-one error"
        for ax, x in zip(axes, ("gradient-equivalents", "seconds")):
            label_axes(ax, x, ylabel, log_y=True, legend=ax is axes[0], legend_size=7)
        fig.suptitle(f"{exp}: {p.name} protocol")
        fig.tight_layout()
        written[exp] = save_figure(fig, out / f"{exp}.png")
    return written
