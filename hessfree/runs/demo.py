"""``hessfree demo``: HF, the momentum-like HF and NAG side by side, then CG against NAG.

The main job of the README's two-command set-up. On ``curves-small`` (generated CURVES, 2000
training images, a 784-200-100-50-25-6 autoencoder: built in, no data folder needed, and small
enough that every method leaves the mean-image plateau within the budget on a 2-core CPU), it

1. trains Martens' HF, the momentum-like HF ([S13 A.6], its first phase with ρ measured on a
   held-out minibatch) and NAG ([S13 Eq. 3-5]) for the same number of gradient-equivalents,
   each writing its results file (HF also saves the quadratics of some of its steps);
2. takes the saved quadratic on which HF's CG ran the most iterations (past the plateau: the
   regime of [S13 Fig. 5]) and runs CG, NAG, CM and GD on it at equal products;
3. prints a table and writes one figure with two panels: training error against
   gradient-equivalents, and ``q − q*`` against curvature products.

It is deterministic: every draw is seeded, budgets count gradient-equivalents (not seconds),
and the whole demo runs on ``threads`` intra-op threads (default 1, whatever the machine's
cores or ``OMP_NUM_THREADS``: a parallel reduction splits its sums by the thread count, which
changes the last bits of a product, and an HF trajectory amplifies them). So the printed table is
the same digit for digit in every run of one command on one machine; another CPU (other SIMD
kernels) or another torch build may change the digits. Times depend on the machine and its load:
they are in ``demo.md`` and the results files, not in the printed table.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hessfree import _checks, quadratic
from hessfree._files import figure, label_axes, label_ends, save_figure, write_text
from hessfree.quadratic.eigen import STYLES
from hessfree.runs import experiments, families
from hessfree.runs.h5 import open_results
from hessfree.runs.progress import products
from hessfree.runs.results import read_results
from hessfree.runs.trainer import RunSpec, train

__all__ = ["COMPARISON_FILE", "EXPERIMENT", "RUNS", "DemoRun", "draw_figure", "run_demo"]

log = logging.getLogger(__name__)
EXPERIMENT = "curves-small"
#: the demo folder's record of the CG-against-NAG comparison (:meth:`Comparison.to_dict`)
COMPARISON_FILE = "comparison.json"


@dataclass(frozen=True)
class DemoRun:
    """One run of the demo: an optimizer family, its evaluation interval, its saved quadratics.

    The first run that saves quadratics (every ``save_quadratics_every`` steps) gives the
    quadratic of the CG-against-NAG comparison.
    """

    optimizer: str
    eval_every: int
    save_quadratics_every: int | None = None


#: the demo's runs, in table order (about 50 evaluations each within the default budget)
RUNS = (DemoRun("hf", 5, save_quadratics_every=2), DemoRun("hf-momentum", 5),
        DemoRun("nag", 100))


def run_demo(out: str | Path = "runs", budget: float = 400.0, seed: int = 0,
             quiet: bool = False, iters: int = 100, overrides: dict[str, Any] | None = None,
             threads: int = 1) -> Path:
    """Run the demo; returns the folder holding the three results files, the figure and table.

    Args:
        out: the parent folder (a ``demo-<time>`` folder is made in it).
        budget: gradient-equivalents of the training set per optimizer.
        seed: the seed of data, initialization and minibatches.
        quiet: no progress bars.
        iters: curvature products per method on the saved quadratic.
        overrides: settings for every run (e.g. a smaller ``n_train`` in a test).
        threads: torch's intra-op threads while the demo runs (restored after): a fixed count
            makes the printed numbers the same run to run (module docstring).
    """
    _checks.integer(threads, "threads", minimum=1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(Path(out), budget, seed, quiet, iters, overrides, threads)
    finally:
        torch.set_num_threads(before)


def _run(out: Path, budget: float, seed: int, quiet: bool, iters: int,
         overrides: dict[str, Any] | None, threads: int) -> Path:
    folder = out / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = {}
    log.info("demo: %d runs of %g gradient-equivalents on %s (%s), then CG, NAG, CM and GD on "
             "one saved quadratic, %d products each", len(RUNS), budget, EXPERIMENT,
             ", ".join(r.optimizer for r in RUNS), iters)
    for r in RUNS:
        over = {k: v for k, v in (overrides or {}).items() if k in _keys(r.optimizer)}
        paths[r.optimizer] = train(RunSpec(
            experiment=EXPERIMENT, optimizer=r.optimizer, budget=budget, seed=seed,
            out=str(folder), name=r.optimizer, quiet=quiet, eval_every=r.eval_every,
            overrides=over, save_quadratics_every=r.save_quadratics_every, threads=threads))
    runs = {opt: read_results(p) for opt, p in paths.items()}
    saver = next(r.optimizer for r in RUNS if r.save_quadratics_every)
    step, comparison = _compare(paths[saver], runs[saver], iters, quiet)
    lines = _table(runs, step, comparison, budget, seed, threads)
    if comparison is not None:
        record = {"step": step, **comparison.to_dict()}
        write_text(folder / COMPARISON_FILE, json.dumps(record, indent=1) + "\n")
    write_text(folder / "demo.md", "\n".join(lines + _times(runs)) + "\n")
    figure = _figure(runs, comparison, step, folder / "demo.png")
    print("\n".join(lines))
    print(f"figure: {figure}")
    return folder


def _keys(optimizer: str) -> set[str]:
    exp = experiments.get(EXPERIMENT)
    return set(exp.data_defaults().keys()) | set(exp.optimizer_defaults(optimizer).keys())


def _compare(path: Path, res: Any, iters: int, quiet: bool = False) -> tuple[int, Any]:
    """CG vs NAG/CM/GD on the saved quadratic whose step ran CG the longest (with progress)."""
    saved = [int(k) for k in res.quadratics]
    if not saved:
        return -1, None
    cg_iters = dict(zip(res.steps["step"].tolist(), res.steps["cg_iters"].tolist()))
    step = max(saved, key=lambda k: (cg_iters.get(k, 0), k))
    with open_results(path, "r") as f:
        q = quadratic.Quadratic.load(f[f"quadratics/{step}"],
                                     build_model=experiments.build_model)
    with products(q, iters * (2 + 2 * len(quadratic.MU_GRID)) + 30, "demo: CG vs NAG", quiet):
        c = quadratic.compare(q, iters=iters)
    # the gap is to the minimum (CG run to a small residual), not to the best value any method
    # reached within the budget
    with products(q, None, "demo: the quadratic's minimum", quiet):
        ref = quadratic.minimum(q, max_iters=max(2000, 10 * iters))
    c.q_star = min([ref.value] + [float(np.nanmin(v)) for v in c.values.values()])
    return step, c


def _final(res: Any) -> tuple[float, float, float]:
    ev = res.eval
    return float(ev["train_error"][-1]), float(ev["test_error"][-1]), float(ev["grad_equiv"][-1])


def _table(runs: dict[str, Any], step: int, c: Any, budget: float, seed: int, threads: int
           ) -> list[str]:
    """The printed table: only what the seed determines (no times)."""
    lines = [f"# hessfree demo: {EXPERIMENT}, {budget:g} gradient-equivalents per optimizer, "
             f"seed {seed}, {threads} thread{'s' if threads > 1 else ''}",
             "", "| optimizer | updates | rejected | gradient-equivalents | "
             "training error | test error |", "|---|---:|---:|---:|---:|---:|"]
    for opt, res in runs.items():
        tr, te, ge = _final(res)
        st = res.steps
        lines.append(f"| {families.get(opt).label} | {len(st['step'])} | "
                     f"{int((~st['accepted']).sum())} | {ge:.0f} | {tr:.3f} | {te:.3f} |")
    if c is not None:
        q_star = c.q_star
        lines += ["", f"CG vs NAG on the quadratic of HF's step {step} "
                  f"({c.dim:,} parameters): products to close 90% / 99% of the gap to the "
                  "minimum", "", "| method | 90% | 99% | q after "
                  f"{c.iters} products |", "|---|---:|---:|---:|"]
        for m in c.methods:
            k90, k99 = (_products_to(c.values[m], q_star, f) for f in (0.9, 0.99))
            lines.append(f"| {m} | {k90} | {k99} | {c.values[m][-1]:.6g} |")
    return lines


def _times(runs: dict[str, Any]) -> list[str]:
    """``demo.md``'s wall-clock section (machine- and load-dependent, so not printed)."""
    lines = ["", "Wall-clock seconds of each run's updates (evaluation excluded; they depend on "
             "the machine and its load):", ""]
    return lines + [f"- {families.get(opt).label}: {float(np.sum(res.steps['seconds'])):.1f}"
                    for opt, res in runs.items()]


def _products_to(values: np.ndarray, q_star: float, fraction: float) -> str:
    target = q_star * fraction  # q(0) = 0
    hit = np.nonzero(values <= target)[0]
    return str(int(hit[0])) if len(hit) else f">{len(values) - 1}"


def draw_figure(runs: dict[str, Any], comparison: Any, step: int, path: str | Path) -> Path:
    """The demo's figure, drawn again from its runs and its comparison.

    ``runs``: anything with an ``eval`` table, by optimizer (results files, or the runs of a
    committed artifact); ``comparison``: a :class:`~hessfree.quadratic.Comparison`.
    """
    return _figure(runs, comparison, step, Path(path))


def _figure(runs: dict[str, Any], c: Any, step: int, path: Path) -> Path:
    fig, (left, right) = figure(11, 4.2, panels=2)
    for opt, res in runs.items():
        ev = res.eval
        left.plot(ev["grad_equiv"], ev["train_error"], label=families.get(opt).label)
    label_axes(left, "gradient-equivalents of the training set", "training error",
               f"{EXPERIMENT}: equal cost", log_y=True)
    if c is not None:
        q_star = c.q_star
        floor = max(abs(q_star) * 1e-7, 1e-300)  # float32 quadratics: q to about 1e-7
        for m in c.methods:
            gap = np.maximum(c.values[m] - q_star, floor)
            right.plot(np.arange(len(gap)), gap, label=m.upper(), **STYLES.get(m, {}))
        label_axes(right, "curvature products", "q(x_k) − q*",
                   f"the quadratic of HF's step {step}", log_y=True)
        label_ends(right)
    fig.tight_layout()
    return save_figure(fig, path)
