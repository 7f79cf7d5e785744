"""Batches: ``(inputs, targets)`` pairs, lists of them (chunks), and slicing along the case axis.

A *batch* is a tuple ``(inputs, targets)``. ``inputs`` is a tensor or a (nested) tuple/list of
tensors (the model is then called as ``model(*inputs)``); ``targets`` is a tensor or
``(values, mask)`` (see :mod:`hessfree.curvature.losses`). Every tensor has the number of cases
as its first dimension. A *list* of batches is one batch given in chunks: losses, gradients and
curvature products are accumulated over the chunks with the weights of the joined batch
(``mean``: each case weighs ``1/N_total``), so a batch larger than memory works.

This module is the one place that walks such nested structures: :func:`take` (index the cases),
:func:`to` (device and dtype), :func:`split` (cut into chunks), :func:`as_chunks` (check and
normalise).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hessfree._checks import all_finite
from hessfree.errors import InputError, InputTypeError

__all__ = ["Batch", "Chunk", "as_chunks", "count", "leaves", "split", "take", "to", "unsqueeze"]

Batch = tuple[Any, Any]


@dataclass(frozen=True)
class Chunk:
    """One minibatch of a (possibly chunked) batch: inputs, targets and its number of cases."""

    inputs: Any
    targets: Any
    n: int


def leaves(x: Any) -> list[Tensor]:
    """Every tensor in a nested tuple/list/dict, in order."""
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in leaves(item)]
    if isinstance(x, Mapping):
        return [t for item in x.values() for t in leaves(item)]
    return []


def take(x: Any, idx: Tensor | slice) -> Any:
    """Index the case dimension of a tensor or of every tensor in a nested tuple/list."""
    if isinstance(x, Tensor):
        return x[idx]
    if isinstance(x, (tuple, list)):
        return type(x)(take(item, idx) for item in x)
    return x


def unsqueeze(x: Any) -> Any:
    """Add a leading case dimension of size one (one case seen as a batch), nested."""
    if isinstance(x, Tensor):
        return x.unsqueeze(0)
    return type(x)(unsqueeze(item) for item in x)


def to(x: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move tensors (nested) to ``device``; floating ones to ``dtype``."""
    if isinstance(x, Tensor):
        return x.to(device, dtype) if x.is_floating_point() else x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(to(item, device, dtype) for item in x)
    return x


def count(x: Any) -> int:
    """Number of cases of a tensor or nested inputs (the first tensor's first dimension)."""
    first = leaves(x)
    if not first or first[0].dim() == 0:
        raise InputError("batch: expected tensors with the number of cases as first dimension")
    return int(first[0].shape[0])


def split(batch: Batch, size: int) -> list[Batch]:
    """``batch`` cut along the cases into chunks of at most ``size`` (in order)."""
    x, y = batch
    n = count(x)
    return [(take(x, slice(i, i + size)), take(y, slice(i, i + size)))
            for i in range(0, n, size)]


def _check_chunk(batch: Any, where: str) -> Chunk:
    if not isinstance(batch, tuple) or len(batch) != 2:
        raise InputTypeError(
            f"{where}: expected a tuple (inputs, targets) or a list of such tuples, "
            f"got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, tuple) else "")
        )
    inputs, targets = batch
    in_t, tg_t = leaves(inputs), leaves(targets)
    if not in_t:
        raise InputTypeError(f"{where}: inputs must be a tensor or a tuple of tensors")
    if not tg_t:
        raise InputTypeError(f"{where}: targets must be a tensor or a (values, mask) pair")
    n = in_t[0].shape[0] if in_t[0].dim() else None
    for t in in_t + tg_t:
        if t.dim() == 0 or t.shape[0] != n:
            raise InputError(
                f"{where}: every input and target tensor needs the number of cases as its first "
                f"dimension ({n}); got shapes {[tuple(x.shape) for x in in_t + tg_t]}"
            )
        if t.is_floating_point() and not all_finite(t):
            raise InputError(f"{where}: the batch contains non-finite values (NaN or Inf)")
    if n == 0:
        raise InputError(f"{where}: the batch is empty")
    return Chunk(inputs, targets, int(n))


def as_chunks(batch: Any, where: str = "batch") -> list[Chunk]:
    """Normalise a batch or a list of minibatches into checked :class:`Chunk` s."""
    if isinstance(batch, list):
        if not batch:
            raise InputError(f"{where}: the list of minibatches is empty")
        return [_check_chunk(b, f"{where}[{i}]") for i, b in enumerate(batch)]
    return [_check_chunk(batch, where)]

