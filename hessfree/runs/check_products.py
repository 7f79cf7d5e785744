"""``hessfree check-products``: GGN products on a small autoencoder against a dense matrix."""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

from hessfree.curvature import GGN, Problem, losses


def _autoencoder() -> nn.Module:
    """A 64-32-8-32-64 autoencoder: logistic hidden units, linear code, logits out."""
    return nn.Sequential(nn.Linear(64, 32), nn.Sigmoid(), nn.Linear(32, 8), nn.Linear(8, 32),
                         nn.Sigmoid(), nn.Linear(32, 64)).double()


def run_demo(seed: int = 0) -> int:
    """Build a GGN operator, multiply, and compare with ``Jᵀ H_L J`` from jacrev/hessian."""
    torch.manual_seed(seed)
    model = _autoencoder()
    x = (torch.rand(200, 64, dtype=torch.float64) > 0.7).double()
    problem = Problem(model, losses.BCEWithLogits(), weight_decay=1e-5)
    t0 = time.perf_counter()
    G = GGN(problem, (x, x))
    setup = time.perf_counter() - t0
    v = torch.randn(G.dim, dtype=torch.float64)
    G @ v  # warm-up: the first product pays autograd's one-time costs
    t0 = time.perf_counter()
    gv = G @ v
    prod = time.perf_counter() - t0

    params = {k: p.detach() for k, p in model.named_parameters()}
    theta = torch.cat([p.reshape(-1) for p in params.values()])

    def f(th: torch.Tensor) -> torch.Tensor:
        return functional_call(model, G.layout.split(th), (x,))

    J = jacrev(lambda th: f(th).reshape(-1))(theta)
    out = f(theta)
    HL = hessian(lambda z: problem.loss(z.reshape(out.shape), x))(out.reshape(-1))
    ref = J.T @ (HL @ (J @ v)) + 1e-5 * v
    err = float((gv - ref).norm() / ref.norm())
    print(f"{G!r}\n  loss {G.value:.6f}   |grad| {float(G.grad.norm()):.4e}")
    print(f"  set-up {setup * 1e3:.1f} ms, one product G@v {prod * 1e3:.2f} ms")
    print(f"  |G@v - J'H J v| / |J'H J v| = {err:.2e}  (dense float64 reference by jacrev/hessian)")
    return 0 if err < 1e-10 else 1
