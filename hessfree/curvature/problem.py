"""``Problem``: a model, a matching loss and weight decay; batches and their checks.

A batch is a tuple ``(inputs, targets)``; ``inputs`` may itself be a tuple of tensors (the model is
then called as ``model(*inputs)``), ``targets`` may be ``(values, mask)`` (see
:mod:`hessfree.curvature.losses`). A *list* of such tuples is a batch given in chunks: losses,
gradients and curvature products are accumulated over the chunks with the weights of the
concatenated batch (``mean``: each case weighs ``1/N_total``), so a curvature batch larger than
memory works.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from hessfree.curvature.losses import LossLike, as_loss, split_mask
from hessfree.vectors import ParamLayout

__all__ = ["Problem", "Chunk", "as_chunks"]

Batch = tuple[Any, Any]
#: modules whose training-mode forward pass is random (Dropout) or couples the cases (BatchNorm)
_TRAIN_MODE_MODULES = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


@dataclass(frozen=True)
class Chunk:
    """One minibatch of a (possibly chunked) batch: inputs, targets and its number of cases."""

    inputs: Any
    targets: Any
    n: int


def _tensors(x: Any) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in _tensors(item)]
    if isinstance(x, Mapping):
        return [t for item in x.values() for t in _tensors(item)]
    return []


def _all_finite(t: Tensor) -> bool:
    """Whether ``t`` is all finite: a cheap sum first (NaN/Inf propagate), exact if in doubt."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _check_chunk(batch: Any, where: str) -> Chunk:
    if not isinstance(batch, tuple) or len(batch) != 2:
        raise TypeError(
            f"{where}: expected a tuple (inputs, targets) or a list of such tuples, "
            f"got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, tuple) else "")
        )
    inputs, targets = batch
    in_t, tg_t = _tensors(inputs), _tensors(targets)
    if not in_t:
        raise TypeError(f"{where}: inputs must be a tensor or a tuple of tensors")
    if not tg_t:
        raise TypeError(f"{where}: targets must be a tensor or a (values, mask) pair")
    n = in_t[0].shape[0] if in_t[0].dim() else None
    for t in in_t + tg_t:
        if t.dim() == 0 or t.shape[0] != n:
            raise ValueError(
                f"{where}: every input and target tensor needs the number of cases as its first "
                f"dimension ({n}); got shapes {[tuple(x.shape) for x in in_t + tg_t]}"
            )
        if t.is_floating_point() and not _all_finite(t):
            raise ValueError(f"{where}: the batch contains non-finite values (NaN or Inf)")
    if n == 0:
        raise ValueError(f"{where}: the batch is empty")
    return Chunk(inputs, targets, int(n))


def as_chunks(batch: Any, where: str = "batch") -> list[Chunk]:
    """Normalise a batch or a list of minibatches into checked :class:`Chunk` s."""
    if isinstance(batch, list):
        if not batch:
            raise ValueError(f"{where}: the list of minibatches is empty")
        return [_check_chunk(b, f"{where}[{i}]") for i, b in enumerate(batch)]
    return [_check_chunk(batch, where)]


class Problem:
    """A model, a matching loss on its pre-nonlinearity outputs, and L2 weight decay.

    The objective is ``f(θ) = loss(model(θ, x), t) + weight_decay/2 · ||θ||²`` (Martens 2010
    §2.6 code adds the weight cost to the objective and its curvature, biases included).

    Args:
        model: an ``nn.Module`` (called as ``model(inputs)`` or ``model(*inputs)`` through
            ``torch.func.functional_call``) or a pure function ``f(params, inputs)``.
        loss: ``hessfree.losses.MSE``/``BCEWithLogits``/``CrossEntropy`` or any callable
            ``loss(outputs, targets) -> scalar`` (autodiff fallback for ``H_L``).
        weight_decay: L2 coefficient (non-negative).
    """

    def __init__(self, model: nn.Module | Callable[..., Any], loss: Any,
                 weight_decay: float = 0.0) -> None:
        if not (isinstance(model, nn.Module) or callable(model)):
            raise TypeError(
                f"model: expected an nn.Module or a function f(params, inputs), got "
                f"{type(model).__name__}"
            )
        if not isinstance(weight_decay, (int, float)) or weight_decay < 0:
            raise ValueError(f"weight_decay: expected a non-negative number, got {weight_decay!r}")
        self.model = model
        self.loss: LossLike = as_loss(loss)
        self.weight_decay = float(weight_decay)

    def __repr__(self) -> str:
        name = type(self.model).__name__ if isinstance(self.model, nn.Module) else "function"
        return f"Problem({name}, {self.loss!r}, weight_decay={self.weight_decay})"

    @property
    def is_module(self) -> bool:
        """Whether the model is an ``nn.Module``."""
        return isinstance(self.model, nn.Module)

    def parameters(self) -> dict[str, Tensor]:
        """The module's trainable parameters (``requires_grad``), by name, as live tensors."""
        if not self.is_module:
            raise ValueError(
                "params: required when the model is a function f(params, inputs); pass a dict "
                "of tensors"
            )
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if not params:
            raise ValueError("params: the model has no trainable parameters (requires_grad=True)")
        return params

    def resolve_params(self, params: Any = None) -> dict[str, Tensor]:
        """``params`` as a ``{name: tensor}`` dict (``None``: the module's trainable ones)."""
        if params is None:
            return self.parameters()
        if isinstance(params, Mapping):
            out = dict(params)
        elif isinstance(params, (list, tuple)):
            if self.is_module:
                names = list(self.parameters())
                if len(names) != len(params):
                    raise ValueError(
                        f"params: expected {len(names)} tensors (the trainable parameters), "
                        f"got {len(params)}"
                    )
                out = dict(zip(names, params))
            else:
                out = {str(i): p for i, p in enumerate(params)}
        else:
            raise TypeError(f"params: expected a dict or list of tensors, got {type(params)}")
        if not out:
            raise ValueError("params: expected at least one trainable parameter, got none")
        for n, p in out.items():
            if not isinstance(p, Tensor) or not p.is_floating_point():
                raise TypeError(f"params[{n!r}]: expected a floating-point tensor")
        ParamLayout.from_params(out)  # one dtype and device
        return out

    def forward(self, params: Mapping[str, Tensor], inputs: Any, return_hidden: bool = False,
                ) -> Any:
        """Model outputs (logits) at ``params``; with ``return_hidden``, ``(outputs, hidden)``."""
        kwargs = {"return_hidden": True} if return_hidden else {}
        if self.is_module:
            args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
            return functional_call(self.model, dict(params), args, kwargs)
        return self.model(params, inputs, **kwargs)

    def check_modes(self) -> None:
        """Reject modules whose forward pass differs between calls or couples the cases."""
        if not self.is_module:
            return
        bad = [
            f"{name or 'model'} ({type(m).__name__})"
            for name, m in self.model.named_modules()
            if m.training and isinstance(m, _TRAIN_MODE_MODULES)
        ]
        if bad:
            raise ValueError(
                "model: Dropout/BatchNorm in training mode make the forward pass random or couple "
                f"the cases, so curvature products are inconsistent: {', '.join(bad)}; call "
                "model.eval() (or remove them) before building curvature operators"
            )

    def check_deterministic(self, params: Mapping[str, Tensor], chunk: Chunk,
                            n_probe: int = 4) -> None:
        """Run the forward pass twice on a few cases and raise if the outputs differ."""
        k = min(n_probe, chunk.n)
        inputs = _slice(chunk.inputs, k)
        with torch.no_grad():
            a = self.forward(params, inputs)
            b = self.forward(params, inputs)
        for x, y in zip(_tensors(a), _tensors(b)):
            if x.shape != y.shape or not bool(((x == y) | (x.isnan() & y.isnan())).all()):
                raise ValueError(
                    "model: two forward passes on the same batch gave different outputs; the "
                    "model is not deterministic (Dropout or BatchNorm in training mode, or "
                    "random sampling inside forward), so curvature products would be inconsistent"
                )

    def check_outputs(self, outputs: Any, chunk: Chunk, where: str = "batch") -> Tensor:
        """Check the model returned one tensor of ``n`` cases that fits the targets."""
        if not isinstance(outputs, Tensor):
            raise TypeError(
                f"model: expected the forward pass to return one tensor of outputs, got "
                f"{type(outputs).__name__}"
            )
        if outputs.dim() == 0 or outputs.shape[0] != chunk.n:
            raise ValueError(
                f"{where}: the model returned outputs of shape {tuple(outputs.shape)} for "
                f"{chunk.n} cases"
            )
        values, _ = split_mask(chunk.targets)
        if values.shape[0] != chunk.n:
            raise ValueError(f"{where}: targets have {values.shape[0]} cases, inputs {chunk.n}")
        return outputs

    def decay_value(self, flat_params: Tensor) -> float:
        """``weight_decay/2 · ||θ||²``."""
        if not self.weight_decay:
            return 0.0
        return 0.5 * self.weight_decay * float(flat_params.square().sum())

    def value(self, params: Mapping[str, Tensor], batch: Any) -> float:
        """The objective on ``batch`` (loss + weight decay), without gradients."""
        chunks = as_chunks(batch)
        total_n = sum(c.n for c in chunks)
        scale = self.loss.scale_for(total_n)
        value = 0.0
        with torch.no_grad():
            for c in chunks:
                out = self.check_outputs(self.forward(params, c.inputs), c)
                value += float(self.loss.value(out, c.targets, scale))
            if not self.weight_decay:
                return value
            flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
            return value + self.decay_value(flat)

    def value_and_grad(self, params: Mapping[str, Tensor], batch: Any) -> tuple[float, Tensor]:
        """Objective and flat gradient on ``batch`` (chunks accumulated), one backward each."""
        chunks = as_chunks(batch)
        scale = self.loss.scale_for(sum(c.n for c in chunks))
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        plist = list(leaves.values())
        grad: Tensor | None = None
        value = 0.0
        for c in chunks:
            with torch.enable_grad():
                out = self.check_outputs(self.forward(leaves, c.inputs), c)
                state = self.loss.prepare(out, c.targets, scale)
                gs = torch.autograd.grad(out, plist, state.grad, materialize_grads=True,
                                         allow_unused=True)
            flat_g = torch.cat([g.reshape(-1) for g in gs])
            grad = flat_g if grad is None else grad.add_(flat_g)
            value += float(state.value)
        assert grad is not None
        if not self.weight_decay:
            return value, grad
        flat = torch.cat([p.detach().reshape(-1) for p in plist])
        grad.add_(flat, alpha=self.weight_decay)
        return value + self.decay_value(flat), grad


def _slice(x: Any, k: int) -> Any:
    if isinstance(x, Tensor):
        return x[:k]
    if isinstance(x, (tuple, list)):
        return type(x)(_slice(item, k) for item in x)
    return x


def n_cases(batch: Any) -> int:
    """Total number of cases in a batch or list of minibatches."""
    return sum(c.n for c in as_chunks(batch))
