"""Drawing an update's batches from a data set, reproducibly: one place for every runner.

:class:`BatchDrawer` turns a :class:`~hessfree.hf.phases.BatchSpec` (or a minibatch size, for
the momentum methods) into the cases of update ``t``:

* ``"all"``: the whole training set, as a list of memory chunks (values do not depend on them);
* ``"chunk"``: piece ``t mod parts`` of a fixed partition of the training set (a permutation
  seeded by the run's seed, cut into ``parts`` pieces of ``n // parts`` cases; HFDemo's
  ``numchunks``, [HFDemo]);
* ``"minibatch"``: the next minibatch of an :class:`EpochSampler` (a seeded permutation per
  epoch, consumed in order);
* for generated data (a :class:`~hessfree.runs.dataset.Dataset` with ``fresh``), every kind is
  a fresh draw of ``size`` (or ``n_train``) cases whose seed depends on the run's seed, ``t`` and
  the batch's role (gradient 0, curvature 1, held-out ρ 2, backtracking 3, step-size search 4), so
  any step can be re-drawn exactly; a draw larger than the memory chunk comes as a list of
  chunks;
* ``"piece"``: piece ``index`` of ``parts`` equal, consecutive pieces of the cases of this
  update's gradient batch (drawn first), so it is a subset of the gradient batch and disjoint
  from the other pieces ([HF-RNN]'s curvature, backtracking and line-search batches).

The samplers' states are part of :meth:`BatchDrawer.state_dict`, so a resumed run draws the same
batches as an uninterrupted one. Under data parallelism every rank draws the same global batch
(the same seeds) and keeps its shard (:func:`hessfree.distributed.shard`), so the streams are
global state: a run resumes with any number of processes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hessfree import _checks
from hessfree.batches import Batch, count, split, take, take_cases
from hessfree.distributed import shard
from hessfree.errors import InputError
from hessfree.hf.phases import ROLES, BatchSpec
from hessfree.runs.dataset import Dataset

__all__ = ["BatchDrawer", "EpochSampler", "BACKTRACK", "CURVATURE", "GRADIENT", "RHO", "SEARCH"]

#: roles of a batch (they seed fresh draws and samplers differently): the codes HessianFree
#: draws with (``hessfree.hf.phases.ROLES``; RHO: the held-out minibatch ρ is measured on,
#: ``HessianFree.step``'s ``heldout_batch``)
GRADIENT, CURVATURE, RHO, BACKTRACK, SEARCH = (ROLES.index(r) for r in (
    "gradient", "curvature", "heldout", "backtrack", "search"))


class EpochSampler:
    """Minibatch indices from a seeded random permutation per epoch (state saved exactly)."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        _checks.integer(batch, "batch_size", minimum=1)
        self.n, self.batch = n, min(batch, n)
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.gen)
        self.pos = 0

    def next(self) -> Tensor:
        """The next minibatch's indices (a new permutation when the epoch is used up)."""
        if self.pos + self.batch > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return idx

    def state_dict(self) -> dict:
        """Generator state, permutation and position."""
        return {"gen": self.gen.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.gen.set_state(s["gen"])
        self.perm, self.pos = s["perm"].clone(), int(s["pos"])


def step_seed(seed: int, step: int, role: int) -> int:
    """The seed of a fresh draw for update ``step`` and ``role``."""
    return (seed * 1_000_003 + step * 7919 + role) % (2**31 - 1)


class BatchDrawer:
    """The batches of a run (module docstring).

    Args:
        data: the run's data set (on its device).
        seed: the run's seed.
        chunk: cases per memory chunk of whole-set batches.
        rank / world_size: this process's shard of every batch (1 process: the whole batch).
    """

    def __init__(self, data: Dataset, seed: int, chunk: int, rank: int = 0,
                 world_size: int = 1) -> None:
        self.data, self.seed, self.chunk = data, seed, chunk
        self.rank, self.world_size = rank, world_size
        self.n = data.n_train
        self._samplers: dict[str, EpochSampler] = {}
        self._partitions: dict[int, list[Tensor]] = {}
        self._whole: list[Batch] | None = None
        #: (update, unsharded cases) of the last gradient batch drawn, for "piece" batches
        self._gradient: tuple[int, Any] | None = None
        self._gradient_idx: tuple[int, Tensor] | None = None

    def _device(self) -> torch.device:
        x = self.data.train[0]
        return (x if isinstance(x, Tensor) else x[0]).device

    def _sampler(self, role: int, size: int) -> EpochSampler:
        if size > self.n:
            raise InputError(f"batch_size: a minibatch of {size} cases is larger than the "
                             f"training set ({self.n} cases)")
        key = f"{role}:{size}"
        if key not in self._samplers:
            self._samplers[key] = EpochSampler(self.n, size, self.seed + role)
        return self._samplers[key]

    def _partition(self, parts: int) -> list[Tensor]:
        """The case indices of the ``parts`` pieces.

        The cases are taken when a piece is used (a copy of the whole set, inputs and targets,
        kept for the run was 0.37 GiB on MNIST).
        """
        if parts not in self._partitions:
            if parts > self.n:
                raise InputError(f"parts: cannot cut {self.n} training cases into {parts} chunks")
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed))
            perm = perm.to(self._device())
            size = self.n // parts
            self._partitions[parts] = [perm[i * size:(i + 1) * size] for i in range(parts)]
        return self._partitions[parts]

    def minibatch(self, t: int, size: int, role: int = GRADIENT) -> Batch:
        """A minibatch of ``size`` cases for update ``t`` (fresh data: a new draw)."""
        return self._shard(self._cases(t, size, role))

    def _cases(self, t: int, size: int, role: int) -> Batch:
        """The unsharded cases of a minibatch (fresh data: a new draw).

        A held-out minibatch (ρ, backtracking, search) is drawn from the cases outside this
        update's gradient minibatch, so the two are disjoint (the ρ batch of the
        momentum-like HF: "a batch the step was not fitted to").
        """
        if self.data.fresh is not None:
            return self.data.fresh(size, step_seed(self.seed, t, role))
        sampler = self._sampler(role, size)
        drawn = self._gradient_idx
        if role in (RHO, BACKTRACK, SEARCH) and drawn is not None and drawn[0] == t:
            outside = torch.ones(self.n, dtype=torch.bool)
            outside[drawn[1].cpu()] = False
            pool = outside.nonzero().squeeze(1)
            if size > len(pool):
                raise InputError(f"batch_size: a held-out minibatch of {size} cases does not "
                                 f"fit beside the gradient's {self.n - len(pool)} of {self.n}")
            idx = pool[torch.randperm(len(pool), generator=sampler.gen)[:size]]
        else:
            idx = sampler.next()
        idx = idx.to(self._device())
        if role == GRADIENT:
            self._gradient_idx = (t, idx)
        return take_cases(self.data.train, idx)

    def _shard(self, batch: Any) -> Any:
        return shard(batch, self.rank, self.world_size) if self.world_size > 1 else batch

    def draw(self, spec: BatchSpec, t: int, role: int) -> Any:
        """The batch ``spec`` describes for update ``t`` (None for ``"same"``).

        A ``"piece"`` needs this update's gradient batch drawn first.
        """
        if spec.kind == "same":
            return None
        if spec.kind == "piece":
            return self._shard(self._piece(spec, t))
        if self.data.fresh is not None:
            batch = self._cases(t, spec.size or self.n, role)
        elif spec.kind == "minibatch":
            batch = self._cases(t, spec.cases(self.n), role)
        elif spec.kind == "chunk":
            pieces = self._partition(int(spec.parts))
            batch = take_cases(self.data.train, pieces[t % len(pieces)])
        else:
            if role == GRADIENT:
                self._gradient = (t, self.data.train)
            if self._whole is None:
                self._whole = self._shard(split(self.data.train, self.chunk))
            return self._whole
        if role == GRADIENT:
            self._gradient = (t, batch)
        batch = self._shard(batch)
        big = self.data.fresh is not None and count(batch[0]) > self.chunk
        return split(batch, self.chunk) if big else batch

    def _piece(self, spec: BatchSpec, t: int) -> Batch:
        if self._gradient is None or self._gradient[0] != t:
            raise InputError(f"piece: a piece of the gradient batch of update {t} needs that "
                             "batch drawn first")
        whole = self._gradient[1]
        size = count(whole[0]) // int(spec.parts)
        if size < 1:
            raise InputError(f"parts: cannot cut a gradient batch of {count(whole[0])} cases "
                             f"into {spec.parts} pieces")
        lo = int(spec.index) * size
        return take(whole, slice(lo, lo + size))

    def state_dict(self) -> dict[str, Any]:
        """The samplers' states (partitions are rebuilt from the seed)."""
        return {k: s.state_dict() for k, s in self._samplers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        for key, s in state.items():
            role, size = (int(v) for v in key.split(":"))
            self._sampler(role, size).load_state_dict(s)
