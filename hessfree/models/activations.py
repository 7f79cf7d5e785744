"""Elementwise nonlinearities by name, shared by the models.

Names follow the papers: ``"logistic"`` is the sigmoid of Martens (2010) and Sutskever et al.
(2013) [S13 §3]; ``"linear"`` the identity (the autoencoders' code layer, [HFDemo]).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
from torch import Tensor

from hessfree.errors import InputError, InputTypeError

__all__ = [
    "HIDDEN",
    "OUTPUTS",
    "activation",
    "check_name",
    "check_positive_int",
    "check_sizes",
    "output_function",
]

#: hidden-unit nonlinearities
HIDDEN = ("logistic", "tanh", "relu", "linear")
#: output nonlinearities that have a matching loss ([Sch02]; [HFDemo])
OUTPUTS = ("linear", "logistic", "softmax")


def _identity(x: Tensor) -> Tensor:
    return x


def _softmax(x: Tensor) -> Tensor:
    return torch.softmax(x, dim=-1)


_FUNCS: dict[str, Callable[[Tensor], Tensor]] = {
    "logistic": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "linear": _identity,
    "softmax": _softmax,
}


def check_name(name: object, allowed: tuple[str, ...], arg: str) -> str:
    """Return ``name`` if it is one of ``allowed``, else raise naming the argument ``arg``."""
    if not isinstance(name, str):
        raise InputTypeError(f"{arg}: expected one of {allowed}, got {type(name).__name__}")
    if name not in allowed:
        raise InputError(f"{arg}: expected one of {allowed}, got {name!r}")
    return name


def activation(name: str) -> Callable[[Tensor], Tensor]:
    """The elementwise function called ``name`` (one of :data:`HIDDEN`)."""
    return _FUNCS[check_name(name, HIDDEN, "activation")]


def output_function(name: str) -> Callable[[Tensor], Tensor]:
    """The output nonlinearity called ``name`` (softmax over the last dimension)."""
    return _FUNCS[check_name(name, OUTPUTS, "output")]


def check_sizes(sizes: object, arg: str, min_len: int) -> list[int]:
    """Validate a list of layer sizes: at least ``min_len`` positive integers."""
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__len__"):
        raise InputTypeError(
            f"{arg}: expected a list of positive integers, got {type(sizes).__name__}")
    out = list(sizes)  # type: ignore[call-overload]
    if len(out) < min_len:
        raise InputError(f"{arg}: expected at least {min_len} layer sizes, got {len(out)}: {out}")
    return [check_positive_int(s, f"{arg}[{i}]") for i, s in enumerate(out)]


def check_positive_int(value: object, arg: str) -> int:
    """Return ``value`` as an ``int`` if it is a positive integer, else raise naming ``arg``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(f"{arg}: expected a positive integer, got {value!r}")
    if value < 1:
        raise InputError(f"{arg}: expected a positive integer, got {value}")
    return int(value)
