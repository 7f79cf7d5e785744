"""Worker for tests/test_distributed.py: one rank of a gloo process group on 127.0.0.1.

Usage (environment as torchrun sets it: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT):
    python _dist_products.py OUT_DIR N_CASES SEED     (writes OUT_DIR/rank<r>.pt)
Builds the small autoencoder and the batch of ``curvature_cases``-like seeded data, keeps this
rank's shard (contiguous, uneven when N is not a multiple of the world size), computes every
reduced quantity with a distributed Problem and saves them for the parent to compare with the
one-process values on the joined batch.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from curvature_cases import TokenMSE, sequence_case  # this script's folder is on sys.path

import hessfree
from hessfree.curvature import diag
from hessfree.distributed import shard_range


def case(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Sigmoid(), torch.nn.Linear(5, 3),
                                torch.nn.Linear(3, 5), torch.nn.Sigmoid(),
                                torch.nn.Linear(5, 6)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)
    x = (torch.rand(n, 6, generator=g, dtype=torch.float64) > 0.5).double()
    return model, x, g


def quantities(problem, batch, v, V) -> dict:
    out = {}
    for name, cls, kw in (("ggn", hessfree.GGN, {}), ("ggn_db", hessfree.GGN,
                                                     {"backend": "double-backward"}),
                          ("hessian", hessfree.Hessian, {}),
                          ("fisher", hessfree.EmpiricalFisher, {})):
        op = cls(problem, batch, **kw)
        out[f"{name}_mv"] = op @ v
        out[f"{name}_mm"] = op @ V
        out[f"{name}_damped"] = op.damped(0.3) @ v
        out[f"{name}_grad"] = op.grad
        out[f"{name}_value"] = torch.tensor(op.value)
        out[f"{name}_n"] = torch.tensor(op.n_cases)
    out["fisher_diag"] = hessfree.EmpiricalFisher(problem, batch).diagonal()
    # the research services: diagonals, solves and blocks are sums over the joined batch too
    G = hessfree.GGN(problem, batch)
    out["ggn_diag_exact"] = diag(G, "exact").value
    probes = torch.Generator().manual_seed(11)  # every rank draws the same probes
    out["hessian_diag_hutchinson"] = diag(hessfree.Hessian(problem, batch), "hutchinson",
                                          samples=4, generator=probes).value
    out["ggn_solve"] = G.solve(V, [0.3, 1.0], rtol=1e-12).x
    block = hessfree.GGN(problem, batch, param_filter="0")
    out["ggn_block_mv"] = block @ v[:block.dim]
    params = problem.parameters()
    value, grad = problem.value_and_grad(params, batch)
    out["value_and_grad"] = grad
    out["value"] = torch.tensor([problem.value(params, batch), value])
    return out


def token_quantities(problem, batch, v) -> dict:
    """A loss whose mean is over the tokens that count: count, value, gradient, GGN product."""
    e = problem.evaluate(problem.parameters(), batch, grad=True)
    G = hessfree.GGN(problem, batch)
    return {"token_count": torch.tensor([e.count, G.n_cases]), "token_value": torch.tensor(
        [e.value, G.value]), "token_grad": e.grad, "token_ggn": G @ v}


def token_case(n: int, seed: int):
    """The sequence model, its batch and a vector (the same on every rank)."""
    model, x, y, mask = sequence_case(n, seed)
    dim = sum(p.numel() for p in model.parameters())
    v = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return model, (x, (y, mask)), v


def main() -> None:
    folder, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    path = f"{folder}/rank{rank}.pt"
    model, x, g = case(n, seed)
    lo, hi = shard_range(n, rank, world)
    problem = hessfree.Problem(model, hessfree.losses.BCEWithLogits(), weight_decay=1e-3,
                               group="world")
    dim = sum(p.numel() for p in model.parameters())
    v = torch.randn(dim, generator=g, dtype=torch.float64)
    V = torch.randn(dim, 3, generator=g, dtype=torch.float64)
    # the batch in two chunks of unequal size on this rank, to check chunked accumulation too
    xs = x[lo:hi]
    cut = max(1, (hi - lo) // 3)
    batch = [(xs[:cut], xs[:cut]), (xs[cut:], xs[cut:])] if hi - lo > 1 else (xs, xs)
    calls0 = problem.reducer.calls
    op = hessfree.GGN(problem, batch)
    setup_calls = problem.reducer.calls - calls0
    before = problem.reducer.calls
    op @ v
    product_calls = problem.reducer.calls - before
    out = quantities(problem, batch, v, V)
    out["calls"] = torch.tensor([setup_calls, product_calls])
    tmodel, (tx, (ty, tmask)), tv = token_case(n, seed)
    tproblem = hessfree.Problem(tmodel, TokenMSE(), weight_decay=1e-3, group="world")
    out.update(token_quantities(tproblem, (tx[lo:hi], (ty[lo:hi], tmask[lo:hi])), tv))
    torch.save(out, path)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
