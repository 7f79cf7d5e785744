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


#: cases per block of the dense reference (its Jacobian: CHUNK x 64 rows; memory stays small)
CHUNK = 10


def _dense_reference(problem: Problem, model: nn.Module, layout: object, x: torch.Tensor,
                     v: torch.Tensor) -> torch.Tensor:
    """``Jᵀ H_L J v`` from dense float64 matrices, ``CHUNK`` cases at a time.

    J of a chunk's outputs by ``jacrev``, H_L of the loss with respect to the chunk's outputs
    (the others fixed) by ``hessian``: the loss is a sum over cases, so H_L is block-diagonal
    over chunks (:func:`_coupling` checks the first mixed block). Peak memory a few hundred MB
    (one dense J and H_L of all 200 cases: several GB).
    """
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    out = functional_call(model, layout.split(theta), (x,)).detach()
    n, total = x.shape[0], torch.zeros_like(v)

    def loss_on(z: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        z_all = torch.cat([out[:lo], z.reshape(hi - lo, *out.shape[1:]), out[hi:]])
        return problem.loss(z_all, x)

    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        J = jacrev(lambda th, lo=lo, hi=hi: functional_call(
            model, layout.split(th), (x[lo:hi],)).reshape(-1))(theta)
        HL = hessian(lambda z, lo=lo, hi=hi: loss_on(z, lo, hi))(out[lo:hi].reshape(-1))
        total += J.T @ (HL @ (J @ v))
    return total


def _coupling(problem: Problem, out: torch.Tensor, x: torch.Tensor) -> float:
    """The largest entry of H_L's block between the first two chunks (0: a sum over cases)."""
    rest = out[2 * CHUNK:]

    def grad_first(z1: torch.Tensor) -> torch.Tensor:
        def loss(z0: torch.Tensor) -> torch.Tensor:
            return problem.loss(torch.cat([z0.reshape(CHUNK, -1), z1.reshape(CHUNK, -1), rest]),
                                x)
        return torch.func.grad(loss)(out[:CHUNK].reshape(-1))

    return float(jacrev(grad_first)(out[CHUNK:2 * CHUNK].reshape(-1)).abs().max())


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

    ref = _dense_reference(problem, model, G.layout, x, v) + 1e-5 * v
    err = float((gv - ref).norm() / ref.norm())
    out = model(x).detach()
    coupling = _coupling(problem, out, x)
    print(f"{G!r}\n  loss {G.value:.6f}   |grad| {float(G.grad.norm()):.4e}")
    print(f"  set-up {setup * 1e3:.1f} ms, one product G@v {prod * 1e3:.2f} ms")
    print(f"  |G@v - J'H J v| / |J'H J v| = {err:.2e}  (dense float64 reference by jacrev/hessian)")
    print(f"  H_L between cases: largest entry {coupling:.1e} (0: a loss summed over cases)")
    return 0 if err < 1e-10 and coupling == 0.0 else 1
