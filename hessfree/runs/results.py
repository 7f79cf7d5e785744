"""One HDF5 file per run: its schema, writer and reader (``docs/architecture.md``, "Results").

Schema version 2 (``runs/<experiment>/<optimizer>-<timestamp>/results.h5``; the trainer picks the
path):

- root attributes: ``format = "hessfree.results"``, ``schema_version`` (int), ``hessfree_version``,
  ``git_commit`` (only when the package lives in a git checkout), ``created`` (ISO 8601, UTC),
  ``torch_version``, and the caller's: ``experiment``, ``optimizer`` (both required), usually
  ``config``, ``seed``, ``device``, ``dtype``, and any others (final status, ...). Values are
  str/int/float/bool; dicts, lists and None are stored as JSON strings and their names listed in
  ``json_attrs`` (JSON), so the reader decodes exactly those (``config``: a dict, or a JSON string).
- ``/steps/<field>``: one resizable, chunked 1-D dataset per field (maxshape None), one row per
  outer step. The first row fixes the fields (their order is the group attribute ``fields``, JSON)
  and dtypes: float64, int64, bool, or variable-length UTF-8 strings. Every later row must have the
  same fields. The trainer's rows follow :mod:`hessfree.runs.rows`: columns shared by every
  optimizer (``step``, ``accepted``, ``reason``, ``loss``, ``grad_equiv``, ``seconds``), then the
  optimizer's own. Version-1 files (before the shared schema: HF's ``loss`` was ``loss_before``,
  momentum rows had no ``reason``) are upgraded by the reader.
- ``/eval/<field>``: rows at evaluation points (``step``, ``seconds``, ``grad_equiv``,
  ``train_error``, ...), stored like ``/steps``.
- ``/params/<name>`` (``final``, ``checkpoint_<k>``): one dataset per tensor, named by its
  state-dict key; attribute ``names`` (JSON) keeps the order, each dataset's ``torch_dtype`` the
  tensor dtype (bfloat16 is stored as float32). Rewriting a name replaces the group.
- ``/quadratics/<k>/``: a group filled by ``hessfree.Quadratic.save(group)``.

Each table group has an attribute ``n_rows``: the rows that count. A row is written, the file
flushed (data, chunk index, file size), then ``n_rows`` raised and the file flushed again, so a run
killed with SIGKILL (even inside a flush) never shows a half-written row; a table's length is
``n_rows`` or its shortest column if less. The superblock stays version 0 (no SWMR, no
file-consistency flags), so a killed run's file opens without ``h5clear``. HDF5 without SWMR is not
crash-safe by design: a kill inside the flush that grows the file can leave its end past the
recorded end of file; the reader then keeps each column's readable prefix and logs a warning.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from hessfree._h5 import open_file, write_tensor
from hessfree._version import __version__
from hessfree.errors import InputError, InputTypeError
from hessfree.runs.h5 import (
    FORMAT,
    SCHEMA_VERSION,
    ResultsError,
    git_commit,
    open_results,
    read_attrs,
    write_attrs,
)
from hessfree.runs.lock import is_live

__all__ = ["FORMAT", "RENAMED_COLUMNS", "SCHEMA_VERSION", "ResultsError", "ResultsWriter",
           "RunRecord", "RunResults", "list_runs", "read_results"]

log = logging.getLogger(__name__)

TABLES = ("steps", "eval")
#: columns an earlier hessfree wrote, by today's name: read under today's name, renamed in a
#: resumed file (the held-out batch of an HF step was the "check" batch; the step-size
#: policy's time was called the line search's)
RENAMED_COLUMNS = {"check_loss_before": "heldout_loss_before",
                   "check_loss_after": "heldout_loss_after",
                   "check_model_change": "heldout_model_change",
                   "seconds_linesearch": "seconds_stepsize"}
_CHUNK_ROWS = 1024  # 8 KiB float64 chunks: few chunk allocations and index splits in a long run
_DTYPES = {"f": np.dtype(np.float64), "i": np.dtype(np.int64), "b": np.dtype(bool),
           "O": h5py.string_dtype("utf-8")}
_KIND_NAMES = {"f": "float", "i": "int", "b": "bool", "O": "str"}
_KIND_TYPES = (("b", (bool, np.bool_)), ("i", (int, np.integer)), ("f", (float, np.floating)),
               ("O", str))  # bool before int: bool is an int
_ONE = h5py.h5s.create_simple((1,))


# -- tables ------------------------------------------------------------------------------------
def _kind(value: Any) -> str | None:
    """The numpy dtype kind of a column for ``value`` (None if no column can hold it)."""
    return next((kind for kind, types in _KIND_TYPES if isinstance(value, types)), None)


class _Table:
    """Equal-length resizable columns plus the ``n_rows`` commit counter, one row at a time.

    Rows go through h5py's low-level API with one shared file dataspace and precomputed memory
    types (about 10 µs per column, against about 100 µs through ``Dataset`` indexing).
    """

    def __init__(self, group: h5py.Group):
        self.group, self.n = group, _table_len(group)
        self._set_columns(list(_columns(group)))
        group.attrs.create("n_rows", self.n, dtype=np.int64)
        self._count = h5py.h5a.open(group.id, b"n_rows")

    def _set_columns(self, names: list[str]) -> None:
        self.names, self.ids = names, [self.group[k].id for k in names]
        self.dtypes = [self.group[k].dtype for k in names]
        self.kinds = [d.kind for d in self.dtypes]
        self.mtypes = [h5py.h5t.py_create(d) for d in self.dtypes]

    def _create(self, row: Mapping[str, Any]) -> None:
        for k, v in row.items():
            if _kind(v) is None:
                raise InputTypeError(f"{self.group.name}/{k}: expected float, int, bool or str, "
                                     f"got {type(v).__name__}")
        for k, v in row.items():
            self.group.create_dataset(k, shape=(0,), maxshape=(None,), chunks=(_CHUNK_ROWS,),
                                      dtype=_DTYPES[_kind(v)])
        self.group.attrs["fields"] = json.dumps(list(row))
        self._set_columns(list(row))

    def _check(self, row: Any) -> Mapping[str, Any]:
        row = row.as_dict() if hasattr(row, "as_dict") else row
        if not isinstance(row, Mapping) or not row:
            raise InputTypeError(f"{self.group.name}: a row is a non-empty mapping field -> value, "
                                 f"got {type(row).__name__}")
        if not self.names:
            self._create(row)
        elif len(row) != len(self.names) or any(k not in row for k in self.names):
            raise InputError(f"{self.group.name} row {self.n}: fields differ from the first row's; "
                             f"missing {[k for k in self.names if k not in row]}, "
                             f"unexpected {[k for k in row if k not in self.names]}")
        for k, kind in zip(self.names, self.kinds):
            got = _kind(row[k])
            if got != kind and (kind, got) != ("f", "i"):
                raise InputTypeError(f"{self.group.name}/{k} row {self.n}: the column holds "
                                     f"{_KIND_NAMES[kind]}, got {type(row[k]).__name__} {row[k]!r}")
        return row

    def write(self, row: Any) -> None:
        """Write row ``n`` into the columns (not yet counted: see :meth:`commit`)."""
        row = self._check(row)
        cells = [np.array([row[k]], dtype=dt) for k, dt in zip(self.names, self.dtypes)]
        space = h5py.h5s.create_simple((self.n + 1,), (h5py.h5s.UNLIMITED,))
        space.select_hyperslab((self.n,), (1,))
        for dset, cell, mtype in zip(self.ids, cells, self.mtypes):
            dset.set_extent((self.n + 1,))
            dset.write(_ONE, space, cell, mtype=mtype)

    def commit(self, n: int) -> None:
        """Count ``n`` rows (once the file was flushed with their data)."""
        self._count.write(np.array(n, dtype=np.int64))
        self.n = n

    def truncate(self, n: int) -> None:
        self.commit(n)
        for dset in self.ids:
            dset.set_extent((n,))


def _columns(group: h5py.Group) -> dict[str, h5py.Dataset]:
    """The columns a table lists in ``fields``, each checked to be a 1-D dataset of a column type.

    Raises:
        ResultsError: one line naming the file and the missing or damaged column.
    """
    where = f"{group.file.filename}: {group.name}"
    try:
        names = json.loads(group.attrs.get("fields", "[]"))
    except (TypeError, ValueError):
        names = None
    if not isinstance(names, list) or not all(isinstance(k, str) for k in names):
        raise ResultsError(f"{where}: attribute 'fields' is not a JSON list of column names "
                           "(the file is damaged)")
    out = {}
    for k in names:
        ds = group.get(k)
        if ds is None:
            raise ResultsError(f"{where}/{k}: the column is missing (the table lists it in "
                               "'fields'; the file is damaged)")
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.dtype.kind not in _DTYPES:
            raise ResultsError(f"{where}/{k}: not a column (expected a 1-D dataset of float, "
                               "int, bool or str; the file is damaged)")
        out[k] = ds
    return out


def _table_len(group: h5py.Group) -> int:
    """Committed rows: ``n_rows``, or less if a column is shorter."""
    lengths = [len(ds) for ds in _columns(group).values()]
    return min([*lengths, int(group.attrs.get("n_rows", min(lengths, default=0)))])


def _read_column(ds: h5py.Dataset, n: int, damaged: list[str]) -> np.ndarray:
    """``ds[:n]``, or its longest readable prefix (noted in ``damaged``) when the rest fails."""
    def read(m: int) -> np.ndarray:
        return ds.asstr()[:m] if h5py.check_string_dtype(ds.dtype) else ds[:m]

    try:
        return read(n)
    except OSError as e:
        good, bad = 0, n  # read(good) works, read(bad) fails
        while bad - good > 1:
            mid = (good + bad) // 2
            try:
                good = len(read(mid))
            except OSError:
                bad = mid
        damaged.append(f"{ds.name} is readable up to row {good} of {n} only ({e})")
        return read(good)


def _read_table(group: h5py.Group | None, damaged: list[str]) -> dict[str, np.ndarray]:
    if group is None:
        return {}
    n = _table_len(group)
    columns = {k: _read_column(ds, n, damaged) for k, ds in _columns(group).items()}
    n = min((len(c) for c in columns.values()), default=0)
    return {k: c[:n] for k, c in columns.items()}


# -- writer ------------------------------------------------------------------------------------
class ResultsWriter:
    """Writes one run's results file; see the module docstring for the schema.

    Args:
        path: the ``results.h5`` to write.
        attrs: root attributes. ``mode="new"`` needs ``experiment`` and ``optimizer``; usual others
            are ``config`` (a dict or JSON string), ``seed``, ``device``, ``dtype``. In
            ``"append"`` mode they update the existing ones.
        mode: ``"new"`` creates the file and refuses to overwrite one; ``"append"`` reopens an
            existing run (``--resume``) after checking its schema version.
    """

    def __init__(self, path: str | os.PathLike, attrs: Mapping[str, Any] | None = None,
                 mode: str = "new"):
        self.path = Path(path)
        if mode not in ("new", "append"):
            raise InputError(f"mode: expected 'new' or 'append', got {mode!r}")
        self._f = (self._create(dict(attrs or {})) if mode == "new"
                   else open_results(self.path, "r+"))
        try:
            if mode == "append":
                write_attrs(self._f, attrs or {})
                for name in TABLES:
                    if name in self._f:
                        _rename_columns(self._f[name])
            self._tables = {name: _Table(self._f.require_group(name)) for name in TABLES}
            self._f.flush()
        except BaseException:
            self._f.close()
            raise

    def _create(self, attrs: dict[str, Any]) -> h5py.File:
        missing = [k for k in ("experiment", "optimizer") if k not in attrs]
        if missing:
            raise InputError(f"attrs: missing {missing} (needed to create {self.path})")
        own = {"format": FORMAT, "schema_version": SCHEMA_VERSION,
               "hessfree_version": __version__, "torch_version": torch.__version__,
               "created": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        own.update({"git_commit": git_commit()} if git_commit() else {})
        try:
            f = open_file(self.path, "x")  # fails if the file exists
        except FileExistsError:
            raise ResultsError(f"{self.path}: a results file already exists; use mode='append' "
                                  "to resume it or choose another path") from None
        try:
            write_attrs(f, own, own=True)
            write_attrs(f, {"config": {}, **attrs})
        except BaseException:
            f.close()
            os.remove(self.path)
            raise
        return f

    @property
    def file(self) -> h5py.File:
        """The open ``h5py.File`` (ResultsError once closed)."""
        if not self._f:
            raise ResultsError(f"{self.path}: the results writer is closed")
        return self._f

    def n_rows(self, table: str = "steps") -> int:
        """How many rows ``table`` (``"steps"`` or ``"eval"``) holds."""
        return self._tables[table].n

    def append_step(self, row: Any) -> None:
        """Append one outer step (a mapping, or anything with ``as_dict()``) and flush."""
        self._append("steps", row)

    def append_eval(self, row: Any) -> None:
        """Append one evaluation row and flush."""
        self._append("eval", row)

    def _append(self, name: str, row: Any) -> None:
        f, table = self.file, self._tables[name]  # raises once closed
        table.write(row)
        f.flush()  # the row's data, chunk index and file size on disk ...
        table.commit(table.n + 1)
        f.flush()  # ... before the counter that makes readers see it

    def truncate(self, n_steps: int, n_evals: int) -> None:
        """Cut ``/steps`` and ``/eval`` back to a checkpoint's row counts (for ``--resume``)."""
        cuts = [(self._tables["steps"], n_steps), (self._tables["eval"], n_evals)]
        for table, n in cuts:
            if not 0 <= n <= table.n:
                raise InputError(f"{table.group.name}: cannot truncate to {n} rows; "
                                 f"it holds {table.n}")
        for table, n in cuts:
            table.truncate(n)
        self.file.flush()

    def save_params(self, name: str, tensors: Mapping[str, Any]) -> None:
        """Write ``/params/<name>``: one dataset per tensor (replacing an earlier group)."""
        group = self.file.require_group("params")
        tmp = f".{name}.partial"  # complete before it replaces the old group
        if tmp in group:
            del group[tmp]
        new = group.create_group(tmp)
        for key, t in tensors.items():
            if not key or "/" in key or key in (".", ".."):
                raise InputError(f"tensors: parameter name {key!r} cannot be an HDF5 dataset name")
            write_tensor(new, key, t)
        new.attrs["names"] = json.dumps(list(tensors))
        if name in group:
            del group[name]
        group.move(tmp, name)
        self._f.flush()

    def quadratic_group(self, k: int | str) -> h5py.Group:
        """An empty group ``/quadratics/<k>`` for ``Quadratic.save(group)`` (replacing one)."""
        parent = self.file.require_group("quadratics")
        if str(k) in parent:
            del parent[str(k)]
        return parent.create_group(str(k))

    def set_attrs(self, **attrs: Any) -> None:
        """Set or update root attributes (e.g. a final ``status``) and flush."""
        write_attrs(self.file, attrs)
        self._f.flush()

    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        if self._f:
            self._f.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- reader ------------------------------------------------------------------------------------
@dataclass
class RunResults:
    """One run read back: root attributes (JSON ones decoded), ``/steps`` and ``/eval`` columns."""

    path: Path
    attrs: dict[str, Any]
    steps: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]
    param_sets: list[str] = field(default_factory=list)
    quadratics: list[str] = field(default_factory=list)

    def table(self, name: str) -> dict[str, np.ndarray]:
        """The columns of ``"steps"`` or ``"eval"``."""
        if name not in TABLES:
            raise InputError(f"table: expected one of {TABLES}, got {name!r}")
        return self.steps if name == "steps" else self.eval

    def params(self, name: str = "final") -> dict[str, np.ndarray]:
        """The tensors of ``/params/<name>`` as numpy arrays, in their saved order."""
        with open_results(self.path, "r") as f:
            group = f.get(f"params/{name}")
            if group is None:
                raise ResultsError(f"{self.path}: no /params/{name}; saved: {self.param_sets}")
            return {key: group[key][()] for key in json.loads(group.attrs["names"])}


def _rename_columns(group: h5py.Group) -> None:
    """Give a resumed table's columns today's names (:data:`RENAMED_COLUMNS`), in place.

    Each old column is first linked under its new name, then ``fields`` lists the new names,
    then the old links go: at every moment the columns ``fields`` names exist.
    """
    try:
        names = json.loads(group.attrs.get("fields", "[]"))
    except (TypeError, ValueError):
        return  # a damaged table: reading its columns says so in one line
    if not isinstance(names, list):
        return
    renames = {old: new for old, new in RENAMED_COLUMNS.items()
               if old in names and new not in names and old in group and new not in group}
    if not renames:
        return
    for old, new in renames.items():
        group[new] = group[old]
    group.attrs["fields"] = json.dumps([renames.get(k, k) for k in names])
    for old in renames:
        del group[old]


def _today(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A table read from a file with today's column names (:data:`RENAMED_COLUMNS`)."""
    return {(RENAMED_COLUMNS[k] if k in RENAMED_COLUMNS and RENAMED_COLUMNS[k] not in table
             else k): v for k, v in table.items()}


def _upgrade_v1(steps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Version-1 step columns in the shared row schema (``loss``, ``reason``)."""
    if "loss_before" in steps and "loss" not in steps:
        steps = {("loss" if k == "loss_before" else k): v for k, v in steps.items()}
    if "reason" not in steps and "accepted" in steps:
        steps["reason"] = np.where(steps["accepted"], "accepted", "non-finite gradient")
    return steps


def _read_once(path: str | os.PathLike, damaged: list[str]) -> RunResults:
    with open_results(path, "r") as f:
        params, quads = f.get("params", {}), f.get("quadratics", {})
        steps = _read_table(f.get("steps"), damaged)
        if int(f.attrs.get("schema_version", SCHEMA_VERSION)) < 2:
            steps = _upgrade_v1(steps)
        return RunResults(Path(path), read_attrs(f), _today(steps),
                          _read_table(f.get("eval"), damaged), [k for k in params if k[0] != "."],
                          sorted(quads, key=lambda k: (len(k), k)))


def read_results(path: str | os.PathLike, retries: int = 3) -> RunResults:
    """Read a results file (ResultsError if it is not one, or of a newer schema version).

    A column whose end cannot be read is cut to its readable prefix. While another process
    writes the run (its lock is live), such a read is retried on a fresh open up to ``retries``
    times (the writer may have been moving an index) and an incomplete read is logged at INFO
    level; for a run nobody writes (a killed run) the damaged tail is logged as a warning.
    """
    for attempt in range(retries + 1):
        damaged: list[str] = []
        res = _read_once(path, damaged)
        if not damaged:
            return res
        live = is_live(Path(path).parent)
        if not live or attempt == retries:
            break
        time.sleep(0.05 * (attempt + 1))
    for line in damaged:
        log.log(logging.INFO if live else logging.WARNING, "%s: %s", path, line)
    return res


@dataclass(frozen=True)
class RunRecord:
    """A line of :func:`list_runs`."""

    path: Path
    experiment: str
    optimizer: str
    created: str
    n_steps: int
    final_train_error: float | None


def _record(path: Path) -> RunRecord:
    with open_results(path, "r") as f:
        steps, ev = f.get("steps"), f.get("eval")
        n, n_eval = (_table_len(g) if g is not None else 0 for g in (steps, ev))
        final = float(ev["train_error"][n_eval - 1]) if n_eval and "train_error" in ev else None
        return RunRecord(path, str(f.attrs["experiment"]), str(f.attrs["optimizer"]),
                         str(f.attrs["created"]), n, final)


def list_runs(folder: str | os.PathLike) -> list[RunRecord]:
    """Every ``results.h5`` below ``folder``, oldest first; unreadable ones are skipped (logged)."""
    if not os.path.isdir(folder):
        raise InputError(f"folder: {os.fspath(folder)} is not a directory")
    records = []
    for path in Path(folder).rglob("results.h5"):
        try:
            records.append(_record(path))
        except (ResultsError, OSError, KeyError) as e:
            log.warning("skipping %s: %s", path, e)
    return sorted(records, key=lambda r: (r.created, str(r.path)))
