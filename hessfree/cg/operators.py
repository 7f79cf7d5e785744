"""Linear operators and diagonal preconditioners as CG sees them.

CG needs only ``A @ v`` on flat 1-D tensors. :func:`as_operator` accepts a curvature operator
object (anything with ``__matmul__``), a dense square 2-D tensor, or a plain callable
``v -> A v`` (wrapped in :class:`FunctionOperator`). The preconditioner ``M`` is the *inverse*
of a diagonal preconditioner, given as a 1-D tensor (z = M * r) or a callable r -> z.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, Union

import torch
from torch import Tensor

from hessfree.errors import InputError, InputTypeError

__all__ = [
    "DiagonalPreconditioner",
    "FunctionOperator",
    "FunctionPreconditioner",
    "LinearOperator",
    "Preconditioner",
    "as_operator",
    "as_preconditioner",
    "checked_matmul",
    "quadratic_value",
]


class LinearOperator(Protocol):
    """Anything with ``A @ v`` for a flat 1-D tensor ``v``."""

    def __matmul__(self, v: Tensor) -> Tensor:  # pragma: no cover - protocol
        """Return A v."""
        ...


class FunctionOperator:
    """A callable ``v -> A v`` seen as an operator with ``@``.

    Args:
        fn: the matrix-vector product.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        """Wrap ``fn``."""
        self.fn = fn

    def __matmul__(self, v: Tensor) -> Tensor:
        """Return ``fn(v)``."""
        return self.fn(v)

    def __repr__(self) -> str:
        """Show the wrapped callable."""
        return f"FunctionOperator({self.fn!r})"


OperatorLike = Union[LinearOperator, Tensor, Callable[[Tensor], Tensor]]


def as_operator(A: OperatorLike) -> LinearOperator:
    """Give ``A`` an ``@``: tensors and operator objects as they are, callables wrapped.

    Raises:
        ValueError: ``A`` is a tensor that is not square 2-D.
        TypeError: ``A`` has no ``@`` and is not callable.
    """
    if isinstance(A, Tensor):
        if A.dim() != 2 or A.shape[0] != A.shape[1]:
            raise InputError(f"A: expected a square 2-D tensor, got shape {tuple(A.shape)}")
        return A
    if hasattr(type(A), "__matmul__"):
        return A
    if callable(A):
        return FunctionOperator(A)
    raise InputTypeError(
        "A: expected an operator with `A @ v`, a square 2-D tensor or a callable v -> A v, "
        f"got {type(A).__name__}"
    )


def _checked_result(out: object, like: Tensor, what: str) -> Tensor:
    """``out`` detached, after checking it is a tensor shaped, typed and placed like ``like``."""
    if not isinstance(out, Tensor):
        raise InputTypeError(f"{what} returned {type(out).__name__}, expected a Tensor")
    if out.shape != like.shape or out.dtype != like.dtype or out.device != like.device:
        raise InputError(
            f"{what} returned shape {tuple(out.shape)}, {out.dtype} on {out.device}; "
            f"expected shape {tuple(like.shape)}, {like.dtype} on {like.device}"
        )
    return out.detach()


def checked_matmul(A: LinearOperator, v: Tensor) -> Tensor:
    """``A @ v``, checked to be a tensor shaped, typed and placed like ``v`` (detached).

    Raises:
        TypeError: the product is not a tensor.
        ValueError: the product has the wrong shape, dtype or device.
    """
    return _checked_result(A @ v, v, "A: `A @ v`")


class Preconditioner(Protocol):
    """Applies M (the inverse of the preconditioner) to a residual."""

    def apply(self, r: Tensor, out: Tensor | None) -> Tensor:  # pragma: no cover - protocol
        """Return z = M r, written into ``out`` where the implementation can."""
        ...


class DiagonalPreconditioner:
    """z = m * r (elementwise), written into a reused buffer.

    Args:
        m: the inverse diagonal, a 1-D tensor of positive entries.
    """

    __slots__ = ("m",)

    def __init__(self, m: Tensor) -> None:
        """Wrap ``m``."""
        self.m = m

    def apply(self, r: Tensor, out: Tensor | None) -> Tensor:
        """Return ``m * r`` (into ``out`` when given)."""
        return torch.mul(self.m, r) if out is None else torch.mul(self.m, r, out=out)


class FunctionPreconditioner:
    """z = fn(r), checked for shape, dtype and device.

    Args:
        fn: the callable r -> z.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        """Wrap ``fn``."""
        self.fn = fn

    def apply(self, r: Tensor, out: Tensor | None) -> Tensor:
        """Return ``fn(r)`` (``out`` is ignored)."""
        return _checked_result(self.fn(r), r, "M: M(r)")


def check_like(v: Tensor, name: str, like: Tensor, shape_hint: str = "(like b)") -> None:
    """``v`` must have the shape, dtype and device of ``like`` (errors name ``name``)."""
    if v.shape != like.shape:
        raise InputError(f"{name}: expected a 1-D tensor of length {like.numel()} {shape_hint}, "
                         f"got shape {tuple(v.shape)}")
    if v.dtype != like.dtype or v.device != like.device:
        raise InputError(f"{name}: expected dtype {like.dtype} on {like.device} (like b), "
                         f"got {v.dtype} on {v.device}")


def as_preconditioner(
    M: Tensor | Callable[[Tensor], Tensor] | None, like: Tensor
) -> Preconditioner | None:
    """Check ``M`` against the right-hand side ``like`` and wrap it (None stays None).

    Raises:
        ValueError: a tensor ``M`` of the wrong shape, dtype or device, or with entries that are
            not positive and finite (one host sync).
        TypeError: ``M`` is neither a tensor, a callable nor None.
    """
    if M is None:
        return None
    if isinstance(M, Tensor):
        check_like(M, "M", like, "(the inverse of a diagonal preconditioner, z = M * r) or a "
                   "callable r -> z")
        if not bool(((M > 0) & torch.isfinite(M)).all()):
            raise InputError("M: expected positive, finite entries (an inverse diagonal)")
        return DiagonalPreconditioner(M.detach())
    if callable(M):
        return FunctionPreconditioner(M)
    raise InputTypeError(
        f"M: expected a 1-D tensor, a callable r -> z or None, got {type(M).__name__}"
    )


def quadratic_value(A: OperatorLike, b: Tensor, x: Tensor) -> Tensor:
    """φ(x) = ½ xᵀA x − bᵀx, computed directly with one product (a 0-d tensor)."""
    ax = checked_matmul(as_operator(A), x)
    return 0.5 * torch.dot(x, ax) - torch.dot(b, x)
