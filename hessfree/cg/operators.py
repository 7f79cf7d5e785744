"""Linear operators and diagonal preconditioners as CG sees them.

CG takes the package's operator base (:class:`hessfree.linops.FlatOperator`: curvature
operators, their damped versions, quadratics, combinations ``A + λ·I``, ``Counted``) and
everything :func:`hessfree.linops.as_operator` turns into one: a dense square tensor, a plain
callable ``v -> A v`` (wrapped in a :class:`~hessfree.linops.FunctionOperator`, each product
checked) or an object with ``matvec``/``matmat``/``@``. The preconditioner ``M`` is the *inverse*
of a diagonal preconditioner, given as a 1-D tensor (z = M * r) or a callable r -> z.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, Union

import torch
from torch import Tensor

from hessfree.errors import InputError, InputTypeError
from hessfree.linops import FlatOperator, FunctionOperator, checked_result
from hessfree.linops import as_operator as _as_operator
from hessfree.vectors import flat_vector

__all__ = [
    "DiagonalPreconditioner",
    "FunctionOperator",
    "FunctionPreconditioner",
    "LinearOperator",
    "Preconditioner",
    "as_operator",
    "as_preconditioner",
    "block_operator",
    "quadratic_value",
]

#: the operators CG takes: the package's base (re-exported under CG's name)
LinearOperator = FlatOperator

OperatorLike = Union[FlatOperator, Tensor, Callable[[Tensor], Tensor], Any]


def as_operator(A: OperatorLike, like: Tensor | None = None) -> FlatOperator:
    """``A`` as an operator CG can use (:func:`hessfree.linops.as_operator`).

    ``like``: the right-hand side, whose length, dtype and device ``A`` must fit.

    Raises:
        ValueError: a dense ``A`` that is not square, or one that does not fit ``like``.
        TypeError: ``A`` has no product and is not callable.
    """
    if like is None:
        return _as_operator(A, name="A")
    return _as_operator(A, like.numel(), like.dtype, like.device, name="A", match="b")


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
        return checked_result(self.fn(r), r, "M: M(r)")


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
        flat_vector(M, "M", like.numel(), like.dtype, like.device,
                    whose=" (like b: the inverse of a diagonal preconditioner, z = M * r) or a "
                    "callable r -> z")
        if not bool(((M > 0) & torch.isfinite(M)).all()):
            raise InputError("M: expected positive, finite entries (an inverse diagonal)")
        return DiagonalPreconditioner(M.detach())
    if callable(M):
        return FunctionPreconditioner(M)
    raise InputTypeError(
        f"M: expected a 1-D tensor, a callable r -> z or None, got {type(M).__name__}"
    )


def block_operator(A: Any, like: Tensor) -> FlatOperator:
    """``A`` for the block solvers, as a :class:`~hessfree.linops.FlatOperator`.

    An operator of the base as it is, or a callable ``V -> A V`` on ``(n, c)`` blocks (the size,
    dtype and device of ``like``): the solvers report the products its counter records.
    """
    if isinstance(A, FlatOperator):
        return A
    if not callable(A):
        raise InputTypeError(f"matmat: expected an operator or a callable V -> A V, got "
                             f"{type(A).__name__}")

    def one(v: Tensor) -> Tensor:
        return A(v.reshape(-1, 1)).reshape(-1)

    return FunctionOperator(one, like.shape[0], like.dtype, like.device, block=A, name="matmat")


def quadratic_value(A: OperatorLike, b: Tensor, x: Tensor) -> Tensor:
    """φ(x) = ½ xᵀA x − bᵀx, computed directly with one product (a 0-d tensor)."""
    ax = as_operator(A, b).apply(x.detach())
    return 0.5 * torch.dot(x, ax) - torch.dot(b, x)
