"""``Problem``: a model, a matching loss on its outputs and L2 weight decay.

The objective of every optimizer and operator in the package. Batches (``(inputs, targets)`` or
a list of them, accumulated exactly) are described in :mod:`hessfree.batches`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from hessfree import _checks
from hessfree.batches import Chunk, as_chunks, is_source, iter_chunks, leaves, take
from hessfree.curvature.losses import LossLike, as_loss, split_mask
from hessfree.distributed import Reducer
from hessfree.errors import InputError, InputTypeError
from hessfree.vectors import ParamLayout

__all__ = ["Problem"]

#: modules whose training-mode forward pass is random (Dropout) or couples the cases (BatchNorm)
_TRAIN_MODE_MODULES = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


class Problem:
    """A model, a matching loss on its pre-nonlinearity outputs, and L2 weight decay.

    The objective is ``f(θ) = loss(model(θ, x), t) + weight_decay/2 · ||θ||²`` ([HFDemo]
    adds the weight cost to the objective and its curvature, biases included).

    Args:
        model: an ``nn.Module`` (called as ``model(inputs)`` or ``model(*inputs)`` through
            ``torch.func.functional_call``) or a pure function ``f(params, inputs)``.
        loss: ``hessfree.losses.MSE``/``BCEWithLogits``/``CrossEntropy`` or any callable
            ``loss(outputs, targets) -> scalar`` (autodiff fallback for ``H_L``).
        weight_decay: L2 coefficient (non-negative).
        group: a ``torch.distributed`` process group (or ``"world"``): every sum over cases —
            objective, gradient, curvature products, the EF diagonal, case counts — then spans
            all ranks, each holding a shard of every batch, with one all-reduce of one flat
            buffer per reduction (:mod:`hessfree.distributed`). None: one process.
    """

    def __init__(self, model: nn.Module | Callable[..., Any], loss: Any,
                 weight_decay: float = 0.0, group: Any = None) -> None:
        if not (isinstance(model, nn.Module) or callable(model)):
            raise InputTypeError(
                f"model: expected an nn.Module or a function f(params, inputs), got "
                f"{type(model).__name__}"
            )
        self.model = model
        self.loss: LossLike = as_loss(loss)
        self.weight_decay = _checks.number(weight_decay, "weight_decay", 0.0)
        self.reducer: Reducer | None = None if group is None else \
            (group if isinstance(group, Reducer) else Reducer(group))
        #: cases of the last :meth:`value` / :meth:`value_and_grad` (over all ranks)
        self.last_cases = 0

    def with_weight_decay(self, weight_decay: float) -> Problem:
        """The same model, loss and group with another weight decay (a new ``Problem``).

        HF's phase schedule uses it to change the objective explicitly ([S13 A.6] lowers the
        weight decay in its last phase); the original problem is left as it is.
        """
        return Problem(self.model, self.loss, weight_decay, self.reducer)

    def local(self) -> Problem:
        """The same problem on this process alone (no reduction over ranks)."""
        return self if self.reducer is None else Problem(self.model, self.loss,
                                                         self.weight_decay)

    def n_cases(self, batch: Any) -> int:
        """Cases in ``batch`` — over all ranks when distributed (one small all-reduce).

        An iterable batch is read once to count it.
        """
        n = sum(c.n for c in iter_chunks(batch))
        if self.reducer is None:
            return n
        return int(self.reducer.sum_(torch.tensor([float(n)], dtype=torch.float64)).item())

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
            raise InputError(
                "params: required when the model is a function f(params, inputs); pass a dict "
                "of tensors"
            )
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if not params:
            raise InputError("params: the model has no trainable parameters (requires_grad=True)")
        return params

    def resolve_params(self, params: Any = None) -> dict[str, Tensor]:
        """``params`` as a ``{name: tensor}`` dict (``None``: the module's trainable ones).

        Every tensor must be real floating point (one dtype and device). For a module, the names
        must be names of its parameters, with their shapes: a tensor the model does not use would
        get a zero gradient and never move.
        """
        if params is None:
            return self._checked(self.parameters())
        if isinstance(params, Mapping):
            out = dict(params)
        elif isinstance(params, (list, tuple)):
            if self.is_module:
                names = list(self.parameters())
                if len(names) != len(params):
                    raise InputError(
                        f"params: expected {len(names)} tensors (the trainable parameters), "
                        f"got {len(params)}"
                    )
                out = dict(zip(names, params))
            else:
                out = {str(i): p for i, p in enumerate(params)}
        else:
            raise InputTypeError(f"params: expected a dict or list of tensors, got {type(params)}")
        if not out:
            raise InputError("params: expected at least one trainable parameter, got none")
        if self.is_module:
            own = dict(self.model.named_parameters())
            unknown = [n for n in out if n not in own]
            if unknown:
                raise InputError(
                    f"params: {unknown} are not parameters of the model, which would not use "
                    f"them; its parameters are {list(own)}")
            for n, p in out.items():
                if isinstance(p, Tensor) and p.shape != own[n].shape:
                    raise InputError(f"params[{n!r}]: expected the shape of the model's "
                                     f"parameter {tuple(own[n].shape)}, got {tuple(p.shape)}")
        return self._checked(out)

    @staticmethod
    def _checked(out: dict[str, Tensor]) -> dict[str, Tensor]:
        for n, p in out.items():
            if not isinstance(p, Tensor) or not p.is_floating_point():
                what = p.dtype if isinstance(p, Tensor) else type(p).__name__
                raise InputTypeError(f"params[{n!r}]: expected a real floating-point tensor, "
                                     f"got {what}")
        ParamLayout.from_params(out)  # one dtype and device
        return out

    def forward(self, params: Mapping[str, Tensor], inputs: Any, return_hidden: bool = False,
                ) -> Any:
        """Model outputs (logits) at ``params``; with ``return_hidden``, ``(outputs, hidden)``.

        A model that fails on the inputs (e.g. a batch of the wrong width) raises
        :class:`~hessfree.errors.InputError` naming the input shapes, the model's error chained.
        """
        kwargs = {"return_hidden": True} if return_hidden else {}
        try:
            if self.is_module:
                if isinstance(inputs, Mapping):  # dict batches: model(**inputs)
                    return functional_call(self.model, dict(params), (), {**inputs, **kwargs})
                args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
                return functional_call(self.model, dict(params), args, kwargs)
            return self.model(params, inputs, **kwargs)
        except RuntimeError as err:
            shapes = [tuple(t.shape) for t in leaves(inputs)]
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise InputError(f"batch: the model failed on inputs of shape {shapes}: {first}") \
                from err

    def check_modes(self) -> None:
        """Reject modules whose forward pass differs between calls or couples the cases."""
        if not self.is_module:
            return
        bad = [
            f"{name or 'model'} ({type(m).__name__})"
            for name, m in self.model.named_modules()
            if m.training and isinstance(m, _TRAIN_MODE_MODULES)
            and not (isinstance(m, nn.modules.dropout._DropoutNd) and m.p == 0)  # identity
        ]
        if bad:
            raise InputError(
                "model: Dropout/BatchNorm in training mode make the forward pass random or couple "
                f"the cases, so curvature products are inconsistent: {', '.join(bad)}; call "
                "model.eval() (or remove them) before building curvature operators"
            )

    def check_deterministic(self, params: Mapping[str, Tensor], chunk: Chunk,
                            n_probe: int = 4) -> None:
        """Run the forward pass twice on a few cases and raise if the outputs differ."""
        k = min(n_probe, chunk.n)
        inputs = take(chunk.inputs, slice(0, k))
        with torch.no_grad():
            a = self.forward(params, inputs)
            b = self.forward(params, inputs)
        for x, y in zip(leaves(a), leaves(b)):
            if x.shape != y.shape or not bool(((x == y) | (x.isnan() & y.isnan())).all()):
                raise InputError(
                    "model: two forward passes on the same batch gave different outputs; the "
                    "model is not deterministic (Dropout or BatchNorm in training mode, or "
                    "random sampling inside forward), so curvature products would be inconsistent"
                )

    def check_used(self, params: Mapping[str, Tensor], chunk: Chunk, n_probe: int = 4) -> None:
        """Refuse parameters the outputs do not depend on (a module registered, never called).

        Their gradient would be missing, not zero, and they would never move.
        """
        k = min(n_probe, chunk.n)
        leaves_ = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        with torch.enable_grad():
            out = self.forward(leaves_, take(chunk.inputs, slice(0, k)))
            outs = [t for t in leaves(out) if isinstance(t, Tensor) and t.requires_grad]
            grads = torch.autograd.grad([t.sum() for t in outs], list(leaves_.values()),
                                        allow_unused=True) if outs else [None] * len(leaves_)
        unused = [n for n, g in zip(leaves_, grads) if g is None]
        if unused:
            raise InputError(
                f"params: the model's outputs do not depend on {unused} (registered but not "
                "used in forward); exclude them (requires_grad_(False), or pass params= without "
                "them), so that HF does not carry parameters it can never move")

    def check_outputs(self, outputs: Any, chunk: Chunk, where: str = "batch") -> Tensor:
        """Check the model returned one tensor of ``n`` cases that fits the targets."""
        if not isinstance(outputs, Tensor):
            raise InputTypeError(
                f"model: expected the forward pass to return one tensor of outputs, got "
                f"{type(outputs).__name__}"
            )
        if outputs.dim() == 0 or outputs.shape[0] != chunk.n:
            raise InputError(
                f"{where}: the model returned outputs of shape {tuple(outputs.shape)} for "
                f"{chunk.n} cases"
            )
        values, _ = split_mask(chunk.targets)
        if values.shape[0] != chunk.n:
            raise InputError(f"{where}: targets have {values.shape[0]} cases, inputs {chunk.n}")
        return outputs

    def decay_value(self, flat_params: Tensor) -> float:
        """``weight_decay/2 · ||θ||²``."""
        if not self.weight_decay:
            return 0.0
        return 0.5 * self.weight_decay * float(flat_params.square().sum())

    def deferred(self, batch: Any) -> bool:
        """Whether sums over ``batch`` are weighted after the pass.

        So they are under data parallelism, and for an iterable batch, whose number of cases is
        known only once it is read.
        """
        return self.reducer is not None or is_source(batch)

    def value(self, params: Mapping[str, Tensor], batch: Any) -> float:
        """The objective on ``batch`` (loss + weight decay), without gradients."""
        value, total_n = 0.0, 0
        deferred = self.deferred(batch)
        chunks = iter_chunks(batch) if deferred else as_chunks(batch)
        # deferred: sum weights during the pass, the (global) weight after it
        scale = 1.0 if deferred else self.loss.scale_for(sum(c.n for c in chunks))
        with torch.no_grad():
            for c in chunks:
                out = self.check_outputs(self.forward(params, c.inputs), c)
                value += float(self.loss.value(out, c.targets, scale))
                total_n += c.n
            if self.reducer is not None:
                like = next(iter(params.values()))
                total, n = self.reducer.sum_parts(value, total_n,
                                                  like=like.new_zeros(0, dtype=torch.float64))
                value, total_n = float(total), int(round(float(n)))
            if deferred:
                value *= self.loss.scale_for(total_n)
            self.last_cases = total_n
            if not self.weight_decay:
                return value
            flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
            return value + self.decay_value(flat)

    def value_and_grad(self, params: Mapping[str, Tensor], batch: Any) -> tuple[float, Tensor]:
        """Objective and flat gradient on ``batch`` (chunks accumulated), one backward each."""
        deferred = self.deferred(batch)
        chunks = iter_chunks(batch) if deferred else as_chunks(batch)
        scale = 1.0 if deferred else self.loss.scale_for(sum(c.n for c in chunks))
        local_n = 0
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
            local_n += c.n
        assert grad is not None
        if self.reducer is not None:
            grad, total, n = self.reducer.sum_parts(grad, value, local_n)
            value, local_n = float(total), int(round(float(n)))
        if deferred:
            s = self.loss.scale_for(local_n)
            grad.mul_(s)
            value *= s
        self.last_cases = local_n
        if not self.weight_decay:
            return value, grad
        flat = torch.cat([p.detach().reshape(-1) for p in plist])
        grad.add_(flat, alpha=self.weight_decay)
        return value + self.decay_value(flat), grad

