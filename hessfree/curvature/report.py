"""Per-module curvature reports: trace, top eigenvalues and diagonal statistics of each block.

:func:`report` splits an operator's parameters by module (or by parameter) and gives, for each
block ``A[S, S]``, its trace with a standard error, its largest eigenvalue(s) and statistics of
its diagonal — the numbers asked of curvature for quantisation, pruning and layer-wise analysis
([Yao20 §3] computes them per layer with separate Hutchinson runs).

Probe products are shared across blocks: the diagonal of the whole operator is computed once
(:func:`hessfree.curvature.diag`: the exact GGN diagonal, one pass serving every block; or
Hutchinson, whose probes ``z ⊙ A z`` restricted to a block are unbiased for that block's
diagonal, since ``E[z_S z_Tᵀ] = 0`` for ``S ≠ T``), and each block's trace and diagonal
statistics are read from it and from its per-sample sums. Only the eigenvalues need products
of each block, and those run on the block's own operator (:func:`hessfree.curvature.blocks.
restrict`), whose products cost what the block needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hessfree import _checks
from hessfree._files import figure, save_figure
from hessfree.curvature.blocks import module_groups, module_of, restrict
from hessfree.curvature.diagonals import DiagonalEstimate, diag
from hessfree.curvature.spectral import eigsh
from hessfree.errors import InputError, InputTypeError

__all__ = ["BlockStats", "CurvatureReport", "report"]

#: outputs per case up to which ``method="auto"`` takes the exact GGN diagonal
EXACT_MAX_OUTPUTS = 64
#: block size up to which the top eigenvalues come from the dense block
DENSE_BLOCK = 64


@dataclass(frozen=True)
class BlockStats:
    """One block's numbers (see :func:`report`)."""

    name: str
    params: int
    trace: float
    trace_stderr: float
    top: tuple[float, ...]
    diag_mean: float
    diag_mean_stderr: float
    diag_min: float
    diag_max: float


@dataclass(frozen=True)
class CurvatureReport:
    """What :func:`report` returns: one :class:`BlockStats` per block, and what it cost."""

    operator: str
    by: str
    method: str
    samples: int
    blocks: tuple[BlockStats, ...]
    diagonal: DiagonalEstimate
    products: int

    def table(self) -> str:
        """A markdown table, one row per block."""
        total = sum(b.trace for b in self.blocks)
        head = (f"{self.operator}, by {self.by}; diagonal: {self.method}"
                + (f" ({self.samples} samples)" if self.method != "exact" else "")
                + f"; {self.products} products")
        rows = [head, "", "| block | parameters | trace ± s.e. | share | top eigenvalue(s) | "
                "diagonal mean ± s.e. | diagonal min | diagonal max |",
                "|---|---|---|---|---|---|---|---|"]
        for b in self.blocks:
            share = b.trace / total if total else math.nan
            top = ", ".join(f"{v:.4g}" for v in b.top)
            rows.append(f"| {b.name} | {b.params} | {b.trace:.4g} ± {b.trace_stderr:.2g} | "
                        f"{share:.1%} | {top} | {b.diag_mean:.4g} ± {b.diag_mean_stderr:.2g} "
                        f"| {b.diag_min:.4g} | {b.diag_max:.4g} |")
        return "\n".join(rows)

    def figure(self, path: str | Path) -> Path:
        """Bars of each block's trace (with ±2 s.e.) and top eigenvalue, log scale."""
        names = [b.name for b in self.blocks]
        pos = range(len(names))
        fig, axes = figure(max(6.0, 0.9 * len(names) + 3), 3.6, panels=2)
        traces = [max(b.trace, 1e-300) for b in self.blocks]
        axes[0].bar(pos, traces, yerr=[2 * b.trace_stderr for b in self.blocks], capsize=3)
        axes[0].set_title("trace of the block (±2 s.e.)")
        axes[1].bar(pos, [max(b.top[0], 1e-300) if b.top else 0 for b in self.blocks],
                    color="tab:orange")
        axes[1].set_title("largest eigenvalue of the block")
        for ax in axes:
            ax.set_yscale("log")
            ax.set_xticks(list(pos))
            ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        fig.suptitle(f"{self.operator} by {self.by}")
        fig.tight_layout()
        return save_figure(fig, path)


def _outputs_per_case(op: Any) -> int:
    chunk = None if op.streamed else op.chunks[0]
    if chunk is None:
        return EXACT_MAX_OUTPUTS + 1
    with torch.no_grad():
        out = op.problem.forward(op.params, chunk.inputs)
    return out[0].numel()


def _method(base: Any, method: str) -> str:
    if method != "auto":
        return _checks.choice(method, "method", ("auto", "exact", "mc", "gnb", "hutchinson"))
    if base.kind in ("ggn", "fisher") and _outputs_per_case(base) <= EXACT_MAX_OUTPUTS:
        return "exact"
    return "hutchinson"


def _top(block: Any, k: int, tol: float | None, generator: Any) -> tuple[float, ...]:
    if block.dim <= max(DENSE_BLOCK, 3 * k):
        values = torch.linalg.eigvalsh(block.dense())
    else:
        values = eigsh(block, min(k, block.dim - 1), "LA", tol=tol, generator=generator,
                       return_eigenvectors=False)
    return tuple(float(v) for v in values.flip(0)[:k])


def report(op: Any, by: str = "module", *, top: int = 1, method: str = "auto",
           samples: int | None = None, generator: torch.Generator | None = None,
           tol: float | None = None) -> CurvatureReport:
    """Trace, top eigenvalue(s) and diagonal statistics of each module's block of ``op``.

    Args:
        op: a ``GGN``, ``Hessian``, ``EmpiricalFisher`` or a damped one.
        by: ``"module"`` (each module's own parameters) or ``"parameter"``.
        top: how many of each block's largest eigenvalues.
        method: the diagonal's method (:func:`hessfree.curvature.diag`); ``"auto"``: exact for
            a GGN or empirical Fisher with at most 64 outputs per case, else Hutchinson.
        samples: samples of a stochastic method.
        generator: a ``torch.Generator`` for probes and Lanczos starts.
        tol: Lanczos tolerance of the eigenvalues (see :func:`hessfree.curvature.eigsh`).

    Returns:
        A :class:`CurvatureReport` (``.table()``, ``.figure(path)``).
    """
    base = getattr(op, "base", op)
    if not (hasattr(base, "kind") and hasattr(base, "params")):
        raise InputTypeError(f"op: expected a GGN, Hessian, EmpiricalFisher or a damped one, "
                             f"got {type(op).__name__}")
    top = _checks.integer(top, "top", 1)
    groups = module_groups(base.params, by)
    method = _method(base, method)
    if method in ("exact", "mc", "gnb") and base.kind != "ggn" and \
            not (method == "exact" and base.kind == "fisher"):
        raise InputError(f"method: {method!r} does not apply to a {base.kind} operator; use "
                         "'hutchinson'")
    before = base.products
    target = base if method != "hutchinson" else op
    est = diag(target, method, samples=samples, generator=generator,
               groups=list(groups.values()))
    lam = getattr(op, "lam", 0.0) if target is base else 0.0
    traces, errs = est.group_traces()
    blocks, spent = [], 0
    for (name, sl), tr, se in zip(groups.items(), traces.tolist(), errs.tolist()):
        size = sl.stop - sl.start
        owner = name if name != "(root)" else ""
        choose = (lambda n, m=owner: module_of(n) == m) if by == "module" else \
            (lambda n, m=name: n == m)
        d = est.value[sl].double() + lam
        block = restrict(op, choose)
        eig = _top(block, top, tol, generator)
        spent += getattr(block, "base", block).products
        blocks.append(BlockStats(name, size, tr + lam * size, se, eig, float(d.mean()),
                                 se / size, float(d.min()), float(d.max())))
    kind = {"ggn": "GGN", "hessian": "Hessian", "fisher": "empirical Fisher"}[base.kind]
    name = kind if op is base else f"{kind} + {op.lam:g} I"
    return CurvatureReport(name, by, method, est.samples, tuple(blocks), est,
                           base.products - before + spent)
