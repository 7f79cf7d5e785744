"""One accumulator for every sum over the cases of a batch: chunks, ranks, weight, weight decay.

Every quantity of an empirical risk — the objective, its gradient, the set-up and the products of
a curvature operator, the empirical-Fisher diagonal, the fused gradient and diagonal — is a sum
of per-case terms times a weight (``1/N`` for a ``mean`` loss), plus a weight-decay term. It is
computed here, and only here, in one sequence:

1. the per-chunk function runs on each checked chunk (:class:`~hessfree.batches.Chunks`) with a
   ``scale``: the weight when it is known before the pass (the chunks are in memory and there is
   no process group), else 1;
2. the chunks' results are summed (in chunk order);
3. with a process group, the sums and the local count travel in **one** all-reduce of **one**
   flat buffer (:class:`~hessfree.distributed.Reducer`);
4. a deferred weight (``loss.scale_for(count)``, count over all chunks and ranks) is applied;
5. the weight-decay term of each sum is added, once.

The count comes from the loss: ``loss.count(targets)`` of each chunk (default: its cases). A
loss that averages over something else — the tokens that count in a sequence loss with a mask
or an ``ignore_index`` (:class:`~hessfree.curvature.sequence_loss.TokenCrossEntropy`) — returns
that number per chunk, and the mean is then over it, across chunks and ranks, exactly as for the
joined batch; ``loss.scale_for(count)`` turns the count into the weight. The cases are counted
beside it (``Sums.cases``: the unit of the optimizers' gradient-equivalents). Every new sum over
cases (a GGN diagonal, per-module statistics, a solve's right-hand side) is one more per-chunk
function given to :meth:`Accumulator.sums` (or :meth:`~Accumulator.fold` for sums accumulated
in place), with a :class:`Term` per result saying how weight decay enters it; it then inherits
chunking, streaming, data parallelism and the ``1/N`` of the joined batch.

Values (``VALUE`` terms) are summed as float64 tensors on the device and read once at the end:
one host sync per pass, however many chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hessfree.batches import Chunk, Chunks
from hessfree.distributed import Reducer

__all__ = ["DIAGONAL", "GRADIENT", "PLAIN", "SQUARES", "VALUE", "Accumulator", "Sums", "Term"]

Part = Tensor | float


@dataclass(frozen=True)
class Term:
    """How one summed quantity takes the weight and the weight decay ``wd``.

    Attributes:
        decay: ``"value"`` (``+ wd/2 · ||θ||²``), ``"gradient"`` (``+ wd · θ``), ``"diagonal"``
            (``+ wd``) or None (nothing: a statistic that is not a derivative of the objective).
        squared: the per-chunk function applied the scale twice (squares of scaled per-case
            terms); when the weight is known before the pass the sum is divided by it once.
    """

    decay: str | None
    squared: bool = False


#: the objective's value: per-chunk 0-d tensors; returned as a Python float
VALUE = Term("value")
#: a gradient, flat
GRADIENT = Term("gradient")
#: a diagonal of the objective's curvature, flat
DIAGONAL = Term("diagonal")
#: a diagonal built from squares of scaled per-case terms (see ``Term.squared``)
SQUARES = Term("diagonal", squared=True)
#: a sum with no weight-decay term
PLAIN = Term(None)


@dataclass(frozen=True)
class Sums:
    """What :class:`Accumulator` returns.

    Attributes:
        parts: the reduced, weighted sums, one per :class:`Term` in the order given (a ``VALUE``
            as a Python float, every other as a tensor), weight decay included.
        count: what the loss counts (``loss.count``: cases by default; the tokens that count
            for a token loss) over every chunk and every rank.
        weight: ``loss.scale_for(count)``, the weight of each counted term.
        deferred: whether the chunks were summed with scale 1 and weighted after the pass (a
            process group or a streamed batch); else the per-chunk function was given the weight.
        cases: the cases over every chunk and every rank.
    """

    parts: tuple[Part, ...]
    count: int
    weight: float
    deferred: bool
    cases: int

    @property
    def scale(self) -> float:
        """The scale the per-chunk function was given (the weight, or 1 when deferred)."""
        return 1.0 if self.deferred else self.weight

    @property
    def weight_after(self) -> float | None:
        """The weight that sums of terms built with :attr:`scale` still need (None: none)."""
        return self.weight if self.deferred else None


class Accumulator:
    """Sums over the cases of checked chunks (module docstring): one pass, one all-reduce.

    Args:
        loss: the loss (its ``count(targets)`` and ``scale_for(count)``).
        reducer: the process group's :class:`~hessfree.distributed.Reducer`, or None.
        weight_decay: the L2 coefficient ``wd``.
    """

    def __init__(self, loss: Any, reducer: Reducer | None = None, weight_decay: float = 0.0,
                 ) -> None:
        self.loss, self.reducer, self.weight_decay = loss, reducer, weight_decay

    def deferred(self, chunks: Chunks) -> bool:
        """Whether the weight is known only after a pass: a process group or a streamed batch."""
        return self.reducer is not None or chunks.streamed

    def sums(self, chunks: Chunks, per_chunk: Callable[[Chunk, float], Sequence[Part]],
             terms: Sequence[Term], theta: Tensor | None = None, deferred: bool | None = None,
             copy: bool = False) -> Sums:
        """Sum ``per_chunk(chunk, scale)`` over the chunks and ranks, weight it, add weight decay.

        Args:
            chunks: the checked batch.
            per_chunk: one result per term for a chunk: 0-d tensors for ``VALUE`` terms, tensors
                for the others, every one multiplied by ``scale`` (each per-case term once; twice
                for ``squared`` terms).
            terms: how each result takes the weight decay.
            theta: the flat parameters (needed when ``weight_decay`` and a term has a decay).
            deferred: True to weight after the pass whatever the batch (a per-chunk function that
                ignores ``scale``); None: :meth:`deferred`.
            copy: the first chunk's tensors live on elsewhere (e.g. in a cache), so the sums
                start from copies; False: they are summed into in place.
        """
        def step(chunk: Chunk, scale: float, totals: list[Part] | None) -> list[Part]:
            parts = per_chunk(chunk, scale)
            if totals is None:
                return [p.clone() if copy and isinstance(p, Tensor) and t is not VALUE else p
                        for p, t in zip(parts, terms)]
            for t, p in zip(totals, parts):
                t.add_(p)
            return totals

        return self.fold(chunks, step, terms, theta, deferred)

    def fold(self, chunks: Chunks,
             step: Callable[[Chunk, float, list[Part] | None], list[Part]],
             terms: Sequence[Term], theta: Tensor | None = None, deferred: bool | None = None,
             ) -> Sums:
        """:meth:`sums` for results accumulated in place: ``step(chunk, scale, totals)``.

        ``step`` gets the running totals (None for the first chunk) and returns them updated —
        for sums that are cheaper added into a buffer than summed (e.g. ``addmm_`` of squares).
        """
        deferred = self.deferred(chunks) if deferred is None else deferred
        count = 0 if deferred else sum(self.loss.count(c.targets) for c in chunks)
        scale = 1.0 if deferred else self.loss.scale_for(count)
        totals: list[Part] | None = None
        values = [t is VALUE for t in terms]
        cases, counted = 0, 0
        for chunk in chunks:
            parts = step(chunk, scale, totals)
            totals = [_as_value(p) if v and totals is None else p for p, v in zip(parts, values)]
            cases += chunk.n
            counted += self.loss.count(chunk.targets) if deferred else 0
        assert totals is not None  # a Chunks holds at least one chunk
        return self._finish(totals, terms, cases, counted if deferred else count, scale,
                            deferred, theta)

    def count(self, chunks: Chunks, per_chunk: Callable[[Chunk], int] | None = None) -> int:
        """``Σ per_chunk(chunk)`` (default: the loss's count) over the chunks and ranks."""
        n = sum(per_chunk(c) if per_chunk else self.loss.count(c.targets) for c in chunks)
        if self.reducer is None:
            return n
        return int(round(float(self.reducer.sum_(torch.tensor([float(n)],
                                                              dtype=torch.float64))[0])))

    def product(self, terms: Iterable[Tensor], v: Tensor, weight_after: float | None) -> Tensor:
        """A curvature product: ``Σ terms`` over chunks and ranks, the deferred weight, ``+ wd·v``.

        ``terms`` are the chunks' products (built with the operator's :attr:`Sums.scale`);
        ``weight_after`` is the set-up's :attr:`Sums.weight_after`. One all-reduce with a group.
        """
        out: Tensor | None = None
        for t in terms:
            out = t if out is None else out.add_(t)
        assert out is not None
        out = out.contiguous()  # one flat buffer for the all-reduce
        if self.reducer is not None:
            self.reducer.sum_(out)
        if weight_after is not None:
            out.mul_(weight_after)
        if self.weight_decay:
            out.add_(v, alpha=self.weight_decay)
        return out

    # -- the common tail -----------------------------------------------------------------------
    def _finish(self, totals: list[Part], terms: Sequence[Term], cases: int, count: int,
                scale: float, deferred: bool, theta: Tensor | None) -> Sums:
        if self.reducer is not None:
            totals, cases, count = self._all_reduce(totals, terms, cases, count)
        weight = self.loss.scale_for(count)
        out: list[Part] = []
        for p, t in zip(totals, terms):
            if deferred:
                p = p * weight if t is VALUE else p.mul_(weight)
            elif t.squared:
                p = p.div_(scale)
            out.append(self.decay(p, t, theta))
        read = [i for i, t in enumerate(terms) if t is VALUE]
        if read:  # one host sync for every value of the pass
            for i, x in zip(read, torch.stack([out[i] for i in read]).tolist()):
                out[i] = x
        return Sums(tuple(out), count, weight, deferred, cases)

    def _all_reduce(self, totals: list[Part], terms: Sequence[Term], cases: int, count: int,
                    ) -> tuple[list[Part], int, int]:
        """One all-reduce: the sums, the values, the cases and the count, in one flat buffer.

        The buffer has the dtype of the first sum that is not a value (float64 if there is
        none); values travel in it too.
        """
        order = [i for i, t in enumerate(terms) if t is not VALUE] + \
            [i for i, t in enumerate(terms) if t is VALUE]
        dtype = totals[order[0]].dtype if terms[order[0]] is not VALUE else torch.float64
        like = totals[order[0]].new_zeros(0, dtype=dtype)
        *summed, n, k = self.reducer.sum_parts(*[totals[i] for i in order], float(cases),
                                               float(count), like=like)
        out = list(totals)
        for i, p in zip(order, summed):
            out[i] = p.double() if terms[i] is VALUE else p
        n, k = torch.cat([n, k]).tolist()  # one host sync for both counts
        return out, int(round(n)), int(round(k))

    def decay(self, p: Tensor, term: Term, theta: Tensor | None = None) -> Tensor:
        """``p`` with the weight-decay term of ``term`` added (in place where it can be).

        Called by :meth:`sums` for every part; a caller that transforms a reduced sum first (the
        Gauss-Newton-Bartlett diagonal squares it) adds the term itself through this.
        """
        wd = self.weight_decay
        if not wd or term.decay is None:
            return p
        if term.decay == "diagonal":
            return p.add_(wd)
        assert theta is not None, "the flat parameters are needed for the weight-decay term"
        if term.decay == "value":
            return p + (0.5 * wd) * theta.square().sum().double()
        return p.add_(theta, alpha=wd)


def _as_value(p: Part) -> Tensor:
    """A per-chunk value as a float64 0-d tensor (summed in float64, as Python floats are)."""
    t = p if isinstance(p, Tensor) else torch.tensor(float(p), dtype=torch.float64)
    return torch.zeros((), dtype=torch.float64, device=t.device).add_(t.detach())
