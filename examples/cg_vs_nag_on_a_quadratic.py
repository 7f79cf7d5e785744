"""CG against NAG, CM and gradient descent on a quadratic saved from the middle of an HF run.

What it shows: Sutskever et al. (2013, §5 and supplementary Fig. 5) compare CG with NAG on "a
quadratic generated during the middle of a typical run of HF on the curves dataset". Here HF
trains a CURVES autoencoder until its CG runs need many iterations (past the mean-image plateau,
the regime of the paper's figure, not a plateau quadratic where every method converges at once),
saves that step's quadratic to HDF5 through ``HessianFree.step(..., on_quadratic=...)``, reloads
it, and runs CG, NAG, CM and GD from zero at equal curvature products; it prints how many
products each needs to close 90% and 99% of the gap to the minimum, and saves the curves.

The default network is the demo's (``curves-small``: 2000 generated CURVES images, a
784-200-100-50-25-6 autoencoder), so the command below finishes in about a minute on 2 cores;
``--hidden 400,200,100,50,25,6 --n-train 20000`` is the paper's network and data size (hours).
``--scale f`` multiplies the data, the layer widths, the steps and the products (CI runs the
command below at 0.3).

    python examples/cg_vs_nag_on_a_quadratic.py --out fig5.png    # about 50 s on 2 idle cores
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import hessfree
from hessfree.models.init import sparse_init_
from hessfree.runs.threads import choose


def products_to(values, q_star: float, q0: float, fraction: float) -> int | None:
    """First k with q(x_k) - q* <= (1 - fraction) (q0 - q*), or None."""
    target = q_star + (1 - fraction) * (q0 - q_star)
    for k, v in enumerate(values):
        if v <= target:
            return k
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the example (``argv``: the command-line arguments)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--min-cg", type=int, default=50,
                   help="save the first quadratic whose CG ran at least this many iterations")
    p.add_argument("--max-steps", type=int, default=80)
    p.add_argument("--iters", type=int, default=150, help="products per method")
    p.add_argument("--hidden", default="200,100,50,25,6",
                   help="encoder sizes (the demo's curves-small net by default)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiplies --n-train, the hidden widths (not the code), --min-cg, "
                        "--max-steps and --iters (a small run: 0.3)")
    p.add_argument("--threads", default="auto", help="threads (hessfree.runs.threads)")
    p.add_argument("--out", default="cg_vs_nag.png")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(choose(a.threads).n)  # this script's process: chosen, not inherited
    widths = [int(h) for h in a.hidden.split(",")]
    sizes = [784] + [max(2, round(h * a.scale)) for h in widths[:-1]] + widths[-1:]
    a.n_train, a.iters = max(100, round(a.n_train * a.scale)), max(10, round(a.iters * a.scale))
    a.min_cg, a.max_steps = max(5, round(a.min_cg * a.scale)), max(5, round(a.max_steps * a.scale))
    model = hessfree.models.DeepAutoencoder(sizes + sizes[-2::-1])
    sparse_init_(model, generator=torch.Generator().manual_seed(a.seed))
    x, _ = hessfree.data.curves(n_train=a.n_train, n_test=1, seed=a.seed)
    problem = hessfree.Problem(model, hessfree.losses.BCEWithLogits(), weight_decay=2e-5)
    opt = hessfree.HessianFree(problem, config=hessfree.HFConfig.martens2010())
    chunks = [(x[i::4], x[i::4]) for i in range(4)]  # Martens' curvature chunks, cycled
    grad = [(x[i:i + 2500], x[i:i + 2500]) for i in range(0, a.n_train, 2500)]
    print(f"HF on {a.n_train} CURVES images, autoencoder {'-'.join(map(str, sizes))}, until CG "
          f"runs {a.min_cg} iterations (at most {a.max_steps} steps)")
    saved: list = []
    folder = Path(tempfile.mkdtemp())
    for t in range(a.max_steps):
        pending: list = []
        stats = opt.step(grad, chunks[t % 4], on_quadratic=pending.append)
        print(f"step {t}: loss {stats.loss_before:.4g}, CG {stats.cg_iters} ({stats.cg_reason}), "
              f"lambda {stats.lambda_after:.3g}")
        if stats.cg_iters >= a.min_cg:
            pending[0].save(folder / "quadratic.h5", step=t, cg_iters=stats.cg_iters)
            saved.append((t, stats.cg_iters))
            break
    if not saved:
        print(f"no step ran {a.min_cg} CG iterations within {a.max_steps} steps")
        return 1
    q = hessfree.Quadratic.load(folder / "quadratic.h5", model=model)
    step, cg_iters = saved[0]
    c = hessfree.quadratic.compare(q, iters=a.iters)
    cg_best = float(min(c.values["cg"]))
    q_star = min(cg_best, *(float(min(v[v == v])) for v in c.values.values()))
    print(f"quadratic of step {step} (HF's CG ran {cg_iters} iterations), dimension {q.dim}, "
          f"lambda {q.lam:.3g}, largest eigenvalue {c.L:.4g}")
    for m in c.methods:
        k90 = products_to(c.values[m], q_star, 0.0, 0.9)
        k99 = products_to(c.values[m], q_star, 0.0, 0.99)
        print(f"{m:3s}: q after {a.iters} products {c.values[m][-1]:.6g}; products to 90% of the "
              f"gap: {k90 if k90 is not None else '>' + str(a.iters)}; to 99%: "
              f"{k99 if k99 is not None else '>' + str(a.iters)}")
    hessfree.quadratic.plot(c, a.out, title=f"HF quadratic of step {step} ({cg_iters} CG steps)")
    print(f"plot: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
