"""Saving and loading quadratics in HDF5 (schema 1; docs/architecture.md, "Results in HDF5").

A saved quadratic is one HDF5 group. Attributes: ``format = "hessfree.Quadratic"``,
``schema_version``, ``kind`` (``"dense"`` or ``"operator"``), ``dtype``, ``device``, ``lam``,
``hessfree_version``, ``created``, and for operator-backed ones ``curvature`` (``"ggn"``,
``"hessian"``, ``"fisher"``), ``backend``, ``cache``, ``structural_damping``, ``weight_decay``,
``loss`` (``"MSE"``, ``"BCEWithLogits"``, ``"CrossEntropy"`` or ``"custom"``), ``loss_reduction``
and ``param_names`` (JSON, the flat order); optionally ``experiment`` and ``model_spec`` (JSON)
and the caller's own attributes (those holding JSON are listed in ``json_attrs``).
Datasets: dense: ``A``, ``b``; operator-backed: ``g``, ``theta/<parameter name>``, and
``batch/<chunk>/inputs``, ``batch/<chunk>/targets``, where a tensor is a dataset and a tuple,
list or dict (tuple inputs, ``(values, mask)`` targets) a group with a ``container`` attribute and
children ``0``, ``1``, ... (dict keys in the ``keys`` attribute, JSON).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from hessfree import _checks
from hessfree._files import atomic_path
from hessfree._h5 import open_file
from hessfree._version import __version__
from hessfree.curvature import losses as L
from hessfree.curvature.operator import GGN, EmpiricalFisher, Hessian
from hessfree.curvature.problem import Problem
from hessfree.errors import InputError, InputTypeError
from hessfree.quadratic.h5 import (
    attr,
    json_attr,
    member,
    read_tensor,
    read_tree,
    write_tensor,
    write_tree,
)

__all__ = ["SCHEMA_VERSION", "FORMAT", "read", "write"]

#: version of the layout written by :func:`save`; :func:`load` reads versions up to this one
SCHEMA_VERSION = 1
FORMAT = "hessfree.Quadratic"
_CURVATURES = {"ggn": GGN, "hessian": Hessian, "fisher": EmpiricalFisher}
_LOSSES = {"MSE": L.MSE, "BCEWithLogits": L.BCEWithLogits, "CrossEntropy": L.CrossEntropy}
_RESERVED = frozenset({
    "format", "schema_version", "kind", "dtype", "device", "lam", "hessfree_version", "created",
    "curvature", "backend", "cache", "structural_damping", "weight_decay", "loss",
    "loss_reduction", "param_names", "json_attrs",
})


# -- writing -----------------------------------------------------------------------------------
def _user_attrs(attrs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    out, as_json = {}, []
    for k, v in attrs.items():
        if k in _RESERVED:
            raise InputError(f"attrs: {k!r} is written by save itself; choose another name")
        if k == "model_spec" and isinstance(v, str):
            json.loads(v)  # must be JSON already
            out[k] = v
            as_json.append(k)
        elif isinstance(v, (str, bool, int, float, np.integer, np.floating)):
            out[k] = v
        else:
            try:
                out[k] = json.dumps(v)
            except TypeError as err:
                raise InputTypeError(
                    f"attrs: {k!r} must be a str, a number or JSON-serialisable, got "
                    f"{type(v).__name__}"
                ) from err
            as_json.append(k)
    return out, as_json


def _loss_attrs(loss: Any) -> tuple[str, str]:
    name = type(loss).__name__
    return (name if _LOSSES.get(name) is type(loss) else "custom"), loss.reduction


def _write_operator(q: Any, group: h5py.Group) -> None:
    op = q.operator
    assert op is not None
    if op.streamed or op.problem.reducer is not None:
        raise InputError("q: a quadratic whose operator reads an iterable batch or a batch split "
                         "over processes cannot be saved (the file holds the batch); build it "
                         "on a list in one process (hessfree.batches.materialize)")
    bad = [n for n in op.params if "/" in n or n in (".", "")]
    if bad:
        raise InputError(f"params: names {bad} cannot be HDF5 dataset names (no '/')")
    loss, reduction = _loss_attrs(op.problem.loss)
    group.attrs.update({
        "curvature": op.kind, "backend": op.backend, "cache": op.cache,
        "structural_damping": float(getattr(op, "structural_damping", 0.0)),
        "weight_decay": op.problem.weight_decay, "loss": loss, "loss_reduction": reduction,
        "param_names": json.dumps(list(op.params)),
    })
    theta = group.create_group("theta")
    for n, p in op.params.items():
        write_tensor(theta, n, p)
    write_tensor(group, "g", q.g)
    batch = group.create_group("batch")
    for i, c in enumerate(op.chunks):
        chunk = batch.create_group(str(i))
        write_tree(chunk, "inputs", c.inputs, f"batch[{i}] inputs")
        write_tree(chunk, "targets", c.targets, f"batch[{i}] targets")


def _write(q: Any, group: h5py.Group, attrs: dict[str, Any]) -> None:
    user, as_json = _user_attrs(attrs)
    if q.A is not None:
        write_tensor(group, "A", q.A)
        write_tensor(group, "b", q.b)
    else:
        _write_operator(q, group)
    group.attrs.update(user)
    group.attrs.update({
        "format": FORMAT, "kind": "dense" if q.is_dense else "operator",
        "dtype": str(q.dtype).removeprefix("torch."), "device": str(q.device), "lam": q.lam,
        "hessfree_version": __version__, "json_attrs": json.dumps(as_json),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
    group.attrs["schema_version"] = SCHEMA_VERSION  # last: a group without it is incomplete


def _write_into_group(q: Any, group: h5py.Group, attrs: dict[str, Any]) -> None:
    """Write into a temporary child, then move the members up: no half-written group."""
    if len(group) or "schema_version" in group.attrs:
        raise InputError(
            f"path_or_group: expected an empty HDF5 group, {group.name!r} already holds "
            f"{sorted(group)[:5]}"
        )
    tmp = "__hessfree_writing__"
    try:
        _write(q, group.create_group(tmp), attrs)
    except BaseException:
        del group[tmp]
        raise
    for name in list(group[tmp]):
        group.move(f"{tmp}/{name}", name)
    for k, v in group[tmp].attrs.items():
        group.attrs[k] = v
    del group[tmp]


def write(q: Any, path_or_group: Any, **attrs: Any) -> None:
    """Write the :class:`~hessfree.Quadratic` ``q`` so that :func:`read` can rebuild it.

    Args:
        q: the quadratic.
        path_or_group: a file path (a standalone file, written to a temporary file and moved into
            place, :func:`hessfree._files.atomic_path`) or an empty ``h5py.Group`` (e.g.
            ``f.create_group("quadratics/3")`` of a results file).
        **attrs: extra attributes: ``experiment`` (registered experiment name) and
            ``model_spec`` (dict or JSON string) let :func:`load` rebuild the model itself;
            anything else (numbers, strings, JSON-serialisable values) is kept in ``q.attrs``.
    """
    if isinstance(path_or_group, h5py.Group):
        _write_into_group(q, path_or_group, attrs)
        return
    if not isinstance(path_or_group, (str, os.PathLike)):
        raise InputTypeError(
            f"path_or_group: expected a path or an h5py.Group, got {type(path_or_group).__name__}"
        )
    with atomic_path(path_or_group) as tmp, open_file(tmp, "w") as f:
        _write(q, f, attrs)


# -- reading -----------------------------------------------------------------------------------
def _check_version(group: h5py.Group) -> None:
    if attr(group, "format", str) != FORMAT:
        raise InputError(f"{group.name!r}: attribute 'format' is not {FORMAT!r}")
    version = attr(group, "schema_version", int)
    if version > SCHEMA_VERSION:
        raise InputError(
            f"{group.name!r}: written with quadratic schema version {version}, but this hessfree "
            f"reads versions up to {SCHEMA_VERSION}; upgrade the hessfree package to load it"
        )
    if version < 1:
        raise InputError(f"{group.name!r}: attribute 'schema_version' is malformed: {version}")


def _resolve_device(group: h5py.Group, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    saved = torch.device(attr(group, "device", str))
    if saved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"device: the quadratic was saved on {saved}, which this machine lacks; pass "
            "device='cpu' (or another device)"
        )
    return saved


def _read_attrs(group: h5py.Group) -> dict[str, Any]:
    as_json = set(json_attr(group, "json_attrs"))
    out = {}
    for k, v in group.attrs.items():
        if k in _RESERVED:
            continue
        v = v.item() if isinstance(v, np.generic) else v
        out[k] = json.loads(v) if k in as_json else v
    return out


def read(path_or_group: Any, model: Any = None, loss: Any = None, device: Any = None,
         build_model: Callable[[str, Any], Any] | None = None) -> dict[str, Any]:
    """The parts of a quadratic written by :func:`write` (the operator rebuilt at the saved θ).

    Returns ``{"A", "b", "attrs"}`` for a dense quadratic, ``{"operator", "g", "lam", "attrs"}``
    for an operator-backed one; :meth:`hessfree.Quadratic.load` makes the quadratic.

    Args:
        path_or_group: a file path (its root group) or an ``h5py.Group``.
        model: the ``nn.Module`` (parameter names and shapes must match the file; its parameters
            are not modified: the saved θ is passed as ``params=``) or pure function. Not needed
            for dense quadratics.
        build_model: when ``model`` is None, ``build_model(experiment, model_spec)`` builds it
            from what the file records (``hessfree.runs.experiments.build_model`` does this for
            the registered experiments; the CLI passes it).
        loss: required when the file says ``loss="custom"``; otherwise overrides the saved loss.
        device: where to rebuild; None: the saved device.

    Raises:
        ValueError: a missing or malformed attribute or dataset (named), a newer schema, a
            non-positive λ, parameters that do not match ``model``, a custom loss and no ``loss``.
    """
    if isinstance(path_or_group, h5py.Group):
        return _load_group(path_or_group, model, loss, device, build_model)
    if not isinstance(path_or_group, (str, os.PathLike)):
        raise InputTypeError(
            f"path_or_group: expected a path or an h5py.Group, got {type(path_or_group).__name__}"
        )
    with open_file(path_or_group, "r", what="saved quadratic") as f:
        return _load_group(f, model, loss, device, build_model)


def _load_group(group: h5py.Group, model: Any, loss: Any, device: Any,
                build_model: Callable[[str, Any], Any] | None) -> dict[str, Any]:
    _check_version(group)
    dev = _resolve_device(group, device)
    kind = attr(group, "kind", str)
    if kind == "dense":
        A = read_tensor(member(group, "A", h5py.Dataset), dev)
        b = read_tensor(member(group, "b", h5py.Dataset), dev)
        q = {"A": A, "b": b}
    elif kind == "operator":
        q = _load_operator(group, model, loss, dev, build_model)
    else:
        raise InputError(f"{group.name!r}: attribute 'kind' is malformed: got {kind!r}")
    q["attrs"] = _read_attrs(group)
    return q


def _build_model(group: h5py.Group, build_model: Callable[[str, Any], Any] | None) -> Any:
    if "experiment" not in group.attrs or build_model is None:
        named = (f"it names experiment {attr(group, 'experiment', str)!r}; pass "
                 "build_model=hessfree.runs.experiments.build_model to rebuild that model, or"
                 if "experiment" in group.attrs else "the file names no experiment, so")
        raise InputError(f"model: required; {named} pass your nn.Module (or function) as model=")
    spec = json_attr(group, "model_spec") if "model_spec" in group.attrs else None
    return build_model(attr(group, "experiment", str), spec)


def _build_loss(group: h5py.Group, loss: Any) -> Any:
    if loss is not None:
        return loss
    name = attr(group, "loss", str)
    reduction = attr(group, "loss_reduction", str)
    if name == "custom":
        raise InputError(
            "loss: required; the quadratic was saved with a custom loss callable (loss='custom'), "
            "which cannot be rebuilt from the file: pass the same loss as loss="
        )
    if name not in _LOSSES:
        raise InputError(f"{group.name!r}: attribute 'loss' is malformed: got {name!r}")
    return _LOSSES[name](reduction)


def _check_params(model: Any, theta: dict[str, Tensor]) -> None:
    if not isinstance(model, torch.nn.Module):
        return  # a pure function f(params, inputs) takes the saved names as they are
    ours = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n in theta if n not in ours]
    extra = [n for n in ours if n not in theta]
    if missing or extra:
        raise InputError(
            "model: its trainable parameters do not match the file: in the file but not in the "
            f"model: {missing}; in the model but not in the file: {extra}"
        )
    for n, t in theta.items():
        if ours[n].shape != t.shape:
            raise InputError(
                f"model: parameter {n!r} has shape {tuple(ours[n].shape)} in the model but "
                f"{tuple(t.shape)} in the file"
            )


def _load_operator(group: h5py.Group, model: Any, loss: Any, dev: torch.device,
                   build_model: Callable[[str, Any], Any] | None) -> dict[str, Any]:
    lam = attr(group, "lam", (int, float))
    try:
        _checks.number(lam, "lam", 0.0, strict_min=True)
    except ValueError:
        raise InputError(f"lam (in the file): expected a finite damping λ > 0, got {lam!r}") \
            from None
    names = json_attr(group, "param_names")
    theta_g = member(group, "theta", h5py.Group)
    theta = {n: read_tensor(member(theta_g, n, h5py.Dataset), dev) for n in names}
    curvature = attr(group, "curvature", str)
    if curvature not in _CURVATURES:
        raise InputError(f"{group.name!r}: attribute 'curvature' is malformed: got {curvature!r}")
    batch_g = member(group, "batch", h5py.Group)
    if len(batch_g) == 0:
        raise InputError(f"{batch_g.name!r}: no chunks (expected groups '0', '1', ...)")
    batch = []
    for i in range(len(batch_g)):
        chunk = member(batch_g, str(i), h5py.Group)
        batch.append(tuple(read_tree(member(chunk, part, h5py.HLObject), dev)
                           for part in ("inputs", "targets")))
    g = read_tensor(member(group, "g", h5py.Dataset), dev)
    model = _build_model(group, build_model) if model is None else model
    _check_params(model, theta)
    problem = Problem(model, _build_loss(group, loss), attr(group, "weight_decay", (int, float)))
    kw: dict[str, Any] = {"backend": attr(group, "backend", str),
                          "cache": bool(attr(group, "cache", (bool, np.bool_, int)))}
    if curvature == "ggn":
        kw["structural_damping"] = attr(group, "structural_damping", (int, float))
    op = _CURVATURES[curvature](problem, batch, params=theta, **kw)
    if g.shape != (op.dim,):
        raise InputError(
            f"{group.name!r}: dataset 'g' has shape {tuple(g.shape)}, expected ({op.dim},)"
        )
    return {"operator": op, "g": g, "lam": lam}
