"""Per-step costs behind the README's "What f = 1 costs" table, measured with the presets.

Runs a few updates of each preset (the ``hessfree train`` path, results files in a temporary
folder), takes the median of each run's ``seconds`` column (optimizer time, evaluations excluded)
and multiplies by the step counts of the papers' protocols. Prints a markdown table.

    OMP_NUM_THREADS=1 python benchmarks/step_costs.py               # a quiet machine
    OMP_NUM_THREADS=1 python benchmarks/step_costs.py --quick       # smoke test (seconds)

Protocol counts (docs/references.md): NAG/CM/SGD 750,000 updates on CURVES [S13 §3] and 50,000
on the RNN tasks [S13 §4]; Martens' HF at NAG's gradient-equivalents (7,500 on CURVES); the
momentum-like HF's A.6 phases (CURVES: 250,000 CG steps at 50 per update, 100,000 at 200 and
500,000 at 200, the last two with the whole-set gradient).
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from hessfree.runs.results import read_results
from hessfree.runs.trainer import RunSpec, train


def _run(out: str, experiment: str, optimizer: str, steps: int, **overrides) -> dict:
    path = train(RunSpec(experiment=experiment, optimizer=optimizer, steps=steps, out=out,
                         overrides=overrides, quiet=True, eval_every=10**9, name=optimizer +
                         "-" + "-".join(f"{k}{v}" for k, v in sorted(overrides.items()))))
    st = read_results(path).steps
    return {"seconds": float(np.median(st["seconds"])), "last": float(st["seconds"][-1]),
            "grad_equiv": float(np.median(st["grad_equiv"])),
            "cg": float(np.median(st["cg_iters"])) if "cg_iters" in st else 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one or two steps each (a smoke test)")
    args = p.parse_args()
    k = 1 if args.quick else 5
    rows = []
    with tempfile.TemporaryDirectory() as out:
        nag = _run(out, "curves-ae", "nag", 50 if args.quick else 2000)
        rows.append(("CURVES NAG/CM/SGD, one run", f"{nag['seconds'] * 1e3:.1f} ms/update",
                     750_000 * nag["seconds"]))
        hf = _run(out, "curves-ae", "hf", k + 1)
        per_ge = hf["seconds"] / hf["grad_equiv"]
        rows.append(("CURVES Martens' HF (7,500 gradient-equivalents)",
                     f"{hf['seconds']:.1f} s/step (CG {hf['cg']:.0f}; early steps)",
                     7_500 * per_ge))
        mini = _run(out, "curves-ae", "hf-momentum", k + 1)
        # the first phase cut to one update: the second is a full-phase update (200 CG steps,
        # the whole-set gradient); A.6 has 5,000 minibatch updates and 3,000 full ones
        full = _run(out, "curves-ae", "hf-momentum", 2, minibatch_cg_steps=50)["last"]
        rows.append(("CURVES momentum-like HF (A.6)",
                     f"{mini['seconds']:.1f} s (minibatch) / {full:.1f} s (full)",
                     5_000 * mini["seconds"] + 3_000 * full))
        rnn = _run(out, "addition", "nag", 20 if args.quick else 300)
        rows.append(("addition T = 80 NAG, one run", f"{rnn['seconds'] * 1e3:.1f} ms/update",
                     50_000 * rnn["seconds"]))
        rhf = _run(out, "addition", "hf", k)
        rows.append(("addition T = 80 HF (5,000 gradient-equivalents)",
                     f"{rhf['seconds']:.1f} s/step (CG {rhf['cg']:.0f})",
                     5_000 * rhf["seconds"] / rhf["grad_equiv"]))
    print("| run at f = 1 | per step (median) | total, this machine |")
    print("|---|---|---|")
    for name, per, total in rows:
        print(f"| {name} | {per} | {total / 3600:.2g} h |")


if __name__ == "__main__":
    main()
