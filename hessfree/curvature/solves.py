"""Solves with curvature: ``(A + λI) x = b`` for one or many right-hand sides and dampings.

:func:`solve` is what influence functions, Laplace approximations and natural-gradient steps
need from a curvature operator: inverse-curvature products ([KL17 §2]; [Dax21 §2]). It runs
on hessfree's CG family (:mod:`hessfree.cg`):

* **many right-hand sides**: batched CG (:func:`hessfree.cg.block.solve_batched`), one block
  product ``A @ P`` per iteration for every column still running (one batched pass on the
  curvature operators, :meth:`~hessfree.linops.FlatOperator.matmat`);
* **several dampings** λ_1..λ_m from one Krylov basis (shifted CG, [Jeg96]): ``k``
  right-hand sides cost ``k`` products per iteration whatever ``m``, where the maths allows it —
  zero start and no preconditioner; otherwise each (right-hand side, damping) pair is a column
  of batched CG;
* **hot starts** (``x0``), a diagonal or block **preconditioner** (``M``), Martens'
  relative-progress stop or a residual stop (:mod:`hessfree.cg.stopping`);
* **indefinite systems** (the Hessian with too little damping): CG refuses with one line;
  ``method="minres"`` runs MINRES ([PS75]);
* **a certificate**: after the solve, one block product gives the true residual
  ``‖b − (A + λI)x‖`` of every column, which is what :class:`SolveResult` reports (never CG's
  recursive estimate); with a residual stop, columns whose true residual misses the tolerance
  are restarted from where they are (``refine`` rounds).

:func:`lowrank_inverse` takes the top eigenpairs from :func:`hessfree.curvature.eigsh` once and
then answers ``(A + λI)⁻¹ B ≈ V (Λ + λ)⁻¹ Vᵀ B + (I − V Vᵀ) B / λ`` for any ``λ > 0`` at the cost
of two thin matrix products: exact when ``A`` has rank at most ``k`` (a GGN on few cases), a
cheap approximation or a CG preconditioner otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hessfree import _checks
from hessfree.cg.block import BlockResult, solve_batched
from hessfree.cg.minres import solve_minres
from hessfree.cg.shifted import solve_shifted
from hessfree.cg.stopping import (
    NEGATIVE_CURVATURE,
    ResidualTolerance,
    StopSpec,
)
from hessfree.curvature.spectral import eigsh
from hessfree.errors import InputError, InputTypeError
from hessfree.linops import FlatOperator, as_operator

__all__ = ["METHODS", "LowRankInverse", "SolveResult", "lowrank_inverse", "solve"]

METHODS = ("cg", "minres")


@dataclass(frozen=True)
class SolveResult:
    """What :func:`solve` returns.

    Attributes:
        x: the solutions: shaped like ``B`` for one damping, ``(m,) + B.shape`` for ``m``
            dampings (a list or dict ``B`` is answered in the same form, one damping).
        residuals: the true residual norms ``‖b − (A + λI)x‖`` (float64, CPU), one per column:
            shape ``()``, ``(k,)``, ``(m,)`` or ``(m, k)`` like the columns of ``x``; NaN when
            ``certify=False``.
        b_norms: ``‖b‖`` of each column, same shape.
        iters: iterations of each column (int64 tensor, same shape; summed over refinements).
        reasons: why each column's last run stopped, flattened in the order of
            ``residuals.reshape(-1)``.
        products: products with the operator, the certificate's included.
        dampings: the dampings λ (a tuple; ``x[i]`` is at ``dampings[i]`` when there are
            several).
        method: ``"cg"`` or ``"minres"``; ``shifted``: whether shifted CG served the dampings.
        tolerance: the residual each column had to reach (``max(rtol ‖b‖, atol)``), or None
            under a stop without one (Martens' progress).
    """

    x: Any
    residuals: Tensor
    b_norms: Tensor
    iters: Tensor
    reasons: tuple[str, ...]
    products: int
    dampings: tuple[float, ...]
    method: str
    shifted: bool
    tolerance: Tensor | None

    @property
    def relative_residuals(self) -> Tensor:
        """``residuals / b_norms`` (0 where ``b = 0``)."""
        return self.residuals / self.b_norms.clamp_min(1e-300)

    @property
    def converged(self) -> bool:
        """Whether every certified residual meets its tolerance (False without a tolerance)."""
        if self.tolerance is None:
            return False
        return bool((self.residuals <= self.tolerance).all())


def _operator(op: Any) -> FlatOperator:
    """``op`` as an operator of the base (:func:`hessfree.linops.as_operator`).

    Curvature operators, damped ones, quadratics, a square floating-point matrix, or anything
    with ``matmat``/``matvec``/``@`` and a square ``shape``.
    """
    A = as_operator(op, name="op")
    if not A.dtype.is_floating_point:
        raise InputError(f"op: expected a floating-point operator, got dtype {A.dtype}")
    return A


def _dampings(damping: Any) -> tuple[tuple[float, ...], bool]:
    """The dampings as a tuple, and whether one number was given."""
    if isinstance(damping, (list, tuple)):
        if not damping:
            raise InputError("damping: expected a number or a non-empty list of numbers, got []")
        return tuple(_checks.number(d, "damping") for d in damping), False
    if isinstance(damping, Tensor) and damping.dim() == 1:
        return _dampings(damping.tolist())
    return (_checks.number(float(damping) if isinstance(damping, Tensor) else damping,
                           "damping"),), True


def _as_block(A: FlatOperator, B: Any, name: str = "B"
              ) -> tuple[Tensor, bool, Callable[[Tensor], Any]]:
    """``B`` as ``(n, k)``, whether it was one vector, and the way back to ``B``'s form.

    The third item turns an ``(n, k)`` solution into the form ``B`` was given in.
    """
    if not isinstance(B, Tensor):
        if A.layout is None or not isinstance(B, (list, tuple, dict)):
            raise InputTypeError(f"{name}: expected a Tensor of shape ({A.dim},) or ({A.dim}, k)"
                                 + (" or a list/dict shaped like the parameters"
                                    if A.layout is not None else "")
                                 + f", got {type(B).__name__}")
        flat, fmt = A.layout.to_flat(B, name)
        return flat.reshape(-1, 1), True, lambda X: A.layout.like(X[:, 0], fmt)
    if B.dim() not in (1, 2) or B.shape[0] != A.dim:
        raise InputError(f"{name}: expected shape ({A.dim},) or ({A.dim}, k), got {tuple(B.shape)}")
    if B.dtype != A.dtype or B.device != A.device:
        raise InputError(f"{name}: expected dtype {A.dtype} on {A.device}, got {B.dtype} on "
                         f"{B.device}")
    if B.dim() == 1:
        return B.detach().reshape(-1, 1), True, lambda X: X[:, 0]
    return B.detach(), False, lambda X: X


def _stop_rule(stop: StopSpec, rtol: float | None, atol: float, dtype: torch.dtype
               ) -> tuple[StopSpec, float | None, float]:
    """The stop rule and the residual tolerance it implies (None for Martens' progress)."""
    if stop is not None:
        if rtol is not None:
            raise InputError("rtol: give either stop= or rtol=, not both")
        rules = stop if isinstance(stop, (list, tuple)) else [stop]
        res = [r for r in rules if isinstance(r, ResidualTolerance)]
        return stop, (res[0].rtol if res else None), (res[0].atol if res else 0.0)
    rtol = max(1e-10, 100 * torch.finfo(dtype).eps) if rtol is None else \
        _checks.number(rtol, "rtol", 0.0)
    atol = _checks.number(atol, "atol", 0.0)
    return ResidualTolerance(rtol, atol), rtol, atol


def solve(op: Any, B: Any, damping: float | Sequence[float] = 0.0, *, x0: Any = None,
          M: Tensor | Callable[[Tensor], Tensor] | None = None, stop: StopSpec = None,
          rtol: float | None = None, atol: float = 0.0, max_iters: int | None = None,
          method: str = "cg", shifted: bool | str = "auto", certify: bool = True,
          refine: int = 2) -> SolveResult:
    """Solve ``(A + λI) x = b`` for every column ``b`` of ``B`` and every damping ``λ``.

    (Over 60 lines for the documentation of its many options; the work is in ``_Run``.)

    Args:
        op: the symmetric operator ``A``: a curvature operator (``GGN``, ``Hessian``,
            ``EmpiricalFisher``, a damped one, a ``Quadratic``) or a square tensor.
        B: one right-hand side ``(n,)`` (or a list/dict shaped like the parameters) or ``k``
            of them, ``(n, k)``.
        damping: λ, or a list λ_1..λ_m (added to whatever damping ``op`` already has).
        x0: hot start(s), shaped like ``B`` (or ``(m,) + B.shape`` for ``m`` dampings).
        M: inverse of a diagonal preconditioner (a positive ``(n,)`` tensor: ``z = M r``) or a
            callable on ``(n, c)`` blocks (e.g. :meth:`LowRankInverse.preconditioner`).
        stop: a CG stopping rule or list (``hessfree.cg.MartensProgress()``,
            ``ResidualTolerance``, ...); None: ``ResidualTolerance(rtol, atol)``.
        rtol: the residual stop's relative tolerance (default: ``max(1e-10, 100 eps)``).
        atol: its absolute tolerance.
        max_iters: the iteration cap per column (None: ``min(2n + 10, 5000)``).
        method: ``"cg"`` (refuses an indefinite system in one line) or ``"minres"``.
        shifted: ``"auto"`` (shifted CG when several dampings, zero start, no ``M``), True
            (required) or False.
        certify: compute the true residuals (one block product of all the solutions).
        refine: with a residual stop, rounds of restarts for columns whose certified residual
            misses the tolerance.

    Returns:
        A :class:`SolveResult`.

    Raises:
        InputError: bad arguments; CG met ``pᵀ(A + λI)p <= 0`` (the system is not positive
            definite: raise the damping or use ``method="minres"``).
    """
    A = _operator(op)
    lams, single = _dampings(damping)
    Bk, vector, back = _as_block(A, B)
    method = _checks.choice(method, "method", METHODS)
    if shifted not in ("auto", True, False):
        raise InputError(f"shifted: expected 'auto', True or False, got {shifted!r}")
    stop, rtol, atol = _stop_rule(stop, rtol, atol, A.dtype)
    max_iters = min(2 * A.dim + 10, 5000) if max_iters is None else \
        _checks.integer(max_iters, "max_iters", 0)
    _checks.boolean(certify, "certify")
    refine = _checks.integer(refine, "refine", 0)
    X0 = _start(A, x0, Bk, lams, single)
    m, k = len(lams), Bk.shape[1]
    use_shifted = _use_shifted(shifted, m, X0, M, method)
    if method == "minres":
        if M is not None or rtol is None:
            raise InputError("method: 'minres' takes no preconditioner M and stops by residual "
                             "only (rtol/atol or stop=ResidualTolerance)")
    run = _Run(A, Bk, lams, M, stop, max_iters, method, (rtol or 0.0, atol))
    X = run.first(X0, use_shifted)
    tol_t = None
    if certify:
        res = run.residuals(X)
        if rtol is not None:
            tol_t = torch.clamp(rtol * run.b_norms, min=atol)
            for _ in range(refine):
                redo = (res > tol_t).nonzero().squeeze(1).tolist()
                if not redo:
                    break
                X = run.again(X, redo)
                res = run.residuals(X)
    else:
        res = torch.full((m * k,), math.nan, dtype=torch.float64)
    return run.result(X, res, tol_t, back, vector, single, use_shifted)


def _use_shifted(shifted: bool | str, m: int, X0: Tensor | None, M: Any, method: str) -> bool:
    possible = m > 1 and X0 is None and M is None and method == "cg"
    if shifted is True and not possible:
        raise InputError("shifted: shifted CG needs several dampings, method='cg', a zero start "
                         "(no x0) and no preconditioner M")
    return possible if shifted == "auto" else bool(shifted)


def _start(A: FlatOperator, x0: Any, Bk: Tensor, lams: tuple[float, ...], single: bool
           ) -> Tensor | None:
    """Hot starts as ``(n, m·k)`` (damping-major columns), or None."""
    if x0 is None:
        return None
    m, k = len(lams), Bk.shape[1]
    if not isinstance(x0, Tensor):
        return _as_block(A, x0, "x0")[0].repeat(1, m)
    if not single and x0.dim() >= 2 and x0.shape[0] == m and x0.shape[1] == A.dim:
        parts = [_as_block(A, x0[i], "x0")[0] for i in range(m)]
        X = torch.cat(parts, 1)
    else:
        X = _as_block(A, x0, "x0")[0].repeat(1, m)
    if X.shape != (A.dim, m * k):
        raise InputError(f"x0: expected the shape of B (or ({m},) + B.shape for {m} dampings), "
                         f"got {tuple(x0.shape)}")
    return X


class _Run:
    """The columns of one solve: ``(n, m·k)``, damping-major (column ``i·k + j``)."""

    def __init__(self, A: FlatOperator, Bk: Tensor, lams: tuple[float, ...], M: Any, stop: StopSpec,
                 max_iters: int, method: str, tols: tuple[float, float]) -> None:
        self.A, self.lams, self.M, self.stop = A, lams, M, stop
        self.rtol, self.atol = tols
        self.max_iters, self.method = max_iters, method
        self.k = Bk.shape[1]
        self.B = Bk.repeat(1, len(lams))
        self.shifts = [lam for lam in lams for _ in range(self.k)]
        self.b_norms = torch.linalg.vector_norm(self.B, dim=0).double().cpu()
        self._start = A.products  # every product of the solve is counted by the operator
        self.iters = torch.zeros(self.B.shape[1], dtype=torch.int64)
        self.reasons = [""] * self.B.shape[1]

    @property
    def products(self) -> int:
        """Products with the operator so far (the certificate's included)."""
        return self.A.products - self._start

    def _take(self, res: BlockResult, cols: list[int]) -> None:
        for pos, q in enumerate(cols):
            self.iters[q] += res.iters[pos]
            self.reasons[q] = res.reasons[pos]
        bad = [q for q in cols if self.reasons[q] == NEGATIVE_CURVATURE]
        if bad:
            q = bad[0]
            raise InputError(
                f"op: A + {self.shifts[q]:g}·I is not positive definite (CG met pᵀAp <= 0 on "
                f"column {q % self.k} at iteration {int(self.iters[q]) + 1}); raise the damping "
                "or pass method='minres' for an indefinite system")

    def _batched(self, cols: list[int], X0: Tensor | None) -> Tensor:
        idx = torch.tensor(cols, device=self.B.device)
        sh = [self.shifts[q] for q in cols]
        if self.method == "minres":
            res = solve_minres(self.A, self.B[:, idx], sh, X0, self.rtol, self.atol,
                               self.max_iters)
        else:
            M = self.M[:, idx] if isinstance(self.M, Tensor) and self.M.dim() == 2 else self.M
            res = solve_batched(self.A, self.B[:, idx], sh, X0, M, self.stop,
                                self.max_iters)
        self._take(res, cols)
        return res.x

    def first(self, X0: Tensor | None, shifted: bool) -> Tensor:
        every = list(range(self.B.shape[1]))
        if not shifted:
            return self._batched(every, X0)
        res = solve_shifted(self.A, self.B[:, :self.k], self.lams, self.stop, self.max_iters)
        m = len(self.lams)
        order = [j * m + i for i in range(m) for j in range(self.k)]  # (j, i) -> i·k + j
        reordered = BlockResult(res.x.permute(0, 2, 1).reshape(self.B.shape[0], -1),
                                [res.iters[q] for q in order], [res.reasons[q] for q in order],
                                res.residual_norms[order], [res.phi[q] for q in order],
                                res.products)
        self._take(reordered, every)
        return reordered.x

    def again(self, X: Tensor, cols: list[int]) -> Tensor:
        """Restart the columns ``cols`` from their current solutions."""
        idx = torch.tensor(cols, device=X.device)
        X = X.clone()
        X[:, idx] = self._batched(cols, X[:, idx].contiguous())
        return X

    def residuals(self, X: Tensor) -> Tensor:
        """``‖b − (A + λ)x‖`` of every column: one block product (the certificate)."""
        sh = torch.tensor(self.shifts, dtype=X.dtype, device=X.device)
        R = self.B - self.A.apply_block(X.contiguous()) - sh * X
        return torch.linalg.vector_norm(R, dim=0).double().cpu()

    def result(self, X: Tensor, res: Tensor, tol: Tensor | None, back: Callable[[Tensor], Any],
               vector: bool, single: bool, shifted: bool) -> SolveResult:
        m, k, n = len(self.lams), self.k, self.B.shape[0]
        Xm = X.reshape(n, m, k).permute(1, 0, 2)  # (m, n, k)
        xs = [back(Xm[i]) for i in range(m)]
        x = xs[0] if single else torch.stack(xs) if isinstance(xs[0], Tensor) else xs

        def shaped(t: Tensor) -> Tensor:
            t = t.reshape(m, k)
            t = t[:, 0] if vector else t
            return t[0] if single else t

        return SolveResult(x, shaped(res), shaped(self.b_norms), shaped(self.iters),
                           tuple(self.reasons), self.products, self.lams, self.method,
                           shifted, None if tol is None else shaped(tol))


@dataclass(frozen=True)
class LowRankInverse:
    """``(A + λI)⁻¹ ≈ V (Λ + λ)⁻¹ Vᵀ + (I − V Vᵀ) / λ`` from ``A``'s top eigenpairs.

    Exact on the span of ``V`` and exact everywhere when ``A`` vanishes outside it (rank
    ``<= k``); otherwise the complement's eigenvalues are taken as 0, which over-estimates
    the inverse there by at most ``1/λ − 1/(λ + θ_k)`` (θ_k the smallest kept eigenvalue).

    Attributes:
        values: the ``k`` eigenvalues Λ (ascending, like :func:`~hessfree.curvature.eigsh`).
        vectors: ``V``, ``(n, k)`` with orthonormal columns.
        products: the products ``eigsh`` spent to find them.
    """

    values: Tensor
    vectors: Tensor
    products: int

    def _check_damping(self, damping: float) -> float:
        lam = _checks.number(damping, "damping")
        if lam <= 0 or lam + float(self.values.min()) <= 0:
            raise InputError(f"damping: expected λ > 0 with λ + min(eigenvalues) > 0 (the "
                             f"low-rank inverse adds (I − V Vᵀ)/λ), got {damping!r}")
        return lam

    def solve(self, B: Tensor, damping: float) -> Tensor:
        """The approximate ``(A + λI)⁻¹ B`` for ``B`` of shape ``(n,)`` or ``(n, k)``."""
        lam = self._check_damping(damping)
        V = self.vectors
        if not isinstance(B, Tensor) or B.shape[0] != V.shape[0] or B.dim() not in (1, 2):
            raise InputError(f"B: expected a tensor of shape ({V.shape[0]},) or "
                             f"({V.shape[0]}, k), got {getattr(B, 'shape', type(B).__name__)}")
        Bk = B.reshape(B.shape[0], -1).to(V.dtype)
        C = V.T @ Bk
        X = V @ (C / (self.values + lam)[:, None]) + (Bk - V @ C) / lam
        return X.reshape(B.shape)

    def preconditioner(self, damping: float) -> Callable[[Tensor], Tensor]:
        """``R -> (A + λI)⁻¹ R`` by this approximation: an SPD ``M`` for :func:`solve`."""
        lam = self._check_damping(damping)
        return lambda R: self.solve(R, lam)


def lowrank_inverse(op: Any, k: int, **eigsh_kwargs: Any) -> LowRankInverse:
    """The top ``k`` eigenpairs of ``op`` (``which="LA"``), ready for cheap damped solves.

    Args:
        op: a symmetric, positive semi-definite operator (a GGN, an empirical Fisher).
        k: how many eigenpairs (one ``eigsh`` run: about ``2k`` to ``4k`` products).
        **eigsh_kwargs: passed to :func:`hessfree.curvature.eigsh` (``tol``, ``ncv``,
            ``generator``, ``block``, ...).

    Returns:
        A :class:`LowRankInverse`.
    """
    A = _operator(op)
    before = A.products
    values, vectors = eigsh(A, k, "LA", **eigsh_kwargs)
    return LowRankInverse(values, vectors, A.products - before)
