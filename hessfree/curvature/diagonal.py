"""Exact diagonal of the empirical Fisher from per-case gradients.

``diag(F) = s Σ_i (∇l_i)² + weight_decay`` with ``s = 1/N`` for ``mean`` — the statistic of
Martens' diagonal preconditioner ``(diag + λ)^0.75`` ([M10 §4.7]; [HFDemo]: ``grad2`` is the mean of
the squared per-case gradients, and the weight cost is added). Per-case gradients come from
``torch.func.vmap(torch.func.grad(...))`` over slices of cases, so memory stays at
``slice × dim`` numbers. Where ``vmap`` cannot batch a module (PyTorch's fused ``nn.RNN`` and
``nn.GRU`` kernels have no batching rule: "output with shape [1, H] doesn't match the broadcast
shape [n, 1, H]"), the same per-case gradients are taken one case at a time
(:func:`torch.func.grad` on each case alone: correct, slower), with one warning per model.

Fast path (``method="auto"`` picks it when it applies): when every trainable parameter belongs to an
``nn.Linear`` called once on 2-D inputs (the autoencoders and MLPs), the per-case gradient of
``W`` is ``δ_i x_iᵀ`` and ``Σ_i (δ_i x_iᵀ)² = (δ²)ᵀ (x²)`` — one matmul per layer, as in Martens'
HFDemo (``dEdW2 = (dEdx.^2)*(y.^2)'``). The δ come from one backward pass to the layer outputs.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Mapping
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

METHODS = ("auto", "vmap", "linear", "loop")

#: default number of per-case gradients held at once: about 64 MiB of float32 numbers
_BUDGET = 1 << 24


def per_case_grad_sq(problem: Problem, params: Mapping[str, Tensor], chunk: Chunk,
                     chunk_size: int | None = None, method: str = "auto") -> Tensor:
    """``Σ_i (∇l_i)²`` over the cases of one chunk (unscaled per-case losses ``l_i``), flat.

    ``method``: ``"vmap"`` (over slices of ``chunk_size`` cases; a model it cannot batch is
    refused, naming vmap's error), ``"loop"`` (one case at a time) or ``"auto"`` (vmap, and
    the loop where vmap cannot batch the model: module docstring).
    """
    prim = {n: p.detach() for n, p in params.items()}
    dim = sum(p.numel() for p in prim.values())
    size = chunk_size or max(1, min(chunk.n, _BUDGET // max(dim, 1)))
    if size < 1:
        raise InputError(f"chunk_size: expected a positive integer, got {chunk_size!r}")

    def loss_i(p: dict[str, Tensor], x: Any, t: Any) -> Tensor:
        out = problem.forward(p, unsqueeze(x))
        return problem.loss.per_case(out, unsqueeze(t), check=False)[0]

    def squares(g: dict[str, Tensor]) -> Tensor:
        return torch.cat([g[n].square().sum(0).reshape(-1) for n in prim])

    total = torch.zeros(dim, dtype=next(iter(prim.values())).dtype,
                        device=next(iter(prim.values())).device)
    batched = vmap(grad(loss_i), in_dims=(None, 0, 0))
    failed: BaseException | None = None
    if method == "vmap" or (method == "auto" and problem.model not in _UNBATCHABLE):
        done = 0
        try:
            for start in range(0, chunk.n, size):
                sl = slice(start, min(start + size, chunk.n))
                total += squares(batched(prim, take(chunk.inputs, sl), take(chunk.targets, sl)))
                done += 1
            return total
        except (RuntimeError, InputError) as err:
            if done or not _from_vmap(err):
                raise
            failed = err
    one = grad(loss_i)
    for i in range(chunk.n):  # one case at a time
        g = one(prim, take(chunk.inputs, i), take(chunk.targets, i))
        if failed is not None:  # the model works alone: the fault was vmap's
            if method == "vmap":
                raise InputError(f"method: 'vmap' cannot batch this model's per-case "
                                 f"gradients ({_first_line(failed)}); method 'auto' or 'loop' "
                                 "takes them one case at a time") from failed
            _remember(problem, failed)
            failed = None
        total += torch.cat([g[n].square().reshape(-1) for n in prim])
    return total


def _cause(err: BaseException) -> BaseException:
    """The model's own error where the forward pass wrapped it in an InputError."""
    return err.__cause__ if isinstance(err, InputError) and err.__cause__ else err


def _first_line(err: BaseException) -> str:
    cause = _cause(err)
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


def _from_vmap(err: BaseException) -> bool:
    """Whether ``err`` may be ``vmap``'s.

    A RuntimeError (raised or wrapped by the forward), or any error naming vmap or
    data-dependent control flow (Hugging Face's attention-mask code).
    """
    cause = _cause(err)
    return isinstance(cause, RuntimeError) or any(
        word in str(e) for e in (err, cause) for word in ("vmap", "data-dependent"))


#: models ``vmap`` could not batch (weakly held): their per-case gradients are taken one by one
_UNBATCHABLE: weakref.WeakKeyDictionary[Callable[..., Any], str] = weakref.WeakKeyDictionary()


def _remember(problem: Problem, err: BaseException) -> None:
    """Remember a model ``vmap`` cannot batch (later calls loop at once); warn once, naming why.

    Called only once the model has run on a case without ``vmap``: a model that fails alone too
    raises its own error (a real fault of the model or the batch) from the loop instead.
    """
    try:
        _UNBATCHABLE[problem.model] = _first_line(err)
    except TypeError:  # not weakly referenceable: not remembered (vmap is tried each time)
        pass
    warnings.warn(f"per-case gradients (the diagonal preconditioner): torch.func.vmap cannot "
                  f"batch this model ({_first_line(err)}); taking them one case at a time (the "
                  "same values, slower). HFConfig(preconditioner=False) skips them.",
                  RuntimeWarning, stacklevel=2)


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
        method: ``"auto"`` (the Linear fast path when it applies, else vmap, else one case at
            a time), ``"vmap"``, ``"loop"`` (one case at a time) or ``"linear"`` (raise when it
            does not apply).
    """
    if method not in METHODS:
        raise InputError(f"method: expected one of {METHODS}, got {method!r}")

    def squares(c: Chunk, scale: float) -> tuple[Tensor]:  # unscaled: weighted after the pass
        return (_chunk_sq(problem, params, c, chunk_size, method),)

    sums = problem.accumulator.sums(Chunks.of(batch), squares, (DIAGONAL,), deferred=True)
    return sums.parts[0]


def _chunk_sq(problem: Problem, params: Mapping[str, Tensor], chunk: Chunk,
              chunk_size: int | None, method: str) -> Tensor:
    if method in ("auto", "linear"):
        fast = linear_grad_sq(problem, params, chunk)
        if fast is not None:
            return fast
        if method == "linear":
            raise InputError(
                "method: 'linear' needs every trainable parameter in an nn.Linear called once on "
                "2-D inputs"
            )
    return per_case_grad_sq(problem, params, chunk, chunk_size, method)
