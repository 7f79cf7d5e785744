"""Per-update costs of the built-in experiments, for the time estimates of ``reproduce``'s plan.

For each experiment of Table 1 and Table 5 (and the demo's ``curves-small``) it builds the run
``hessfree train`` would build (default settings, one thread), times one evaluation of the
whole sets, a few NAG updates and two updates of each HF family, and writes
``hessfree/runs/presets/step_costs.py`` (:mod:`hessfree.runs.costs` reads it): seconds per
update, seconds per gradient-equivalent and gradient-equivalents per update, seconds per
evaluation, with the date, the cores and the load average of the measurement.

    python benchmarks/plan_costs.py                     # every experiment (a quiet machine)
    python benchmarks/plan_costs.py --experiments curves-small,addition --print
    python benchmarks/plan_costs.py --quick --print     # a smoke test: nothing written
    python benchmarks/plan_costs.py --experiments faces-ae --merge   # add one, keep the rest

MNIST and FACES need their data (``$HESSFREE_DATA``); an experiment whose data is missing is
skipped, with a line saying so (its plans then have no estimate).
"""

from __future__ import annotations

import argparse
import pprint
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hessfree.runs import experiments
from hessfree.runs.protocols import TABLES
from hessfree.runs.threads import cores, load
from hessfree.runs.trainer import RunSpec, _Run

OUT = Path(__file__).resolve().parents[1] / "hessfree" / "runs" / "presets" / "step_costs.py"
COMMAND = "python benchmarks/plan_costs.py"


def _run(experiment: str, optimizer: str, **overrides) -> _Run:
    exp = experiments.get(experiment)
    data, opt = exp.settings_for(optimizer, overrides)
    return _Run(RunSpec(experiment=experiment, optimizer=optimizer, steps=1, quiet=True,
                        out=tempfile.gettempdir(), overrides=overrides), exp, data, opt)


def _updates(run: _Run, n: int) -> tuple[float, float]:
    """Median seconds and gradient-equivalents of ``n`` updates (after one warm-up)."""
    run.runner.step(None)
    rows = [run.runner.step(None) for _ in range(n)]
    return (statistics.median(float(r["seconds"]) for r in rows),
            statistics.median(float(r["grad_equiv"]) for r in rows))


def measure(experiment: str, families: list[str], quick: bool) -> dict:
    """The costs of one experiment."""
    small = {"n_train": 1000} if quick and experiment.endswith("-ae") else {}
    nag = _run(experiment, "nag", **small)
    t0 = time.perf_counter()
    nag.evaluate()
    out = {"eval": time.perf_counter() - t0, "update": {}, "grad_equiv": {},
           "ge_per_update": {}}
    out["update"]["nag"] = _updates(nag, 5 if quick else 30)[0]
    for family in families:
        seconds, ge = _updates(_run(experiment, family, **small), 1 if quick else 2)
        out["update"][family] = seconds
        out["grad_equiv"][family] = seconds / ge
        out["ge_per_update"][family] = ge
    return {k: (round(v, 6) if isinstance(v, float) else {f: round(x, 6) for f, x in v.items()})
            for k, v in out.items()}


def merged(record: dict) -> dict:
    """``record``'s experiments written into the current file's costs, the rest kept.

    The measurement of the merged ones is listed under ``measured["merged"]``.
    """
    from hessfree.runs.presets.step_costs import COSTS

    out = {"measured": dict(COSTS["measured"]),
           "experiments": {**COSTS["experiments"], **record["experiments"]}}
    note = {**record["measured"], "experiments": sorted(record["experiments"])}
    note["command"] += " --merge --experiments " + ",".join(note["experiments"])
    out["measured"]["merged"] = [*COSTS["measured"].get("merged", []), note]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiments", default="", help="comma-separated (default: every table's "
                   "and curves-small)")
    p.add_argument("--quick", action="store_true", help="small sizes, few updates; writes nothing")
    p.add_argument("--print", action="store_true", help="print the costs instead of writing them")
    p.add_argument("--merge", action="store_true", help="keep the other experiments of the "
                   "written file (and its measurement record); note this measurement beside it")
    a = p.parse_args()
    torch.set_num_threads(1)
    names = [e for e in a.experiments.split(",") if e] or \
        ["curves-small", *TABLES["table1"].experiments, *TABLES["table5"].experiments]
    before = load()
    costs = {}
    for name in names:
        hf = ["hf", "hf-momentum"] if name.endswith("-ae") or name == "curves-small" else ["hf"]
        try:
            costs[name] = measure(name, hf, a.quick)
        except (ValueError, OSError) as err:  # MNIST or Olivetti missing
            print(f"skipped {name}: {err}")
            continue
        print(name, costs[name], flush=True)
    after = load()
    record = {"measured": {"date": time.strftime("%Y-%m-%d"), "cores": cores(),
                           "load": round(max(before or 0.0, after or 0.0), 1), "threads": 1,
                           "command": COMMAND},
              "experiments": costs}
    if a.print or a.quick:
        pprint.pprint(record, width=100)
        return
    if a.merge:
        record = merged(record)
    OUT.write_text('"""Per-update costs of the built-in experiments (:mod:`hessfree.runs.costs`).'
                   f"\n\nWritten by ``{COMMAND}``; do not edit by hand.\n\"\"\"\n\n"
                   f"COSTS = {pprint.pformat(record, width=96, sort_dicts=True)}\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
