"""Where the time of one HF step goes, on the CURVES autoencoder at Martens' setting.

Gradient on 5000 cases, curvature on 1250 (1/4, HFDemo ``numchunks = 4``), CG capped at 50
iterations, float32, sparse initialization. The split comes from ``StepStats``: gradient and
exact diagonal empirical Fisher (one fused pass, as HFDemo computes ``grad2``), the rest of the
preconditioner, curvature set-up, CG products, CG vector work
(CG wall time minus its products; the products' share of ``seconds_products`` is taken in
proportion to their number, the rest being the one product ρ needs), CG-backtracking, line
search, and bookkeeping (whatever is left). Medians over steps after a warm-up step.

    python benchmarks/bench_hf_step.py [--steps 4] [--grad 5000] [--curv 1250] [--cg 50]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import hessfree
from hessfree.hf import HessianFree, HFConfig


def data(n: int) -> torch.Tensor:
    """CURVES images (the package's re-generation) or, if absent, uniform noise of that shape."""
    try:
        from hessfree.data import curves

        x, _ = curves(n_train=n, n_test=1, seed=0)
        return x
    except (ImportError, TypeError):
        return torch.rand(n, 784)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--grad", type=int, default=5000)
    ap.add_argument("--curv", type=int, default=1250)
    ap.add_argument("--cg", type=int, default=50)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = hessfree.models.curves_autoencoder()
    hessfree.models.init.sparse_init_(model, generator=torch.Generator().manual_seed(0))
    x = data(args.grad)
    problem = hessfree.Problem(model, hessfree.losses.BCEWithLogits(), weight_decay=2e-5)
    opt = HessianFree(problem, config=HFConfig.martens2010(cg_max_iters=args.cg))
    grad_batch = (x, x)
    rows = []
    for k in range(args.steps + 1):
        c0 = (k % 4) * args.curv % args.grad
        curv = (x[c0:c0 + args.curv], x[c0:c0 + args.curv])
        s = opt.step(grad_batch, curv)
        if k:
            rows.append(s)
    # one plain gradient on the gradient batch, as the unit
    params = problem.parameters()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        problem.value_and_grad(params, grad_batch)
        times.append(time.perf_counter() - t0)
    grad_time = statistics.median(times)

    def med(f):
        return statistics.median(f(s) for s in rows)

    def cg_products(s):
        return s.seconds_products * (s.products - 1) / s.products

    split = {
        "gradient + diag EF, fused (5000)": med(lambda s: s.seconds_gradient),
        "preconditioner (rest)": med(lambda s: s.seconds_precond),
        "curvature set-up (1250)": med(lambda s: s.seconds_setup),
        "CG products": med(cg_products),
        "CG vector work": med(lambda s: s.seconds_cg - cg_products(s)),
        "rho product": med(lambda s: s.seconds_products - cg_products(s)),
        "CG-backtracking (forwards, 1250)": med(lambda s: s.seconds_backtrack),
        "line search (forwards, 5000)": med(lambda s: s.seconds_stepsize),
    }
    total = med(lambda s: s.seconds)
    split["bookkeeping (the rest)"] = total - sum(split.values())
    print(f"CURVES autoencoder, one HF step: gradient batch {args.grad}, curvature batch "
          f"{args.curv}, CG <= {args.cg}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.machine()}, {os.cpu_count()} cores; "
          f"median of {len(rows)} steps")
    print(f"CG iterations {[s.cg_iters for s in rows]}, backtrack evals "
          f"{[s.backtrack_evals for s in rows]}, line-search evals {[s.ls_evals for s in rows]}")
    print(f"| {'part':36s} | {'ms':>8s} | {'share':>6s} |")
    print(f"|{'-' * 38}|{'-' * 10}|{'-' * 8}|")
    for k, v in split.items():
        print(f"| {k:36s} | {v * 1e3:8.1f} | {v / total:6.1%} |")
    print(f"| {'total':36s} | {total * 1e3:8.1f} | {1:6.1%} |")
    overhead = split["CG vector work"] + split["bookkeeping (the rest)"]
    print(f"\neverything but products, gradients and objective evaluations: "
          f"{overhead * 1e3:.1f} ms = {overhead / total:.1%} of the step (target <= 10%)")
    precond = split["gradient + diag EF, fused (5000)"] - grad_time + split["preconditioner (rest)"]
    print(f"preconditioner = {precond / grad_time:.2f} gradient-equivalents on top of the "
          f"gradient (one plain gradient on 5000 cases: {grad_time * 1e3:.1f} ms; target <= 3)")


if __name__ == "__main__":
    main()
