"""Deep autoencoders (Martens 2010; Sutskever et al. 2013) and their reconstruction error.

The autoencoders of Hinton & Salakhutdinov (2006) [H&S06] are the benchmarks of both papers.
Architectures: [S13 Table 6] lists the encoders; HFDemo's layer lists ([HFDemo], Architectures)
give the mirrored decoders, linear code units, logistic hidden units, and a logistic output for
CURVES and MNIST but a *linear* output for FACES.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hessfree import _checks
from hessfree.errors import InputError, InputTypeError
from hessfree.models.activations import HIDDEN, check_name, check_sizes
from hessfree.models.mlp import FeedForward

__all__ = [
    "DeepAutoencoder",
    "curves_autoencoder",
    "mnist_autoencoder",
    "faces_autoencoder",
    "reconstruction_error",
]

#: encoders of Sutskever et al. (2013) Table 6 ([S13 Table 6])
CURVES_ENCODER = (784, 400, 200, 100, 50, 25, 6)
MNIST_ENCODER = (784, 1000, 500, 250, 30)
FACES_ENCODER = (625, 2000, 1000, 500, 30)


class DeepAutoencoder(FeedForward):
    """An autoencoder: logistic hidden units, a linear code layer, matching output units.

    The code layer is the smallest hidden layer (it must be unique); it uses ``code`` units and
    every other hidden layer ``hidden`` units ([HFDemo]: "the code layer uses linear
    units"). ``forward`` returns the output layer's pre-nonlinearity, so the matching
    loss is BCE-with-logits for ``output="logistic"`` and squared error for ``"linear"``.

    Args:
        layer_sizes: every layer's width, input first and output last (equal: it reconstructs
            its input), e.g. ``[784, 400, 200, 100, 50, 25, 6, 25, 50, 100, 200, 400, 784]``.
        hidden: nonlinearity of the non-code hidden layers (default ``"logistic"``).
        code: nonlinearity of the code layer (default ``"linear"``).
        output: ``"logistic"`` (CURVES, MNIST) or ``"linear"`` (FACES).
    """

    def __init__(self, layer_sizes: Sequence[int], hidden: str = "logistic",
                 code: str = "linear", output: str = "logistic") -> None:
        sizes = check_sizes(layer_sizes, "layer_sizes", 3)
        if sizes[0] != sizes[-1]:
            raise InputError(
                f"layer_sizes: an autoencoder's output must match its input, got input "
                f"{sizes[0]} and output {sizes[-1]}"
            )
        inner = sizes[1:-1]
        smallest = min(inner)
        if inner.count(smallest) != 1:
            raise InputError(
                f"layer_sizes: the code layer (the smallest hidden layer) must be unique, got "
                f"{inner.count(smallest)} hidden layers of width {smallest}: {sizes}"
            )
        check_name(hidden, HIDDEN, "hidden")
        check_name(code, HIDDEN, "code")
        check_name(output, ("logistic", "linear"), "output")
        code_index = inner.index(smallest)
        acts = [code if i == code_index else hidden for i in range(len(inner))] + [output]
        super().__init__(sizes, acts)
        #: index of the code layer in ``self.layers``
        self.code_layer = code_index

    def encode(self, x: Tensor) -> Tensor:
        """The code: the code layer's activation (its pre-activation for linear codes)."""
        z = self.run(x, self.code_layer + 1)
        return self._funcs[self.code_layer](z)


def _mirror(encoder: Sequence[int]) -> list[int]:
    return list(encoder) + list(encoder[-2::-1])


def curves_autoencoder(hidden: str = "logistic") -> DeepAutoencoder:
    """CURVES: 784-400-200-100-50-25-6 and mirror, logistic output ([S13 Table 6], [HFDemo])."""
    return DeepAutoencoder(_mirror(CURVES_ENCODER), hidden=hidden, output="logistic")


def mnist_autoencoder(hidden: str = "logistic") -> DeepAutoencoder:
    """MNIST: 784-1000-500-250-30 and mirror, logistic output ([S13 Table 6], [HFDemo])."""
    return DeepAutoencoder(_mirror(MNIST_ENCODER), hidden=hidden, output="logistic")


def faces_autoencoder(hidden: str = "logistic") -> DeepAutoencoder:
    """FACES: 625-2000-1000-500-30 and mirror, *linear* output ([S13 Table 6], [HFDemo])."""
    return DeepAutoencoder(_mirror(FACES_ENCODER), hidden=hidden, output="linear")


@torch.no_grad()
def reconstruction_error(model: nn.Module, x: Tensor, batch_size: int = 1000) -> float:
    """Squared error summed over output dimensions, averaged over cases ([HFDemo] ``errtype='L2'``).

    ``sum(sum((x - f(model(x)))^2, 1)) / N`` with ``f`` the output nonlinearity, the metric of
    Sutskever et al. (2013) Table 1 ([S13 Table 1]). Computed without gradients, ``batch_size``
    cases at a time, accumulated in float64.

    Args:
        model: an autoencoder with ``output_nonlinearity`` (e.g. :class:`DeepAutoencoder`).
        x: the cases, shape ``(N, D)``; they are also the targets.
        batch_size: cases per forward pass (positive).
    """
    if not callable(getattr(model, "output_nonlinearity", None)):
        raise InputTypeError(
            "model: expected an autoencoder with an output_nonlinearity(z) method, got "
            f"{type(model).__name__}"
        )
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"x: expected a non-empty tensor of shape (N, D), got {shape}")
    _checks.integer(batch_size, "batch_size", minimum=1)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size]
        yb = model.output_nonlinearity(model(xb))
        total += (yb - xb).to(torch.float64).square().sum()
    return float(total / x.shape[0])
