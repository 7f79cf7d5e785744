"""Two toy problems from the project's seed blog posts.

``quartic``: the 4-variable problem of the post on update rules: minimise
f(x) = (x1² + x2² + x3² + x4²)² from x = 0.5 · ones with learning rate 0.01 (minimum 0 at x = 0;
the Hessian vanishes there, so the curvature fades as x approaches it).
``sequence_reversal``: the task of the post on recursive autoencoders: read a random permutation
of 1..8 and output it reversed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hessfree import _checks
from hessfree.errors import InputError


@dataclass(frozen=True)
class Quartic:
    """f(x) = (sum_i x_i²)², started from ``start_value · ones(dim)``.

    Attributes:
        dim: number of variables (4 in the post).
        start_value: every coordinate of the start point (0.5 in the post).
        lr: the learning rate used in the post (0.01).
    """

    dim: int = 4
    start_value: float = 0.5
    lr: float = 0.01

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The objective (differentiable; x of shape ``(..., dim)``, result of shape ``(...)``)."""
        if x.shape[-1] != self.dim:
            raise InputError(f"Quartic: x must have last dimension {self.dim}, got "
                             f"{tuple(x.shape)}")
        return (x * x).sum(-1) ** 2

    def start(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A fresh start point ``start_value · ones(dim)`` (a new tensor on every call)."""
        return torch.full((self.dim,), self.start_value, dtype=dtype)


quartic = Quartic()
"""The instance of the post: 4 variables, start 0.5 · ones, learning rate 0.01."""


def sequence_reversal(
    n: int, seed: int = 0, length: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random permutations of 1..length and their reversals.

    Symbol k (1..length) is encoded as one-hot channel / class ``k - 1``.

    Args:
        n: number of sequences.
        seed: random seed (deterministic output).
        length: permutation length (8 in the post).

    Returns:
        ``(inputs, targets)``: inputs float32 one-hot ``(n, length, length)`` of the
        permutation; targets int64 class indices ``(n, length)`` of the reversed permutation,
        i.e. ``targets[:, t] = inputs[:, length - 1 - t].argmax(-1)``.

    Raises:
        ValueError: if ``n`` or ``length`` is not a positive int.
    """
    for name, value in (("n", n), ("length", length)):
        _checks.integer(value, f"sequence_reversal: {name}", minimum=1)
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.tile(np.arange(length), (int(n), 1)), axis=1)
    inputs = np.eye(length, dtype=np.float32)[perms]
    return torch.from_numpy(inputs), torch.from_numpy(perms[:, ::-1].copy())
