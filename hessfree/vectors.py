"""Flat parameter vectors <-> named tensors.

Inside ``curvature``, ``cg`` and ``hf`` a vector in parameter space is one flat 1-D tensor, so
CG's dot products and axpys are one kernel each. :class:`ParamLayout` turns a flat tensor into a
dict of *views* shaped like the parameters (``split`` + ``view``: no copy) and back. Public entry
points also accept a list or dict of tensors and answer in the same form
(:meth:`ParamLayout.to_flat` / :meth:`ParamLayout.like`). :func:`flat_vector` is the one check
of a flat vector (or a block of them) that every entry point uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hessfree.errors import InputError, InputTypeError

__all__ = ["ParamLayout", "VectorFormat", "flat_vector", "flatten", "unflatten"]

#: How a caller gave a vector: ``"flat"``, ``"list"`` (list or tuple of tensors) or ``"dict"``.
VectorFormat = str


def flat_vector(v: object, name: str, n: int | None = None, dtype: torch.dtype | None = None,
                device: torch.device | None = None, *, columns: bool = False, whose: str = "",
                floating: bool = False, finite: bool = False) -> Tensor:
    """``v`` detached, after checking it is a flat vector (the one wording of every such check).

    Args:
        v: the argument.
        name: its name in messages.
        n: the length it must have (None: any).
        dtype: the dtype it must have (None: any).
        device: the device it must be on (None: any).
        columns: a block of flat vectors as the columns of an ``(n, k)`` tensor instead.
        whose: where ``dtype``/``device``/``n`` come from, for messages (e.g. ``" (like b)"``).
        floating: it must have a floating-point dtype.
        finite: it must hold no NaN or infinity (one host sync).

    Raises:
        InputTypeError: ``v`` is not a tensor.
        InputError: wrong shape, dtype or device, or a non-finite entry.
    """
    if not isinstance(v, Tensor):
        raise InputTypeError(f"{name}: expected a Tensor, got {type(v).__name__}")
    if columns:
        if v.dim() != 2 or (n is not None and v.shape[0] != n):
            raise InputError(f"{name}: expected a tensor of shape ({n if n is not None else 'n'}, "
                             f"k){whose}, got shape {tuple(v.shape)}")
    elif v.dim() != 1 or (n is not None and v.numel() != n):
        length = f" of length {n}" if n is not None else ""
        raise InputError(f"{name}: expected a flat 1-D tensor{length}{whose}, got shape "
                         f"{tuple(v.shape)}")
    if floating and not v.is_floating_point():
        raise InputError(f"{name}: expected a floating-point dtype, got {v.dtype}")
    if (dtype is not None and v.dtype != dtype) or (device is not None and v.device != device):
        raise InputError(f"{name}: expected dtype {dtype or v.dtype} on {device or v.device}"
                         f"{whose}, got {v.dtype} on {v.device}")
    if finite and not bool(torch.isfinite(v).all()):
        raise InputError(f"{name}: expected finite values, got NaN or infinity")
    return v.detach()


@dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of a set of parameters, and their offsets in one flat vector.

    Args:
        names: parameter names, in flat-vector order.
        shapes: the shape of each parameter.
        dtype: dtype of the parameters (flat vectors must have it).
        device: device of the parameters (flat vectors must live there).
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def from_params(cls, params: Mapping[str, Tensor]) -> ParamLayout:
        """Layout of a ``{name: tensor}`` mapping (insertion order is the flat order)."""
        if not params:
            raise InputError("params: expected at least one trainable parameter, got none")
        tensors = list(params.values())
        dtypes = {t.dtype for t in tensors}
        devices = {t.device for t in tensors}
        if len(dtypes) != 1 or len(devices) != 1:
            raise InputError(
                "params: all parameters must share one dtype and device, got dtypes "
                f"{sorted(map(str, dtypes))} and devices {sorted(map(str, devices))}"
            )
        return cls(
            names=tuple(params),
            shapes=tuple(t.shape for t in tensors),
            dtype=tensors[0].dtype,
            device=tensors[0].device,
        )

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of elements of each parameter."""
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def numel(self) -> int:
        """Length of the flat vector."""
        return sum(self.sizes)

    def split(self, flat: Tensor) -> dict[str, Tensor]:
        """Views of ``flat`` shaped like the parameters (no copy)."""
        parts = torch.split(flat, self.sizes)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes)}

    def flatten(self, tensors: Sequence[Tensor] | Mapping[str, Tensor], name: str = "v") -> Tensor:
        """Concatenate tensors shaped like the parameters into one flat vector (checked)."""
        if isinstance(tensors, Mapping):
            missing = [n for n in self.names if n not in tensors]
            extra = [n for n in tensors if n not in self.names]
            if missing or extra:
                raise InputError(
                    f"{name}: dict keys must be the parameter names; missing {missing}, "
                    f"unexpected {extra}"
                )
            seq = [tensors[n] for n in self.names]
        else:
            seq = list(tensors)
            if len(seq) != len(self.names):
                raise InputError(
                    f"{name}: expected {len(self.names)} tensors (one per parameter), "
                    f"got {len(seq)}"
                )
        for n, t, s in zip(self.names, seq, self.shapes):
            if not isinstance(t, Tensor):
                raise InputTypeError(f"{name}[{n!r}]: expected a Tensor, got {type(t).__name__}")
            if t.shape != s:
                raise InputError(
                    f"{name}[{n!r}]: expected shape {tuple(s)}, got {tuple(t.shape)}"
                )
        return torch.cat([t.reshape(-1) for t in seq])

    def to_flat(self, v: Tensor | Sequence[Tensor] | Mapping[str, Tensor], name: str = "v",
                ) -> tuple[Tensor, VectorFormat]:
        """Turn a flat tensor, list or dict into a checked flat vector; also say which form it was.

        Raises:
            ValueError: wrong length, wrong number of tensors, wrong shapes or keys.
            TypeError: not a tensor, list/tuple or dict.
        """
        if isinstance(v, Tensor):
            flat, fmt = flat_vector(v, name, self.numel, whose=" (or a list/dict of tensors "
                                    "shaped like the parameters)"), "flat"
        elif isinstance(v, Mapping):
            flat, fmt = self.flatten(v, name), "dict"
        elif isinstance(v, (list, tuple)):
            flat, fmt = self.flatten(v, name), "list"
        else:
            raise InputTypeError(
                f"{name}: expected a Tensor, a list of tensors or a dict of tensors, "
                f"got {type(v).__name__}"
            )
        return flat_vector(flat, name, None, self.dtype, self.device), fmt

    def like(self, flat: Tensor, fmt: VectorFormat) -> Tensor | list[Tensor] | dict[str, Tensor]:
        """Give ``flat`` back in the form ``fmt`` reported by :meth:`to_flat`."""
        if fmt == "flat":
            return flat
        parts = self.split(flat)
        return parts if fmt == "dict" else list(parts.values())


def flatten(tensors: Sequence[Tensor] | Mapping[str, Tensor]) -> Tensor:
    """Concatenate a list or dict of tensors into one flat 1-D tensor."""
    seq = tensors.values() if isinstance(tensors, Mapping) else tensors
    return torch.cat([t.reshape(-1) for t in seq])


def unflatten(flat: Tensor, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Views of ``flat`` shaped like the tensors of ``like`` (no copy)."""
    return ParamLayout.from_params(like).split(flat)
