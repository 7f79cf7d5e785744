"""Opening a results file and reading or writing its root attributes.

The layout of a results file is documented in :mod:`hessfree.runs.results`; this module owns
the file-level parts: the format marker and schema version check on opening (through the
package's one HDF5 open policy, :func:`hessfree._h5.open_file`), and the encoding of root
attributes (numbers and strings as they are, anything else as JSON listed in ``json_attrs``).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hessfree._h5 import open_file
from hessfree.errors import InputError, InputTypeError

#: version of the layout written here; the reader accepts versions up to this one (version 1
#: files, written before the shared row schema, are upgraded on reading)
SCHEMA_VERSION = 2
FORMAT = "hessfree.results"
__all__ = ["FORMAT", "SCHEMA_VERSION", "ResultsError", "git_commit", "open_results",
           "read_attrs", "write_attrs"]

_OWN_ATTRS = frozenset({"format", "schema_version", "hessfree_version", "created",
                        "torch_version", "json_attrs"})


class ResultsError(InputError):
    """A file that is not a (readable) hessfree results file, or a misuse of one."""


# -- attributes --------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The ``HEAD`` commit of the checkout holding the package, or None (never raises)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def _encode_attr(name: str, value: Any) -> tuple[Any, bool]:
    """An attribute value as HDF5 stores it, and whether it was JSON-encoded."""
    value = value.item() if isinstance(value, np.generic) else value
    if name == "config" and isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise InputError(f"attribute 'config': a string config must be JSON ({e})") from None
    if isinstance(value, (str, bool, int, float)):
        return (str(value) if isinstance(value, str) else value), False  # str(): TorchVersion
    try:
        return json.dumps(value), True
    except (TypeError, ValueError) as e:
        raise InputTypeError(f"attribute {name!r}: expected str/int/float/bool or a "
                             f"JSON-serialisable value, got {type(value).__name__} ({e})") \
            from None


def write_attrs(f: h5py.File, attrs: Mapping[str, Any], own: bool = False) -> None:
    """Write root attributes (``own``: also the ones the writer reserves for itself)."""
    json_names = set(json.loads(f.attrs.get("json_attrs", "[]")))
    for name, value in attrs.items():
        if not own and name in _OWN_ATTRS:
            raise InputError(f"attribute {name!r} is written by ResultsWriter itself")
        f.attrs[name], is_json = _encode_attr(name, value)
        (json_names.add if is_json else json_names.discard)(name)
    f.attrs["json_attrs"] = json.dumps(sorted(json_names))


def read_attrs(f: h5py.File) -> dict[str, Any]:
    """Root attributes, JSON ones decoded (ResultsError naming an attribute that is not JSON)."""
    try:
        json_names = set(json.loads(f.attrs.get("json_attrs", "[]")))
    except (TypeError, ValueError):
        raise ResultsError(f"{f.filename}: attribute 'json_attrs' is not a JSON list") from None
    out = {}
    for k, v in f.attrs.items():
        if k == "json_attrs":
            continue
        v = v.item() if isinstance(v, np.generic) else v
        if k in json_names:
            try:
                v = json.loads(v)
            except (TypeError, ValueError) as err:
                raise ResultsError(f"{f.filename}: attribute {k!r} is not valid JSON ({err})") \
                    from None
        out[k] = v
    return out


def open_results(path: str | os.PathLike, mode: str) -> h5py.File:
    """Open a results file (``"r"`` or ``"r+"``) after checking its format and schema version."""
    if mode not in ("r", "r+"):
        raise InputError(f"mode: expected 'r' or 'r+', got {mode!r}")
    f = open_file(path, mode, what="results file", error=ResultsError)
    version = f.attrs.get("schema_version", -1)
    problem = None
    if f.attrs.get("format") != FORMAT:
        problem = f"not a hessfree results file (no root attribute format = {FORMAT!r})"
    elif version > SCHEMA_VERSION:
        problem = (f"results schema version {version} is newer than this hessfree reads (up to "
                   f"{SCHEMA_VERSION}); upgrade the hessfree package to read it")
    elif mode != "r" and version != SCHEMA_VERSION:  # resuming a run of an older version
        problem = f"cannot append to schema version {version} (this writes {SCHEMA_VERSION})"
    if problem:
        f.close()
        raise ResultsError(f"{os.fspath(path)}: {problem}")
    return f
