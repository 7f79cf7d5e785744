"""Initializations of Martens (2010) and Sutskever et al. (2013): sparse and echo-state.

Both draw every random number in float64 on the CPU from ``generator`` (the global RNG when
``None``) and then copy into the parameters, so a seed gives the same draws for any parameter
dtype or device.

A model tells :func:`sparse_init_` its weight matrices through ``model.weight_layers()``, a list
of ``(name, weight, bias or None, unit nonlinearity)`` (the models of :mod:`hessfree.models`
have it); for any other module every ``nn.Linear`` is used, with non-tanh units.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hessfree import _checks
from hessfree.errors import InputError, InputTypeError
from hessfree.models.activations import check_positive_int

__all__ = ["sparse_init_", "esn_init_", "sparse_matrix"]

#: Sutskever et al. (2013) [S13 §3.1]: tanh units simulate sigmoid units with these
TANH_WEIGHT_FACTOR = 0.25
TANH_BIAS = 0.5


def _check_generator(generator: Any) -> torch.Generator | None:
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise InputTypeError(
            f"generator: expected a torch.Generator or None, got {type(generator)}")
    if generator.device.type != "cpu":
        raise InputError(f"generator: expected a CPU generator, got one on {generator.device}")
    return generator


def _check_scale(value: Any, arg: str, positive: bool = False) -> float:
    return _checks.number(value, arg, 0.0, strict_min=positive)


def sparse_matrix(rows: int, cols: int, connections: int, std: float = 1.0,
                  generator: torch.Generator | None = None) -> Tensor:
    """A float64 ``(rows, cols)`` matrix with ``min(connections, cols)`` nonzeros per row.

    The nonzero positions of each row are drawn uniformly *without* replacement, so every unit's
    fan-in is exact; their values are ``std·N(0, 1)``. (HFDemo drew the indices *with* replacement,
    ``ceil(n*rand(1,15))``, so some units got fewer than 15 distinct inputs; [HFDemo].)
    """
    k = min(check_positive_int(connections, "connections"), cols)
    cols_idx = torch.rand(rows, cols, generator=generator, dtype=torch.float64).topk(k, dim=1)[1]
    values = torch.randn(rows, k, generator=generator, dtype=torch.float64) * std
    return torch.zeros(rows, cols, dtype=torch.float64).scatter_(1, cols_idx, values)


def _weight_layers(model: nn.Module) -> list[tuple[str, Tensor, Tensor | None, str]]:
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if callable(getattr(model, "weight_layers", None)):
        layers = list(model.weight_layers())
    else:
        layers = [(name or "linear", m.weight, m.bias, "linear")
                  for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise InputError(
            f"model: {type(model).__name__} has no weight layers (nn.Linear modules or "
            "weight_layers()) to initialize"
        )
    for name, w, _, _ in layers:
        if w.dim() != 2:
            raise InputError(f"model.{name}: expected a 2-D weight matrix, got {tuple(w.shape)}")
    return layers


@torch.no_grad()
def sparse_init_(model: nn.Module, connections: int = 15, scale: float = 1.0,
                 generator: torch.Generator | None = None) -> nn.Module:
    """Sparse initialization (SI) of Martens (2010) [M10], in place; returns ``model``.

    Sutskever et al. (2013) [S13 §3.1]: "each random unit is connected to 15 randomly
    chosen units in the previous layer, whose weights are drawn from a unit Gaussian, and the
    biases are set to zero"; for tanh units "biases to 0.5 and rescaling the weights by 0.25"
    (whether a unit is tanh is the unit's own nonlinearity; HFDemo instead multiplied by 0.5 for
    a tanh layer on either side, which differs at the first and last layers). A layer with fewer
    than ``connections`` inputs connects every unit to all of them. Connections are drawn without
    replacement (see :func:`sparse_matrix`).

    Args:
        model: a model of :mod:`hessfree.models` or any module with ``nn.Linear`` layers.
        connections: incoming connections per unit (default 15, at least 1).
        scale: multiplier of the unit Gaussian (the "SI scale" of [S13 Table 3]).
        generator: a CPU ``torch.Generator`` for reproducible draws.
    """
    connections = check_positive_int(connections, "connections")
    scale = _check_scale(scale, "scale", positive=True)
    generator = _check_generator(generator)
    for _, w, b, act in _weight_layers(model):
        tanh = act == "tanh"
        std = scale * (TANH_WEIGHT_FACTOR if tanh else 1.0)
        w.copy_(sparse_matrix(w.shape[0], w.shape[1], connections, std, generator))
        if b is not None:
            b.fill_(TANH_BIAS if tanh else 0.0)
    return model


def _rnn_params(rnn: nn.Module) -> dict[str, Tensor]:
    names = ("W_in", "W_hh", "b_h", "W_out", "b_out")
    params = {n: getattr(rnn, n, None) for n in names}
    if not isinstance(rnn, nn.Module) or not all(isinstance(p, Tensor) for p in params.values()):
        raise InputTypeError(
            f"rnn: expected a TanhRNN-like module with parameters {names}, got "
            f"{type(rnn).__name__}"
        )
    w_hh = params["W_hh"]
    if w_hh.dim() != 2 or w_hh.shape[0] != w_hh.shape[1]:
        raise InputError(f"rnn.W_hh: expected a square matrix, got shape {tuple(w_hh.shape)}")
    n = w_hh.shape[0]
    if params["W_in"].dim() != 2 or params["W_in"].shape[0] != n or params["b_h"].shape != (n,):
        raise InputError(
            f"rnn.W_in, rnn.b_h: expected shapes ({n}, n_in) and ({n},) to match W_hh, got "
            f"{tuple(params['W_in'].shape)} and {tuple(params['b_h'].shape)}"
        )
    if params["W_out"].dim() != 2 or params["W_out"].shape[1] != n:
        raise InputError(
            f"rnn.W_out: expected shape (n_out, {n}), got {tuple(params['W_out'].shape)}"
        )
    return params


def _set_radius(w: Tensor, radius: float) -> Tensor:
    """``w`` rescaled (float64) so that its spectral radius is ``radius``."""
    if radius == 0.0:
        return torch.zeros_like(w)
    current = float(torch.linalg.eigvals(w).abs().max())
    if current == 0.0:
        raise InputError(
            "spectral_radius: the sparse recurrent matrix drawn has spectral radius 0 and cannot "
            "be rescaled; use more connections or another generator state"
        )
    return w * (radius / current)


@torch.no_grad()
def esn_init_(rnn: nn.Module, spectral_radius: float = 1.1, connections: int = 15,
              input_scale: float = 0.001, output_scale: float = 0.1,
              output_bias: float | Tensor = 0.0,
              generator: torch.Generator | None = None) -> nn.Module:
    """Echo-state-network-style initialization of Sutskever et al. (2013) Table 4, in place.

    [S13 Table 4]: in-to-hid dense ``input_scale·N(0,1)`` (0.001 for the addition and
    multiplication problems, 0.1 for memorization); hid-to-hid with ``connections`` (15) fan-in,
    rescaled to spectral radius exactly ``spectral_radius`` (1.1; computed by
    ``torch.linalg.eigvals`` in float64); hid-to-out dense ``output_scale·N(0,1)`` (0.1); hidden
    bias 0; output bias the average of the targets (pass it as ``output_bias``, e.g.
    ``targets.mean(dim=(0, 1))``). A learned initial state ``h0`` is set to 0 (the table lists
    none). Draw order: ``W_in``, ``W_hh`` (positions, values), ``W_out``.

    Args:
        rnn: a :class:`~hessfree.models.TanhRNN` (or a module with ``W_in``, ``W_hh``, ``b_h``,
            ``W_out``, ``b_out``).
        spectral_radius: target spectral radius of ``W_hh`` (>= 0).
        connections: incoming recurrent connections per hidden unit (at least 1; all units if
            fewer exist).
        input_scale: standard deviation of the input weights (>= 0).
        output_scale: standard deviation of the output weights (>= 0).
        output_bias: a number or a tensor broadcastable to ``b_out`` (the mean target).
        generator: a CPU ``torch.Generator`` for reproducible draws.
    """
    params = _rnn_params(rnn)
    radius = _check_scale(spectral_radius, "spectral_radius")
    connections = check_positive_int(connections, "connections")
    input_scale = _check_scale(input_scale, "input_scale")
    output_scale = _check_scale(output_scale, "output_scale")
    generator = _check_generator(generator)
    b_out = params["b_out"]
    if isinstance(output_bias, Tensor):
        try:
            bias = torch.broadcast_to(output_bias.detach().to(torch.float64), b_out.shape)
        except RuntimeError:
            raise InputError(
                f"output_bias: expected a number or a tensor broadcastable to {tuple(b_out.shape)}"
                f", got shape {tuple(output_bias.shape)}"
            ) from None
    else:
        bias = torch.full(b_out.shape, _check_finite(output_bias), dtype=torch.float64)
    w_in, w_hh, w_out = params["W_in"], params["W_hh"], params["W_out"]
    w_in.copy_(torch.randn(w_in.shape, generator=generator, dtype=torch.float64) * input_scale)
    n = w_hh.shape[0]
    w_hh.copy_(_set_radius(sparse_matrix(n, n, connections, 1.0, generator), radius))
    w_out.copy_(torch.randn(w_out.shape, generator=generator, dtype=torch.float64) * output_scale)
    params["b_h"].zero_()
    b_out.copy_(bias)
    h0 = getattr(rnn, "h0", None)
    if isinstance(h0, Tensor):
        h0.zero_()
    return rnn


def _check_finite(value: Any) -> float:
    try:
        return _checks.number(value, "output_bias")
    except ValueError:
        raise InputError(f"output_bias: expected a finite number or a tensor, got {value!r}") \
            from None
