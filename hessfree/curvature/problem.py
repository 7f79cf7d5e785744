"""``Problem``: a model, a matching loss on its outputs and L2 weight decay.

The objective of every optimizer and operator in the package. Batches (``(inputs, targets)`` or
a list of them, accumulated exactly) are described in :mod:`hessfree.batches`; every sum over
their cases goes through the problem's :class:`~hessfree.curvature.accumulate.Accumulator`.
:meth:`Problem.evaluate` returns an :class:`Evaluation` record: the objective, the gradient when
asked, and the count (cases) the loss averaged over, on every chunk and rank.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call

from hessfree import _checks
from hessfree.batches import Chunk, Chunks, leaves, take
from hessfree.curvature.accumulate import GRADIENT, VALUE, Accumulator
from hessfree.curvature.adapters import adapter_for
from hessfree.curvature.attention import differentiable_attention, kernel_error
from hessfree.curvature.losses import LossLike, as_loss, split_mask
from hessfree.curvature.precision import Precision, precision_policy
from hessfree.distributed import Reducer
from hessfree.errors import InputError, InputTypeError
from hessfree.vectors import ParamLayout

__all__ = ["Evaluation", "HiddenStates", "Problem", "declares_hidden"]

#: modules whose training-mode forward pass is random (Dropout) or couples the cases (BatchNorm)
_TRAIN_MODE_MODULES = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


class HiddenStates(Protocol):
    """The model contract of structural damping ([M&S11]; ``hessfree.models.TanhRNN`` keeps it).

    ``forward(inputs, return_hidden=True)`` (or ``f(params, inputs, return_hidden=True)`` for a
    function) returns ``(outputs, hidden_preactivations)``; a model declares it by naming the
    parameter ``return_hidden`` in its signature, a wrapper forwarding keywords by a
    ``returns_hidden = True`` attribute (:func:`declares_hidden`). The optional class
    attribute ``hidden_nonlinearity`` (``"tanh"``, ``"logistic"`` or ``"linear"``; default
    ``"tanh"``) names the hidden units whose matching loss the damping term uses.
    """

    def forward(self, *inputs: Any, return_hidden: bool = False) -> Any:  # pragma: no cover
        """Outputs, or ``(outputs, hidden pre-activations)`` with ``return_hidden``."""
        ...


def declares_hidden(model: Any) -> bool:
    """Whether ``model`` declares :class:`HiddenStates`.

    By a ``return_hidden`` parameter of its forward (or of the function), or — for a wrapper
    that forwards its keywords — by a ``returns_hidden`` attribute saying so.
    """
    declared = getattr(model, "returns_hidden", None)
    if isinstance(declared, bool):
        return declared
    fn = model.forward if isinstance(model, nn.Module) else model
    try:
        return "return_hidden" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


@dataclass(frozen=True)
class Evaluation:
    """The objective on a batch, what was computed in the same pass, and the count it used.

    Attributes:
        value: the objective (loss + weight decay).
        count: what the loss counted (cases, by default; the tokens that count for a token
            loss) over every chunk and rank: the ``N`` of its ``1/N``.
        cases: the cases over every chunk and rank (the unit of gradient-equivalents).
        grad: the flat gradient (None when it was not asked for).
        diag: the exact diagonal of the empirical Fisher, weight decay included, when the pass
            computed it (:func:`hessfree.curvature.sequential.value_grad_diagonal`), else None.
    """

    value: float
    count: int
    cases: int
    grad: Tensor | None = None
    diag: Tensor | None = None


class Problem:
    """A model, a matching loss on its pre-nonlinearity outputs, and L2 weight decay.

    The objective is ``f(θ) = loss(model(θ, x), t) + weight_decay/2 · ||θ||²`` ([HFDemo]
    adds the weight cost to the objective and its curvature, biases included).

    Every forward pass runs attention with PyTorch's math kernel
    (:mod:`hessfree.curvature.attention`), so models with ``scaled_dot_product_attention``,
    ``nn.MultiheadAttention`` or ``nn.Transformer*`` layers get exact products.

    Args:
        model: an ``nn.Module`` (called as ``model(inputs)`` or ``model(*inputs)`` through
            ``torch.func.functional_call``), a Hugging Face ``PreTrainedModel`` (called with
            the dict batch's inputs, its ``logits`` read from the output object:
            :mod:`hessfree.integrations.huggingface`) or a pure function ``f(params, inputs)``.
        loss: ``hessfree.losses.MSE``/``BCEWithLogits``/``CrossEntropy``,
            :class:`~hessfree.curvature.sequence_loss.TokenCrossEntropy` or any callable
            ``loss(outputs, targets) -> scalar`` (autodiff fallback for ``H_L``). None: the
            model family's own loss (a Hugging Face model's head decides), else an error.
        weight_decay: L2 coefficient (non-negative).
        group: a ``torch.distributed`` process group (or ``"world"``): every sum over cases —
            objective, gradient, curvature products, the EF diagonal, case counts — then spans
            all ranks, each holding a shard of every batch, with one all-reduce of one flat
            buffer per reduction (:mod:`hessfree.distributed`). None: one process.
        precision: ``None`` (everything in the parameters' dtype) or ``"float32"``: a
            bfloat16/float16 model computes its forward pass and Jacobian products in its own
            dtype while the loss, curvature products, sums, CG and the HF update are float32
            (:mod:`hessfree.curvature.precision` says exactly what is which, and what
            accuracy it promises). On a float32 model ``"float32"`` changes nothing.
    """

    def __init__(self, model: nn.Module | Callable[..., Any], loss: Any = None,
                 weight_decay: float = 0.0, group: Any = None, precision: Any = None) -> None:
        if not (isinstance(model, nn.Module) or callable(model)):
            raise InputTypeError(
                f"model: expected an nn.Module or a function f(params, inputs), got "
                f"{type(model).__name__}"
            )
        self.model = model
        self.adapter = adapter_for(model)
        self.adapter.check(model)
        self.loss: LossLike = as_loss(self.adapter.default_loss(model) if loss is None else loss)
        self.weight_decay = _checks.number(weight_decay, "weight_decay", 0.0)
        self.reducer: Reducer | None = None if group is None else \
            (group if isinstance(group, Reducer) else Reducer(group))
        self.precision_name = precision
        #: the mixed policy in force (None: the parameters' dtype throughout)
        self.precision: Precision | None = precision_policy(precision, model)

    @property
    def accumulator(self) -> Accumulator:
        """The one accumulator of this problem's sums over cases (loss, group, weight decay)."""
        return Accumulator(self.loss, self.reducer, self.weight_decay)

    def with_weight_decay(self, weight_decay: float) -> Problem:
        """The same model, loss and group with another weight decay (a new ``Problem``).

        HF's phase schedule uses it to change the objective explicitly ([S13 A.6] lowers the
        weight decay in its last phase); the original problem is left as it is.
        """
        return Problem(self.model, self.loss, weight_decay, self.reducer, self.precision_name)

    def local(self) -> Problem:
        """The same problem on this process alone (no reduction over ranks)."""
        return self if self.reducer is None else Problem(
            self.model, self.loss, self.weight_decay, precision=self.precision_name)

    def n_cases(self, batch: Any) -> int:
        """Cases in ``batch`` — over all ranks when distributed (one small all-reduce).

        An iterable batch is read once to count it.
        """
        return self.accumulator.count(Chunks.of(batch), lambda c: c.n)

    def __repr__(self) -> str:
        name = type(self.model).__name__ if isinstance(self.model, nn.Module) else "function"
        mixed = "" if self.precision is None else f", precision={self.precision_name!r}"
        return f"Problem({name}, {self.loss!r}, weight_decay={self.weight_decay}{mixed})"

    def require_hidden(self, what: str) -> None:
        """Raise naming ``what`` unless the model declares :class:`HiddenStates`."""
        if not declares_hidden(self.model):
            raise InputError(
                f"{what}: the model's forward does not declare return_hidden (a parameter "
                "return_hidden: bool = False making it return (outputs, hidden_preactivations)); "
                "structural damping needs a model that exposes its hidden pre-activations")

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
        get a zero gradient and never move. Under a mixed :attr:`precision`: float32 copies
        (the live tensors are :meth:`live_params`).
        """
        live = self.live_params(params)
        return live if self.precision is None else self.precision.working(live)

    def live_params(self, params: Any = None) -> dict[str, Tensor]:
        """:meth:`resolve_params` without the precision policy: the tensors themselves."""
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
            with differentiable_attention():
                if not self.is_module:
                    return self.model(params, inputs, **kwargs)
                params = self._with_constants(params)
                if self.precision is not None:
                    params = self.precision.model_params(params)
                    inputs = self.precision.inputs(inputs)
                kwargs.update(self.adapter.call_kwargs(self.model))
                if isinstance(inputs, Mapping):  # dict batches: model(**inputs)
                    res = functional_call(self.model, dict(params), (), {**inputs, **kwargs})
                else:
                    args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
                    res = functional_call(self.model, dict(params), args, kwargs)
            res = res if return_hidden else self.adapter.outputs(self.model, res)
            return res if self.precision is None else self.precision.outputs(res)
        except RuntimeError as err:
            mapped = kernel_error(err)
            if mapped is not None:
                raise mapped from None
            shapes = [tuple(t.shape) for t in leaves(inputs)]
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise InputError(f"batch: the model failed on inputs of shape {shapes}: {first}") \
                from err

    def _with_constants(self, params: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        """``params`` completed with the module's other parameters, detached (constants).

        An operator on some of the parameters treats the rest as constants: no graph is built
        for them, and ``torch.func`` transforms do not capture live leaves that require grad
        (``linearize`` then fails on an in-place update of such a leaf).
        """
        own = dict(self.model.named_parameters())
        if len(params) >= len(own):
            return params
        return {**{n: p.detach() for n, p in own.items() if n not in params}, **params}

    def check_modes(self) -> None:
        """Reject modules whose forward pass differs between calls or couples the cases."""
        if not self.is_module:
            return
        self.adapter.check(self.model)
        self.adapter.check_modes(self.model)
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

    @staticmethod
    def flat(params: Mapping[str, Tensor]) -> Tensor:
        """The parameters as one flat vector (detached copy)."""
        return torch.cat([p.detach().reshape(-1) for p in params.values()])

    def evaluate(self, params: Mapping[str, Tensor], batch: Any, grad: bool = False,
                 check: bool = True) -> Evaluation:
        """The objective on ``batch`` (and its flat gradient with ``grad``), with its count.

        One pass over the chunks (one forward, and one backward with ``grad``, per chunk), one
        all-reduce with a process group. ``check=False`` skips the loss's checks of the targets:
        for chunks an earlier pass already checked (an HF step's line search).
        """
        chunks = Chunks.of(batch)
        theta = self.flat(params) if self.weight_decay else None
        if not grad:
            def value_of(c: Chunk, scale: float) -> tuple[Tensor]:
                out = self.check_outputs(self.forward(params, c.inputs), c)
                return (self.loss.value(out, c.targets, scale, check),)

            with torch.no_grad():
                s = self.accumulator.sums(chunks, value_of, (VALUE,), theta)
            return Evaluation(s.parts[0], s.count, s.cases)
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        plist = list(leaves.values())

        def value_grad_of(c: Chunk, scale: float) -> tuple[Tensor, Tensor]:
            with torch.enable_grad():
                out = self.check_outputs(self.forward(leaves, c.inputs), c)
                state = self.loss.prepare(out, c.targets, scale, check)
                gs = torch.autograd.grad(out, plist, state.grad, materialize_grads=True,
                                         allow_unused=True)
            return state.value, torch.cat([g.reshape(-1) for g in gs])

        s = self.accumulator.sums(chunks, value_grad_of, (VALUE, GRADIENT), theta)
        return Evaluation(s.parts[0], s.count, s.cases, s.parts[1])

    def count(self, chunks: Any) -> int:
        """What the loss's ``mean`` divides by in ``chunks`` on this process (``loss.count``).

        The number of cases for the classic losses; the tokens that count for
        :class:`~hessfree.curvature.sequence_loss.TokenCrossEntropy`.
        """
        return sum(self.loss.count(c.targets) for c in chunks)

    def value(self, params: Mapping[str, Tensor], batch: Any) -> float:
        """The objective on ``batch`` (loss + weight decay), without gradients."""
        return self.evaluate(params, batch).value

    def value_and_grad(self, params: Mapping[str, Tensor], batch: Any) -> tuple[float, Tensor]:
        """Objective and flat gradient on ``batch`` (chunks accumulated), one backward each."""
        e = self.evaluate(params, batch, grad=True)
        assert e.grad is not None
        return e.value, e.grad
