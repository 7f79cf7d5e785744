"""Flat parameter vectors <-> named tensors.

Inside ``curvature``, ``cg`` and ``hf`` a vector in parameter space is one flat 1-D tensor, so
CG's dot products and axpys are one kernel each. :class:`ParamLayout` turns a flat tensor into a
dict of *views* shaped like the parameters (``split`` + ``view``: no copy) and back. Public entry
points also accept a list or dict of tensors and answer in the same form
(:meth:`ParamLayout.to_flat` / :meth:`ParamLayout.like`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hessfree.errors import InputError, InputTypeError

__all__ = ["ParamLayout", "VectorFormat", "flatten", "unflatten"]

#: How a caller gave a vector: ``"flat"``, ``"list"`` (list or tuple of tensors) or ``"dict"``.
VectorFormat = str


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
            if v.dim() != 1 or v.numel() != self.numel:
                raise InputError(
                    f"{name}: expected a flat 1-D tensor of length {self.numel} (or a list/dict "
                    f"of tensors shaped like the parameters), got shape {tuple(v.shape)}"
                )
            flat, fmt = v, "flat"
        elif isinstance(v, Mapping):
            flat, fmt = self.flatten(v, name), "dict"
        elif isinstance(v, (list, tuple)):
            flat, fmt = self.flatten(v, name), "list"
        else:
            raise InputTypeError(
                f"{name}: expected a Tensor, a list of tensors or a dict of tensors, "
                f"got {type(v).__name__}"
            )
        if flat.dtype != self.dtype or flat.device != self.device:
            raise InputError(
                f"{name}: expected dtype {self.dtype} on {self.device}, "
                f"got {flat.dtype} on {flat.device}"
            )
        return flat, fmt

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
