"""HDF5 helpers of the quadratic files: tensors and nested batches in, checked members out.

A tensor is a dataset in the package's one layout (:func:`hessfree._h5.write_tensor`); a
tuple, list or dict is a group with a ``container`` attribute and children ``0``, ``1``, ...
(dict keys in the ``keys`` attribute, JSON). Missing or malformed members raise ``ValueError``
naming the group and the member.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from hessfree._h5 import read_tensor, write_tensor
from hessfree.errors import InputError, InputTypeError

__all__ = ["attr", "json_attr", "member", "read_tensor", "read_tree", "write_tensor",
           "write_tree"]


def write_tree(group: h5py.Group, name: str, x: Any, where: str) -> None:
    """A tensor as a dataset; a tuple, list or dict as a group of children."""
    if isinstance(x, Tensor):
        write_tensor(group, name, x)
        return
    if isinstance(x, (tuple, list, Mapping)):
        sub = group.create_group(name)
        items = list(x.values()) if isinstance(x, Mapping) else list(x)
        sub.attrs["container"] = ("dict" if isinstance(x, Mapping)
                                  else "tuple" if isinstance(x, tuple) else "list")
        if isinstance(x, Mapping):
            sub.attrs["keys"] = json.dumps([str(k) for k in x])
        for i, item in enumerate(items):
            write_tree(sub, str(i), item, f"{where}[{i}]")
        return
    raise InputTypeError(
        f"{where}: cannot save an object of type {type(x).__name__}; a batch must be made of "
        "tensors, tuples, lists and dicts"
    )


def attr(group: h5py.Group, name: str, kind: type | tuple[type, ...]) -> Any:
    """Attribute ``name`` of ``group``, checked to be of type ``kind`` (numpy scalars unwrapped)."""
    if name not in group.attrs:
        raise InputError(f"{group.name!r}: missing attribute {name!r} (not a saved quadratic?)")
    value = group.attrs[name]
    if isinstance(value, np.generic):
        value = value.item()
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise InputError(
            f"{group.name!r}: attribute {name!r} is malformed: expected {kind}, got {value!r}"
        )
    return value


def json_attr(group: h5py.Group, name: str) -> Any:
    """Attribute ``name`` of ``group``, a JSON string, decoded."""
    text = attr(group, name, str)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{group.name!r}: attribute {name!r} is not valid JSON") from err


def member(group: h5py.Group, name: str, kind: type) -> Any:
    """Member ``name`` of ``group``, checked to be a ``kind`` (Dataset, Group or HLObject)."""
    if name not in group:
        what = {h5py.Dataset: "dataset", h5py.Group: "group"}.get(kind, "dataset or group")
        raise InputError(f"{group.name!r}: missing {what} {name!r}")
    obj = group[name]
    if not isinstance(obj, kind):
        raise InputError(f"{group.name!r}: {name!r} is malformed: expected a {kind.__name__}")
    return obj


def read_tree(obj: Any, device: torch.device) -> Any:
    """A dataset or container group as tensors, tuples, lists and dicts (the inverse of write)."""
    if isinstance(obj, h5py.Dataset):
        return read_tensor(obj, device)
    kind = obj.attrs.get("container")
    items = [read_tree(member(obj, str(i), h5py.HLObject), device) for i in range(len(obj))]
    if kind == "tuple":
        return tuple(items)
    if kind == "list":
        return items
    if kind == "dict":
        return dict(zip(json_attr(obj, "keys"), items))
    raise InputError(f"{obj.name!r}: attribute 'container' is malformed: got {kind!r}")
