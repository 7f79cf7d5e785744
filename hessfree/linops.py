"""One base for the package's symmetric linear operators on flat parameter vectors.

:class:`FlatOperator` gives every operator — curvature matrices (``GGN``, ``Hessian``,
``EmpiricalFisher``), their damped versions and HF's quadratics — the same surface: ``dim``,
``shape``, ``dtype``, ``device``, ``A @ v`` for a flat vector, a list or dict of tensors shaped like
the parameters (answered in the same form) or a ``(dim, k)`` block of ``k`` columns, ``matvec``
(the checked flat fast path), ``matmat``, ``to_scipy()``, ``dense()`` and a product counter.
A subclass implements ``_apply(v)`` (flat in, flat out) and, where it can do better than ``k``
products, ``_apply_block(V)`` (the curvature operators, their damped versions and quadratics do:
one batched pass for the ``k`` columns where the backend has one, see
:mod:`hessfree.curvature.products`).

scipy's OpenBLAS threads spin after each BLAS call and take the cores from torch, which does the
products here (measured 2.6x slower CG/Lanczos through ``to_scipy()`` on 2 cores,
``benchmarks/RESULTS.md``). :func:`single_threaded_blas` scopes OpenBLAS to one thread around
scipy algorithms and never changes the process-wide setting. The package's own spectra
(:func:`hessfree.curvature.eigsh`, ``trace``, ``density``) run in torch and need no scipy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hessfree.errors import InputError, InputTypeError
from hessfree.vectors import ParamLayout

__all__ = ["FlatOperator", "single_threaded_blas"]

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
    are only flat) and implement :meth:`_apply`; they may override ``dim``/``dtype``/``device``
    when they have no layout.
    """

    layout: ParamLayout | None = None
    #: number of products taken through this object (a block of k columns counts k)
    products: int = 0

    # -- what a subclass provides --------------------------------------------------------------
    def _apply(self, v: Tensor) -> Tensor:
        """The product with a flat vector of length ``dim`` (no checks). A new tensor."""
        raise NotImplementedError

    def _apply_block(self, V: Tensor) -> Tensor:
        """The product with ``V`` of shape ``(dim, k)``; default: ``k`` products."""
        return torch.stack([self._apply(V[:, j].contiguous()) for j in range(V.shape[1])], 1)

    # -- shape ---------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Length of the vectors (the matrix is ``dim × dim``)."""
        assert self.layout is not None
        return self.layout.numel

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the vectors the operator takes."""
        assert self.layout is not None
        return self.layout.dtype

    @property
    def device(self) -> torch.device:
        """Device of the vectors the operator takes."""
        assert self.layout is not None
        return self.layout.device

    @property
    def shape(self) -> tuple[int, int]:
        """``(dim, dim)``."""
        return (self.dim, self.dim)

    # -- products ------------------------------------------------------------------------------
    def _check_flat(self, v: Any, name: str, ndim: int) -> Tensor:
        if not isinstance(v, Tensor):
            raise InputTypeError(f"{name}: expected a Tensor, got {type(v).__name__}")
        if v.dim() != ndim or v.shape[0] != self.dim:
            want = f"a flat 1-D tensor of length {self.dim}" if ndim == 1 else \
                f"a tensor of shape ({self.dim}, k)"
            raise InputError(f"{name}: expected {want}, got shape {tuple(v.shape)}")
        if v.dtype != self.dtype or v.device != self.device:
            raise InputError(f"{name}: expected dtype {self.dtype} on {self.device}, "
                             f"got {v.dtype} on {v.device}")
        return v.detach()

    def matvec(self, v: Tensor) -> Tensor:
        """``A v`` for a flat 1-D tensor ``v`` (checked; one product)."""
        out = self._apply(self._check_flat(v, "v", 1))
        self.products += 1
        return out

    def matmat(self, V: Tensor) -> Tensor:
        """``A V`` for ``V`` of shape ``(dim, k)`` (``k`` products, batched where possible)."""
        V = self._check_flat(V, "V", 2)
        out = self._apply_block(V) if V.shape[1] else V.new_zeros(V.shape)
        self.products += V.shape[1]
        return out

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
