"""MINRES for symmetric indefinite systems, many columns at once ([PS75]).

CG needs ``A + σI`` positive definite; the Hessian of a network is indefinite, and so is its
damped version while ``σ < −λ_min``. MINRES minimises ``‖b − (A + σ)x‖`` over the same Krylov
space with the Lanczos process and Givens rotations, and works for any symmetric matrix
(nonsingular for a unique answer). This is the unpreconditioned algorithm as written in
[PS75 §7] (scipy's ``minres`` follows it line for line), with every scalar a vector over the
columns, so each iteration is one block product of the columns still running.

The stop is a residual test, ``‖r‖ <= max(rtol ‖b‖, atol)`` on MINRES's own residual estimate
``φ̄_k`` (exact in exact arithmetic; the caller certifies it against ``b − (A + σ)x``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from hessfree import _checks
from hessfree.cg.block import BlockResult, MatMat, _check_block, _shift_vector, _start
from hessfree.cg.operators import block_operator
from hessfree.cg.stopping import CONVERGED, MAX_ITERATIONS, NON_FINITE, RESIDUAL_TOLERANCE

__all__ = ["solve_minres"]


class _Lanczos:
    """The MINRES state of every column (scalars as vectors over the columns)."""

    def __init__(self, B: Tensor, X0: Tensor, S0: Tensor) -> None:
        c = B.shape[1]
        self.X = X0
        self.r1 = S0.clone()
        self.r2 = S0.clone()
        self.y = S0.clone()
        self.w = torch.zeros_like(B)
        self.w2 = torch.zeros_like(B)
        self.beta = torch.linalg.vector_norm(S0, dim=0)
        self.oldb = B.new_zeros(c)
        self.dbar = B.new_zeros(c)
        self.epsln = B.new_zeros(c)
        self.phibar = self.beta.clone()
        self.cs = -B.new_ones(c)
        self.sn = B.new_zeros(c)
        self.first = torch.ones(c, dtype=torch.bool, device=B.device)

    def step(self, idx: Tensor, AV: Tensor, V: Tensor) -> None:
        """One Lanczos step and its Givens rotation for the columns ``idx`` (``AV = A V``)."""
        beta, oldb = self.beta[idx], self.oldb[idx]
        y = AV - torch.where(self.first[idx], torch.zeros_like(beta), beta / oldb) * self.r1[:, idx]
        alfa = (V * y).sum(0)
        y = y - (alfa / beta) * self.r2[:, idx]
        self.r1[:, idx] = self.r2[:, idx]
        self.r2[:, idx] = y
        self.y[:, idx] = y
        new_beta = torch.linalg.vector_norm(y, dim=0)
        oldeps = self.epsln[idx]
        cs, sn, dbar = self.cs[idx], self.sn[idx], self.dbar[idx]
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        self.epsln[idx] = sn * new_beta
        self.dbar[idx] = -cs * new_beta
        gamma = torch.clamp(torch.hypot(gbar, new_beta), min=torch.finfo(y.dtype).tiny)
        cs, sn = gbar / gamma, new_beta / gamma
        phi = cs * self.phibar[idx]
        self.phibar[idx] = sn * self.phibar[idx]
        w1, w2 = self.w2[:, idx], self.w[:, idx]
        w = (V - oldeps * w1 - delta * w2) / gamma
        self.w2[:, idx], self.w[:, idx] = w2, w
        self.X[:, idx] += phi * w
        self.cs[idx], self.sn[idx] = cs, sn
        self.oldb[idx], self.beta[idx] = beta, new_beta
        self.first[idx] = False


def solve_minres(matmat: MatMat, B: Tensor, shifts: Sequence[float] | float | None = None,
                 X0: Tensor | None = None, rtol: float = 1e-8, atol: float = 0.0,
                 max_iters: int = 250) -> BlockResult:
    """MINRES on ``(A + σ_j I) x_j = b_j`` for every column ``j`` of ``B`` ([PS75]).

    Args:
        matmat: ``V -> A V`` for ``V`` of shape ``(n, c')`` (``A`` symmetric, maybe indefinite).
        B: right-hand sides, ``(n, c)``.
        shifts: σ_j, one for all columns or one per column (None: 0).
        X0: hot starts ``(n, c)`` (one block product); None: zero.
        rtol: stop a column when its residual ``<= max(rtol ‖b‖, atol)``.
        atol: the absolute part of that test.
        max_iters: the iteration cap of each column.

    Returns:
        A :class:`~hessfree.cg.block.BlockResult` (``phi`` is empty: MINRES does not minimise
        the quadratic; ``residual_norms`` are MINRES's estimates).
    """
    B = _check_block(B)
    n, c = B.shape
    sig = _shift_vector(shifts, c, B)
    rtol = _checks.number(rtol, "rtol", 0.0)
    atol = _checks.number(atol, "atol", 0.0)
    max_iters = _checks.integer(max_iters, "max_iters", 0)
    A = block_operator(matmat, B)
    start = A.products
    X, S = _start(A, B, sig, X0)
    st = _Lanczos(B, X, S)
    limit = [max(rtol * b, atol) for b in torch.linalg.vector_norm(B, dim=0).tolist()]
    iters, reasons = [0] * c, [""] * c
    active = _still(st.phibar.tolist(), st.beta.tolist(), limit, iters, reasons, range(c),
                    max_iters)
    while active:
        idx = torch.tensor(active, device=B.device)
        V = st.y[:, idx] / st.beta[idx]
        AV = A.apply_block(V) + sig[idx] * V
        st.step(idx, AV, V)
        for j in active:
            iters[j] += 1
        active = _still(st.phibar.tolist(), st.beta.tolist(), limit, iters, reasons, active,
                        max_iters)
    res = torch.tensor(st.phibar.tolist(), dtype=torch.float64)
    return BlockResult(st.X, iters, reasons, res, [torch.zeros(0, dtype=torch.float64)] * c,
                       A.products - start)


def _still(phibar: list[float], beta: list[float], limit: list[float], iters: list[int],
           reasons: list[str], columns: object, max_iters: int) -> list[int]:
    """The columns that go on; the others get their reason."""
    out = []
    for j in columns:  # type: ignore[attr-defined]
        if not (math.isfinite(phibar[j]) and math.isfinite(beta[j])):
            reasons[j] = NON_FINITE
        elif phibar[j] <= limit[j]:
            reasons[j] = RESIDUAL_TOLERANCE
        elif beta[j] == 0:
            reasons[j] = CONVERGED  # an invariant Krylov space: the residual is exact
        elif iters[j] >= max_iters:
            reasons[j] = MAX_ITERATIONS
        else:
            out.append(j)
    return out
