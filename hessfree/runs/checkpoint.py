"""Checkpoints of a run: written atomically, read back with checks.

A checkpoint is a ``torch.save`` of plain data (tensors, numbers, strings, lists, dicts: it is
read back with ``weights_only=True``, so a checkpoint cannot run code). It is written through
:func:`hessfree._files.atomic_path` (a temporary file in the run's folder moved over the previous
one), so a kill at any moment leaves either the old or the new checkpoint, never a half-written
one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from hessfree._files import atomic_path
from hessfree.errors import InputError

__all__ = ["CHECKPOINT_VERSION", "CheckpointError", "load", "save"]

#: version of the checkpoint layout written by the trainer
CHECKPOINT_VERSION = 2


class CheckpointError(InputError):
    """A checkpoint that cannot be read or is not one this hessfree writes."""


def save(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (:func:`hessfree._files.atomic_path`)."""
    with atomic_path(path) as tmp:
        torch.save({**state, "checkpoint_version": CHECKPOINT_VERSION}, tmp)


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save` (CheckpointError naming the file otherwise)."""
    path = Path(path)
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # torch raises many kinds on garbage: all mean "unreadable"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (damaged or not written by "
                              f"hessfree; torch says {type(err).__name__}: {first})") from None
    if not isinstance(state, dict) or state.get("checkpoint_version") != CHECKPOINT_VERSION:
        version = state.get("checkpoint_version") if isinstance(state, dict) else None
        raise CheckpointError(f"{path}: checkpoint format {version!r}, this hessfree reads "
                              f"{CHECKPOINT_VERSION}; it was written by another version")
    return state
