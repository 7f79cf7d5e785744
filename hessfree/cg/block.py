"""CG on many systems at once: one block product per iteration for every column still running.

Two solvers for ``(A + σ_j I) x_j = b_j`` where ``A`` is given by a block product
``matmat(V) -> A V`` (``V`` of shape ``(n, c)``):

* :func:`solve_batched` — ``c`` independent preconditioned CG runs, each column with its own
  right-hand side, shift σ_j, hot start, stopping rule and scalars α, β; each iteration is one
  ``matmat`` of the columns that have not stopped (their ``σ_j p_j`` is added in the solver).
  A column that stops is frozen and leaves the block, so it costs no more products.
* :func:`solve_shifted` — several shifts σ_1..σ_m of each right-hand side from **one** Krylov
  basis ([Jeg96]; [Fro03]): CG runs on the smallest shift (the seed, the slowest to converge)
  and the other shifts follow by short recurrences at the cost of vector updates only, because
  the Krylov space of ``A + σI`` does not depend on σ and the shifted residuals stay collinear,
  ``r^σ_k = ζ^σ_k r_k``. It needs the zero start and no preconditioner (either breaks the
  collinearity); ``k`` right-hand sides cost ``k`` products per iteration whatever ``m``.

Both answer per column with the iteration count, the stop reason (the values of
:mod:`hessfree.cg.stopping`, the rules asked per column with that column's φ and residual) and
the recursively updated residual norm; a caller that needs a certificate computes the true
residual ``b − (A + σ)x`` itself (:func:`hessfree.curvature.solve` does). Host syncs: two per
iteration (the block's pᵀAp, then its rᵀz, ‖r‖ and φ together).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hessfree import _checks
from hessfree.cg import stopping
from hessfree.cg.operators import block_operator
from hessfree.cg.stopping import StopRule, StopSpec
from hessfree.errors import InputError, InputTypeError
from hessfree.linops import FlatOperator
from hessfree.vectors import flat_vector

__all__ = ["BlockResult", "solve_batched"]

#: ``V -> A V`` on ``(n, c)`` blocks, or an operator of :mod:`hessfree.linops`
MatMat = Callable[[Tensor], Tensor] | FlatOperator


@dataclass(frozen=True)
class BlockResult:
    """What :func:`solve_batched` and :func:`solve_shifted` return.

    Attributes:
        x: the solutions, ``(n, c)`` (batched) or ``(n, k, m)`` (shifted: right-hand side ``j``
            at shift ``i`` is ``x[:, j, i]``).
        iters: CG iterations of each system (flattened like ``x``'s columns, row-major).
        reasons: why each system stopped (:data:`hessfree.cg.REASONS`).
        residual_norms: ‖r‖ of each system by CG's recurrence (float64, CPU): an estimate,
            which may drift from ``‖b − (A + σ)x‖`` on ill-conditioned systems.
        phi: φ_0..φ_iters of each system, float64 CPU tensors.
        products: products with ``A`` spent (one per column per block product).
    """

    x: Tensor
    iters: list[int]
    reasons: list[str]
    residual_norms: Tensor
    phi: list[Tensor]
    products: int


def _check_block(B: object, name: str = "B") -> Tensor:
    """Right-hand sides (or starts) as columns: the one flat-vector check, block form."""
    return flat_vector(B, name, columns=True, floating=True, finite=True)


def _shift_vector(shifts: object, c: int, like: Tensor, name: str = "shifts") -> Tensor:
    if shifts is None:
        return like.new_zeros(c)
    values = [shifts] if isinstance(shifts, (int, float)) else list(shifts)  # type: ignore
    values = [_checks.number(s, name) for s in values]
    if len(values) == 1:
        values = values * c
    if len(values) != c:
        raise InputError(f"{name}: expected one shift or {c} (one per column), got {len(values)}")
    return torch.tensor(values, dtype=like.dtype, device=like.device)


Precond = Callable[[Tensor], Tensor] | Tensor | None


def _precondition(M: Precond, S: Tensor, cols: Tensor) -> Tensor:
    """``z = M r`` for the columns ``cols``.

    ``M``: None, a vector, an ``(n, c)`` block or a callable on blocks.
    """
    if M is None:
        return S.clone()
    if isinstance(M, Tensor):
        return S * (M[:, None] if M.dim() == 1 else M[:, cols])
    Z = M(S)
    if not isinstance(Z, Tensor) or Z.shape != S.shape or Z.dtype != S.dtype:
        raise InputError(f"M: expected M(R) to return a tensor of shape {tuple(S.shape)} and "
                         f"dtype {S.dtype}, got {getattr(Z, 'shape', type(Z).__name__)}")
    return Z.detach()


def _check_precond(M: Precond, B: Tensor) -> Precond:
    if M is None or callable(M) and not isinstance(M, Tensor):
        return M
    if not isinstance(M, Tensor):
        raise InputTypeError(f"M: expected a tensor, a callable R -> Z or None, got "
                             f"{type(M).__name__}")
    if M.shape not in ((B.shape[0],), tuple(B.shape)) or M.dtype != B.dtype:
        raise InputError(f"M: expected the inverse diagonal as a tensor of shape ({B.shape[0]},) "
                         f"or {tuple(B.shape)} and dtype {B.dtype}, got shape {tuple(M.shape)}, "
                         f"{M.dtype}")
    if not bool(((M > 0) & torch.isfinite(M)).all()):
        raise InputError("M: expected positive, finite entries (an inverse diagonal)")
    return M.detach()


class _Columns:
    """Per-column bookkeeping: φ lists, iteration counts, reasons, the stop rule."""

    def __init__(self, c: int, rule: StopRule, b_norms: list[float]) -> None:
        self.rule, self.b_norms = rule, b_norms
        self.phi: list[list[float]] = [[] for _ in range(c)]
        self.iters = [0] * c
        self.reasons: list[str | None] = [None] * c
        self.res = [math.nan] * c

    def record(self, j: int, phi: float, res: float) -> None:
        self.phi[j].append(phi)
        self.res[j] = res

    def check(self, j: int, rz: float) -> str | None:
        """The reason column ``j`` stops after its current iteration, or None."""
        phi = self.phi[j]
        if not (math.isfinite(rz) and math.isfinite(phi[-1])):
            return stopping.NON_FINITE
        if rz == 0:
            return stopping.CONVERGED
        return self.rule(stopping.CGState(self.iters[j], phi, self.res[j], self.b_norms[j]))

    def result(self, x: Tensor, products: int) -> BlockResult:
        return BlockResult(x, list(self.iters), [str(r) for r in self.reasons],
                           torch.tensor(self.res, dtype=torch.float64),
                           [torch.tensor(p, dtype=torch.float64) for p in self.phi], products)


def solve_batched(matmat: MatMat, B: Tensor, shifts: Sequence[float] | float | None = None,
                  X0: Tensor | None = None, M: Precond = None, stop: StopSpec = None,
                  max_iters: int = 250) -> BlockResult:
    """Preconditioned CG on ``(A + σ_j I) x_j = b_j`` for every column ``j`` of ``B`` at once.

    (Over 60 lines for its documentation; the loop is CG's, column by column.)

    Args:
        matmat: ``V -> A V`` for ``V`` of shape ``(n, c')`` (any number of columns).
        B: the right-hand sides, ``(n, c)``.
        shifts: σ_j, one number for all columns or one per column (None: 0).
        X0: hot starts, ``(n, c)`` (costs one block product); None: zero.
        M: the inverse of a diagonal preconditioner (a positive ``(n,)`` or ``(n, c)`` tensor,
            ``z = M r``) or a callable ``R -> Z`` on blocks (symmetric positive definite);
            None: none.
        stop: a rule, a list of rules or None for ``MartensProgress()``, asked per column.
        max_iters: the iteration cap of each column.

    Returns:
        A :class:`BlockResult` (``x`` of shape ``(n, c)``). A column whose ``pᵀ(A + σ)p <= 0``
        stops with ``"negative curvature"`` at the iterate before that direction.
    """
    B = _check_block(B)
    n, c = B.shape
    sig = _shift_vector(shifts, c, B)
    M = _check_precond(M, B)
    rule = stopping.capped(stop, max_iters)
    A = block_operator(matmat, B)
    start = A.products
    X, S = _start(A, B, sig, X0)
    Z = _precondition(M, S, torch.arange(c, device=B.device))
    P = Z.clone()
    cols = _Columns(c, rule, torch.linalg.vector_norm(B, dim=0).tolist())
    rz = _read(S, Z, X, B, cols, list(range(c)))
    active = [j for j in range(c) if not _stop(cols, j, rz[j])]
    while active:
        idx = torch.tensor(active, device=B.device)
        Pa = P[:, idx]
        APa = A.apply_block(Pa) + sig[idx] * Pa
        pap = (Pa * APa).sum(0).tolist()  # host sync 1
        alive = _positive(cols, active, pap)
        if not alive:
            break
        keep = torch.tensor(alive, device=B.device)
        active = [active[p] for p in alive]
        idx, Pa, APa = idx[keep], Pa[:, keep], APa[:, keep]
        alpha = torch.tensor([rz[j] for j in active], dtype=B.dtype, device=B.device) \
            / torch.tensor([pap[p] for p in alive], dtype=B.dtype, device=B.device)
        X[:, idx] += alpha * Pa
        S[:, idx] -= alpha * APa
        Z[:, idx] = _precondition(M, S[:, idx], idx)
        for j in active:
            cols.iters[j] += 1
        rz_old = rz
        rz = _read(S, Z, X, B, cols, active, rz)  # host sync 2
        still = [j for j in active if not _stop(cols, j, rz[j])]
        if still:
            sidx = torch.tensor(still, device=B.device)
            beta = torch.tensor([rz[j] / rz_old[j] for j in still], dtype=B.dtype,
                                device=B.device)
            P[:, sidx] = Z[:, sidx] + beta * P[:, sidx]
        active = still
    return cols.result(X, A.products - start)


def _positive(cols: _Columns, active: list[int], pap: list[float]) -> list[int]:
    """Positions in ``active`` whose ``pᵀ(A + σ)p`` is positive; the others get their reason."""
    alive = []
    for pos, j in enumerate(active):
        if not math.isfinite(pap[pos]):
            cols.reasons[j] = stopping.NON_FINITE
        elif pap[pos] <= 0:
            cols.reasons[j] = stopping.NEGATIVE_CURVATURE
        else:
            alive.append(pos)
    return alive


def _start(A: FlatOperator, B: Tensor, sig: Tensor, X0: Tensor | None
           ) -> tuple[Tensor, Tensor]:
    """``x_0`` and ``s_0 = b − (A + σ)x_0`` (one block product for a hot start)."""
    if X0 is None:
        return torch.zeros_like(B), B.clone()
    X = _check_block(X0, "X0").clone()
    if X.shape != B.shape or X.dtype != B.dtype:
        raise InputError(f"X0: expected shape {tuple(B.shape)} and dtype {B.dtype}, got "
                         f"{tuple(X.shape)}, {X.dtype}")
    return X, B - A.apply_block(X) - sig * X


def _read(S: Tensor, Z: Tensor, X: Tensor, B: Tensor, cols: _Columns, active: list[int],
          rz: list[float] | None = None) -> list[float]:
    """rᵀz, ‖r‖ and φ = −½(sᵀx + bᵀx) of the ``active`` columns, with one host sync."""
    idx = torch.tensor(active, device=S.device)
    Sa, Xa = S[:, idx], X[:, idx]
    parts = torch.stack([(Sa * Z[:, idx]).sum(0), (Sa * Sa).sum(0),
                         (Sa * Xa).sum(0) + (B[:, idx] * Xa).sum(0)]).tolist()
    out = list(rz) if rz is not None else [math.nan] * S.shape[1]
    for pos, j in enumerate(active):
        out[j] = parts[0][pos]
        cols.record(j, 0.0 - 0.5 * parts[2][pos], math.sqrt(max(parts[1][pos], 0.0)))
    return out


def _stop(cols: _Columns, j: int, rz: float) -> bool:
    reason = cols.check(j, rz)
    if reason is not None:
        cols.reasons[j] = reason
    return reason is not None
