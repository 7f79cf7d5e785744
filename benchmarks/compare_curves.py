"""HF vs momentum-like HF vs NAG on CURVES at equal wall-clock budget (the toolkit's benchmark).

``curves-ae`` (re-generated CURVES, 20,000 training images) with

* ``hf``: Martens (2010) as HFDemo — gradient on all 20,000, curvature on 1/4, CG <= 250;
* ``hf-momentum``: Sutskever et al. (2013) A.6 — minibatches of 1/16, 50 CG steps, ζ 0.95 then
  0.999 and ε = scale/(t − t0) after the switch; the switch is scaled to the budget (A.6 switched
  after about 80% of its first-phase iterations: 4000 of ~5000), ``lr_scale`` by the same factor;
* ``nag``: Sutskever et al. (2013) Eq. 3-5, minibatch 200, µ_max 0.99, ε the best of a short grid
  (``--grid`` runs of ``--grid-seconds`` each, by final training error).

Each gets ``--seconds`` of optimizer time (evaluation excluded). Writes one figure (training error
against seconds and against gradient-equivalents of the training set) and prints a table.

    python benchmarks/compare_curves.py [--seconds 1200] [--grid-seconds 120] [--out runs/compare]
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch

from hessfree.runs.results import read_results
from hessfree.runs.trainer import RunSpec, train

SEC_PER_MOMENTUM_STEP = 3.2  # measured on this CPU: 50 products on 1,250 cases + set-up


def run(opt: str, seconds: float, out: str, sets: dict[str, str], eval_every: int,
        seed: int) -> Path:
    spec = RunSpec(experiment="curves-ae", optimizer=opt, seconds=seconds, out=out,
                   overrides=sets, eval_every=eval_every, checkpoint_every=10**9, seed=seed,
                   quiet=True)
    return train(spec)


def final(path: Path) -> dict[str, float]:
    r = read_results(path)
    return {k: float(r.eval[k][-1]) for k in ("step", "seconds", "grad_equiv", "train_error",
                                              "test_error")}


def figure(paths: dict[str, Path], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, path in paths.items():
        ev = read_results(path).eval
        for ax, x in zip(axes, ("seconds", "grad_equiv")):
            ax.plot(ev[x], ev["train_error"], label=label)
    for ax, name in zip(axes, ("optimizer seconds (2-core CPU)",
                               "gradient-equivalents of the training set")):
        ax.set_xlabel(name)
        ax.set_ylabel("training squared error")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axes[1].set_xscale("log")
    fig.suptitle("curves-ae: HF vs momentum-like HF vs NAG, equal time budget")
    fig.tight_layout()
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1200)
    ap.add_argument("--grid-seconds", type=float, default=120)
    ap.add_argument("--grid", default="0.05,0.01,0.005")
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", default="benchmarks/compare_curves.png")
    args = ap.parse_args()
    grid = {}
    for lr in args.grid.split(","):
        path = run("nag", args.grid_seconds, args.out + "/grid", {"lr": lr, "mu_max": "0.99"},
                   2000, args.seed)
        grid[lr] = final(path)["train_error"]
        print(f"NAG grid: lr {lr}: training error {grid[lr]:.4g} after {args.grid_seconds:g} s")
    best = min(grid, key=lambda k: grid[k] if grid[k] == grid[k] else float("inf"))
    switch = max(2, int(0.8 * args.seconds / SEC_PER_MOMENTUM_STEP))
    paths = {
        "hf (Martens 2010)": run("hf", args.seconds, args.out, {}, 1, args.seed),
        "hf-momentum (A.6)": run("hf-momentum", args.seconds, args.out,
                                 {"switch_step": str(switch),
                                  "lr_scale": str(500.0 * switch / 4000)}, 5, args.seed),
        f"nag (mu_max 0.99, lr {best})": run("nag", args.seconds, args.out,
                                             {"lr": best, "mu_max": "0.99"}, 2000, args.seed),
    }
    fig = figure(paths, Path(args.figure))
    print(f"\ncurves-ae, {args.seconds:g} s of optimizer time each; {platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"hf-momentum switch_step {switch}; figure {fig}")
    print("| optimizer | steps | grad-equiv | train error | test error |")
    print("|---|---|---|---|---|")
    for label, path in paths.items():
        f = final(path)
        print(f"| {label} | {int(f['step'])} | {f['grad_equiv']:.1f} | {f['train_error']:.4g} | "
              f"{f['test_error']:.4g} |")
    for label, path in paths.items():
        print(f"{label}: {path}")


if __name__ == "__main__":
    main()
