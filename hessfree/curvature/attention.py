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
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from hessfree.errors import InputError

__all__ = ["differentiable_attention", "kernel_error", "translating_kernel_errors"]

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
            kernel = m.group(1) if m.groups() else "a custom autograd.Function"
            return InputError(f"model: the kernel {kernel} has {lacks}, so curvature products "
                              f"cannot run through it; {_WHAT_TO_DO}")
    return None


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
