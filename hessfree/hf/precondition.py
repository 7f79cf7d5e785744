"""Diagonal preconditioner from the empirical Fisher ([M10 §4.7]).

[HFDemo]: ``precon = (grad2 + lambda + weightcost).^(3/4)`` with ``grad2`` the mean over training
cases of the squared per-case gradients; CG uses its inverse.
``hessfree.EmpiricalFisher.diagonal()`` already holds ``grad2 + weightcost`` (exact, by the
``(δ²)ᵀ(x²)`` identity or vmap). Martens notes that for RNNs "this style of diagonal
preconditioner doesn't seem to be beneficial".
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["inverse_preconditioner"]


def inverse_preconditioner(diag: Tensor, lam: float, exponent: float = 0.75) -> Tensor:
    """``(diag + λ)^(−exponent)``, the ``M`` that :func:`hessfree.cg.solve` multiplies by.

    Entries of ``diag + λ`` that are exactly zero (a parameter no case moves, with λ = 0 and no
    weight decay) are raised to the smallest positive normal number so ``M`` stays finite.
    """
    base = (diag.detach() + lam).clamp_min_(torch.finfo(diag.dtype).tiny)
    return base.pow_(-exponent)
