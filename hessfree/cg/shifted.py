"""Shifted CG: ``(A + σ_i I) x = b`` for several shifts σ_i from one Krylov basis ([Jeg96]).

CG on the seed system ``(A + σ_0 I) x = b`` (σ_0 the smallest shift, the slowest to converge)
builds residuals ``r_k`` that span the Krylov space of every shifted matrix, since
``K(A + σI, b)`` does not depend on σ. Started from zero, the residual of the shifted system
stays collinear with the seed's, ``r^σ_k = ζ^σ_k r_k``, and its CG iterates follow from the
seed's scalars by the recurrences of [Jeg96 §2] (also [Fro03 §2]), with ``δ = σ − σ_0``:

    ζ_{k+1} = ζ_k ζ_{k−1} α_{k−1} / (α_{k−1} ζ_{k−1} (1 + δ α_k) + α_k β_{k−1} (ζ_{k−1} − ζ_k))
    α^σ_k = α_k ζ_{k+1} / ζ_k,      β^σ_k = (ζ_{k+1} / ζ_k)² β_k
    x^σ_{k+1} = x^σ_k + α^σ_k p^σ_k,      p^σ_{k+1} = ζ_{k+1} r_{k+1} + β^σ_k p^σ_k

from ``ζ_0 = ζ_{−1} = 1``, ``α_{−1} = 1``, ``β_{−1} = 0``, ``p^σ_0 = b``. Each shifted system is
exactly CG on its own matrix (in exact arithmetic), so its stopping rule sees its own φ and
residual ``|ζ^σ_k| ‖r_k‖``; it is frozen when its rule fires while the seed runs on for the
others. The seed costs one product per iteration; the other shifts cost vector updates only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from hessfree import _checks
from hessfree.cg.block import BlockResult, MatMat, _check_block, _Columns, _stop
from hessfree.cg.operators import block_operator
from hessfree.cg.stopping import NEGATIVE_CURVATURE, NON_FINITE, StopSpec, capped
from hessfree.errors import InputError

__all__ = ["solve_shifted"]


class _Shifts:
    """The shifted systems' state: ``x`` and ``p`` per (right-hand side, shift), the ζ's."""

    def __init__(self, B: Tensor, delta: Tensor) -> None:
        k, m = B.shape[1], delta.numel()
        self.delta = delta
        self.X = B.new_zeros(B.shape[0], k, m)
        self.P = B.unsqueeze(2).repeat(1, 1, m)
        self.zeta = B.new_ones(k, m)
        self.zeta_prev = B.new_ones(k, m)
        self.alpha_prev = B.new_ones(k)
        self.beta_prev = B.new_zeros(k)

    def step(self, ja: Tensor, alpha: Tensor, beta: Tensor, R_new: Tensor, live: Tensor) -> None:
        """Advance the shifted systems of the seeds ``ja`` (``live``: which are still running)."""
        z, zp = self.zeta[ja], self.zeta_prev[ja]
        a, ap, bp = alpha[:, None], self.alpha_prev[ja][:, None], self.beta_prev[ja][:, None]
        z_next = z * zp * ap / (ap * zp * (1 + self.delta * a) + a * bp * (zp - z))
        ratio = z_next / z
        a_s, b_s = a * ratio, beta[:, None] * ratio.square()
        P = self.P[:, ja]
        self.X[:, ja] += torch.where(live, a_s * P, torch.zeros_like(P))
        new_p = z_next * R_new.unsqueeze(2) + b_s * P
        self.P[:, ja] = torch.where(live, new_p, P)
        self.zeta_prev[ja], self.zeta[ja] = z, z_next
        self.alpha_prev[ja], self.beta_prev[ja] = alpha, beta


def solve_shifted(matmat: MatMat, B: Tensor, shifts: Sequence[float], stop: StopSpec = None,
                  max_iters: int = 250) -> BlockResult:
    """CG on ``(A + σ_i I) x_j = b_j`` for every column ``b_j`` of ``B`` and every shift σ_i.

    Args:
        matmat: ``V -> A V`` for ``V`` of shape ``(n, c')``.
        B: right-hand sides, ``(n, k)``.
        shifts: the shifts σ_1..σ_m (the seed is the smallest; ``A + σ_min I`` must be positive
            definite for CG).
        stop: a rule, a list of rules or None for ``MartensProgress()``, asked per system.
        max_iters: the iteration cap (of the seed, hence of every system).

    Returns:
        A :class:`~hessfree.cg.block.BlockResult` with ``x`` of shape ``(n, k, m)``; systems are
        numbered ``j * m + i`` in ``iters``, ``reasons``, ``residual_norms`` and ``phi``.
    """
    B = _check_block(B)
    sig = [_checks.number(s, "shifts") for s in shifts]
    if not sig:
        raise InputError("shifts: expected at least one shift, got none")
    n, k = B.shape
    m = len(sig)
    s0 = min(sig)
    sh = _Shifts(B, torch.tensor([s - s0 for s in sig], dtype=B.dtype, device=B.device))
    R, P = B.clone(), B.clone()
    rr = (R * R).sum(0)
    b_norms = rr.sqrt().tolist()
    cols = _Columns(k * m, capped(stop, max_iters), [b_norms[q // m] for q in range(k * m)])
    live = torch.ones(k, m, dtype=torch.bool, device=B.device)
    rr_host = rr.tolist()
    for q in range(k * m):
        cols.record(q, 0.0, b_norms[q // m])
        live[q // m, q % m] = not _stop(cols, q, rr_host[q // m])
    A = block_operator(matmat, B)
    start = A.products
    while bool(live.any()):
        ja = live.any(1).nonzero().squeeze(1)
        AP = A.apply_block(P[:, ja].contiguous()) + s0 * P[:, ja]
        pap = (P[:, ja] * AP).sum(0)
        dead = _curvature_failures(cols, pap.tolist(), ja.tolist(), live, m)  # host sync 1
        if dead:
            keep = torch.tensor([p for p, j in enumerate(ja.tolist()) if j not in dead],
                                dtype=torch.long, device=B.device)
            ja, AP, pap = ja[keep], AP[:, keep], pap[keep]
            if not ja.numel():
                break
        alpha = rr[ja] / pap
        R_new = R[:, ja] - alpha * AP
        rr_new = (R_new * R_new).sum(0)
        beta = rr_new / rr[ja]
        sh.step(ja, alpha, beta, R_new, live[ja].unsqueeze(0))
        R[:, ja], rr[ja] = R_new, rr_new
        P[:, ja] = R_new + beta * P[:, ja]
        _record(cols, sh, R, B, rr, ja, live, m)  # host sync 2
    return cols.result(sh.X, A.products - start)


def _curvature_failures(cols: _Columns, pap: list[float], seeds: list[int], live: Tensor,
                        m: int) -> list[int]:
    """Seeds whose ``pᵀ(A + σ_0)p`` is not positive: their running systems stop with it."""
    dead = []
    for pos, j in enumerate(seeds):
        if math.isfinite(pap[pos]) and pap[pos] > 0:
            continue
        reason = NON_FINITE if not math.isfinite(pap[pos]) else NEGATIVE_CURVATURE
        for i in range(m):
            if bool(live[j, i]):
                cols.reasons[j * m + i] = reason
        live[j] = False
        dead.append(j)
    return dead


def _record(cols: _Columns, sh: _Shifts, R: Tensor, B: Tensor, rr: Tensor, ja: Tensor,
            live: Tensor, m: int) -> None:
    """φ and residual of every running system of the seeds ``ja``; freeze those that stop."""
    X = sh.X[:, ja]
    S = sh.zeta[ja].unsqueeze(0) * R[:, ja].unsqueeze(2)  # r^σ = ζ^σ r
    sx = (S * X).sum(0) + (B[:, ja].unsqueeze(2) * X).sum(0)
    res2 = sh.zeta[ja].square() * rr[ja][:, None]
    sx_h, res_h, live_h = sx.tolist(), res2.tolist(), live[ja].tolist()
    for pos, j in enumerate(ja.tolist()):
        for i in range(m):
            if not live_h[pos][i]:
                continue
            q = j * m + i
            cols.iters[q] += 1
            cols.record(q, 0.0 - 0.5 * sx_h[pos][i], math.sqrt(max(res_h[pos][i], 0.0)))
            if _stop(cols, q, res_h[pos][i]):
                live[j, i] = False
