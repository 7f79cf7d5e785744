"""CG against NAG, CM and gradient descent on one quadratic ([S13 §5], [S13 Fig. 5]).

Every method starts from ``x_0 = 0`` and spends one curvature product per iteration, so iteration
``k`` costs ``k`` products for all of them:

* CG: :func:`hessfree.cg.solve` on ``(G + λI) x = −g``, no preconditioner, ``stop=[]`` (only the
  cap); its φ_k is ``q(x_k) − q(0) = q(x_k)`` ([S13 Fig. 5]: CG and NAG start from zero).
* NAG, CM ([S13 Eq. 1-4]) and GD with ε = 1/L, L the largest eigenvalue of
  ``G + λI`` by Lanczos (its products are reported apart, not charged to the methods).
  On a quadratic the gradient is ``(G + λI)x + g``; the recursions keep ``A x`` and ``A v`` up to
  date (``A v_{t+1} = μ A v_t − ε A ∇``), so the one product per iteration is ``A ∇`` and
  ``q(x_k) = gᵀx_k + ½ x_kᵀ(A x_k)`` is known at every k without extra products. With
  ``check=True`` one more product per method recomputes ``q`` at the last iterate directly (the
  drift is in ``Comparison.final_check``; those products are reported apart too).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hessfree import _checks, cg
from hessfree.curvature.spectral import eigsh
from hessfree.errors import InputError, InputTypeError
from hessfree.quadratic.core import Quadratic, value_from
from hessfree.schedules import SutskeverSchedule

__all__ = ["COMPARISON_FORMAT", "MU_GRID", "METHODS", "Comparison", "compare",
           "largest_eigenvalue"]

#: the fixed momentum constants tried when ``mu`` is a grid (best final q wins)
MU_GRID = (0.5, 0.9, 0.95, 0.99, 0.995, 0.999)
METHODS = ("cg", "nag", "cm", "gd")
#: the ``format`` of :meth:`Comparison.to_dict` records (``hessfree compare --save``, the demo)
COMPARISON_FORMAT = "hessfree.comparison/1"
#: the k at which :meth:`Comparison.table` reports by default (Fig. 5 truncates CG at 120)
TABLE_KS = (10, 20, 50, 120, 250)


def largest_eigenvalue(q: Quadratic, tol: float = 1e-6) -> tuple[float, int]:
    """L = λ_max(G + λI) by Lanczos; returns (L, products).

    :func:`hessfree.curvature.eigsh` (k=1, "LA", relative tolerance ``tol``), in torch on the
    quadratic's dtype and device, from a start vector seeded with 0; the dense matrix when
    ``dim < 3``.
    """
    start = q.products
    if q.dim < 3:
        lam = float(torch.linalg.eigvalsh(q.dense().double())[-1])
    else:
        values = eigsh(q, 1, "LA", tol=tol, return_eigenvectors=False,
                       generator=torch.Generator().manual_seed(0))
        assert isinstance(values, torch.Tensor)
        lam = float(values[0])
    return lam, q.products - start


def _momentum(q: Quadratic, iters: int, eps: float, mu: Callable[[int], float],
              nesterov: bool) -> tuple[np.ndarray, torch.Tensor]:
    """NAG (Eq. 3-4) or CM (Eq. 1-2) from zero; q(x_k) for k = 0..iters and x_iters."""
    g = q.g
    x, v, ax, av = (torch.zeros_like(g) for _ in range(4))
    values = np.full(iters + 1, np.nan)
    values[0] = 0.0
    for t in range(iters):
        m = float(mu(t))
        grad = ax + g  # ∇q(x_t)
        if nesterov:
            grad.add_(av, alpha=m)  # ∇q(x_t + μ v_t)
        u = q.matvec(grad)
        v.mul_(m).add_(grad, alpha=-eps)
        av.mul_(m).add_(u, alpha=-eps)
        x.add_(v)
        ax.add_(av)
        values[t + 1] = value_from(g, x, ax)
        if not math.isfinite(values[t + 1]):
            break  # diverged: the rest stays NaN and costs nothing
    return values, x


def _cg(q: Quadratic, iters: int) -> tuple[np.ndarray, torch.Tensor, str, int]:
    phis: list[float] = []
    res = cg.solve(q, q.b, stop=[], max_iters=iters, store=False,
                   callback=lambda i, x, phi: phis.append(phi))
    values = np.full(iters + 1, phis[-1])  # CG stopped early (converged): x stays
    values[: len(phis)] = phis
    return values, res.x, res.reason, res.products


def _mu_candidates(mu: object, mu_max: float) -> tuple[list[Callable[[int], float]], list[object]]:
    if isinstance(mu, str):
        if mu != "schedule":
            raise InputError(f"mu: expected a number, a grid of numbers or 'schedule', got {mu!r}")
        # Eq. 5 over the 250 products of an HF-sized comparison is the constant 0.5 (a warm-up
        # meant for training runs of many thousands of steps): a fixed μ from a grid is the
        # fairer opponent for CG
        return [SutskeverSchedule(mu_max)], [f"schedule(mu_max={mu_max:g})"]
    grid = [mu] if isinstance(mu, (int, float)) else list(mu)  # type: ignore[call-overload]
    if not grid:
        raise InputError("mu: expected at least one value")
    for m in grid:
        _checks.number(m, "mu", 0.0, 1.0, strict_max=True)
    return [(lambda t, m=float(m): m) for m in grid], [float(m) for m in grid]


@dataclass
class Comparison:
    """What :func:`compare` found. ``values[m][k]`` is q(x_k) of method m after k products.

    Attributes:
        values: q(x_k), k = 0..iters, per method (float64 arrays; NaN after a divergence).
        products: curvature products each method used (``iters``; CG fewer if it converged).
        iters: the product budget per method.
        dim: the quadratic's dimension.
        L: the largest eigenvalue of G + λI used for ε = 1/L; L_products: its Lanczos cost.
        eps: the learning rate 1/L of NAG, CM and GD.
        mu: the μ each momentum method used (a float, or the schedule's description).
        mu_search: final q for every μ tried, per momentum method (grid mode).
        tuning_products: products of the grid runs that were not kept.
        q_star: the minimum of q when known (dense quadratics or given), else None.
        cg_reason: why CG stopped.
        final_check: per method, |q tracked − q direct| / max(|q direct|, tiny) at the last iterate.
        check_products: products spent on ``final_check``.
        seconds: wall time of each reported run.
    """

    values: dict[str, np.ndarray]
    products: dict[str, int]
    iters: int
    dim: int
    L: float = math.nan
    L_products: int = 0
    eps: float = math.nan
    mu: dict[str, object] = field(default_factory=dict)
    mu_search: dict[str, dict[float, float]] = field(default_factory=dict)
    tuning_products: int = 0
    q_star: float | None = None
    cg_reason: str | None = None
    final_check: dict[str, float] = field(default_factory=dict)
    check_products: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods compared, in order."""
        return tuple(self.values)

    def default_ks(self) -> tuple[int, ...]:
        """:data:`TABLE_KS` up to ``iters``, and ``iters`` itself."""
        ks = [k for k in TABLE_KS if k < self.iters]
        return tuple(ks + [self.iters])

    def table(self, ks: Sequence[int] | None = None) -> list[tuple[str, list[float]]]:
        """Rows ``(method, [q(x_k) for k in ks])``; ``ks`` default :meth:`default_ks`."""
        ks = self.default_ks() if ks is None else tuple(ks)
        for k in ks:
            _checks.integer(k, "ks", 0, self.iters)
        return [(m, [float(v[k]) for k in ks]) for m, v in self.values.items()]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly record of the comparison (NaN and infinities as ``None``)."""
        def num(x: Any) -> Any:
            return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None

        return {"format": COMPARISON_FORMAT, "iters": self.iters, "dim": self.dim,
                "L": num(self.L), "L_products": self.L_products, "eps": num(self.eps),
                "q_star": num(self.q_star) if self.q_star is not None else None,
                "cg_reason": self.cg_reason, "products": dict(self.products),
                "mu": {m: (v if isinstance(v, str) else float(v)) for m, v in self.mu.items()},
                "tuning_products": self.tuning_products,
                "final_check": {m: num(v) for m, v in self.final_check.items()},
                "check_products": self.check_products,
                "values": {m: [num(float(x)) for x in v] for m, v in self.values.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Comparison:
        """Inverse of :meth:`to_dict` (the seconds and the μ search are not kept)."""
        if not isinstance(d, dict) or d.get("format") != COMPARISON_FORMAT:
            raise InputError(f"comparison: expected a record of format {COMPARISON_FORMAT!r}")

        def num(x: Any) -> float:
            return math.nan if x is None else float(x)

        return cls(values={m: np.array([num(x) for x in v]) for m, v in d["values"].items()},
                   products={m: int(k) for m, k in d["products"].items()},
                   iters=int(d["iters"]), dim=int(d["dim"]), L=num(d["L"]),
                   L_products=int(d["L_products"]), eps=num(d["eps"]), mu=dict(d["mu"]),
                   tuning_products=int(d["tuning_products"]),
                   q_star=None if d["q_star"] is None else float(d["q_star"]),
                   cg_reason=d["cg_reason"],
                   final_check={m: num(v) for m, v in d["final_check"].items()},
                   check_products=int(d["check_products"]))

    def format(self, ks: Sequence[int] | None = None) -> str:
        """A plain-text report: set-up, then q (and q − q* when known) at each k."""
        ks = self.default_ks() if ks is None else tuple(ks)
        lines = [f"quadratic of dimension {self.dim}; {self.iters} products per method"]
        if math.isfinite(self.L):
            lines.append(f"L = {self.L:.6g} (Lanczos, {self.L_products} products, not charged); "
                         f"eps = 1/L = {self.eps:.6g}")
        for m, mu in self.mu.items():
            lines.append(f"mu[{m}] = {mu}")
        if self.tuning_products:
            lines.append(f"mu grid: {self.tuning_products} further products (not charged)")
        if self.cg_reason is not None:
            lines.append(f"CG stopped: {self.cg_reason} after {self.products['cg']} products")
        star = self.q_star
        head = "method |" + "|".join(f"{'k=' + str(k):>14s}" for k in ks)
        lines += [f"q(x_k){'  (q - q* below)' if star is not None else ''}", head]
        for m, row in self.table(ks):
            lines.append(f"{m:6s} |" + "|".join(f"{v:14.7g}" for v in row))
            if star is not None:
                lines.append(f"{'':6s} |" + "|".join(f"{v - star:14.3e}" for v in row))
        return "\n".join(lines)


def _check_args(q: Quadratic, iters: int, methods: Sequence[str]) -> tuple[str, ...]:
    if not isinstance(q, Quadratic):
        raise InputTypeError(f"q: expected a hessfree.Quadratic, got {type(q).__name__}")
    _checks.integer(iters, "iters", minimum=1)
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if not methods or bad or len(set(methods)) != len(methods):
        raise InputError(f"methods: expected distinct names from {METHODS}, got {methods!r}")
    return methods


def _first_order(q: Quadratic, method: str, iters: int, eps: float, mu: object, mu_max: float,
                 out: Comparison) -> torch.Tensor:
    """Run NAG, CM or GD (GD: μ = 0); record the best μ of the grid; return x_iters."""
    if method == "gd":
        fns, labels = [lambda t: 0.0], [0.0]
    else:
        fns, labels = _mu_candidates(mu, mu_max)
    best: tuple[float, np.ndarray, torch.Tensor, object, float] | None = None
    search = {}
    for fn, label in zip(fns, labels):
        t0 = time.perf_counter()
        values, x = _momentum(q, iters, eps, fn, nesterov=method == "nag")
        secs = time.perf_counter() - t0
        final = values[-1] if math.isfinite(values[-1]) else math.inf
        search[label] = float(values[-1])
        if best is None or final < best[0]:
            best = (final, values, x, label, secs)
    assert best is not None
    _, out.values[method], x, label, out.seconds[method] = best
    out.products[method] = iters
    if method != "gd":
        out.mu[method] = label
        if len(fns) > 1:
            out.mu_search[method] = search  # type: ignore[assignment]
            out.tuning_products += (len(fns) - 1) * iters
    return x


@dataclass(frozen=True)
class Minimum:
    """What :func:`minimum` found: q at CG's last iterate, its cost, whether it converged."""

    value: float
    products: int
    converged: bool
    reason: str


def minimum(q: Quadratic, rtol: float = 1e-6, max_iters: int = 2000) -> Minimum:
    """q* of a quadratic too large to factorise: CG run to a small residual.

    The reference a comparison's gap ``q(x_k) − q*`` needs ([S13 Fig. 5] plots it): the best
    value a method reached within the comparison's budget is not the minimum. CG stops at
    ``‖r‖ <= rtol·‖b‖``; then ``q(x) − q* = ½ rᵀ(G + λI)⁻¹r <= ½‖r‖²/λ_min``.

    Args:
        q: the quadratic.
        rtol: residual tolerance relative to ``‖b‖`` (float32 quadratics reach about 1e-6).
        max_iters: products at most.
    """
    if not isinstance(q, Quadratic):
        raise InputTypeError(f"q: expected a Quadratic, got {type(q).__name__}")
    _checks.number(rtol, "rtol", 0.0, strict_min=True)
    _checks.integer(max_iters, "max_iters", 1)
    phis: list[float] = []
    res = cg.solve(q, q.b, stop=[cg.ResidualTolerance(rtol)], max_iters=max_iters, store=False,
                   callback=lambda i, x, phi: phis.append(phi))
    value = min(phis) if phis else 0.0
    return Minimum(value, res.products, res.reason == cg.RESIDUAL_TOLERANCE, res.reason)


def compare(q: Quadratic, iters: int = 250, methods: Sequence[str] = METHODS,
            mu: float | Sequence[float] | str = MU_GRID, mu_max: float = 0.999,
            L: float | None = None, lanczos_tol: float = 1e-6, q_star: float | None = None,
            check: bool = True) -> Comparison:
    """Compare CG, NAG, CM and GD on ``q`` at equal products ([S13 §5], [S13 Fig. 5]).

    Args:
        q: the quadratic (e.g. one saved in the middle of an HF run on CURVES).
        iters: curvature products per method (Fig. 5 truncates CG at 120; HF uses <= 250).
        methods: any of ``"cg"``, ``"nag"``, ``"cm"``, ``"gd"``.
        mu: NAG/CM momentum: a constant, a grid of constants (each method keeps the one with the
            best final q; default :data:`MU_GRID`), or ``"schedule"`` for Eq. 5
            (:class:`~hessfree.schedules.SutskeverSchedule`: the constant 0.5 below 250
            iterations).
        mu_max: cap of the schedule.
        L: the largest eigenvalue of G + λI if known; None: Lanczos, reported in ``L_products``.
        lanczos_tol: relative tolerance of the Lanczos estimate.
        q_star: the minimum of q if known; None: computed for dense quadratics.
        check: recompute q at each method's last iterate with one product (reported apart).

    Returns:
        A :class:`Comparison`.
    """
    methods = _check_args(q, iters, methods)
    out = Comparison(values={}, products={}, iters=iters, dim=q.dim)
    if any(m != "cg" for m in methods):
        if L is None:
            out.L, out.L_products = largest_eigenvalue(q, lanczos_tol)
        else:
            out.L = float(L)
        if not (math.isfinite(out.L) and out.L > 0):
            raise InputError(f"L: expected a finite largest eigenvalue > 0, got {out.L!r}")
        out.eps = 1.0 / out.L
    finals: dict[str, torch.Tensor] = {}
    for m in methods:
        if m == "cg":
            t0 = time.perf_counter()
            out.values[m], finals[m], out.cg_reason, out.products[m] = _cg(q, iters)
            out.seconds[m] = time.perf_counter() - t0
        else:
            finals[m] = _first_order(q, m, iters, out.eps, mu, mu_max, out)
    if check:
        start = q.products
        for m, x in finals.items():
            direct = q.value(x)
            out.final_check[m] = float(abs(out.values[m][-1] - direct) / max(abs(direct), 1e-300))
        out.check_products = q.products - start
    if q_star is None and q.is_dense:
        A, b = q.dense().double(), q.b.double()
        q_star = -0.5 * float(torch.dot(b, torch.linalg.solve(A, b)))
    out.q_star = q_star
    return out
