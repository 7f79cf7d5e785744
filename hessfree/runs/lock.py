"""One writer per run: a lock file in the run's folder, with stale-lock detection.

``RunLock(folder).acquire()`` creates ``folder/.lock`` atomically (``O_CREAT | O_EXCL``) with the
writer's pid, host, process start time and the time it started. A second writer finds the file
and is refused with a message naming the holder. A lock whose process is gone (same host, no such
pid, or a pid reused by another process: its start time differs) is stale: it is removed, with a
log line, and the new writer proceeds. A lock held from another host cannot be checked; the
message says how to remove it when that run is known to be dead. Readers never take the lock:
a run stays readable (and plottable) while it is written.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from hessfree.errors import InputError

__all__ = ["LockError", "RunLock", "lock_holder"]

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"


class LockError(InputError):
    """The run is being written by another process (or looks so)."""


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux ``/proc``), or None where unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces; fields after its ")" are fixed
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The holder recorded in ``folder``'s lock (pid, host, started, ...), or None if unlocked."""
    path = Path(folder) / LOCK_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": None, "host": "?", "started": "?", "unreadable": True}


def _stale(holder: dict[str, Any]) -> bool:
    """Whether ``holder``'s process is certainly gone (only checkable on this host)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    pid = holder["pid"]
    if not _alive(pid):
        return True
    start = _start_time(pid)
    return start is not None and holder.get("proc_start") not in (None, start)


def is_live(folder: str | os.PathLike) -> bool:
    """Whether a process that is still running holds ``folder``'s lock (unknown hosts: True)."""
    holder = lock_holder(folder)
    return holder is not None and not _stale(holder)


class RunLock:
    """The lock of one run folder (see the module docstring).

    Args:
        folder: the run's folder.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.held = False

    def acquire(self) -> RunLock:
        """Take the lock, removing a stale one; LockError when another writer holds it."""
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "proc_start": _start_time(os.getpid()),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = lock_holder(self.folder) or {}
                if _stale(holder):
                    log.warning("%s: removing the stale lock of pid %s (that process is gone)",
                                self.folder, holder.get("pid"))
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    continue
                raise LockError(self._busy_message(holder)) from None
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                raise
            self.held = True
            return self
        raise LockError(f"{self.folder}: could not take the run lock {self.path}")

    def _busy_message(self, holder: dict[str, Any]) -> str:
        if holder.get("unreadable"):
            return (f"{self.folder} has an unreadable lock file {self.path}; if no process "
                    "writes this run, delete that file and try again")
        where = f"pid {holder.get('pid')} on host {holder.get('host')}"
        since = f" since {holder.get('started')}"
        if holder.get("host") == socket.gethostname():
            return (f"{self.folder} is being written by {where}{since}; wait for it to finish or "
                    "stop it (one writer per run)")
        return (f"{self.folder} is locked by {where}{since}, which cannot be checked from here; "
                f"if that run is dead, delete {self.path} and try again")

    def release(self) -> None:
        """Remove the lock if this object holds it (idempotent)."""
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

