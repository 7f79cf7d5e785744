"""The local quadratic model of one HF step: ``q(p) = gᵀp + ½ pᵀ(G + λI)p`` ([M10 §4]).

Two kinds of :class:`Quadratic`:

* *operator-backed*: ``Quadratic(G, g, lam)`` with ``G`` an undamped curvature operator
  (``hessfree.GGN(...)``, ``Hessian``, ``EmpiricalFisher``) at the step's parameters θ. The
  curvature is ``G.damped(lam)``: ``G + λI``, plus ``μλS`` when ``G`` is a GGN built with
  ``structural_damping=μ`` ([M&S11]).
* *dense*: ``Quadratic.from_dense(A, b)`` with an explicit symmetric matrix. **Sign convention**
  (that of CG, :func:`hessfree.cg.solve`): ``q(p) = −bᵀp + ½ pᵀAp``, so ``b = −g`` and the
  minimiser solves ``A p = b``. ``A`` is the whole (already damped) curvature; ``lam`` is 0.

Either way ``q.g`` is the gradient ``∇q(0)``, ``q @ p`` the curvature times ``p`` and ``q.b`` the
right-hand side ``−g`` that CG is given. Vectors are flat 1-D tensors of length ``q.dim`` with the
quadratic's dtype and device (operator-backed ones also take lists or dicts shaped like θ).
Every product goes through :meth:`Quadratic.matvec`, which counts them in ``q.products``.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor

from hessfree import _checks
from hessfree.curvature.operator import CurvatureOperator, DampedOperator
from hessfree.curvature.solves import SolveResult, solve
from hessfree.errors import InputError, InputTypeError
from hessfree.linops import DenseOperator, FlatOperator, symmetric_matrix
from hessfree.quadratic import io
from hessfree.vectors import flat_vector

__all__ = ["Quadratic", "check_lam", "load", "save"]


def check_lam(lam: object, name: str = "lam") -> float:
    """``lam`` as a float, required finite and > 0 (the damping of an HF quadratic)."""
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
        raise InputTypeError(f"{name}: expected a positive number (the damping λ), got {lam!r}")
    try:
        return _checks.number(lam, name, 0.0, strict_min=True)
    except ValueError:
        raise InputError(f"{name}: expected a finite damping λ > 0 (G + λI must be positive "
                         f"definite), got {lam!r}") from None


def _check_flat(v: object, name: str, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return flat_vector(v, name, n, dtype, device, whose=" (the quadratic's)")


class Quadratic(FlatOperator):
    """``q(p) = gᵀp + ½ pᵀ(G + λI)p``, the model HF minimises by CG ([M10 §4]).

    Args:
        operator: the *undamped* curvature operator at θ (e.g. ``hessfree.GGN(problem, batch)``).
        g: the gradient at θ (flat, or a list/dict shaped like θ); in HF it often comes from a
            different (larger) batch than the curvature, so it is passed explicitly (``G.grad`` is
            the gradient on the curvature batch).
        lam: the damping λ > 0.

    Attributes:
        g: the gradient, flat. ``b = −g`` is the right-hand side CG is given.
        lam: λ (0 for dense quadratics, whose ``A`` already holds any damping).
        operator: the undamped operator (None for dense ones); ``A``: the dense matrix or None.
        attrs: metadata read from a file (``experiment``, ``model_spec``, caller attributes).
        products: number of curvature products taken through this object.
    """

    def __init__(self, operator: CurvatureOperator, g: Any, lam: float) -> None:
        if isinstance(operator, DampedOperator):
            raise InputTypeError(
                "operator: expected the undamped operator (e.g. hessfree.GGN(...)) and lam "
                "separately, got a DampedOperator; pass its .base and .lam"
            )
        if not isinstance(operator, CurvatureOperator):
            raise InputTypeError(
                "operator: expected a hessfree curvature operator (GGN, Hessian, "
                "EmpiricalFisher); for an explicit matrix use Quadratic.from_dense(A, b), got "
                f"{type(operator).__name__}"
            )
        self.lam = check_lam(lam)
        flat, _ = operator.layout.to_flat(g, "g")
        if not bool(torch.isfinite(flat).all()):
            raise InputError("g: expected finite values, got NaN or infinity")
        self.operator: CurvatureOperator | None = operator
        self.layout = operator.layout
        self.A: Tensor | None = None
        #: the curvature of q: ``G + λI`` (``A`` for a dense quadratic)
        self.curvature: FlatOperator = operator.damped(self.lam)
        self.g = flat.detach()
        self.attrs: dict[str, Any] = {}
        self.products = 0

    @classmethod
    def from_dense(cls, A: Tensor, b: Tensor) -> Quadratic:
        """An explicit quadratic ``q(p) = −bᵀp + ½ pᵀAp`` (so ``g = −b``; CG's convention).

        Args:
            A: symmetric square floating-point matrix (the whole curvature, damping included).
            b: 1-D tensor of length ``A.shape[0]`` with ``A``'s dtype and device.
        """
        A = symmetric_matrix(A, "A")
        b = flat_vector(b, "b", A.shape[0], A.dtype, A.device, whose=" (the quadratic's)",
                        finite=True)
        q = cls.__new__(cls)
        q.operator, q.A, q.layout = None, A, None
        q.curvature = DenseOperator(A)
        q.g, q.lam, q.attrs, q.products = -b, 0.0, {}, 0
        return q

    # -- shape ---------------------------------------------------------------------------------
    @property
    def is_dense(self) -> bool:
        """Whether the curvature is an explicit matrix (``from_dense``)."""
        return self.A is not None

    def _space(self) -> tuple[int, torch.dtype, torch.device]:
        return self.g.numel(), self.g.dtype, self.g.device

    @property
    def b(self) -> Tensor:
        """The right-hand side ``−g`` (CG minimises ``½ pᵀAp − bᵀp``, the same q)."""
        return -self.g

    def __repr__(self) -> str:
        what = "dense" if self.is_dense else repr(self.operator)
        return f"Quadratic({what}, dim={self.dim}, lam={self.lam:g}, dtype={self.dtype})"

    # -- products and values -------------------------------------------------------------------
    def _flat(self, p: Any, name: str) -> Tensor:
        if self.operator is not None and not isinstance(p, Tensor):
            flat, _ = self.operator.layout.to_flat(p, name)
            return flat.detach()
        return _check_flat(p, name, self.dim, self.dtype, self.device)

    def _apply(self, p: Tensor) -> Tensor:
        """``(G + λI) p`` (the curvature of q)."""
        return self.curvature.apply(p)

    def _apply_block(self, P: Tensor) -> Tensor:
        return self.curvature.apply_block(P)

    def __matmul__(self, p: Any) -> Tensor:
        if isinstance(p, Tensor) and p.dim() == 2:
            return self.matmat(p)
        return self.matvec(self._flat(p, "p"))

    def grad(self, p: Any) -> Tensor:
        """``∇q(p) = (G + λI)p + g`` (flat; one product)."""
        return self.matvec(self._flat(p, "p")).add_(self.g)

    def value(self, p: Any) -> float:
        """``q(p) = gᵀp + ½ pᵀ(G + λI)p`` (one product; dot products in float64)."""
        flat = self._flat(p, "p")
        ap = self.matvec(flat)
        return value_from(self.g, flat, ap)

    def dense(self, max_dim: int = 20_000, block: int = 64) -> Tensor:
        """The damped curvature as a matrix (dense ones: ``A``; else one product per column)."""
        if self.A is not None:
            return self.A
        return super().dense(max_dim, block)

    def solve(self, B: Any = None, damping: Any = 0.0, **kwargs: Any) -> SolveResult:
        """``(G + λI + damping·I)⁻¹ B`` by CG (:func:`hessfree.curvature.solve`).

        ``B`` None: ``b``, so ``solve().x`` is the minimiser of q, with its certified residual.
        """
        return solve(self, self.b if B is None else B, damping, **kwargs)

    def minimizer(self, max_dim: int = 20_000) -> Tensor:
        """``p* = −(G + λI)⁻¹ g`` by ``torch.linalg.solve`` on :meth:`dense` (small ones only)."""
        return torch.linalg.solve(self.dense(max_dim), self.b)

    # -- files ---------------------------------------------------------------------------------
    def save(self, path_or_group: Any, **attrs: Any) -> None:
        """Write this quadratic to HDF5 (layout and arguments: :func:`hessfree.quadratic.io.write`).

        ``path_or_group``: a file path (written atomically) or an empty ``h5py.Group``; extra
        ``attrs`` (``experiment``, ``model_spec``, numbers, strings, JSON) are kept.
        """
        io.write(self, path_or_group, **attrs)

    @classmethod
    def load(cls, path_or_group: Any, model: Any = None, loss: Any = None,
             device: Any = None, build_model: Any = None) -> Quadratic:
        """Rebuild a saved quadratic (arguments: :func:`hessfree.quadratic.io.read`).

        ``model``: the ``nn.Module`` or function (not needed for dense quadratics), or
        ``build_model(experiment, model_spec)`` to build it from what the file records.
        """
        parts = io.read(path_or_group, model=model, loss=loss, device=device,
                        build_model=build_model)
        if "A" in parts:
            q = cls.from_dense(parts["A"], parts["b"])
        else:
            q = cls(parts["operator"], parts["g"], parts["lam"])
        q.attrs = parts["attrs"]
        return q


def save(q: Quadratic, path_or_group: Any, **attrs: Any) -> None:
    """Write ``q`` to HDF5 (:meth:`Quadratic.save`)."""
    q.save(path_or_group, **attrs)


def load(path_or_group: Any, model: Any = None, loss: Any = None, device: Any = None,
         build_model: Any = None) -> Quadratic:
    """Rebuild a saved quadratic (:meth:`Quadratic.load`)."""
    return Quadratic.load(path_or_group, model=model, loss=loss, device=device,
                          build_model=build_model)


def value_from(g: Tensor, p: Tensor, ap: Tensor) -> float:
    """``gᵀp + ½ pᵀ(Ap)`` from a product already taken (float64 dot products)."""
    p64 = p.double()
    return float(torch.dot(g.double(), p64) + 0.5 * torch.dot(p64, ap.double()))
