"""Quadratic models of HF steps: build, save/load (HDF5), compare CG with NAG, spectrum.

``q(p) = gᵀp + ½ pᵀ(G + λI)p`` (Martens 2010 §3); :class:`Quadratic` holds one, :func:`compare`
runs CG, NAG, CM and GD on it at equal products (Sutskever et al. 2013 §5, supplementary Fig. 5),
:func:`spectrum` gives its extreme eigenvalues and :func:`plot` draws a comparison.

Example:
    >>> import torch
    >>> from hessfree.quadratic import Quadratic, compare
    >>> A = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    >>> q = Quadratic.from_dense(A, b=torch.ones(3, dtype=torch.float64))  # q = -b.p + p.A p/2
    >>> c = compare(q, iters=3, methods=("cg",))
    >>> c.table(ks=[3])[0][0], abs(c.table(ks=[3])[0][1][0] - c.q_star) < 1e-12
    ('cg', True)
"""

from hessfree.quadratic.comparison import (
    METHODS,
    MU_GRID,
    Comparison,
    Minimum,
    compare,
    largest_eigenvalue,
    minimum,
)
from hessfree.quadratic.core import Quadratic, load, save
from hessfree.quadratic.eigen import Spectrum, plot, spectrum
from hessfree.quadratic.io import SCHEMA_VERSION

__all__ = [
    "METHODS",
    "MU_GRID",
    "SCHEMA_VERSION",
    "Comparison",
    "Minimum",
    "Quadratic",
    "Spectrum",
    "compare",
    "largest_eigenvalue",
    "load",
    "minimum",
    "plot",
    "save",
    "spectrum",
]
