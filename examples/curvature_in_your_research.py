"""The Gauss-Newton matrix of your model as a linear operator, for research code.

What it shows, on a small user-defined convolutional classifier and one batch of data:

* ``hessfree.GGN(problem, batch)``: products ``G @ v`` at about a gradient's cost, never the
  matrix itself (its size: the number of parameters squared);
* the top eigenvalues by Lanczos in torch (``hessfree.curvature.eigsh``), checked against
  scipy's ``eigsh`` on the same operator through ``G.to_scipy()``;
* the trace by Hutchinson's estimator with its standard error (``trace``), and the spectral
  density by stochastic Lanczos quadrature (``density``), saved as a plot;
* a damped Newton-like solve ``(G + λI) p = -g`` by ``hessfree.cg.solve`` (Martens' stopping
  rule), and the diagonal of the empirical Fisher (``EmpiricalFisher(...).diagonal()``).

``--scale f`` multiplies the cases and the convolution channels (CI runs the command below at
0.125).

    python examples/curvature_in_your_research.py --out density.png    # about 7 s on 2 idle cores
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

import hessfree
from hessfree.curvature import density, eigsh, trace
from hessfree.linops import single_threaded_blas
from hessfree.runs.threads import choose


class TinyConvNet(nn.Module):
    """conv 3x3 -> tanh -> average-pool 2 -> linear: 10 classes from 12x12 images."""

    def __init__(self, channels: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.head = nn.Linear(channels * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of the 10 classes."""
        h = torch.nn.functional.avg_pool2d(torch.tanh(self.conv(x)), 2)
        return self.head(h.flatten(1))


def main(argv: list[str] | None = None) -> int:
    """Run the example (``argv``: the command-line arguments)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=512)
    p.add_argument("--channels", type=int, default=6, help="convolution channels")
    p.add_argument("--k", type=int, default=5, help="top eigenvalues")
    p.add_argument("--lam", type=float, default=1e-2, help="damping of the solve")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiplies --cases and --channels (a small run: 0.125)")
    p.add_argument("--threads", default="auto", help="threads (hessfree.runs.threads)")
    p.add_argument("--out", default="density.png")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    torch.set_num_threads(choose(a.threads).n)  # this script's process: chosen, not inherited
    a.cases = max(16, round(a.cases * a.scale))
    a.channels = max(1, round(a.channels * a.scale))
    model = TinyConvNet(a.channels).double()
    x = torch.randn(a.cases, 1, 12, 12, dtype=torch.float64)
    y = torch.randint(0, 10, (a.cases,))
    problem = hessfree.Problem(model, hessfree.losses.CrossEntropy())
    G = hessfree.GGN(problem, (x, y))
    print(f"{G!r}: {G.dim} parameters, loss {G.value:.4f}, |grad| {float(G.grad.norm()):.3e}")

    top = eigsh(G, k=a.k, which="LA", return_eigenvectors=False)
    with single_threaded_blas():
        from scipy.sparse.linalg import eigsh as scipy_eigsh

        ref = np.sort(scipy_eigsh(G.to_scipy(), k=a.k, which="LA",
                                  return_eigenvectors=False))
    agree = float(np.max(np.abs(top.numpy() - ref) / np.abs(ref)))
    print(f"top {a.k} eigenvalues: {', '.join(f'{v:.6g}' for v in top.flip(0).tolist())}")
    print(f"scipy eigsh on G.to_scipy(): max relative difference {agree:.1e}")

    tr = trace(G, samples=64, generator=torch.Generator().manual_seed(1))
    # the exact trace, sum over parameters of e_i' G e_i, needs one product per parameter
    exact = f"; exact {float(torch.diagonal(G.dense()).sum()):.6g}" if G.dim <= 500 else ""
    print(f"trace: {tr.estimate:.6g} +- {tr.stderr:.2g} (Hutchinson, 64 probes){exact}")

    dens = density(G, num_probes=4, num_steps=40, generator=torch.Generator().manual_seed(2))
    mass_top = dens.mass(float(top[0]) * 0.5, float("inf"))
    print(f"spectral density: {len(dens.grid)} points, mass above half the top eigenvalue "
          f"{mass_top:.3g}")

    damped = G.damped(a.lam)
    res = hessfree.cg.solve(damped, -G.grad, stop=hessfree.cg.MartensProgress(), max_iters=200)
    resid = float((damped @ res.x + G.grad).norm() / G.grad.norm())
    print(f"damped solve (G + {a.lam:g} I) p = -g: {res.iters} CG iterations ({res.reason}), "
          f"relative residual {resid:.2e}, q(p) = {float(res.phi[-1]):.6g}")

    diag = hessfree.EmpiricalFisher(problem, (x, y)).diagonal()
    print(f"empirical Fisher diagonal: min {float(diag.min()):.3g}, max {float(diag.max()):.3g}")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.semilogy(dens.grid.numpy(), np.maximum(dens.density.numpy(), 1e-8))
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title("GGN spectral density (stochastic Lanczos quadrature)")
    fig.tight_layout()
    fig.savefig(a.out)
    print(f"plot: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
