"""Data parallelism over torch.distributed: one flat all-reduce per reduction, batch shards.

A :class:`hessfree.Problem` built with ``group=`` (a process group, or ``"world"`` for the default
one) makes every quantity that sums over cases span all ranks: each rank holds a shard of the
batch and sees the operator, the gradient and the objective of the *joined* batch. The weights of
a ``mean`` loss use the global number of cases, whatever the split (shards need not be equal).

How it stays exact and cheap ([docs/architecture.md], "Distributed"):

* every sum over cases is accumulated locally with the loss's *sum* weights, then reduced with
  **one** all-reduce of **one** flat buffer that also carries the local case count (and the
  objective value where there is one), then scaled by the global weight; a curvature product, a
  gradient, an evaluation and the empirical-Fisher diagonal each cost exactly one all-reduce;
* the result of an all-reduce is the same on every rank, so CG, the line search, ρ and the
  accept/reject decisions — replicated on every rank — take identical branches: nothing else is
  communicated inside CG;
* a failed or timed-out collective (a rank died or hangs) raises :class:`DistributedError`, a
  :class:`~hessfree.errors.RunError` with one line saying so, within the group's timeout.

:func:`shard` gives a rank its part of a batch; :func:`init_from_env` starts the default group
the way ``torchrun`` describes it (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from hessfree import _checks
from hessfree.batches import count, take_cases
from hessfree.errors import InputError, RunError

__all__ = ["DistributedError", "Reducer", "env_world", "init_from_env", "on_rank0", "shard",
           "shard_range"]

#: default time (seconds) a collective waits for the other ranks before giving up
DEFAULT_TIMEOUT = 600.0


class DistributedError(RunError):
    """A collective operation failed: another rank died, hangs, or the group is broken."""


class Reducer:
    """Sums flat buffers over the ranks of a process group (one collective per call).

    Args:
        group: a ``torch.distributed`` process group, or ``"world"`` for the default group.
    """

    def __init__(self, group: Any) -> None:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise InputError("group: torch.distributed is not initialised; call "
                             "torch.distributed.init_process_group (or launch with torchrun) "
                             "before building a distributed Problem")
        self.group = None if group == "world" else group
        self.rank = dist.get_rank(self.group)
        self.world_size = dist.get_world_size(self.group)
        self.backend = str(dist.get_backend(self.group))
        #: collectives issued (tests check there is exactly one per reduction)
        self.calls = 0

    def __repr__(self) -> str:
        return f"Reducer(rank={self.rank}, world_size={self.world_size}, backend={self.backend})"

    def sum_(self, buf: Tensor) -> Tensor:
        """All-reduce ``buf`` (a flat tensor) in place with SUM; every rank gets the same."""
        import torch.distributed as dist

        self.calls += 1
        try:
            dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.group)
        except (RuntimeError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise DistributedError(
                f"rank {self.rank}: a collective with the other {self.world_size - 1} rank(s) "
                f"failed ({first}); a rank died or does not answer") from err
        return buf

    def sum_parts(self, *parts: Tensor | float, like: Tensor | None = None) -> list[Tensor]:
        """Sum several tensors and numbers over the ranks with one collective.

        All parts travel in one flat buffer of the dtype and device of the first tensor (or of
        ``like``); numbers become one-element tensors. Returns the summed parts, shaped as given.
        """
        ref = like if like is not None else next(p for p in parts if isinstance(p, Tensor))
        flat = [p.reshape(-1).to(ref.dtype) if isinstance(p, Tensor)
                else torch.tensor([float(p)], dtype=ref.dtype, device=ref.device)
                for p in parts]
        buf = self.sum_(torch.cat(flat))
        out, pos = [], 0
        for p, f in zip(parts, flat):
            piece = buf[pos:pos + f.numel()]
            out.append(piece.view(p.shape) if isinstance(p, Tensor) else piece)
            pos += f.numel()
        return out


def on_rank0(fn: Any, rank: int, world_size: int) -> Any:
    """Run ``fn`` on rank 0 and give every rank its result (or its error, as InputError).

    Rank 0's failures (a busy lock, a full disk) reach the other ranks at once instead of
    leaving them waiting in the next collective until the timeout.
    """
    if world_size == 1:
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    error: BaseException | None = None
    if rank == 0:
        try:
            box[0] = ("ok", fn())
        except BaseException as err:  # sent on, then raised here
            error = err
            box[0] = ("error", f"{err}")
    try:
        dist.broadcast_object_list(box, src=0)
    except (RuntimeError, ValueError) as err:
        raise DistributedError(f"rank {rank}: could not hear from rank 0 ({err})") from err
    if error is not None:
        raise error
    kind, value = box[0]
    if kind == "error":
        raise InputError(f"rank 0 failed: {value}")
    return value


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The ``[start, stop)`` cases of ``rank`` among ``n``: contiguous, sizes differing by <= 1."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(batch: Any, rank: int, world_size: int) -> Any:
    """Rank ``rank``'s part of a batch ``(inputs, targets)`` (or a dict batch) or of a list of them.

    A list of chunks is joined logically: the rank gets a contiguous range of all the cases,
    as chunks. Every rank must get at least one case.
    """
    _checks.integer(world_size, "world_size", minimum=1)
    _checks.integer(rank, "rank", 0, world_size - 1)
    if world_size == 1:
        return batch
    chunks = batch if isinstance(batch, list) else [batch]
    sizes = [count(c if isinstance(c, Mapping) else c[0]) for c in chunks]
    total = sum(sizes)
    if total < world_size:
        raise InputError(f"batch: {total} cases cannot be shared by {world_size} ranks (each "
                         "needs at least one)")
    start, stop = shard_range(total, rank, world_size)
    out, offset = [], 0
    for c, n in zip(chunks, sizes):
        lo, hi = max(start - offset, 0), min(stop - offset, n)
        if lo < hi:
            out.append(take_cases(c, slice(lo, hi)))
        offset += n
    return out if isinstance(batch, list) or len(out) != 1 else out[0]


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` outside)."""
    try:
        return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise InputError("RANK/WORLD_SIZE/LOCAL_RANK: expected integers in the environment") \
            from None


#: whether :func:`init_from_env` started the default process group (not one the caller started)
_started = False


def init_from_env(device: str = "cpu", timeout: float = DEFAULT_TIMEOUT) -> tuple[int, int, str]:
    """Start the default process group from torchrun's environment; ``(rank, size, device)``.

    gloo on CPU, NCCL with ``cuda`` (each rank takes GPU ``LOCAL_RANK``). ``timeout``: seconds a
    collective waits for the others before failing (a dead or hung rank).
    """
    global _started
    import torch.distributed as dist

    rank, world, local = env_world()
    _checks.number(timeout, "timeout", 0.0, strict_min=True)
    if world == 1:
        return 0, 1, device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available on this machine")
        torch.cuda.set_device(local)
        device, backend = f"cuda:{local}", "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
        _started = True
    return rank, world, device


def shutdown() -> None:
    """Destroy the default process group if :func:`init_from_env` started it.

    The command line calls it before the process exits: a gloo group left to the interpreter's
    teardown can end a rank with "terminate called without an active exception" (its threads
    destroyed while still joinable), a non-zero exit status after a run that finished. A
    group the caller started is the caller's to destroy.
    """
    global _started
    import torch.distributed as dist

    if _started and dist.is_initialized():
        dist.destroy_process_group()
    _started = False
