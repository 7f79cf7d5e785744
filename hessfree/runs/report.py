"""``hessfree report``: final errors of runs next to the papers' numbers.

The published numbers are those of each experiment's ``paper`` entry: Table 1 of Sutskever et al.
(2013) for the autoencoders (training squared error; HF* = Martens 2010, HF† = their momentum-like
HF) and Table 5 for the RNN problems (zero-one errors). Runs here are shorter than the papers'
(750,000 NAG updates, hundreds of HF iterations); the report says how far each run went.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from hessfree.runs.results import read_results

__all__ = ["report", "paper_numbers"]


def paper_numbers(experiment: str, optimizer: str) -> dict[str, float]:
    """The published entries of ``experiment`` that belong to ``optimizer`` (or all, if none)."""
    from hessfree.runs import experiments

    try:
        paper = experiments.get(experiment).paper
    except ValueError:
        return {}
    mine = {k: v for k, v in paper.items() if k.split(" ")[0] == optimizer}
    return mine or {}


def _fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def report(paths: list[str | Path]) -> str:
    """A text table: one row per run, with the matching published numbers."""
    header = ("| experiment | optimizer | steps | grad-equiv | seconds | train error | "
              "test error | published (training error) |")
    lines = [header, "|" + "---|" * 8]
    for path in paths:
        res = read_results(path)
        a = res.attrs
        ev = res.eval
        last = {k: (float(v[-1]) if len(v) else math.nan) for k, v in ev.items()}
        pub = paper_numbers(a.get("experiment", ""), a.get("optimizer", ""))
        pub_s = "; ".join(f"{k}: {v:g}" for k, v in pub.items()) or "-"
        lines.append(
            f"| {a.get('experiment', '?')} | {a.get('optimizer', '?')} | "
            f"{int(last.get('step', 0)) if not math.isnan(last.get('step', math.nan)) else 0} | "
            f"{_fmt(last.get('grad_equiv'))} | {_fmt(last.get('seconds'))} | "
            f"{_fmt(last.get('train_error'))} | {_fmt(last.get('test_error'))} | {pub_s} |")
    names = {json.dumps(read_results(p).attrs.get("error_name", "")) for p in paths}
    lines.append("")
    lines.append("errors: " + ", ".join(n.strip('"') for n in names if n != '""'))
    return "\n".join(lines)
