"""One run's hold on its files: the lock, the results writer and the checkpoint, as one context.

A :class:`RunSession` is what ``train`` and ``resume`` write through. On rank 0 it holds the run
folder's lock (:class:`~hessfree.runs.lock.RunLock`) and the open
:class:`~hessfree.runs.results.ResultsWriter`; on other ranks (``torchrun``) it holds a
:class:`NullWriter`, whose methods are the writer's, typed, and do nothing — a misspelt call
fails there as on rank 0. It is opened by :meth:`RunSession.create` (a new run: folder, lock,
results file) or :meth:`RunSession.reopen` (``--resume``: lock, rows after the checkpoint cut,
attributes updated), each done on rank 0 and its outcome — or its error — sent to every rank.

Every write goes through a method that names its stage (:meth:`~RunSession.write_step`,
:meth:`~RunSession.write_eval`, :meth:`~RunSession.save_quadratic`,
:meth:`~RunSession.write_checkpoint`, :meth:`~RunSession.write_params`,
:meth:`~RunSession.finish`): an ``OSError`` there (a full disk) marks the run ``failed: <stage>``
and becomes a :class:`~hessfree.errors.RunError` saying what was kept (every committed row, the
last checkpoint) and how to resume. Leaving the ``with`` block closes the writer and releases
the lock in every case; an exception that is not a write fault marks the run ``stopped: <kind>``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import h5py

from hessfree import distributed
from hessfree.errors import RunError
from hessfree.runs import checkpoint
from hessfree.runs.lock import RunLock
from hessfree.runs.results import ResultsWriter, read_results

__all__ = ["CHECKPOINT_NAME", "RESULTS_NAME", "NullWriter", "RunSession", "Writer"]

RESULTS_NAME, CHECKPOINT_NAME = "results.h5", "checkpoint.pt"


class Writer(Protocol):
    """What a run writes its results through (:class:`ResultsWriter` or :class:`NullWriter`)."""

    def n_rows(self, table: str = "steps") -> int:
        """Rows of ``table``."""

    def append_step(self, row: Any) -> None:
        """Commit one ``/steps`` row."""

    def append_eval(self, row: Any) -> None:
        """Commit one ``/eval`` row."""

    def quadratic_group(self, k: int | str) -> h5py.Group:
        """An empty group for a saved quadratic."""

    def save_params(self, name: str, tensors: Mapping[str, Any]) -> None:
        """Write a set of parameters."""

    def set_attrs(self, **attrs: Any) -> None:
        """Set root attributes."""

    def truncate(self, n_steps: int, n_evals: int) -> None:
        """Cut the tables back."""

    def close(self) -> None:
        """Close the file."""


class NullWriter:
    """The writer of ranks other than 0: every :class:`Writer` method, doing nothing."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def n_rows(self, table: str = "steps") -> int:
        """No rows."""
        return 0

    def append_step(self, row: Any) -> None:
        """Nothing to write."""

    def append_eval(self, row: Any) -> None:
        """Nothing to write."""

    def quadratic_group(self, k: int | str) -> h5py.Group:
        """There is no file here to hold one."""
        raise RunError(f"rank {self.rank} has no results file: quadratics are saved by rank 0 "
                       "of a one-process run")

    def save_params(self, name: str, tensors: Mapping[str, Any]) -> None:
        """Nothing to write."""

    def set_attrs(self, **attrs: Any) -> None:
        """Nothing to write."""

    def truncate(self, n_steps: int, n_evals: int) -> None:
        """Nothing to cut."""

    def close(self) -> None:
        """Nothing to close."""


class RunSession:
    """One run's lock, results writer and checkpoint (module docstring); a context manager.

    Build it with :meth:`create` or :meth:`reopen`, not directly.

    Attributes:
        path: the run's results file (every rank knows it).
        writer: the :class:`ResultsWriter` on rank 0, a :class:`NullWriter` elsewhere.
        lead: whether this process writes (rank 0).
        checkpoint_step: the step of the last checkpoint written (None: none yet).
        status: the ``status`` attribute written last (``running``, ``finished ...``,
            ``failed: ...``, ``stopped: ...``).
    """

    def __init__(self, path: Path, writer: Writer, lock: RunLock | None, rank: int,
                 checkpoint_step: int | None) -> None:
        self.path, self.writer, self.lock = path, writer, lock
        self.rank, self.lead = rank, rank == 0
        self.checkpoint_step = checkpoint_step
        self.status = "running"

    @property
    def folder(self) -> Path:
        """The run's folder."""
        return self.path.parent

    @property
    def checkpoint_path(self) -> Path:
        """The run's checkpoint file."""
        return self.folder / CHECKPOINT_NAME

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, make_folder: Callable[[], Path], attrs: Mapping[str, Any], rank: int = 0,
               world_size: int = 1) -> RunSession:
        """A new run: rank 0 makes the folder, takes its lock and creates the results file.

        Args:
            make_folder: makes the new, empty run folder and returns it (rank 0 only).
            attrs: the results file's root attributes.
            rank: this process's rank.
            world_size: the run's processes.
        """
        held: list[tuple[RunLock, ResultsWriter]] = []

        def start() -> str:
            folder = make_folder()
            lock = RunLock(folder).acquire()
            path = folder / RESULTS_NAME
            try:
                held.append((lock, ResultsWriter(path, attrs, mode="new")))
            except OSError as err:
                lock.release()
                with contextlib.suppress(OSError):
                    shutil.rmtree(folder)  # nothing was committed: leave no empty run behind
                raise RunError(f"creating the results file {path} failed "
                               f"({_reason(err)}): nothing was written") from None
            except BaseException:
                lock.release()
                raise
            return str(path)

        path = Path(distributed.on_rank0(start, rank, world_size))
        lock, writer = held[0] if held else (None, NullWriter(rank))
        return cls(path, writer, lock, rank, None)

    @classmethod
    def reopen(cls, path: Path, at_step: int, n_evals: int,
               attrs: Callable[[dict[str, Any]], dict[str, Any]], rank: int = 0,
               world_size: int = 1) -> tuple[RunSession, int]:
        """Continue a run from its checkpoint at ``at_step``: rank 0 locks and reopens its file.

        The file must hold at least ``at_step`` committed steps; rows after the checkpoint
        (``at_step`` steps, ``n_evals`` evaluations) are cut — they are recomputed identically.

        Args:
            path: the results file.
            at_step: the checkpoint's step count.
            n_evals: the checkpoint's evaluation count.
            attrs: ``old root attributes -> attributes to set`` (status, resumes, ...).
            rank: this process's rank.
            world_size: the run's processes.

        Returns:
            The session and the evaluation rows kept (every rank gets it).
        """
        held: list[tuple[RunLock, ResultsWriter]] = []

        def start() -> int:
            lock = RunLock(path.parent).acquire()
            try:
                old = read_results(path)
                n_steps = len(old.steps.get("step", []))
                if n_steps < at_step:
                    raise checkpoint.CheckpointError(
                        f"{path.with_name(CHECKPOINT_NAME)} is at step {at_step} but {path} "
                        f"holds {n_steps} committed steps: the checkpoint belongs to another "
                        "results file")
                writer = ResultsWriter(path, {}, mode="append")
            except BaseException:
                lock.release()
                raise
            try:
                writer.truncate(at_step, min(n_evals, writer.n_rows("eval")))
                writer.set_attrs(**attrs(old.attrs))
            except BaseException as err:
                writer.close()
                lock.release()
                if isinstance(err, OSError):
                    raise RunError(f"reopening the results file {path} failed ({_reason(err)}): "
                                   f"the last checkpoint (step {at_step}) and every committed "
                                   f"row are kept; fix the cause and continue with --resume "
                                   f"{path.parent}") from None
                raise
            held.append((lock, writer))
            return writer.n_rows("eval")

        kept = int(distributed.on_rank0(start, rank, world_size))
        lock, writer = held[0] if held else (None, NullWriter(rank))
        return cls(path, writer, lock, rank, at_step), kept

    # -- writing ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _stage(self, what: str, step: int) -> Iterator[None]:
        """Turn a write fault into a RunError naming ``what`` and what was kept."""
        try:
            yield
        except OSError as err:
            self._mark(f"failed: {what} ({_reason(err)})")
            kept = (f"the last checkpoint (step {self.checkpoint_step}) and every committed row "
                    "are kept" if self.checkpoint_step is not None
                    else "every committed row is kept")
            raise RunError(f"{what} failed at step {step} ({_reason(err)}): {kept} in "
                           f"{self.folder}; fix the cause and continue with --resume "
                           f"{self.folder}") from None

    def write_step(self, step: int, row: Mapping[str, Any]) -> None:
        """Commit the ``/steps`` row of update ``step`` (1-based: the updates done)."""
        with self._stage("writing the results", step):
            self.writer.append_step(row)

    def write_eval(self, step: int, row: Mapping[str, Any]) -> None:
        """Commit an ``/eval`` row taken after ``step`` updates."""
        with self._stage("writing the results", step):
            self.writer.append_eval(row)

    def save_quadratic(self, step: int, q: Any, **attrs: Any) -> None:
        """Save the quadratic of update ``step`` (0-based) as ``/quadratics/<step>``."""
        with self._stage("writing the results", step):
            q.save(self.writer.quadratic_group(step), **attrs)

    def write_checkpoint(self, step: int, state: dict[str, Any]) -> None:
        """Write the checkpoint at ``step`` atomically (rank 0; others keep none)."""
        if not self.lead:
            return
        with self._stage("writing the checkpoint", step):
            checkpoint.save(self.checkpoint_path, state)
        self.checkpoint_step = step

    def write_params(self, step: int, name: str, tensors: Mapping[str, Any]) -> None:
        """Write ``/params/<name>``."""
        with self._stage(f"writing the {name} parameters", step):
            self.writer.save_params(name, tensors)

    def finish(self, step: int, status: str, **attrs: Any) -> None:
        """Record the run's final status, its steps done and any other root ``attrs``."""
        with self._stage("writing the results", step):
            self.writer.set_attrs(status=status, steps_done=step, **attrs)
        self.status = status

    def _mark(self, status: str) -> None:
        """Record that the run did not finish (and its committed steps), if the file takes it."""
        self.status = status
        with contextlib.suppress(Exception):
            self.writer.set_attrs(status=status, steps_done=self.writer.n_rows())

    # -- closing ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the writer and release the lock (idempotent)."""
        try:
            self.writer.close()
        finally:
            if self.lock is not None:
                self.lock.release()

    def __enter__(self) -> RunSession:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: Any) -> None:
        if err is not None and not self.status.startswith("failed"):
            self._mark(f"stopped: {kind.__name__ if kind else 'error'}")
        self.close()


def _reason(err: OSError) -> str:
    """An operating-system error's text, without its errno prefix."""
    return os.strerror(err.errno) if err.errno else (str(err) or type(err).__name__)
