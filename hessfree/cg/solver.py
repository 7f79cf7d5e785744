"""Preconditioned CG with Martens' HF extras (Martens 2010 §4; his ``conjgrad_1.m``).

:func:`solve` minimises φ(x) = ½ xᵀA x − bᵀx (i.e. solves A x = b for symmetric positive definite
A) from a start x_0 (zero, or the hot start ``x0``), with a diagonal preconditioner, Martens'
stopping rule, his stored-iterate grid and the value φ_i at every iterate.

Indexing: φ_0 is the value at x_0. Iteration ``i >= 1`` spends one product A p_{i-1} and
produces x_i and φ_i; ``CGResult.iters`` is the index of the returned iterate and
``len(CGResult.phi) == iters + 1``.

φ comes free from the residual: with r = A x − b, φ = ½ (r − b)ᵀx (``conjgrad_1.m``:
``val = 0.5*(-b+r)'*x``); no extra product. Internally the residual is kept as s = b − A x = −r,
so the direction update p ← z + βp is one fused kernel.

Cost per iteration besides the product: two host syncs (pᵀAp, needed before x is touched for
the curvature test; then rᵀz and φ read together), a third only when a rule asks for ‖r‖ and a
preconditioner is given, and eight passes over n-vectors: four dot products (pᵀAp, rᵀz, sᵀx,
bᵀx), x ← x + αp, s ← s − αAp, p ← z + βp, and z ← M·s when ``M`` is a tensor. Vectors held:
x and the previous x (a double buffer, so a non-finite update can be undone exactly), s, z
(none without ``M``), p, the product A p, and the clones of stored iterates. Scalars α, β are
host floats (double) passed as ``alpha=``; nothing in the loop converts vectors to float64 or
moves them off their device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from hessfree.cg.operators import (
    LinearOperator,
    OperatorLike,
    Preconditioner,
    as_operator,
    as_preconditioner,
)
from hessfree.cg.stopping import (
    CONVERGED,
    NEGATIVE_CURVATURE,
    NON_FINITE,
    CGState,
    StopRule,
    StopSpec,
    capped,
)
from hessfree.cg.storage import StoreSpec, as_store_policy
from hessfree.errors import InputTypeError
from hessfree.vectors import flat_vector

__all__ = ["CGResult", "solve"]

Callback = Callable[[int, Tensor, float], None]


@dataclass(frozen=True)
class CGResult:
    """What :func:`solve` returns.

    Attributes:
        x: the last iterate x_iters (the solution returned).
        iterates: ``(i, x_i)`` pairs in increasing i: the iterates on the storage grid (clones)
            and always the last one, whose tensor is ``x`` itself.
        phi: φ_0..φ_iters as a 1-D float64 CPU tensor (``phi[i]`` is φ at x_i).
        iters: number of completed iterations (the index of ``x``).
        reason: why CG stopped, one of :data:`hessfree.cg.REASONS`.
        products: number of products ``A @ v`` used (one more when ``x0`` is given).
    """

    x: Tensor
    iterates: list[tuple[int, Tensor]]
    phi: Tensor
    iters: int
    reason: str
    products: int


class _PCG:
    """CG's vectors and its in-place updates (residual kept as s = b − A x)."""

    def __init__(self, op: LinearOperator, b: Tensor, precond: Preconditioner | None) -> None:
        self.op, self.b, self.precond = op, b, precond
        self.fmax = torch.finfo(b.dtype).max
        self._b_norm: float | None = None

    def _matmul(self, v: Tensor) -> Tensor:
        return self.op.apply(v)  # counted by the operator; code we do not own is checked there

    def _precondition(self, out: Tensor | None) -> Tensor:
        return self.s if self.precond is None else self.precond.apply(self.s, out)

    def _read(self) -> tuple[float, float]:
        """Return rᵀz and φ = ½(r − b)ᵀx = −½(sᵀx + bᵀx) with one host sync."""
        parts = [torch.dot(self.s, self.z), torch.dot(self.s, self.x), torch.dot(self.b, self.x)]
        rz, sx, bx = torch.stack(parts).tolist()
        return rz, 0.0 - 0.5 * (sx + bx)  # 0.0 - ...: φ_0 = +0.0 at x_0 = 0

    def start(self, x0: Tensor | None) -> None:
        """Set x_0, s_0 (one product when x0 is given), z_0, p_0 = z_0, rᵀz and φ_0."""
        b = self.b
        if x0 is None:
            self.x, self.s = torch.zeros(b.shape, dtype=b.dtype, device=b.device), b.clone()
        else:
            self.x = x0.clone(memory_format=torch.contiguous_format)
            self.s = torch.sub(b, self._matmul(self.x))
        self.x_prev = torch.empty_like(self.x)
        self.z = self._precondition(None)
        self.p = self.z.clone()
        self.rz, self.phi = self._read()
        self.rz_prev = math.nan

    def step(self) -> str | None:
        """Iteration x_{i-1} -> x_i; on a reason, x is left (bit for bit) at x_{i-1}."""
        ap = self._matmul(self.p)
        pap = torch.dot(self.p, ap).item()  # host sync 1: the curvature test precedes the update
        if not math.isfinite(pap):
            return NON_FINITE
        if pap <= 0:
            return NEGATIVE_CURVATURE
        alpha = self.rz / pap
        if not abs(alpha) <= self.fmax:
            return NON_FINITE
        torch.add(self.x, self.p, alpha=alpha, out=self.x_prev)
        self.x, self.x_prev = self.x_prev, self.x
        self.s.sub_(ap, alpha=alpha)
        self.z = self._precondition(self.z)
        rz, phi = self._read()  # host sync 2
        if not math.isfinite(phi):
            self.x, self.x_prev = self.x_prev, self.x
            return NON_FINITE
        self.rz_prev, self.rz, self.phi = self.rz, rz, phi
        return None

    def status(self) -> str | None:
        """Reason to stop at the current iterate from CG itself (rᵀz non-finite or exactly 0)."""
        if not (math.isfinite(self.rz) and math.isfinite(self.phi)):
            return NON_FINITE
        return CONVERGED if self.rz == 0 else None

    def next_direction(self) -> str | None:
        """Set p ← z + βp with β = rᵢᵀzᵢ / rᵢ₋₁ᵀzᵢ₋₁ (one fused kernel)."""
        beta = self.rz / self.rz_prev
        if not abs(beta) <= self.fmax:
            return NON_FINITE
        torch.add(self.z, self.p, alpha=beta, out=self.p)
        return None

    def residual_norm(self) -> float:
        """‖r‖: free from rᵀz without a preconditioner, else one reduction and a host sync."""
        if self.precond is None:
            return math.sqrt(self.rz)
        return math.sqrt(torch.dot(self.s, self.s).item())

    def b_norm(self) -> float:
        """‖b‖, computed once."""
        if self._b_norm is None:
            self._b_norm = math.sqrt(torch.dot(self.b, self.b).item())
        return self._b_norm


def _reason_at(cg: _PCG, rule: StopRule, i: int, phi: list[float]) -> str | None:
    """Why to stop after iteration i: CG's own status first, then the rules in order."""
    reason = cg.status()
    if reason is None:
        reason = rule(CGState(i, phi, cg.residual_norm, cg.b_norm))
    return reason


def solve(
    A: OperatorLike,
    b: Tensor,
    x0: Tensor | None = None,
    M: Tensor | Callable[[Tensor], Tensor] | None = None,
    stop: StopSpec = None,
    max_iters: int = 250,
    store: StoreSpec = None,
    callback: Callback | None = None,
) -> CGResult:
    """Minimise φ(x) = ½ xᵀA x − bᵀx by preconditioned CG (Martens' ``conjgrad_1.m``).

    (Over 60 lines for this documentation of every argument and reason; the loop is 20 lines.)

    Args:
        A: symmetric operator with ``A @ v`` on flat 1-D tensors (an operator object, a square
            2-D tensor) or a callable v -> A v.
        b: right-hand side, a finite floating-point 1-D tensor; fixes dtype and device.
        x0: start (hot start; the HF driver passes ζ·previous solution). Costs one product.
            Default: zero (no product). Not modified.
        M: inverse of a diagonal preconditioner, a 1-D tensor of positive entries (z = M * r),
            or a callable r -> z (symmetric positive definite). Default: none (z = r).
        stop: a stopping rule, a list of rules (any may stop) or None for ``MartensProgress()``.
        max_iters: iteration cap (``conjgrad_1.m``: ``maxiters = 250``), reason
            ``"max iterations"``; rules are asked first, so a rule firing at the cap wins.
        store: storage policy for CG-backtracking; None: ``Geometric(1.3, first=5)`` (Martens'
            grid); False: ``Never()``. The last iterate is always kept.
        callback: ``callback(i, x_i, φ_i)``, called for i = 0, 1, ..., iters. ``x_i`` is CG's
            working buffer: read it or clone it, never modify it.

    Returns:
        A :class:`CGResult`. Reasons: ``"negative curvature"`` when pᵀAp <= 0 (x is the iterate
        before that direction); ``"non-finite"`` when a product, α, β, rᵀz or φ is NaN or
        infinite (x is the last finite iterate); ``"converged"`` when rᵀz == 0 exactly; else
        the reason of the rule that fired.

    Raises:
        ValueError: ``b`` not a finite floating-point 1-D tensor; ``x0``, a dense ``A`` or a
            tensor ``M`` of the wrong shape, dtype or device; a non-square dense ``A``;
            ``max_iters`` not an integer >= 0; a product of the wrong shape or dtype.
        TypeError: an argument of the wrong kind (e.g. ``stop``, ``store``, ``callback``).
    """
    b = flat_vector(b, "b", floating=True, finite=True)
    x0 = None if x0 is None else flat_vector(x0, "x0", b.numel(), b.dtype, b.device,
                                             whose=" (like b)", finite=True)
    op = as_operator(A, b)
    precond = as_preconditioner(M, b)
    rule = capped(stop, max_iters)
    grid = as_store_policy(store).grid(max_iters)
    if callback is not None and not callable(callback):
        raise InputTypeError(
            f"callback: expected a callable or None, got {type(callback).__name__}")

    cg = _PCG(op, b, precond)
    start = op.products
    cg.start(x0)
    i, phi, iterates = 0, [cg.phi], []
    if callback is not None:
        callback(0, cg.x, cg.phi)
    reason = _reason_at(cg, rule, 0, phi)
    while reason is None:
        reason = cg.step()
        if reason is not None:
            break
        i += 1
        phi.append(cg.phi)
        if i in grid:
            iterates.append((i, cg.x.clone()))
        if callback is not None:
            callback(i, cg.x, cg.phi)
        reason = _reason_at(cg, rule, i, phi) or cg.next_direction()
    if iterates and iterates[-1][0] == i:
        iterates.pop()
    iterates.append((i, cg.x))
    phis = torch.tensor(phi, dtype=torch.float64)
    return CGResult(cg.x, iterates, phis, i, reason, op.products - start)
