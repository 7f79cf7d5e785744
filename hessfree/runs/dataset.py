"""A run's data: training and test batches, and fresh draws for generated tasks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from hessfree import batches
from hessfree.batches import Batch

__all__ = ["Dataset"]


@dataclass
class Dataset:
    """Training and test data, as ``(inputs, targets)`` batches (targets may be ``(values, mask)``).

    Attributes:
        train: the training set (or, for generated tasks, a representative batch).
        test: the test set.
        fresh: for generated tasks (the RNN problems), ``(n, seed) -> batch`` drawing new
            sequences; the trainer then uses fresh data every step, as Sutskever's HF-RNN code.
    """

    train: Batch
    test: Batch
    fresh: Callable[[int, int], Batch] | None = None

    @property
    def n_train(self) -> int:
        """Number of training cases."""
        return batches.count(self.train[0])

    def to(self, device: torch.device, dtype: torch.dtype) -> Dataset:
        """The data on ``device`` with floating tensors in ``dtype``."""
        fresh = self.fresh
        if fresh is not None:
            base = fresh

            def fresh(n: int, seed: int) -> Batch:
                return batches.to(base(n, seed), device, dtype)

        return Dataset(batches.to(self.train, device, dtype),
                       batches.to(self.test, device, dtype), fresh)
