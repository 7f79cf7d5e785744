"""Fully connected networks: a stack of ``nn.Linear`` layers with elementwise nonlinearities.

Every model returns the output layer's *pre-nonlinearity* (logits), so that a matching loss
(squared error for linear outputs, cross-entropy for logistic or softmax outputs) can be applied
and the Gauss-Newton matrix stays positive semi-definite ([M10 §4.2]; [Sch02]; [HFDemo]).
The layers are plain ``nn.Linear`` modules called once each on 2-D inputs, so the models work
under ``torch.func.functional_call`` and ``torch.func.vmap``, and the curvature package's
``nn.Linear`` fast path for per-case squared gradients applies.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from hessfree.errors import InputError, InputTypeError
from hessfree.models.activations import (
    HIDDEN,
    OUTPUTS,
    activation,
    check_name,
    check_sizes,
    output_function,
)

__all__ = ["FeedForward", "MLP"]


class FeedForward(nn.Module):
    """``nn.Linear`` layers ``sizes[i] -> sizes[i+1]`` with one nonlinearity name per layer.

    ``activations[i]`` is applied to the output of layer ``i``; the last entry names the output
    nonlinearity, which ``forward`` does *not* apply (it returns logits).

    Args:
        sizes: layer widths, input first (at least 2 entries).
        activations: one name per layer (``len(sizes) - 1``); hidden names from
            ``("logistic", "tanh", "relu", "linear")``, the last from
            ``("linear", "logistic", "softmax")``.
    """

    def __init__(self, sizes: Sequence[int], activations: Sequence[str]) -> None:
        super().__init__()
        sizes = check_sizes(sizes, "sizes", 2)
        acts = list(activations)
        if len(acts) != len(sizes) - 1:
            raise InputError(
                f"activations: expected {len(sizes) - 1} names (one per layer), got {len(acts)}"
            )
        for i, name in enumerate(acts[:-1]):
            check_name(name, HIDDEN, f"activations[{i}]")
        check_name(acts[-1], OUTPUTS, "output")
        self.sizes: tuple[int, ...] = tuple(sizes)
        self.activations: tuple[str, ...] = tuple(acts)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self._funcs = [activation(name) for name in acts[:-1]]

    @property
    def output(self) -> str:
        """The name of the output nonlinearity."""
        return self.activations[-1]

    def extra_repr(self) -> str:
        """Sizes and nonlinearities, for ``print(model)``."""
        return f"sizes={list(self.sizes)}, activations={list(self.activations)}"

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise InputTypeError(f"x: expected a tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.sizes[0]:
            raise InputError(
                f"x: expected shape (N, {self.sizes[0]}), got {tuple(x.shape)}"
            )

    def run(self, x: Tensor, n_layers: int) -> Tensor:
        """Pre-activation of layer ``n_layers - 1`` (the first ``n_layers`` layers applied)."""
        self._check_input(x)
        h = x
        for i in range(n_layers):
            if i:
                h = self._funcs[i - 1](h)
            h = self.layers[i](h)
        return h

    def forward(self, x: Tensor) -> Tensor:
        """Output-layer pre-nonlinearity (logits), shape ``(N, sizes[-1])``."""
        return self.run(x, len(self.layers))

    def output_nonlinearity(self, z: Tensor) -> Tensor:
        """The output nonlinearity applied to logits ``z`` (softmax over the last dimension)."""
        return output_function(self.output)(z)

    def curvature_layers(self) -> list[nn.Linear | str]:
        """The forward pass as a chain of ``nn.Linear`` and unit names (logits out).

        Lets ``hessfree.GGN`` use its analytic ``"sequential"`` backend on this model.
        """
        chain: list[nn.Linear | str] = []
        for i, layer in enumerate(self.layers):
            if i:
                chain.append(self.activations[i - 1])
            chain.append(layer)
        return chain

    def weight_layers(self) -> list[tuple[str, Tensor, Tensor | None, str]]:
        """``(name, weight, bias, unit nonlinearity)`` per layer, for sparse init."""
        return [
            (f"layers.{i}", layer.weight, layer.bias, act)
            for i, (layer, act) in enumerate(zip(self.layers, self.activations))
        ]


class MLP(FeedForward):
    """A classifier or regressor: every hidden layer uses ``activation``.

    Example: ``MLP([784, 600, 10], "logistic", output="softmax")``, the MNIST classifier on
    which the seed blog compares SGD, CM and NAG. ``forward`` returns logits.

    Args:
        sizes: layer widths, input first (at least 2 entries).
        activation: hidden nonlinearity, ``"logistic"``, ``"tanh"``, ``"relu"`` or ``"linear"``.
        output: ``"softmax"`` (default), ``"logistic"`` or ``"linear"``.
    """

    def __init__(self, sizes: Sequence[int], activation: str = "logistic",
                 output: str = "softmax") -> None:
        sizes = check_sizes(sizes, "sizes", 2)
        check_name(activation, HIDDEN, "activation")
        check_name(output, OUTPUTS, "output")
        super().__init__(sizes, [activation] * (len(sizes) - 2) + [output])
