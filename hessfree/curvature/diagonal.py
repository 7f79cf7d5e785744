"""Exact diagonal of the empirical Fisher from per-case gradients.

``diag(F) = s Σ_i (∇l_i)² + weight_decay`` with ``s = 1/N`` for ``mean`` — the statistic of
Martens' diagonal preconditioner ``(diag + λ)^0.75`` ([M10 §4.7]; [HFDemo]: ``grad2`` is the mean of
the squared per-case gradients, and the weight cost is added). Per-case gradients come from
``torch.func.vmap(torch.func.grad(...))`` over slices of cases, so memory stays at
``slice × dim`` numbers.

Fast path (``method="auto"`` picks it when it applies): when every trainable parameter belongs to an
``nn.Linear`` called once on 2-D inputs (the autoencoders and MLPs), the per-case gradient of
``W`` is ``δ_i x_iᵀ`` and ``Σ_i (δ_i x_iᵀ)² = (δ²)ᵀ (x²)`` — one matmul per layer, as in Martens'
HFDemo (``dEdW2 = (dEdx.^2)*(y.^2)'``). The δ come from one backward pass to the layer outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, vmap

from hessfree.batches import Chunk, Chunks, take, unsqueeze
from hessfree.curvature.accumulate import DIAGONAL
from hessfree.curvature.jacobians import LinearTape
from hessfree.curvature.problem import Problem
from hessfree.errors import InputError

__all__ = ["fisher_diagonal", "per_case_grad_sq", "linear_grad_sq"]

METHODS = ("auto", "vmap", "linear")

#: default number of per-case gradients held at once: about 64 MiB of float32 numbers
_BUDGET = 1 << 24


def per_case_grad_sq(problem: Problem, params: Mapping[str, Tensor], chunk: Chunk,
                     chunk_size: int | None = None) -> Tensor:
    """``Σ_i (∇l_i)²`` over the cases of one chunk (unscaled per-case losses ``l_i``), flat.

    A model that ``vmap`` cannot run over single cases (Python control flow on values of its
    inputs, as Hugging Face's attention-mask code has) gets one backward pass per case instead.
    """
    prim = {n: p.detach() for n, p in params.items()}
    dim = sum(p.numel() for p in prim.values())
    size = chunk_size or max(1, min(chunk.n, _BUDGET // max(dim, 1)))
    if size < 1:
        raise InputError(f"chunk_size: expected a positive integer, got {chunk_size!r}")

    def loss_i(p: dict[str, Tensor], x: Any, t: Any) -> Tensor:
        out = problem.forward(p, unsqueeze(x))
        return problem.loss.per_case(out, unsqueeze(t), check=False)[0]

    per_case = vmap(grad(loss_i), in_dims=(None, 0, 0))
    total = torch.zeros(dim, dtype=next(iter(prim.values())).dtype,
                        device=next(iter(prim.values())).device)
    for start in range(0, chunk.n, size):
        sl = slice(start, min(start + size, chunk.n))
        try:
            g = per_case(prim, take(chunk.inputs, sl), take(chunk.targets, sl))
        except (RuntimeError, InputError) as err:
            if "vmap" not in str(err) and "data-dependent" not in str(err):
                raise
            return _looped_grad_sq(loss_i, prim, chunk, total)
        total += torch.cat([g[n].square().sum(0).reshape(-1) for n in prim])
    return total


def _looped_grad_sq(loss_i: Any, prim: dict[str, Tensor], chunk: Chunk, total: Tensor
                    ) -> Tensor:
    """``Σ_i (∇l_i)²`` with one backward pass per case (where ``vmap`` does not apply)."""
    total.zero_()
    leaves = {n: p.detach().requires_grad_(True) for n, p in prim.items()}
    for i in range(chunk.n):
        with torch.enable_grad():
            value = loss_i(leaves, take(chunk.inputs, i), take(chunk.targets, i))
            gs = torch.autograd.grad(value, list(leaves.values()), allow_unused=True,
                                     materialize_grads=True)
        total += torch.cat([g.square().reshape(-1) for g in gs])
    return total


def _linear_owners(problem: Problem, params: Mapping[str, Tensor]) -> dict[str, str] | None:
    """``{parameter name: module name}`` for the Linear layers owning every parameter, or None."""
    return LinearTape.owners(problem, params)


def linear_grad_sq(problem: Problem, params: Mapping[str, Tensor], chunk: Chunk,
                   ) -> Tensor | None:
    """``Σ_i (∇l_i)²`` by the ``(δ²)ᵀ(x²)`` identity, or None when the model does not qualify."""
    owners = _linear_owners(problem, params)
    if owners is None:
        return None
    mods = dict(problem.model.named_modules())
    seen: dict[str, list[tuple[Tensor, Tensor]]] = {m: [] for m in set(owners.values())}

    def hook(name: str) -> Any:
        return lambda mod, inp, out: seen[name].append((inp[0], out))

    handles = [mods[m].register_forward_hook(hook(m)) for m in seen]
    try:
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        with torch.enable_grad():
            out = problem.check_outputs(problem.forward(leaves, chunk.inputs), chunk)
    finally:
        for h in handles:
            h.remove()
    if any(len(calls) != 1 or calls[0][0].dim() != 2 for calls in seen.values()):
        return None
    state = problem.loss.prepare(out, chunk.targets, problem.loss.scale_for(chunk.n))
    names = list(seen)
    zs = [seen[m][0][1] for m in names]
    deltas = torch.autograd.grad(out, zs, state.per_case_grad(), allow_unused=True,
                                 materialize_grads=True)
    sq: dict[str, Tensor] = {}
    for m, d in zip(names, deltas):
        d2, x2 = d.square(), seen[m][0][0].detach().square()
        sq[f"{m}.weight" if m else "weight"] = d2.T @ x2
        sq[f"{m}.bias" if m else "bias"] = d2.sum(0)
    return torch.cat([sq[n].reshape(-1) for n in params])


def fisher_diagonal(problem: Problem, params: Mapping[str, Tensor], batch: Any,
                    chunk_size: int | None = None, method: str = "auto") -> Tensor:
    """Exact ``diag`` of the empirical Fisher (weight decay included) over a batch, flat.

    Args:
        problem: the problem (with a process group: summed over the ranks' shards, one
            all-reduce, by the problem's accumulator).
        params: where to evaluate.
        batch: the batch in any form of :mod:`hessfree.batches` (or checked
            :class:`~hessfree.batches.Chunks`).
        chunk_size: cases per vmap slice (default: about 64 MiB of gradients).
        method: ``"auto"`` (the Linear fast path when it applies, else vmap), ``"vmap"`` or
            ``"linear"`` (raise when it does not apply).
    """
    if method not in METHODS:
        raise InputError(f"method: expected one of {METHODS}, got {method!r}")

    def squares(c: Chunk, scale: float) -> tuple[Tensor]:  # unscaled: weighted after the pass
        return (_chunk_sq(problem, params, c, chunk_size, method),)

    sums = problem.accumulator.sums(Chunks.of(batch), squares, (DIAGONAL,), deferred=True)
    return sums.parts[0]


def _chunk_sq(problem: Problem, params: Mapping[str, Tensor], chunk: Chunk,
              chunk_size: int | None, method: str) -> Tensor:
    if method != "vmap":
        fast = linear_grad_sq(problem, params, chunk)
        if fast is not None:
            return fast
        if method == "linear":
            raise InputError(
                "method: 'linear' needs every trainable parameter in an nn.Linear called once on "
                "2-D inputs"
            )
    return per_case_grad_sq(problem, params, chunk, chunk_size)
