"""Analytic ``J v`` / ``Jᵀ u`` for ``nn.Sequential`` stacks of ``Linear`` and elementwise units.

The R-operator forward pass and the backward pass of Martens' HFDemo ``computeGV``
([HFDemo: computeGV]; [Pea94]), written once for any layer sizes with plain torch ops, so it runs
on any device and dtype. It applies when the model is an ``nn.Sequential`` (its own
``forward``) whose children are ``nn.Linear`` or elementwise units (Sigmoid, Tanh, ReLU,
Identity), or a model that declares such a chain through ``curvature_layers()``, and every
parameter is trained. ``jvp_block``/``vjp_block`` run the same passes for ``k`` columns at once.

Why a third backend: generic autodiff spends a third of a GGN product outside matrix products
(re-deriving ``f'(z)``, accumulating gradient contributions, concatenating results; measured in
``benchmarks/bench_products.py``). Here the forward pass caches each ``Linear`` input and each
unit's ``f'(z)`` (no autograd graph), ``W·Ry + V·y + V_b`` is fused into two ``addmm``, and
parameter gradients are written straight into the flat result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hessfree.batches import Chunk, Chunks
from hessfree.curvature.accumulate import GRADIENT, SQUARES, VALUE
from hessfree.curvature.losses import LossState
from hessfree.curvature.problem import Evaluation, Problem

__all__ = ["SequentialJ", "applies", "matrix_inputs", "sequential_layers",
           "value_grad_diagonal"]

#: elementwise units: module type -> name
_UNIT_NAMES = {nn.Sigmoid: "logistic", nn.Tanh: "tanh", nn.ReLU: "relu", nn.Identity: "linear"}
_UNIT_FUNCS = {"logistic": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
               "linear": lambda z: z}
Layer = nn.Linear | str


def _declared_layers(model: nn.Module) -> list[Layer] | None:
    """Call-order layers: an ``nn.Sequential``'s children, or ``model.curvature_layers()``.

    The protocol: a model whose forward pass is exactly a chain of ``nn.Linear`` modules and
    elementwise units may define ``curvature_layers()`` returning that chain as a list of
    ``nn.Linear`` modules and unit names (``"logistic"``, ``"tanh"``, ``"relu"``,
    ``"linear"``), e.g. :class:`hessfree.models.FeedForward`.
    """
    if isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward:
        out: list[Layer] = []
        for m in model:
            if isinstance(m, nn.Linear):
                out.append(m)
            elif type(m) in _UNIT_NAMES:
                out.append(_UNIT_NAMES[type(m)])
            else:
                return None
        return out
    declared = getattr(model, "curvature_layers", None)
    return list(declared()) if callable(declared) else None


def sequential_layers(problem: Problem, params: Mapping[str, Tensor]) -> list[Layer] | None:
    """The layer chain when the analytic backend applies to ``problem`` at ``params``, else None.

    It applies when the chain is ``Linear`` modules and units, each unit follows a ``Linear``
    (one ``f'(z)`` per ``Linear`` output), and the parameters are exactly the ``Linear``
    weights and biases, in chain order, and no mixed precision policy is in force (the
    analytic passes do not run the model's forward pass, so not in its dtype).
    """
    model = problem.model
    if not isinstance(model, nn.Module) or problem.precision is not None:
        return None
    layers = _declared_layers(model)
    if not layers or not isinstance(layers[0], nn.Linear):
        return None
    if any(not isinstance(m, nn.Linear) and m not in _UNIT_FUNCS for m in layers):
        return None
    units = [m for m in layers if m != "linear"]
    if any(isinstance(a, str) and isinstance(b, str) for a, b in zip(units, units[1:])):
        return None
    names = {id(p): n for n, p in model.named_parameters()}
    expected = [names.get(id(p)) for m in layers if isinstance(m, nn.Linear)
                for p in m.parameters(recurse=False)]
    if list(params) != expected:
        return None
    return layers


def matrix_inputs(chunk: Chunk) -> bool:
    """Whether the chunk's inputs are one 2-D tensor (cases × features), as the passes need."""
    return isinstance(chunk.inputs, Tensor) and chunk.inputs.dim() == 2


def applies(problem: Problem, params: Mapping[str, Tensor], chunks: list[Chunk]) -> bool:
    """Whether the analytic backend can serve ``problem`` on these chunks."""
    return (sequential_layers(problem, params) is not None
            and all(matrix_inputs(c) for c in chunks))


def _derivative(unit: str, y: Tensor, z: Tensor) -> Tensor | None:
    """``f'(z)`` from the unit's output ``y`` (None for the identity)."""
    if unit == "logistic":
        return y * (1 - y)
    if unit == "tanh":
        return 1 - y * y
    if unit == "relu":
        return (z > 0).to(z.dtype)
    return None


class SequentialJ:
    """``J`` of an ``nn.Sequential`` MLP at one chunk, by cached analytic passes.

    Same interface as the autodiff linearizations in :mod:`hessfree.curvature.products`:
    ``out``, ``hid`` (None), ``state``, ``grad`` (flat), ``jvp(v)``, ``vjp(us)`` (flat).
    """

    hid = None
    #: stacked R-operator passes (one larger matrix product per layer)
    batched = True

    def __init__(self, problem: Problem, params: Mapping[str, Tensor], layers: list[Layer],
                 chunk: Chunk, scale: float, grad: bool = True) -> None:
        plist = [p.detach() for p in params.values()]
        self.dim = sum(p.numel() for p in plist)
        self.dtype, self.device = plist[0].dtype, plist[0].device
        # per Linear: (weight, bias, input y, f'(z) of the unit after it or None, offsets)
        self.blocks: list[dict] = []
        y = chunk.inputs
        offset, k = 0, 0
        with torch.no_grad():
            for m in layers:
                if isinstance(m, nn.Linear):
                    w = plist[k]
                    b = plist[k + 1] if m.bias is not None else None
                    k += 1 if b is None else 2
                    blk = {"w": w, "b": b, "x": y, "d": None, "w_off": offset}
                    offset += w.numel()
                    blk["b_off"] = offset
                    offset += 0 if b is None else b.numel()
                    self.blocks.append(blk)
                    y = torch.addmm(b, y, w.T) if b is not None else y @ w.T
                elif m != "linear":
                    z = y
                    y = _UNIT_FUNCS[m](z)
                    self.blocks[-1]["d"] = _derivative(m, y, z)
        self.out = problem.check_outputs(y, chunk)
        self.state: LossState = problem.loss.prepare(self.out, chunk.targets, scale)
        if grad:
            self.grad = self.vjp([self.state.grad])

    def jvp(self, v: list[Tensor], hidden: bool = False) -> list[Tensor]:
        """``[J v]``: the R-operator forward pass ([Pea94]; [HFDemo: computeGV])."""
        it = iter(v)
        rz: Tensor | None = None
        for i, blk in enumerate(self.blocks):
            vw = next(it)
            vb = next(it) if blk["b"] is not None else None
            out = torch.addmm(vb, blk["x"], vw.T) if vb is not None else blk["x"] @ vw.T
            if rz is not None:  # the chunk's inputs carry no tangent
                out.addmm_(rz, blk["w"].T)
            if blk["d"] is not None:
                out.mul_(blk["d"])
            rz = out
        assert rz is not None
        return [rz]

    def vjp(self, us: list[Tensor], squares: Tensor | None = None) -> Tensor:
        """``Jᵀ u`` as one flat vector: the backward pass, results written in place.

        With ``squares`` (a flat buffer), also add ``Σ_i (δ_i x_iᵀ)² = (δ²)ᵀ(x²)`` per layer
        into it: the per-case squared gradients of the rows of ``u`` ([HFDemo: preconditioner]).
        """
        res = torch.empty(self.dim, dtype=self.dtype, device=self.device)
        delta = us[0]
        for i in range(len(self.blocks) - 1, -1, -1):
            blk = self.blocks[i]
            w = blk["w"]
            w_sl = slice(blk["w_off"], blk["w_off"] + w.numel())
            torch.mm(delta.T, blk["x"], out=res[w_sl].view(w.shape))
            if squares is not None:
                d2 = delta.square()
                squares[w_sl].view(w.shape).addmm_(d2.T, blk["x"].square())
            if blk["b"] is not None:
                b_sl = slice(blk["b_off"], blk["b_off"] + blk["b"].numel())
                torch.sum(delta, 0, out=res[b_sl])
                if squares is not None:
                    squares[b_sl] += d2.sum(0)
            if i > 0:
                delta = delta @ w
                prev = self.blocks[i - 1]["d"]
                if prev is not None:
                    delta.mul_(prev)
        return res

    # -- k columns at once -------------------------------------------------------------------
    # Activations of the k columns are stored case-major, (N, k, features): the k tangents of a
    # layer are one (N, k·out) matrix, so each term of the passes above becomes one matrix product
    # with k times as many columns (X @ [V_1ᵀ … V_kᵀ], (k·N × out) @ Wᵀ, [δ_1 … δ_k]ᵀ X, ...)
    # instead of k small ones. Same arithmetic per column, far better use of the BLAS.
    def jvp_block(self, v: list[Tensor], hidden: bool = False) -> list[Tensor]:
        """``[J V]`` for ``k`` columns: ``v`` shaped like the parameters with a leading ``k``.

        Returns one tensor of shape ``(k, N, out)`` (a view of a case-major ``(N, k, out)``).
        """
        it = iter(v)
        rz: Tensor | None = None
        for blk in self.blocks:
            vw = next(it)
            vb = next(it) if blk["b"] is not None else None
            k, n_out, n_in = vw.shape
            cols = vw.reshape(k * n_out, n_in).T  # (in, k·out): column j·out + o is V_j[o, :]
            if vb is not None:
                out = torch.addmm(vb.reshape(1, k * n_out), blk["x"], cols)
            else:
                out = blk["x"] @ cols
            out = out.view(-1, k, n_out)
            if rz is not None:
                out.view(-1, n_out).addmm_(rz.view(-1, rz.shape[-1]), blk["w"].T)
            if blk["d"] is not None:
                out.mul_(blk["d"].unsqueeze(1))
            rz = out
        assert rz is not None
        return [rz.transpose(0, 1)]

    def vjp_block(self, us: list[Tensor]) -> Tensor:
        """``Jᵀ U`` for ``us = [U]`` with ``U`` of shape ``(k, N, out)``; returns ``(k, dim)``."""
        delta = us[0].transpose(0, 1).contiguous()  # (N, k, out); free for jvp_block's layout
        n, k = delta.shape[0], delta.shape[1]
        res = torch.empty(k, self.dim, dtype=self.dtype, device=self.device)
        for i in range(len(self.blocks) - 1, -1, -1):
            blk = self.blocks[i]
            w = blk["w"]
            n_out, n_in = w.shape
            grad_w = torch.mm(delta.view(n, k * n_out).T, blk["x"])  # (k·out, in)
            res[:, blk["w_off"]:blk["w_off"] + w.numel()] = grad_w.view(k, -1)
            if blk["b"] is not None:
                res[:, blk["b_off"]:blk["b_off"] + n_out] = delta.sum(0)
            if i > 0:
                delta = (delta.view(n * k, n_out) @ w).view(n, k, n_in)
                prev = self.blocks[i - 1]["d"]
                if prev is not None:
                    delta.mul_(prev.unsqueeze(1))
        return res


def value_grad_diagonal(problem: Problem, params: Mapping[str, Tensor], batch: Any,
                        ) -> Evaluation | None:
    """Objective, flat gradient and exact diagonal empirical Fisher in one pass, or None.

    One forward and one backward pass per chunk, plus one ``(δ²)ᵀ(x²)`` matmul per layer added
    into one buffer: HFDemo computes ``grad2`` alongside the gradient the same way
    ([HFDemo: preconditioner]). Weight decay is included in all three (the problem's
    accumulator, one all-reduce with a process group). None when the analytic backend does not
    apply.
    """
    layers = sequential_layers(problem, params)
    if layers is None:
        return None
    chunks = Chunks.of(batch)
    if chunks.held is not None and not all(matrix_inputs(c) for c in chunks):
        return None

    def step(chunk: Chunk, scale: float, totals: list | None) -> list:
        # δ carry the scale s, so the squares carry s² (the SQUARES term divides once)
        if not matrix_inputs(chunk):  # a streamed batch of other inputs
            raise _NotMatrices
        lin = SequentialJ(problem, params, layers, chunk, scale, grad=False)
        if totals is None:
            squares = torch.zeros(lin.dim, dtype=lin.dtype, device=lin.device)
            return [lin.state.value, lin.vjp([lin.state.grad], squares), squares]
        totals[0].add_(lin.state.value)
        totals[1].add_(lin.vjp([lin.state.grad], totals[2]))
        return totals

    theta = problem.flat(params) if problem.weight_decay else None
    try:
        s = problem.accumulator.fold(chunks, step, (VALUE, GRADIENT, SQUARES), theta)
    except _NotMatrices:
        return None
    return Evaluation(s.parts[0], s.count, s.cases, s.parts[1], s.parts[2])


class _NotMatrices(Exception):
    """A streamed chunk whose inputs are not one 2-D tensor: the analytic pass does not apply."""
