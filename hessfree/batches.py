"""Batches: ``(inputs, targets)`` pairs, lists of them, iterables of them, and case slicing.

A *batch* is a tuple ``(inputs, targets)``. ``inputs`` is a tensor, a (nested) tuple/list of
tensors (the model is then called as ``model(*inputs)``) or a dict of tensors (called as
``model(**inputs)``); ``targets`` is a tensor or ``(values, mask)`` (see
:mod:`hessfree.curvature.losses`). Every tensor has the number of cases as its first dimension.
A *dict batch* (Hugging Face's form, ``{"input_ids": ..., "attention_mask": ..., "labels": ...}``)
is the same thing: its ``"labels"`` are the targets and every other key is an input.

A batch may also come in chunks, accumulated exactly with the weights of the joined batch
(``mean``: each case weighs ``1/N_total``), so a batch larger than memory works:

* a *list* of batches (held in memory);
* any other *iterable* of batches — a ``torch.utils.data.DataLoader`` or your own re-iterable
  object — read chunk by chunk, never materialised: every pass over the batch (an objective, a
  gradient, an operator's set-up, each product of an uncached operator) iterates it again.
  Passes must see the same cases: a DataLoader with a random sampler (``shuffle=True``) is
  refused, and a one-shot iterator (a generator) too, since a second pass would see nothing —
  wrap it in :func:`materialize` to read it once into memory. :class:`DictBatches` adapts
  loaders of dict batches (``{"input_ids": ..., "labels": ...}``).

This module is the one place that walks such structures: :func:`take` (index the cases),
:func:`to` (device and dtype), :func:`split` (cut into chunks), :func:`iter_chunks` (check and
stream), :func:`as_chunks` (check and list), :class:`Chunks` (check once, read as often as
needed).

Validation happens once, at the public boundary: a public entry point turns what it was given
into :class:`Chunks` (``Chunks.of(batch, "grad_batch")``) and passes that inward, so an inner
pass (an objective evaluation of a line search, an operator's set-up) does not check the same
tensors again. Only a streamed batch is checked on every pass, since every pass reads new tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hessfree._checks import all_finite
from hessfree.errors import InputError, InputTypeError

__all__ = ["Batch", "Chunk", "Chunks", "DictBatches", "TARGETS_KEY", "as_chunks", "as_pair",
           "count", "is_source", "iter_chunks", "leaves", "materialize", "split", "take",
           "take_cases", "to", "unsqueeze"]

Batch = tuple[Any, Any]

#: the key of a dict batch that holds the targets (Hugging Face's name); the rest are inputs
TARGETS_KEY = "labels"


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
    if isinstance(x, Mapping):
        return {k: take(v, idx) for k, v in x.items()}
    return x


def unsqueeze(x: Any) -> Any:
    """Add a leading case dimension of size one (one case seen as a batch), nested."""
    if isinstance(x, Tensor):
        return x.unsqueeze(0)
    if isinstance(x, Mapping):
        return {k: unsqueeze(v) for k, v in x.items()}
    return type(x)(unsqueeze(item) for item in x)


def to(x: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move tensors (nested) to ``device``; floating ones to ``dtype``."""
    if isinstance(x, Tensor):
        return x.to(device, dtype) if x.is_floating_point() else x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(to(item, device, dtype) for item in x)
    if isinstance(x, Mapping):
        return {k: to(v, device, dtype) for k, v in x.items()}
    return x


def count(x: Any) -> int:
    """Number of cases of a tensor or nested inputs (the first tensor's first dimension)."""
    first = leaves(x)
    if not first or first[0].dim() == 0:
        raise InputError("batch: expected tensors with the number of cases as first dimension")
    return int(first[0].shape[0])


def as_pair(batch: Any, where: str = "batch") -> Any:
    """A dict batch as ``(inputs, targets)``: the ``"labels"`` are the targets, the rest inputs.

    Anything else is returned as it is.
    """
    if not isinstance(batch, Mapping):
        return batch
    if TARGETS_KEY not in batch:
        raise InputError(f"{where}: the dict batch has no {TARGETS_KEY!r} (the targets); it has "
                         f"{sorted(batch)}; add them, or wrap the batches in "
                         "hessfree.batches.DictBatches(..., targets=KEY)")
    return {k: v for k, v in batch.items() if k != TARGETS_KEY}, batch[TARGETS_KEY]


def take_cases(batch: Any, idx: Tensor | slice) -> Any:
    """The cases ``idx`` of one batch (a pair or a dict batch), in the same form.

    Targets that are the inputs themselves (an autoencoder's) stay one copy.
    """
    if isinstance(batch, Mapping):
        return take(batch, idx)
    x, y = batch
    xi = take(x, idx)
    return xi, xi if y is x else take(y, idx)


def split(batch: Any, size: int) -> list[Any]:
    """``batch`` (a pair or a dict batch) cut along the cases into chunks of at most ``size``."""
    n = count(batch if isinstance(batch, Mapping) else batch[0])
    return [take_cases(batch, slice(i, i + size)) for i in range(0, n, size)]


def _check_chunk(batch: Any, where: str) -> Chunk:
    batch = as_pair(batch, where)
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
    if not all_finite(*in_t, *tg_t):  # one host sync for the chunk
        raise InputError(f"{where}: the batch contains non-finite values (NaN or Inf)")
    if n == 0:
        raise InputError(f"{where}: the batch is empty")
    return Chunk(inputs, targets, int(n))


def is_source(batch: Any) -> bool:
    """Whether ``batch`` is an iterable of batches (not a tuple, list, tensor or dict)."""
    return (not isinstance(batch, (tuple, list, Tensor, Mapping, str, bytes))
            and isinstance(batch, Iterable))


def _check_source(batch: Any, where: str) -> None:
    if iter(batch) is batch:
        raise InputTypeError(
            f"{where}: a one-shot iterator (a generator) can be read only once, and a batch is "
            "read once per pass; pass a list, a DataLoader, a re-iterable object, or "
            "hessfree.batches.materialize(...) of it")
    sampler = getattr(batch, "sampler", None)
    if sampler is not None:
        from torch.utils.data import RandomSampler

        if isinstance(sampler, RandomSampler) or (
                getattr(batch, "batch_sampler", None) is not None
                and isinstance(getattr(batch.batch_sampler, "sampler", None), RandomSampler)):
            raise InputError(
                f"{where}: a DataLoader with shuffle=True gives other minibatches on every "
                "pass, so the objective, gradient and curvature products of one step would not "
                "agree; use shuffle=False (a full pass does not depend on the order) or draw "
                "one shuffled minibatch per step yourself")


def iter_chunks(batch: Any, where: str = "batch") -> Iterator[Chunk]:
    """Checked chunks of a batch, a list of batches or an iterable of batches (one pass)."""
    if isinstance(batch, list):
        if not batch:
            raise InputError(f"{where}: the list of minibatches is empty")
        for i, b in enumerate(batch):
            yield _check_chunk(b, f"{where}[{i}]")
        return
    if is_source(batch):
        _check_source(batch, where)
        empty = True
        for i, b in enumerate(batch):
            empty = False
            if isinstance(b, list) and len(b) == 2:  # DataLoader's default collate gives lists
                b = tuple(b)
            yield _check_chunk(b, f"{where}[{i}]")
        if empty:
            raise InputError(f"{where}: the iterable gave no minibatch")
        return
    yield _check_chunk(batch, where)


def materialize(batch: Any) -> list[Batch]:
    """Read a batch given in any form (a generator too) into a list of ``(inputs, targets)``.

    Use it to fix a curvature batch drawn from a shuffled loader once, or to read a generator.
    """
    if is_source(batch):
        out = [tuple(b) if isinstance(b, list) and len(b) == 2 else b for b in batch]
        return [(c.inputs, c.targets) for c in as_chunks(out)]
    return [(c.inputs, c.targets) for c in as_chunks(batch)]


class DictBatches:
    """Dict batches (``{"input_ids": ..., "labels": ...}``) seen as ``(inputs, targets)``.

    A re-iterable view of a loader or list of such dicts.

    Args:
        source: the loader (or list) of dict batches.
        inputs: the keys passed to the model, as keywords (``model(**inputs)``), or one key
            passed positionally.
        targets: the key of the targets (or ``(values_key, mask_key)``).
    """

    def __init__(self, source: Iterable[Mapping[str, Any]], inputs: str | Sequence[str],
                 targets: str | tuple[str, str] = "labels") -> None:
        if not isinstance(source, Iterable) or isinstance(source, (str, bytes, Mapping)):
            raise InputTypeError(f"source: expected a loader or list of dict batches, got "
                                 f"{type(source).__name__}")
        self.source = source
        self.inputs = inputs
        self.targets = targets
        if isinstance(source, Iterator):
            raise InputTypeError("source: a one-shot iterator can be read only once; pass a "
                                 "DataLoader or a list")
        self.sampler = getattr(source, "sampler", None)
        self.batch_sampler = getattr(source, "batch_sampler", None)

    def _pick(self, d: Mapping[str, Any], key: Any) -> Any:
        keys = [key] if isinstance(key, str) else list(key)
        missing = [k for k in keys if k not in d]
        if missing:
            raise InputError(f"batch: the dict batch has no key(s) {missing}; it has "
                             f"{sorted(d)}")
        return d[key] if isinstance(key, str) else tuple(d[k] for k in key)

    def __iter__(self) -> Iterator[Batch]:
        for d in self.source:
            if not isinstance(d, Mapping):
                raise InputTypeError(f"batch: expected dict batches, got {type(d).__name__}")
            if isinstance(self.inputs, str):
                x = self._pick(d, self.inputs)
            else:
                self._pick(d, tuple(self.inputs))  # names missing keys
                x = {k: d[k] for k in self.inputs}
            yield x, self._pick(d, self.targets)

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]


def as_chunks(batch: Any, where: str = "batch") -> list[Chunk]:
    """Checked chunks of a batch, a list of batches or an iterable of batches, as a list."""
    return list(iter_chunks(batch, where))


class Chunks:
    """A batch checked once: its chunks, read as often as needed (see the module docstring).

    A tuple or a list of batches is checked when the object is made and held as
    :class:`Chunk` s; an iterable of batches (a ``DataLoader``) is checked to be re-iterable and
    unshuffled, then read — and each chunk checked — on every pass. Iterating gives the chunks of
    one pass. Build it with :meth:`of`, which passes a ``Chunks`` through unchanged.

    Attributes:
        held: the checked chunks (None for a streamed batch).
        source: the iterable of batches (None for a held one).
        where: the argument's name, for messages.
    """

    __slots__ = ("held", "source", "where")

    def __init__(self, batch: Any, where: str = "batch") -> None:
        self.where = where
        if is_source(batch):
            _check_source(batch, where)
            self.held: tuple[Chunk, ...] | None = None
            self.source: Any = batch
        else:
            self.held = tuple(iter_chunks(batch, where))
            self.source = None

    @classmethod
    def of(cls, batch: Any, where: str = "batch") -> Chunks:
        """``batch`` checked (a ``Chunks`` is returned as it is)."""
        return batch if isinstance(batch, Chunks) else cls(batch, where)

    @property
    def streamed(self) -> bool:
        """Whether the batch is read anew on every pass (an iterable of batches)."""
        return self.held is None

    def __iter__(self) -> Iterator[Chunk]:
        if self.held is not None:
            return iter(self.held)
        return iter_chunks(self.source, self.where)

    def first(self) -> Chunk:
        """The first chunk (a streamed batch reads one minibatch for it)."""
        return self.held[0] if self.held is not None else next(iter(self))

    def __repr__(self) -> str:
        if self.held is None:
            return f"Chunks({self.where}: streamed from {type(self.source).__name__})"
        cases = sum(c.n for c in self.held)
        return f"Chunks({self.where}: {len(self.held)} chunk(s), {cases} cases)"
