"""One base for the package's symmetric linear operators on flat vectors, and their composition.

:class:`FlatOperator` gives every operator — curvature matrices (``GGN``, ``Hessian``,
``EmpiricalFisher``), their damped versions, HF's quadratics, dense matrices and wrapped
callables — the same surface: ``dim``, ``shape``, ``dtype``, ``device``, ``A @ v`` for a flat
vector, a list or dict of tensors shaped like the parameters (answered in the same form) or a
``(dim, k)`` block of ``k`` columns, ``matvec``/``matmat`` (checked), ``apply``/``apply_block``
(unchecked, for the inner loops of CG and Lanczos), ``to_scipy()``, ``dense()`` and the product
counter ``products``. A subclass implements ``_apply(v)`` (flat in, flat out) and, where it can
do better than ``k`` products, ``_apply_block(V)``.

Composition: ``A + B``, ``c * A`` and ``A.identity()`` build a :class:`Combination`
``Σ cᵢ Aᵢ``; damping is ``A + λ·I`` (``A.damped(λ)``). Products are counted in one place —
``apply``/``apply_block``, which every product of every operator goes through, a part of a
combination included — so a curvature operator's ``products`` counts every product taken with
it however it was wrapped (the unit of every gradient-equivalents column); :class:`Counted`
adds a hook told of each product and its time (HF's accounting).

:func:`as_operator` turns what CG and the spectral methods accept (a dense tensor, a callable
``v -> A v``, any object with ``matvec``/``matmat``/``@``) into a ``FlatOperator``;
:func:`symmetric_matrix` is the one check of an explicit symmetric matrix; vectors are checked by
:func:`hessfree.vectors.flat_vector`.

scipy's OpenBLAS threads spin after each BLAS call and take the cores from torch, which does the
products here (measured 2.6x slower CG/Lanczos through ``to_scipy()`` on 2 cores,
``benchmarks/RESULTS.md``). :func:`single_threaded_blas` scopes OpenBLAS to one thread around
scipy algorithms and never changes the process-wide setting. The package's own spectra
(:func:`hessfree.curvature.eigsh`, ``trace``, ``density``) run in torch and need no scipy.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hessfree.errors import InputError, InputTypeError
from hessfree.vectors import ParamLayout, flat_vector

__all__ = ["Combination", "Counted", "DenseOperator", "FlatOperator", "FunctionOperator",
           "Identity", "as_operator", "checked_result", "single_threaded_blas", "square_matrix",
           "symmetric_matrix"]

Vector = Tensor | list[Tensor] | dict[str, Tensor]


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the block with numpy/scipy's OpenBLAS limited to one thread (torch's are untouched).

    Use it around scipy algorithms whose operator products run in torch on the CPU, e.g.
    ``with single_threaded_blas(): scipy.sparse.linalg.cg(G.to_scipy(), b)``.
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a dependency; degrade to no limit
        yield
        return
    with ThreadpoolController().select(internal_api="openblas").limit(limits=1):
        yield


class FlatOperator:
    """A symmetric ``dim × dim`` linear operator applied by products (see the module docstring).

    Subclasses set ``layout`` (a :class:`~hessfree.vectors.ParamLayout`, or None when vectors
    are only flat) and implement :meth:`_apply`; they override :meth:`_space` when they have no
    layout.
    """

    layout: ParamLayout | None = None
    #: number of products taken with this object (a block of k columns counts k)
    products: int = 0

    # -- what a subclass provides --------------------------------------------------------------
    def _apply(self, v: Tensor) -> Tensor:
        """The product with a flat vector of length ``dim`` (no checks). A new tensor."""
        raise NotImplementedError

    def _apply_block(self, V: Tensor) -> Tensor:
        """The product with ``V`` of shape ``(dim, k)``; default: ``k`` products."""
        return torch.stack([self._apply(V[:, j].contiguous()) for j in range(V.shape[1])], 1)

    # -- shape ---------------------------------------------------------------------------------
    def _space(self) -> tuple[int, torch.dtype, torch.device]:
        """``(dim, dtype, device)`` of the vectors; a subclass without a layout overrides it."""
        assert self.layout is not None
        return self.layout.numel, self.layout.dtype, self.layout.device

    @property
    def dim(self) -> int:
        """Length of the vectors (the matrix is ``dim × dim``)."""
        return self._space()[0]

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the vectors the operator takes."""
        return self._space()[1]

    @property
    def device(self) -> torch.device:
        """Device of the vectors the operator takes."""
        return self._space()[2]

    @property
    def shape(self) -> tuple[int, int]:
        """``(dim, dim)``."""
        return (self.dim, self.dim)

    # -- products ------------------------------------------------------------------------------
    def apply(self, v: Tensor) -> Tensor:
        """``A v`` for a flat vector already checked (inner loops); counted. A new tensor."""
        self.products += 1
        return self._apply(v)

    def apply_block(self, V: Tensor) -> Tensor:
        """``A V`` for an ``(dim, k)`` block already checked; counted as ``k`` products."""
        self.products += V.shape[1]
        return self._apply_block(V) if V.shape[1] else V.new_zeros(V.shape)

    def _expected(self) -> tuple[int | None, torch.dtype | None, torch.device | None]:
        """What :meth:`matvec` checks a vector against (None: what is not known)."""
        return self._space()

    def matvec(self, v: Tensor) -> Tensor:
        """``A v`` for a flat 1-D tensor ``v`` (checked; one product)."""
        return self.apply(flat_vector(v, "v", *self._expected()))

    def matmat(self, V: Tensor) -> Tensor:
        """``A V`` for ``V`` of shape ``(dim, k)`` (``k`` products, batched where possible)."""
        return self.apply_block(flat_vector(V, "V", *self._expected(), columns=True))

    def mv(self, v: Vector) -> Vector:
        """The product with ``v``: a flat tensor, or a list/dict shaped like the parameters.

        A list or dict is answered in the same form.
        """
        if isinstance(v, Tensor) or self.layout is None:
            return self.matvec(v)
        flat, fmt = self.layout.to_flat(v, "v")
        return self.layout.like(self.matvec(flat), fmt)

    def __matmul__(self, v: Any) -> Any:
        if isinstance(v, Tensor) and v.dim() == 2:
            return self.matmat(v)
        return self.mv(v)

    # -- composition ---------------------------------------------------------------------------
    def identity(self) -> Identity:
        """The identity on this operator's vectors."""
        return Identity(self.dim, self.dtype, self.device, self.layout)

    def damped(self, lam: float) -> FlatOperator:
        """``self + λI`` (Tikhonov damping, [M10 §4.1])."""
        return self + float(lam) * self.identity()

    def __add__(self, other: Any) -> Combination:
        if not isinstance(other, FlatOperator):
            return NotImplemented
        return Combination(_terms(self) + _terms(other))

    def __mul__(self, c: Any) -> Combination:
        if isinstance(c, bool) or not isinstance(c, (int, float)):
            return NotImplemented
        return Combination([(float(c) * a, op) for a, op in _terms(self)])

    __rmul__ = __mul__

    # -- other views ---------------------------------------------------------------------------
    def to_scipy(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` (float64 numpy in and out).

        On a CPU, call scipy's algorithms on it inside :func:`single_threaded_blas`.
        """
        from scipy.sparse.linalg import LinearOperator

        def matvec(x: np.ndarray) -> np.ndarray:
            v = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
            return self.matvec(v.to(self.device, self.dtype)).to("cpu", torch.float64).numpy()

        def matmat(X: np.ndarray) -> np.ndarray:
            V = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float64))
            return self.matmat(V.to(self.device, self.dtype)).to("cpu", torch.float64).numpy()

        return LinearOperator(self.shape, matvec=matvec, rmatvec=matvec, matmat=matmat,
                              rmatmat=matmat, dtype=np.float64)

    def dense(self, max_dim: int = 20_000, block: int = 64) -> Tensor:
        """The whole matrix, ``block`` columns at a time (small models: tests and studies)."""
        if self.dim > max_dim:
            raise InputError(
                f"max_dim: the operator has {self.dim} rows, more than max_dim={max_dim}; a "
                "dense matrix is meant for small models"
            )
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return torch.cat([self.matmat(eye[:, i:i + block]) for i in range(0, self.dim, block)],
                         1)


class _Sized(FlatOperator):
    """An operator that knows its size, dtype and device without a parameter layout."""

    def __init__(self, n: int, dtype: torch.dtype, device: Any,
                 layout: ParamLayout | None = None) -> None:
        self._n, self._dtype, self._device = n, dtype, torch.device(device)
        self.layout = layout
        self.products = 0

    def _space(self) -> tuple[int, torch.dtype, torch.device]:
        return self._n, self._dtype, self._device


class Identity(_Sized):
    """``I`` on vectors of length ``n`` (a term of damped operators)."""

    def __repr__(self) -> str:
        return f"Identity({self.dim})"

    def _apply(self, v: Tensor) -> Tensor:
        return v.clone()

    def _apply_block(self, V: Tensor) -> Tensor:
        return V.clone()


def _terms(op: FlatOperator) -> list[tuple[float, FlatOperator]]:
    return list(op.terms) if type(op) is Combination else [(1.0, op)]


class Combination(FlatOperator):
    """``Σ cᵢ Aᵢ``: a sum of scaled operators on the same vectors (built by ``+`` and ``*``).

    Each product takes one product of every part that is not the identity (each counted by its
    part) and adds them in order; an identity term costs one ``axpy``.

    Args:
        terms: ``(c, A)`` pairs, the first one's operator fixing dim, dtype and device.
    """

    def __init__(self, terms: list[tuple[float, FlatOperator]]) -> None:
        if not terms:
            raise InputError("terms: expected at least one (coefficient, operator) pair")
        first = terms[0][1]
        for _, op in terms[1:]:
            if (op.dim, op.dtype, op.device) != (first.dim, first.dtype, first.device):
                raise InputError(
                    f"operators: cannot combine an operator on {first.dim} {first.dtype} "
                    f"vectors on {first.device} with one on {op.dim} {op.dtype} on {op.device}")
        self.terms = tuple((float(c), op) for c, op in terms)
        self.layout = next((op.layout for _, op in terms if op.layout is not None), None)
        self._first = first
        self.products = 0

    def _space(self) -> tuple[int, torch.dtype, torch.device]:
        return self._first._space()

    def __repr__(self) -> str:
        return " + ".join(f"{c:g}·{op!r}" if c != 1 else repr(op) for c, op in self.terms)

    def _apply(self, v: Tensor) -> Tensor:
        return self._combine(v, FlatOperator.apply)

    def _apply_block(self, V: Tensor) -> Tensor:
        return self._combine(V, FlatOperator.apply_block)

    def _combine(self, v: Tensor, product: Callable[[FlatOperator, Tensor], Tensor]) -> Tensor:
        out: Tensor | None = None
        for c, op in self.terms:
            if type(op) is Identity:  # no product: c·v
                out = v.mul(c) if out is None else out.add_(v, alpha=c)
                continue
            y = product(op, v)
            if out is None:
                out = y if c == 1.0 else y.mul_(c)
            elif c == 1.0:
                out.add_(y)
            else:
                out.add_(y, alpha=c)
        assert out is not None
        return out


class Counted(FlatOperator):
    """``op`` with a hook told of every product taken through it: ``hook(columns, seconds)``.

    The product is counted by ``op`` (and by this object); the hook adds what the caller's
    accounting needs (HF's step record: cases and time per product).

    Args:
        op: the operator.
        hook: called after each product with the number of columns and the wall time.
    """

    def __init__(self, op: FlatOperator, hook: Callable[[int, float], None]) -> None:
        self.op, self.hook = op, hook
        self.layout = op.layout
        self.products = 0

    def _space(self) -> tuple[int, torch.dtype, torch.device]:
        return self.op._space()

    def __repr__(self) -> str:
        return f"Counted({self.op!r})"

    def _apply(self, v: Tensor) -> Tensor:
        t0 = time.perf_counter()
        out = self.op.apply(v)
        self.hook(1, time.perf_counter() - t0)
        return out

    def _apply_block(self, V: Tensor) -> Tensor:
        t0 = time.perf_counter()
        out = self.op.apply_block(V)
        self.hook(V.shape[1], time.perf_counter() - t0)
        return out


def square_matrix(A: object, name: str) -> Tensor:
    """``A`` detached, checked to be a non-empty square 2-D floating-point tensor."""
    if not isinstance(A, Tensor):
        raise InputTypeError(f"{name}: expected a non-empty square 2-D tensor, got "
                             f"{type(A).__name__}")
    if A.dim() != 2 or A.shape[0] != A.shape[1] or A.shape[0] == 0:
        raise InputError(f"{name}: expected a non-empty square 2-D tensor, got shape "
                         f"{tuple(A.shape)}")
    if not A.is_floating_point():
        raise InputError(f"{name}: expected a floating-point dtype, got {A.dtype}")
    return A.detach()


def symmetric_matrix(A: object, name: str, finite: bool = True) -> Tensor:
    """``A`` detached, checked to be a square, floating, (finite,) symmetric matrix.

    Symmetric to ``100·eps`` of its largest entry (two host syncs; one more with ``finite``).
    """
    A = square_matrix(A, name)
    if finite and not bool(torch.isfinite(A).all()):
        raise InputError(f"{name}: expected finite entries, got NaN or infinity")
    scale = float(A.abs().max())
    tol = 100 * torch.finfo(A.dtype).eps * max(scale, 1e-300)
    asym = float((A - A.T).abs().max())
    if asym > tol:
        raise InputError(
            f"{name}: expected a symmetric matrix, got max |A - Aᵀ| = {asym:.3g} (tolerance "
            f"{tol:.3g}); symmetrise it with (A + A.T) / 2 if that is what you mean"
        )
    return A


class DenseOperator(_Sized):
    """An explicit matrix as an operator (checked with :func:`square_matrix` by the caller)."""

    def __init__(self, A: Tensor) -> None:
        super().__init__(A.shape[0], A.dtype, A.device)
        self.A = A

    def __repr__(self) -> str:
        return f"DenseOperator({self.dim}×{self.dim}, {self.dtype})"

    def _apply(self, v: Tensor) -> Tensor:
        return self.A @ v

    def _apply_block(self, V: Tensor) -> Tensor:
        return self.A @ V


def checked_result(out: object, like: Tensor, what: str) -> Tensor:
    """``out`` detached, after checking it is a tensor shaped, typed and placed like ``like``."""
    if not isinstance(out, Tensor):
        raise InputTypeError(f"{what} returned {type(out).__name__}, expected a Tensor")
    if out.shape != like.shape or out.dtype != like.dtype or out.device != like.device:
        raise InputError(
            f"{what} returned shape {tuple(out.shape)}, {out.dtype} on {out.device}; "
            f"expected shape {tuple(like.shape)}, {like.dtype} on {like.device}"
        )
    return out.detach()


class FunctionOperator(FlatOperator):
    """Code we do not own seen as an operator: a callable ``v -> A v`` or an object's product.

    Every product is checked to come back shaped, typed and placed like its input, and copied
    when it is the input itself. The size, dtype and device are those given (or unknown: then
    only the unchecked :meth:`apply` works, as CG uses it).

    Args:
        fn: the product ``v -> A v``.
        n: the size of the vectors, when known.
        dtype: their dtype, when known.
        device: their device, when known.
        block: the product with ``k`` columns ``V -> A V``, when the code has one.
        name: the argument's name in messages.
    """

    def __init__(self, fn: Callable[[Tensor], Any], n: int | None = None,
                 dtype: torch.dtype | None = None, device: Any = None,
                 block: Callable[[Tensor], Any] | None = None, name: str = "A") -> None:
        self.fn, self.block, self.name = fn, block, name
        self._n, self._dtype = n, dtype
        self._device = None if device is None else torch.device(device)
        self.products = 0

    def _space(self) -> tuple[int, torch.dtype, torch.device]:
        unknown = [w for w, x in (("size", self._n), ("dtype", self._dtype),
                                  ("device", self._device)) if x is None]
        if unknown:
            raise InputError(f"{self.name}: the {', '.join(unknown)} of a function operator "
                             "are unknown; build it with FunctionOperator(fn, n, dtype, device)")
        return self._n, self._dtype, self._device  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"FunctionOperator({self.fn!r})"

    def _expected(self) -> tuple[int | None, torch.dtype | None, torch.device | None]:
        return self._n, self._dtype, self._device  # usable without a declared size

    def _apply(self, v: Tensor) -> Tensor:
        out = checked_result(self.fn(v), v, f"{self.name}: `{self.name} @ v`")
        return out.clone() if out.data_ptr() == v.data_ptr() else out

    def _apply_block(self, V: Tensor) -> Tensor:
        if self.block is None:
            return super()._apply_block(V)
        out = checked_result(self.block(V), V, f"{self.name}: `{self.name} @ V`")
        return out.clone() if out.data_ptr() == V.data_ptr() else out


def _declared_size(A: Any, name: str) -> int | None:
    shape = getattr(A, "shape", None)
    if shape is not None:
        shape = tuple(shape)
        if len(shape) != 2 or shape[0] != shape[1]:
            raise InputError(f"{name}: expected a square operator, got shape {shape}")
        return int(shape[0])
    n = getattr(A, "dim", None)
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def _foreign(A: Any, n: int | None, dtype: torch.dtype | None, device: Any, name: str,
             ) -> FunctionOperator:
    """An object with ``matvec``/``matmat``/``@`` seen as a :class:`FunctionOperator`."""
    declared = getattr(A, "dtype", None)
    if declared is not None and not isinstance(declared, torch.dtype):
        raise InputTypeError(f"{name}: expected an operator on torch tensors (a torch.dtype), "
                             f"got dtype {declared!r}")
    size = _declared_size(A, name)
    n, dtype = size if size is not None else n, declared or dtype
    device = getattr(A, "device", None) or device
    block = A.matmat if callable(getattr(A, "matmat", None)) else None
    if callable(getattr(A, "matvec", None)):
        fn = A.matvec
    elif hasattr(type(A), "__matmul__"):
        fn = A.__matmul__
    else:  # only matmat: one column at a time
        assert block is not None

        def fn(v: Tensor) -> Any:
            return block(v.reshape(-1, 1)).reshape(-1)
    return FunctionOperator(fn, n, dtype, device, block, name)


def as_operator(A: Any, n: int | None = None, dtype: torch.dtype | None = None,
                device: Any = None, *, name: str = "A", symmetric: bool = False,
                match: str | None = None) -> FlatOperator:
    """``A`` as a :class:`FlatOperator` (what CG and the spectral methods accept).

    Args:
        A: a ``FlatOperator`` (returned as it is), a dense square tensor, a callable
            ``v -> A v``, or an object with ``matvec``, ``matmat`` or ``@`` (and a ``shape`` or
            ``dim``; ``dtype``/``device`` when it declares them).
        n: the size of the vectors, for an operator that does not declare it.
        dtype: their dtype, likewise.
        device: their device, likewise.
        name: the argument's name in messages.
        symmetric: check a dense ``A`` with :func:`symmetric_matrix` (else only square).
        match: the name of the vector ``n``/``dtype``/``device`` come from when the operator
            must fit it: errors then say e.g. "expected shape (n, n) to match b".

    Raises:
        InputTypeError: ``A`` is none of these.
        InputError: a dense ``A`` that is not square (or symmetric), or one that does not match.
    """
    if isinstance(A, FlatOperator):
        op: FlatOperator = A
    elif isinstance(A, Tensor):
        op = DenseOperator(symmetric_matrix(A, name, finite=False) if symmetric
                           else square_matrix(A, name))
    elif any(callable(getattr(A, m, None)) for m in ("matvec", "matmat")) or \
            hasattr(type(A), "__matmul__"):
        op = _foreign(A, n, dtype, device, name)
    elif callable(A):
        op = FunctionOperator(A, n, dtype, device, name=name)
    else:
        raise InputTypeError(
            f"{name}: expected an operator (with matvec, matmat or @), a square 2-D tensor or "
            f"a callable v -> {name} v, got {type(A).__name__}")
    if match is not None:
        _check_match(op, n, dtype, device, name, match)
    return op


def _check_match(op: FlatOperator, n: int | None, dtype: torch.dtype | None, device: Any,
                 name: str, match: str) -> None:
    known = isinstance(op, FunctionOperator)
    size = op._n if known else op.dim
    if n is not None and size is not None and size != n:
        raise InputError(f"{name}: expected shape ({n}, {n}) to match {match}, got "
                         f"({size}, {size})")
    has_dtype = op._dtype if known else op.dtype
    has_device = op._device if known else op.device
    if (dtype is not None and has_dtype is not None and has_dtype != dtype) or \
            (device is not None and has_device is not None
             and has_device != torch.device(device)):
        raise InputError(f"{name}: expected dtype {dtype} on {device} (like {match}), "
                         f"got {has_dtype} on {has_device}")
