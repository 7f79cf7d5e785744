"""Per-case vector-Jacobian products: Jacobians, and weighted sums of squared ones.

A *seed* is a tensor ``U`` shaped like a chunk's outputs; its per-case products are
``g_i = J_iᵀ u_i`` (``J_i`` the Jacobian of case ``i``'s outputs with respect to the
parameters). Everything here is built on them:

* :func:`jacobian` — the per-case Jacobians ``(N, D, P)`` (``D`` outputs per case), one seed
  per output entry (``D`` backward passes);
* :func:`weighted_sq` — ``Σ_i w_i g_i ⊙ g_i`` for one seed and per-case weights ``w``: the
  exact GGN diagonal is its sum over the eigenvectors of each case's output Hessian
  (:mod:`hessfree.curvature.diagonals`), the empirical Fisher's over the loss gradients.

Two ways to get ``Σ_i w_i g_i²``: when every parameter belongs to an ``nn.Linear`` called
once on 2-D inputs, ``g_i`` of the weight is ``δ_i x_iᵀ`` and the sum is ``(w δ²)ᵀ (x²)`` — one
backward pass to the layer outputs and one matrix product per layer ([HFDemo]'s trick for the
squared gradients, ``dEdW2 = (dEdx.^2)*(y.^2)'``); otherwise per-case gradients by
``torch.func.vmap`` over slices of cases (memory ``slice × P`` numbers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from hessfree.batches import take, unsqueeze
from hessfree.curvature.losses import LossState
from hessfree.curvature.problem import Problem

__all__ = ["LinearTape", "jacobian", "output_hessian_eig", "seed_grads", "weighted_sq"]

#: default number of per-case gradients held at once: about 64 MiB of float32 numbers
BUDGET = 1 << 24


def _slice_size(n: int, dim: int, chunk_size: int | None) -> int:
    return chunk_size or max(1, min(n, BUDGET // max(dim, 1)))


def seed_grads(problem: Problem, params: Mapping[str, Tensor], inputs: Any, U: Tensor,
               chunk_size: int | None = None) -> Tensor:
    """``g_i = J_iᵀ u_i`` for every case, ``(N, P)`` (per-case gradients of ``⟨f(x_i), u_i⟩``)."""
    prim = {n: p.detach() for n, p in params.items()}

    def dot(p: dict[str, Tensor], x: Any, u: Tensor) -> Tensor:
        return (problem.forward(p, unsqueeze(x))[0] * u).sum()

    per_case = vmap(grad(dot), in_dims=(None, 0, 0))
    dim = sum(p.numel() for p in prim.values())
    size = _slice_size(U.shape[0], dim, chunk_size)
    rows = []
    for start in range(0, U.shape[0], size):
        sl = slice(start, min(start + size, U.shape[0]))
        g = per_case(prim, take(inputs, sl), U[sl])
        rows.append(torch.cat([g[n].reshape(g[n].shape[0], -1) for n in prim], 1))
    return torch.cat(rows)


def jacobian(problem: Problem, params: Mapping[str, Tensor], inputs: Any,
             chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Per-case Jacobians ``(N, D, P)`` of the flattened outputs, and the outputs ``(N, ...)``.

    ``D`` backward passes (vectorised over the cases), one per output entry of a case.
    """
    with torch.no_grad():
        out = problem.forward(params, inputs)
    n, d = out.shape[0], out[0].numel()
    rows = []
    for k in range(d):
        U = torch.zeros(n, d, dtype=out.dtype, device=out.device)
        U[:, k] = 1
        rows.append(seed_grads(problem, params, inputs, U.reshape(out.shape), chunk_size))
    return torch.stack(rows, 1), out


def output_hessian_eig(state: LossState, out: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenpairs of each case's output Hessian ``H_i`` (``D × D``, scaled like the loss).

    ``H_i`` is read column by column from the loss's ``H_L u`` (``D`` closed-form products for
    the matching losses, double backward for others). Returns the eigenvalues ``(N, D)`` and
    the eigenvectors as seeds ``(D, N, ...)``: seed ``k`` holds eigenvector ``k`` of every case,
    so ``H_i = Σ_k λ_ik v_ik v_ikᵀ``.
    """
    n, d = out.shape[0], out[0].numel()
    cols = []
    for k in range(d):
        U = torch.zeros(n, d, dtype=out.dtype, device=out.device)
        U[:, k] = 1
        cols.append(state.hvp(U.reshape(out.shape)).reshape(n, d))
    H = torch.stack(cols, 2)
    lam, V = torch.linalg.eigh(0.5 * (H + H.transpose(1, 2)))
    return lam, V.permute(2, 0, 1).reshape((d,) + tuple(out.shape))


class LinearTape:
    """One forward pass of a model whose parameters all sit in ``nn.Linear`` layers.

    Records each layer's input ``x`` and output ``y`` (each layer called once, on 2-D inputs),
    then answers ``Σ_i w_i (J_iᵀ u_i)²`` for any seed ``u`` with one backward pass to the
    layer outputs. ``LinearTape.record`` returns None when the model does not qualify.
    """

    def __init__(self, names: list[str], seen: dict[str, tuple[Tensor, Tensor]], out: Tensor,
                 params: list[str]) -> None:
        self.names, self.seen, self.out, self.params = names, seen, out, params

    @staticmethod
    def owners(problem: Problem, params: Mapping[str, Tensor]) -> dict[str, str] | None:
        """``{parameter name: module name}`` when every parameter is in an ``nn.Linear``."""
        if not problem.is_module:
            return None
        owners: dict[str, str] = {}
        for mod_name, mod in problem.model.named_modules():
            if type(mod) is nn.Linear:
                for pname, _ in mod.named_parameters(recurse=False):
                    owners[f"{mod_name}.{pname}" if mod_name else pname] = mod_name
        return owners if all(n in owners for n in params) else None

    @classmethod
    def record(cls, problem: Problem, params: Mapping[str, Tensor], inputs: Any
               ) -> LinearTape | None:
        """Run the forward pass with hooks; None when the fast path does not apply."""
        owners = cls.owners(problem, params)
        if owners is None:
            return None
        mods = dict(problem.model.named_modules())
        wanted = sorted({owners[n] for n in params})
        calls: dict[str, list[tuple[Tensor, Tensor]]] = {m: [] for m in wanted}
        handles = [mods[m].register_forward_hook(
            lambda mod, inp, out, m=m: calls[m].append((inp[0], out))) for m in wanted]
        try:
            leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
            with torch.enable_grad():
                out = problem.forward(leaves, inputs)
        finally:
            for h in handles:
                h.remove()
        if any(len(c) != 1 or c[0][0].dim() != 2 for c in calls.values()):
            return None
        return cls(wanted, {m: c[0] for m, c in calls.items()}, out, list(params))

    def weighted_sq(self, U: Tensor, w: Tensor) -> Tensor:
        """``Σ_i w_i (J_iᵀ u_i)²`` (flat, in the order of the parameters)."""
        ys = [self.seen[m][1] for m in self.names]
        deltas = torch.autograd.grad(self.out, ys, U, retain_graph=True, allow_unused=True,
                                     materialize_grads=True)
        sq: dict[str, Tensor] = {}
        for m, d in zip(self.names, deltas):
            wd2, x2 = d.square() * w[:, None], self.seen[m][0].detach().square()
            sq[f"{m}.weight" if m else "weight"] = wd2.T @ x2
            sq[f"{m}.bias" if m else "bias"] = wd2.sum(0)
        return torch.cat([sq[n].reshape(-1) for n in self.params])


def weighted_sq(problem: Problem, params: Mapping[str, Tensor], inputs: Any, U: Tensor,
                w: Tensor, tape: LinearTape | None = None, chunk_size: int | None = None
                ) -> Tensor:
    """``Σ_i w_i (J_iᵀ u_i)²`` (flat): through ``tape`` when given, else per-case gradients."""
    if tape is not None:
        return tape.weighted_sq(U, w)
    dim = sum(p.numel() for p in params.values())
    size = _slice_size(U.shape[0], dim, chunk_size)
    total = U.new_zeros(dim)
    for start in range(0, U.shape[0], size):
        sl = slice(start, min(start + size, U.shape[0]))
        g = seed_grads(problem, params, take(inputs, sl), U[sl], chunk_size)
        total += (g.square() * w[sl, None]).sum(0)
    return total
