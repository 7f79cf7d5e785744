"""The one way the package opens HDF5 files, and its one tensor layout in them.

:func:`open_file` is the open policy of every HDF5 file hessfree reads or writes (results files,
saved quadratics, reproduction summaries):

* no HDF5 file lock (``locking=False``): a run's results file is guarded by the run's own lock
  file (:mod:`hessfree.runs.lock`), and a live run must stay readable while it is written;
* a path that is not a file gets ``FileNotFoundError`` naming it (reading modes);
* a file HDF5 cannot open gets one line naming it and what HDF5 said, as ``error``
  (:class:`~hessfree.errors.InputError` or a subclass the caller names, such as
  ``ResultsError``);
* ``"x"`` refuses to overwrite a file with ``FileExistsError`` naming it.

A tensor is one dataset holding its values (bfloat16, which numpy lacks, as float32) with the
torch dtype in its ``torch_dtype`` attribute (:func:`write_tensor`, :func:`read_tensor`).
"""

from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from hessfree.errors import InputError

__all__ = ["MODES", "open_file", "read_tensor", "write_tensor"]

#: the modes the package opens files in: read, read-write, create (truncating), create new
MODES = ("r", "r+", "w", "x")


def open_file(path: str | os.PathLike, mode: str = "r", *, what: str = "HDF5 file",
              error: type[InputError] = InputError) -> h5py.File:
    """Open ``path`` by the package's policy (module docstring).

    Args:
        path: the file.
        mode: one of :data:`MODES`.
        what: what the file should be, for messages (``"results file"``, ...).
        error: the error class of a file HDF5 cannot open.
    """
    if mode not in MODES:
        raise InputError(f"mode: expected one of {MODES}, got {mode!r}")
    where = os.fspath(path)
    if mode in ("r", "r+") and not os.path.isfile(where):
        raise FileNotFoundError(f"{where}: no such {what}")
    try:
        return h5py.File(where, mode, locking=False)
    except FileExistsError:
        raise FileExistsError(f"{where}: a file already exists") from None
    except OSError as err:
        if mode in ("w", "x"):
            raise  # a fault of the disk or the folder, reported as such
        raise error(f"{where}: cannot open as HDF5 ({err})") from err


def write_tensor(group: h5py.Group, name: str, t: Any) -> h5py.Dataset:
    """Write ``t`` (a tensor or array, taken to the CPU) as dataset ``name`` of ``group``."""
    t = t.detach().to("cpu") if isinstance(t, Tensor) else torch.as_tensor(np.asarray(t))
    stored = t.float() if t.dtype == torch.bfloat16 else t  # numpy has no bfloat16
    ds = group.create_dataset(name, data=stored.numpy())
    ds.attrs["torch_dtype"] = str(t.dtype).removeprefix("torch.")
    return ds


def read_tensor(ds: h5py.Dataset, device: torch.device | str = "cpu") -> Tensor:
    """Dataset ``ds`` as a tensor of its recorded torch dtype on ``device``."""
    dtype = getattr(torch, str(ds.attrs.get("torch_dtype", "")), None)
    t = torch.from_numpy(np.asarray(ds[()]))
    return t.to(device=device, dtype=dtype if isinstance(dtype, torch.dtype) else t.dtype)
