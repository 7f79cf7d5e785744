"""The figure of RESULTS.md's "Momentum-like HF: stability" study, from the runs' tables.

    python benchmarks/plot_momentum_study.py LABEL=PATH/results.h5 ... --out momentum_hf_study.png

Left: training error against gradient-equivalents; right: λ after each step of the first A.6
phase, rejected steps marked. :func:`draw` takes any runs with ``eval`` and ``steps`` tables:
results files, or the runs of the committed artifact (``benchmarks/claims.py`` draws the
published figure from ``benchmarks/artifacts/momentum-study``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hessfree._files import save_figure


def draw(runs: dict[str, Any], out: str | Path, max_ge: float = 650.0) -> Path:
    """The two panels for ``runs`` (label -> run with ``eval`` and ``steps`` tables)."""
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    ax, bx = fig.subplots(1, 2)
    for label, r in runs.items():
        ge, err = r.eval["grad_equiv"], r.eval["train_error"]
        keep = ge <= max_ge
        ax.plot(ge[keep], err[keep], label=label)
        phase0 = r.steps["phase"] == 0
        lam = r.steps["lambda_after"][phase0]
        rejected = ~r.steps["accepted"][phase0].astype(bool)
        steps = np.arange(len(lam))
        line, = bx.plot(steps, lam, label=label)
        bx.plot(steps[rejected], lam[rejected], "x", color=line.get_color())
    ax.set(xlabel="gradient-equivalents", ylabel="training error", yscale="log",
           title="CURVES, first A.6 phase")
    bx.set(xlabel="HF step (first phase)", ylabel="λ after the step (x: rejected)",
           yscale="log")
    ax.legend(fontsize=8)
    bx.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def main() -> None:
    from hessfree.runs.results import read_results

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="LABEL=results.h5")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-ge", type=float, default=650.0)
    a = ap.parse_args()
    runs = {label: read_results(path) for label, path in (i.split("=", 1) for i in a.runs)}
    print(draw(runs, a.out, a.max_ge))


if __name__ == "__main__":
    main()
