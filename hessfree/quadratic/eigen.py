"""The extreme eigenvalues of ``G + λI`` and a plot of a :class:`Comparison`.

How CG and NAG fare on a quadratic depends on its eigenvalue spread ([S13 §5]; [S13 §2,
Theorem 2.1]: NAG damps direction i like CM with momentum μ(1 − λ_i ε)); :func:`spectrum` gives
the k largest and k smallest eigenvalues and the condition-number estimate they imply, by the
torch Lanczos of :func:`hessfree.curvature.eigsh`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hessfree import _checks
from hessfree._files import figure, label_axes, label_ends, save_figure
from hessfree.curvature.spectral import eigsh
from hessfree.quadratic.comparison import Comparison
from hessfree.quadratic.core import Quadratic

__all__ = ["STYLES", "Spectrum", "spectrum", "plot"]

#: line styles of the methods on a quadratic: NAG dashed and drawn on top, so that it is seen
#: where it runs under CM
STYLES: dict[str, dict[str, Any]] = {"cg": {"lw": 2.0}, "nag": {"ls": "--", "zorder": 3},
                                     "cm": {"ls": ":", "lw": 2.0}, "gd": {"ls": "-."}}


@dataclass(frozen=True)
class Spectrum:
    """Extreme eigenvalues of ``G + λI``.

    Attributes:
        largest: the k largest, in decreasing order.
        smallest: the k smallest, in increasing order.
        condition: ``largest[0] / smallest[0]`` (inf when the smallest is not positive).
        products: curvature products spent.
        method: ``"lanczos"`` (``eigsh``) or ``"dense"`` (``eigvalsh`` of the whole matrix).
    """

    largest: np.ndarray
    smallest: np.ndarray
    condition: float
    products: int
    method: str

    def format(self) -> str:
        """One line per end of the spectrum, and κ."""
        fmt = ", ".join
        return (f"largest:  {fmt(f'{v:.6g}' for v in self.largest)}\n"
                f"smallest: {fmt(f'{v:.6g}' for v in self.smallest)}\n"
                f"condition number ~ {self.condition:.6g} ({self.method}, "
                f"{self.products} products)")


class _Flipped:
    """``shift·I − A`` for a quadratic's ``A`` (products counted by the quadratic)."""

    def __init__(self, q: Quadratic, shift: float) -> None:
        self.q, self.shift = q, shift
        self.dim, self.dtype, self.device = q.dim, q.dtype, q.device

    def matvec(self, v: Tensor) -> Tensor:
        return self.q.matvec(v).mul_(-1).add_(v, alpha=self.shift)

    def matmat(self, V: Tensor) -> Tensor:
        return self.q.matmat(V).mul_(-1).add_(V, alpha=self.shift)


def _lanczos(op: Any, k: int, block: int | None, **kw: Any) -> np.ndarray:
    try:
        values = eigsh(op, k, "LA", block=block, return_eigenvectors=False, **kw)
    except RuntimeError as err:
        raise RuntimeError(
            f"spectrum: Lanczos did not converge ({err}); pass a larger tol, ncv or maxiter"
        ) from err
    assert isinstance(values, Tensor)
    return values.double().cpu().numpy()


def spectrum(q: Quadratic, k: int = 6, tol: float = 1e-8, ncv: int | None = None,
             maxiter: int | None = None) -> Spectrum:
    """The k largest and k smallest eigenvalues of ``G + λI`` ([S13 §5]).

    Lanczos (:func:`hessfree.curvature.eigsh`, in the quadratic's dtype and on its device)
    when ``2k + 1 < dim``, else ``torch.linalg.eigvalsh`` of the dense matrix. The largest come
    from ``which="LA"`` (single-vector Lanczos); the smallest as ``λ_max − (the largest of
    λ_max·I − A)``, so both ends are accurate to about ``tol·λ_max``. The small end of a GGN is
    a tight cluster at λ (plus weight decay; a GGN of rank < dim has λ as a multiple
    eigenvalue): it is found by block Lanczos with ``k`` start vectors, which returns up to
    ``k`` copies of a multiple eigenvalue, and it costs far more products than the large end.
    The start vectors come from seeded generators (the result is reproducible).

    Args:
        q: the quadratic.
        k: how many at each end (>= 1).
        tol: Lanczos' relative tolerance (here relative to λ_max at both ends; see
            :func:`~hessfree.curvature.eigsh`).
        ncv: Lanczos vectors kept (memory: ``ncv·dim`` numbers of the quadratic's dtype);
            None: ``min(dim, max(2k+1, 40))`` (at the small end at least ``3k``; there it is
            rounded down to a multiple of ``k``, the block size).
        maxiter: the limit on restarts (None: :func:`~hessfree.curvature.eigsh`'s default).

    Raises:
        RuntimeError: Lanczos did not converge (raise ``tol``, ``ncv`` or ``maxiter``).
    """
    _checks.integer(k, "k", minimum=1)
    start = q.products
    if 2 * k + 1 < q.dim:
        m = min(q.dim, max(2 * k + 1, 40)) if ncv is None else ncv
        kw = {"tol": tol, "maxiter": maxiter}
        top = np.sort(_lanczos(q, k, None, ncv=m, generator=torch.Generator().manual_seed(0),
                               **kw))[::-1]
        # the small end as the top of top[0]·I − A: the tolerance is then relative to λ_max,
        # not to the small eigenvalues themselves
        shift = float(top[0])
        m_small = max(m, min(q.dim, 3 * k)) if ncv is None else ncv
        m_small -= m_small % k
        flipped = _Flipped(q, shift)
        bottom = np.sort(shift - _lanczos(flipped, k, k, ncv=m_small,
                                          generator=torch.Generator().manual_seed(1), **kw))
        method = "lanczos"
    else:
        ev = torch.linalg.eigvalsh(q.dense().double()).cpu().numpy()
        top, bottom, method = ev[::-1][:k].copy(), ev[:k].copy(), "dense"
    cond = float(top[0] / bottom[0]) if bottom[0] > 0 else math.inf
    return Spectrum(top, bottom, cond, q.products - start, method)


def plot(comparison: Comparison, path: str | os.PathLike, title: str | None = None) -> str:
    """Draw q − q* (log scale; q when q* is unknown) against products; write ``path`` atomically.

    Uses matplotlib's Agg canvas directly (imported here; the global backend is left alone).
    The format follows the suffix of ``path`` (png, pdf, svg, ...). Returns the path written.
    """
    fig, (ax,) = figure(6, 4)
    k = np.arange(1, comparison.iters + 1)
    star = comparison.q_star
    floor = 1e-16 * max(abs(star), 1e-300) if star is not None else 0.0
    for m, values in comparison.values.items():
        y = values[1:] if star is None else np.maximum(values[1:] - star, floor)  # rounding
        ax.plot(k, y, label=m, **STYLES.get(m, {}))
    label_axes(ax, "curvature products", "q(x) − q*" if star is not None else "q(x)",
               title or f"CG vs first-order methods, dim {comparison.dim}", log_x=True,
               log_y=star is not None, grid=False)
    label_ends(ax)
    fig.tight_layout()  # the axis labels inside the image
    return str(save_figure(fig, path, name="path"))
