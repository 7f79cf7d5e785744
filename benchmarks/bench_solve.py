"""Damped GGN solves: hessfree's CG against curvlinops' CG inverse on the same operator.

The problem: an MLP classifier ``784-hidden-10`` (tanh, softmax cross-entropy, mean over
cases) on ``--cases`` MNIST training images (``$HESSFREE_DATA``; generated images of the same
shape when MNIST is not found), float64 by default. ``B`` holds ``k`` per-case loss gradients
of further cases (the right-hand sides of influence functions). For ``k`` in ``--rhs``:

* hessfree: ``G.solve(B, λ, rtol=--rtol)`` — batched CG, one block product per iteration for
  the columns still running, plus one block product for the certificate;
* curvlinops: ``CGInverseLinearOperator(GGNLinearOperator(...) + λ I, tolerance=--rtol) @ B``
  (GPyTorch's batched CG, which stops on the mean relative residual of the columns; its
  ``eps`` is set to 1e-30: at the default 1e-10 it stops updating a column once ``pᵀAp`` of the
  normalised right-hand side is below 1e-10, and stalls near a relative residual of 1e-5 here).

Both count the products with the GGN (a block of ``c`` columns counts ``c``) and report the
largest true relative residual ``‖b − (G + λI)x‖ / ‖b‖`` (computed afterwards, not timed or
counted). Then several dampings: hessfree's shifted CG for ``--dampings`` at once against one
curvlinops solve per damping. Last, the cost of the exact GGN diagonal
(``hessfree.curvature.diag(G, "exact")``) in gradients: its time over the time of one gradient
of the same batch, and its backward passes. Medians of ``--repeats`` runs, interleaved.

Check it runs (seconds):

    python benchmarks/bench_solve.py --cases 64 --hidden 8 --rhs 1,4 --repeats 1

The measurement (on a quiet machine; minutes):

    python benchmarks/bench_solve.py --cases 1000 --hidden 64 --rhs 1,8,32 --repeats 3 \
        --out benchmarks/results/solve.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import hessfree
from hessfree.curvature import diag


def data(cases: int, extra: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        x, y, _, _ = hessfree.data.mnist()
        return x[:cases + extra], y[:cases + extra], "MNIST"
    except (ValueError, OSError):
        g = torch.Generator().manual_seed(seed)
        return torch.rand(cases + extra, 784, generator=g), \
            torch.randint(0, 10, (cases + extra,), generator=g), "generated"


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class Counter:
    """Counts the columns that go through a curvlinops operator's ``_matmat``."""

    def __init__(self, op: object) -> None:
        self.n = 0
        inner = op._matmat

        def counted(X: list[torch.Tensor]) -> list[torch.Tensor]:
            self.n += X[0].shape[-1]
            return inner(X)

        op._matmat = counted


def curvlinops_solver(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam: float,
                      rtol: float, max_iter: int) -> tuple[Callable, Counter]:
    from curvlinops import CGInverseLinearOperator, GGNLinearOperator
    from curvlinops.examples import IdentityLinearOperator

    params = [p for p in model.parameters() if p.requires_grad]
    G = GGNLinearOperator(model, nn.CrossEntropyLoss(), params, [(x, y)],
                          check_deterministic=False)
    count = Counter(G)
    eye = IdentityLinearOperator([p.shape for p in params], x.device, x.dtype)
    # eps: GPyTorch's default (1e-10) sets α = 0 once pᵀAp of the normalised right-hand side
    # falls below it, which freezes CG at a relative residual near 1e-5 on this problem
    inverse = CGInverseLinearOperator(G + lam * eye, tolerance=rtol, max_iter=max_iter,
                                      eps=1e-30)
    return (lambda B: inverse @ B), count


def rhs_table(ctx: tuple, ks: list[int], name: str) -> list[str]:
    """One row per number of right-hand sides: hessfree's solve and curvlinops' CG inverse."""
    a, model, G, problem, xb, yb, B_all, max_iter, true_rel = ctx
    lines = [f"# Damped GGN solves: hessfree vs curvlinops ({platform.node()}, torch "
             f"{torch.__version__}, {torch.get_num_threads()} threads)", "",
             f"MLP 784-{a.hidden}-10 ({G.dim} parameters), {a.cases} {name} cases, {a.dtype}, "
             f"λ = {a.lam:g}, rtol = {a.rtol:g}; medians of {a.repeats} runs.", "",
             "| right-hand sides | hessfree products / rhs | hessfree s | hessfree max rel. "
             "residual | curvlinops products / rhs | curvlinops s | curvlinops max rel. "
             "residual | time ratio (curvlinops / hessfree) |", "|---|---|---|---|---|---|---|---|"]
    for k in ks:
        B = B_all[:, :k].contiguous()
        inv, count = curvlinops_solver(model, xb, yb, a.lam, a.rtol, max_iter)
        t_h, t_c = [], []
        for _ in range(a.repeats):
            before = G.products
            t, res = timed(lambda: G.solve(B, a.lam, rtol=a.rtol))
            t_h.append(t)
            prod_h = G.products - before
            count.n = 0
            t, X_c = timed(lambda: inv(B))
            t_c.append(t)
            prod_c = count.n
        th, tc = statistics.median(t_h), statistics.median(t_c)
        lines.append(f"| {k} | {prod_h / k:.1f} | {th:.3f} | {true_rel(res.x, B, a.lam):.1e} | "
                     f"{prod_c / k:.1f} | {tc:.3f} | {true_rel(X_c, B, a.lam):.1e} | "
                     f"{tc / th:.2f} |")
        print(lines[-1], flush=True)
    return lines


def dampings_table(ctx: tuple, ks: list[int]) -> list[str]:
    """Several dampings: hessfree's shifted CG against one curvlinops solve per damping."""
    a, model, G, problem, xb, yb, B_all, max_iter, true_rel = ctx
    lams = [float(v) for v in a.dampings.split(",")]
    k = ks[min(1, len(ks) - 1)]
    B = B_all[:, :k].contiguous()
    before = G.products
    t_sh, res = timed(lambda: G.solve(B, lams, rtol=a.rtol))
    prod_sh = G.products - before
    prod_c, t_c, worst = 0, 0.0, 0.0
    for i, lam in enumerate(lams):
        inv, count = curvlinops_solver(model, xb, yb, lam, a.rtol, max_iter)
        t, X_c = timed(lambda: inv(B))
        t_c += t
        prod_c += count.n
        worst = max(worst, true_rel(X_c, B, lam))
    worst_h = max(true_rel(res.x[i], B, lam) for i, lam in enumerate(lams))
    lines = ["", f"Several dampings ({', '.join(f'{v:g}' for v in lams)}), {k} right-hand "
              "sides: hessfree's shifted CG (one Krylov basis) vs one curvlinops solve per "
              "damping.", "",
              "| | products | s | max rel. residual |", "|---|---|---|---|",
              f"| hessfree shifted CG | {prod_sh} | {t_sh:.3f} | {worst_h:.1e} |",
              f"| curvlinops, {len(lams)} solves | {prod_c} | {t_c:.3f} | {worst:.1e} |"]
    print("\n".join(lines[-4:]), flush=True)
    return lines



def diagonal_cost(ctx: tuple) -> list[str]:
    """The exact GGN diagonal's time in gradients of the same batch, and its passes."""
    a, model, G, problem, xb, yb, B_all, max_iter, true_rel = ctx
    t_g, t_d = [], []
    for _ in range(a.repeats):
        t_g.append(timed(lambda: problem.value_and_grad(G.params, (xb, yb)))[0])
        t, est = timed(lambda: diag(G, "exact"))
        t_d.append(t)
    ratio = statistics.median(t_d) / statistics.median(t_g)
    lines = ["", f"Exact GGN diagonal: {est.passes} backward passes (one per output class "
              "with a nonzero eigenvalue of H_L), "
              f"{statistics.median(t_d):.3f} s = {ratio:.1f} gradients "
              f"(one gradient: {statistics.median(t_g):.4f} s)."]
    print(lines[-1])
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lam", type=float, default=1e-3)
    p.add_argument("--dampings", default="1e-3,1e-2,1e-1,1")
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--rhs", default="1,8,32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--out", default=None, help="also write the tables to this markdown file")
    a = p.parse_args(argv)
    dtype = getattr(torch, a.dtype)
    ks = [int(k) for k in a.rhs.split(",")]
    torch.manual_seed(0)
    x, y, name = data(a.cases, max(ks), 0)
    x = x.to(dtype)
    model = nn.Sequential(nn.Linear(784, a.hidden), nn.Tanh(), nn.Linear(a.hidden, 10)).to(dtype)
    problem = hessfree.Problem(model, hessfree.losses.CrossEntropy())
    xb, yb = x[:a.cases], y[:a.cases]
    G = hessfree.GGN(problem, (xb, yb))
    grads = hessfree.curvature.jacobians.seed_grads(
        problem, G.params, x[a.cases:], problem.loss.prepare(
            model(x[a.cases:]).detach(), y[a.cases:], 1.0).per_case_grad())
    B_all = grads.T.contiguous()
    max_iter = min(2 * G.dim + 10, 5000)  # hessfree's default cap, for both

    def true_rel(X: torch.Tensor, B: torch.Tensor, lam: float) -> float:
        R = B - G._apply_block(X) - lam * X  # not counted: the check of either answer
        return float((R.norm(dim=0) / B.norm(dim=0)).max())

    ctx = (a, model, G, problem, xb, yb, B_all, max_iter, true_rel)
    lines = rhs_table(ctx, ks, name) + dampings_table(ctx, ks) + diagonal_cost(ctx)
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(lines) + "\n\nCommand: `python benchmarks/bench_solve.py "
                    + " ".join(argv if argv is not None else __import__("sys").argv[1:])
                    + "`\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
