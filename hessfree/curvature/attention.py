"""Attention that curvature products can differentiate: the math kernel, scoped to our passes.

GGN, Hessian and empirical-Fisher products need the model's forward pass twice differentiable
(the double-backward backend differentiates the backward graph; the Hessian differentiates the
gradient) or differentiable in forward mode (``torch.func.linearize``). PyTorch's fused attention
kernels are neither: the flash and memory-efficient kernels of
``torch.nn.functional.scaled_dot_product_attention`` have a first derivative only, and the fast
paths of ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` under ``no_grad`` call
fused native kernels (and may turn padded batches into nested tensors). PyTorch's own reference
kernel, the *math* backend, is written in differentiable operations and gives the same function
([SDPA]; [Vas17 §3.2]).

So every forward pass hessfree runs (objective, gradient, operator set-up, the EF diagonal, the
determinism probe) runs inside :func:`differentiable_attention`: SDPA restricted to the math
backend and the fast paths of ``nn.MultiheadAttention`` / ``nn.TransformerEncoder(Layer)`` off,
both restored when the pass ends (also on error). The user's model is not changed and the
host's settings are as before after each call; while the pass runs, the two settings are
process-wide, so another thread of the host running attention at the same moment would see them.
The cached graphs of an operator are built in these passes, so its products need no scope.

A model that calls a fused kernel directly (``torch.ops.aten._scaled_dot_product_flash_attention*``,
a flash-attention package's ``autograd.Function``, a compiled flex attention) cannot be
differentiated as the products need; :func:`kernel_error` turns torch's message into one line
naming the kernel and what to do (:class:`~hessfree.errors.InputError`), and
:func:`translating_kernel_errors` applies it around the passes and products of an operator.
Where torch raises nothing — a backward marked ``@once_differentiable`` or written with
non-differentiable kernels makes a second derivative silently zero —
:func:`undifferentiable_backward` finds the cut in the double-backward graph at set-up.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from hessfree.errors import InputError

__all__ = ["differentiable_attention", "kernel_error", "translating_kernel_errors",
           "undifferentiable_backward"]

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def differentiable_attention() -> Iterator[None]:
    """Run attention with PyTorch's math kernel, and no fused fast path, inside the block.

    ``scaled_dot_product_attention`` uses the math backend (twice differentiable, with forward
    mode); ``nn.MultiheadAttention`` and ``nn.TransformerEncoder(Layer)`` take their ordinary
    (non-fused) path even under ``no_grad``. Both settings are restored on exit.
    """
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


#: torch's messages for a kernel without the derivative a product needs -> (kernel, what lacks)
_PATTERNS = (
    (re.compile(r"derivative for (aten::\S+?) is not implemented"),
     "no derivative of its backward (double-backward and Hessian products need one)"),
    (re.compile(r"forward AD with (\S+?) that does not support it"),
     "no forward-mode derivative (the 'forward' backend needs one)"),
    (re.compile(r"marked with @once_differentiable"),
     "a backward that cannot be differentiated again (an autograd.Function marked "
     "@once_differentiable)"),
    (re.compile(r"implement the jvp function|jvp is not implemented", re.IGNORECASE),
     "no forward-mode derivative (an autograd.Function without jvp; the 'forward' backend "
     "needs one)"),
    (re.compile(r"backward through (\S+) but no autograd formula was registered"),
     "no derivative registered (a torch.library custom op without register_autograd)"),
)

_WHAT_TO_DO = ("compute attention with torch.nn.functional.scaled_dot_product_attention or "
               "nn.MultiheadAttention (hessfree runs them with the math kernel), or a Hugging "
               "Face model with attn_implementation='sdpa' or 'eager'")


def kernel_error(err: BaseException) -> InputError | None:
    """One-line :class:`InputError` for torch's "kernel not differentiable" errors, else None."""
    if not isinstance(err, (RuntimeError, NotImplementedError)):
        return None
    text = str(err)
    for pattern, lacks in _PATTERNS:
        m = pattern.search(text)
        if m:
            kernel = f"the kernel {m.group(1)}" if m.groups() else "a custom autograd.Function"
            return _cut(kernel, lacks)
    return None


#: autograd's node for the outputs of a backward marked ``@once_differentiable``
_DELAYED_ERROR = ("Error", "DelayedError")


def undifferentiable_backward(grads: Sequence[Tensor], names: Sequence[str], linear: bool,
                              ) -> InputError | None:
    """An error when the graph of ``grads`` (built with ``create_graph``) was cut, else None.

    Differentiating a backward pass again runs through the backward of every kernel. A kernel
    whose backward is marked ``@once_differentiable`` leaves an error node that autograd
    treats as *unused*, and a backward written with non-differentiable kernels leaves
    gradients that do not depend on what they were seeded with: either way a second
    derivative would silently come out as zero. ``linear``: the gradients are ``Jᵀw`` for a
    seed ``w``, so a non-zero one that does not depend on ``w`` is such a cut.
    """
    seen: set[Any] = set()
    stack = [g.grad_fn for g in grads if g.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ in _DELAYED_ERROR:
            return _cut("a custom autograd.Function", "a backward marked @once_differentiable")
        stack.extend(f for f, _ in node.next_functions)
    if linear:
        for name, g in zip(names, grads):
            if not g.requires_grad and bool(g.any()):
                return _cut(f"a kernel on the path to parameter {name!r}",
                            "a backward that does not depend on its input (written with "
                            "kernels that have no derivative)")
    return None


def _cut(kernel: str, lacks: str) -> InputError:
    return InputError(f"model: {kernel} has {lacks}, so curvature products cannot run through "
                      f"it; {_WHAT_TO_DO}")


def translating_kernel_errors(fn: F) -> F:
    """Decorate ``fn`` so torch's "kernel not differentiable" errors become one InputError line."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, NotImplementedError) as err:
            mapped = kernel_error(err)
            if mapped is None:
                raise
            raise mapped from None

    return wrapper  # type: ignore[return-value]
