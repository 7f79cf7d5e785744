"""The extreme eigenvalues of ``G + λI`` and a plot of a :class:`Comparison`.

How CG and NAG fare on a quadratic depends on its eigenvalue spread (Sutskever et al. 2013 §5;
Theorem 2.1: NAG damps direction i like CM with momentum μ(1 − λ_i ε)); :func:`spectrum` gives the
k largest and k smallest eigenvalues and the condition-number estimate they imply.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from hessfree import _checks
from hessfree.linops import single_threaded_blas
from hessfree.quadratic.comparison import Comparison
from hessfree.quadratic.core import Quadratic

__all__ = ["Spectrum", "spectrum", "plot"]


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


def _eigsh(op: Any, **kw: Any) -> np.ndarray:
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    try:
        with single_threaded_blas():
            return eigsh(op, which="LA", **kw)
    except ArpackNoConvergence as err:
        raise RuntimeError(
            f"spectrum: Lanczos did not converge ({err}); pass a larger tol, ncv or maxiter"
        ) from err


def spectrum(q: Quadratic, k: int = 6, tol: float = 1e-8, ncv: int | None = None,
             maxiter: int | None = None) -> Spectrum:
    """The k largest and k smallest eigenvalues of ``G + λI`` (Sutskever et al. 2013 §5).

    Lanczos (``scipy.sparse.linalg.eigsh`` on :meth:`Quadratic.to_scipy`) when
    ``2k + 1 < dim``, else ``numpy.linalg.eigvalsh`` of the dense matrix. The largest come from
    ``which="LA"``; the smallest as ``λ_max − (the largest of λ_max·I − A)``, so both ends are
    accurate to about ``tol·λ_max``. The small end of a GGN is a tight cluster at λ (plus weight
    decay; a GGN of rank < dim has λ as a multiple eigenvalue), which Lanczos resolves slowly:
    it costs far more products than the large end. scipy runs with one OpenBLAS thread
    (:func:`hessfree.linops.single_threaded_blas`).

    Args:
        q: the quadratic.
        k: how many at each end (>= 1).
        tol: ``eigsh``'s relative tolerance (here relative to λ_max at both ends).
        ncv: Lanczos vectors kept (memory: ``ncv·dim`` float64); None: ``min(dim, max(2k+1,
            40))``.
        maxiter: ``eigsh``'s limit on restarts (None: its default).

    Raises:
        RuntimeError: Lanczos did not converge (raise ``tol``, ``ncv`` or ``maxiter``).
    """
    _checks.integer(k, "k", minimum=1)
    start = q.products
    if 2 * k + 1 < q.dim:
        from scipy.sparse.linalg import LinearOperator

        op = q.to_scipy()
        v0 = np.random.default_rng(0).standard_normal(q.dim)
        kw = {"k": k, "tol": tol, "maxiter": maxiter, "v0": v0, "return_eigenvectors": False,
              "ncv": min(q.dim, max(2 * k + 1, 40)) if ncv is None else ncv}
        top = np.sort(_eigsh(op, **kw))[::-1]
        # the small end as the top of top[0]·I − A: same Krylov space, but ARPACK's relative
        # criterion is then relative to λ_max, not to the small eigenvalues themselves
        shift = float(top[0])
        def flip(x: np.ndarray) -> np.ndarray:
            x = x.reshape(-1)
            return shift * x - op.matvec(x)

        flipped = LinearOperator(op.shape, matvec=flip, dtype=np.float64)
        bottom = np.sort(shift - _eigsh(flipped, **kw))
        method = "lanczos"
    else:
        ev = np.linalg.eigvalsh(q.dense().double().cpu().numpy())
        top, bottom, method = ev[::-1][:k].copy(), ev[:k].copy(), "dense"
    cond = float(top[0] / bottom[0]) if bottom[0] > 0 else math.inf
    return Spectrum(top, bottom, cond, q.products - start, method)


def plot(comparison: Comparison, path: str | os.PathLike, title: str | None = None) -> str:
    """Draw q − q* (log scale; q when q* is unknown) against products; write ``path`` atomically.

    Uses matplotlib's Agg canvas directly (imported here; the global backend is left alone).
    The format follows the suffix of ``path`` (png, pdf, svg, ...). Returns the path written.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - matplotlib is a dev/plot extra
        raise ImportError("plot: needs matplotlib (pip install 'hessfree[plot]')") from err
    path = os.fspath(path)
    fmt = os.path.splitext(path)[1].lstrip(".") or "png"
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    k = np.arange(1, comparison.iters + 1)
    star = comparison.q_star
    floor = 1e-16 * max(abs(star), 1e-300) if star is not None else 0.0
    for m, values in comparison.values.items():
        y = values[1:] if star is None else np.maximum(values[1:] - star, floor)  # rounding
        ax.plot(k, y, label=m)
    ax.set_xscale("log")
    if star is not None:
        ax.set_yscale("log")
    ax.set_xlabel("curvature products")
    ax.set_ylabel("q(x) − q*" if star is not None else "q(x)")
    ax.set_title(title or f"CG vs first-order methods, dim {comparison.dim}")
    ax.legend()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=f".{fmt}")
    os.close(fd)
    try:
        fig.savefig(tmp, format=fmt)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
