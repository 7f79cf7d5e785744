"""``hessfree report``: where runs stand, next to the papers' numbers.

The published numbers are those of each experiment's ``paper`` entry: Table 1 of [S13] for the
autoencoders (training squared error; HF* = Martens 2010, HF† = their momentum-like HF) and
Table 5 of [S13] for the RNN problems (zero-one errors). Runs here are shorter than the papers'
(750,000 NAG updates, hundreds of HF iterations); the report says how far each run went: the
updates done (not the step of the last evaluation), the errors of the last evaluation and at
which update it was taken, and whether the run finished, is still running, or stopped without
finishing (killed, or a fault).
"""

from __future__ import annotations

import math
from pathlib import Path

from hessfree.errors import InputError
from hessfree.runs import families
from hessfree.runs.lock import is_live
from hessfree.runs.results import RunResults, read_results

__all__ = ["paper_numbers", "report", "run_status"]


def paper_numbers(experiment: str, optimizer: str) -> dict[str, float]:
    """The published entries of ``experiment`` that belong to the family ``optimizer``.

    An entry is a column of the paper's table (``"0.99N"``, ``"HF*"``), which belongs to the
    family whose table role owns it (:func:`hessfree.runs.families.family_of_cell`), or a label
    whose first word is the family's name (``"nag (mu_max 0.99)"``, user experiments).
    """
    from hessfree.runs import experiments

    try:
        paper = experiments.get(experiment).paper
    except InputError:
        return {}

    def owner(key: str) -> str:
        family = families.family_of_cell(key)
        return family.name if family is not None else key.split(" ")[0]

    return {k: v for k, v in paper.items() if v is not None and owner(k) == optimizer}


def run_status(res: RunResults) -> str:
    """``finished`` (with the optimizer's stop reason if any), ``running``, or ``unfinished``.

    A run whose file says ``running`` but whose writer is gone (no live lock) was killed.
    """
    status = str(res.attrs.get("status", "unfinished"))
    if status == "running":
        return "running" if is_live(res.path.parent) else "unfinished (killed)"
    if status.startswith("finished"):
        return status
    return f"unfinished ({status})"


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def report(paths: list[str | Path]) -> str:
    """A text table: one row per run, with the matching published numbers."""
    header = ("| experiment | optimizer | status | updates | grad-equiv | seconds | "
              "train error | test error | evaluated at | published (training error) |")
    lines = [header, "|" + "---|" * 10]
    names = []
    for path in paths:
        res = read_results(path)
        a, ev, st = res.attrs, res.eval, res.steps
        last = {k: (float(v[-1]) if len(v) else math.nan) for k, v in ev.items()}
        updates = len(st.get("step", []))
        total = {k: float(st[k].sum()) if k in st and len(st[k]) else math.nan
                 for k in ("grad_equiv", "seconds")}
        pub = paper_numbers(str(a.get("experiment", "")), str(a.get("optimizer", "")))
        pub_s = "; ".join(f"{k}: {v:g}" for k, v in pub.items()) or "-"
        at = last.get("step", math.nan)
        lines.append(
            f"| {a.get('experiment', '?')} | {a.get('optimizer', '?')} | {run_status(res)} | "
            f"{updates} | {_fmt(total['grad_equiv'])} | {_fmt(total['seconds'])} | "
            f"{_fmt(last.get('train_error'))} | {_fmt(last.get('test_error'))} | "
            f"{'-' if math.isnan(at) else int(at)} | {pub_s} |")
        if a.get("error_name"):
            names.append(str(a["error_name"]))
    lines.append("")
    lines.append("errors: " + ", ".join(dict.fromkeys(names)))
    return "\n".join(lines)
