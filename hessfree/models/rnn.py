"""``TanhRNN``: the tanh RNN of Martens & Sutskever (2011), with the structural-damping hook.

The model of [M&S11] and of Sutskever et al. (2013) [S13 §4]: 100 tanh hidden units.

Recurrence (batch first, ``x`` of shape ``(N, T, n_in)``)::

    a_t = W_in x_t + W_hh h_{t-1} + b_h        (hidden pre-activation)
    h_t = tanh(a_t)
    z_t = W_out h_t + b_out                    (output pre-nonlinearity, returned)

``W_in x_t + b_h`` is computed for all steps in one matmul before the time loop. The loop is plain
torch ops, so the model works under ``torch.func.functional_call``, ``torch.func.vmap`` and
double-backward autograd.

**Structural damping hook** ([M&S11]; [HF-RNN]):
``forward(x, return_hidden=True)`` returns ``(outputs, hidden_preacts)`` with ``hidden_preacts``
the ``(N, T, n_hidden)`` pre-activations ``a_t`` from the *same* forward pass, and the class
attribute ``hidden_nonlinearity = "tanh"`` names the nonlinearity whose matching loss the damping
term uses (Sutskever's code: ``struct_damp_nonlin = Tanh``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hessfree.errors import InputError, InputTypeError
from hessfree.models.activations import (
    OUTPUTS,
    check_name,
    check_positive_int,
    output_function,
)

__all__ = ["TanhRNN"]

INITIAL_STATES = ("zero", "learned")


def _check_steps(output_steps: object) -> str | tuple[int, ...] | None:
    if output_steps is None or output_steps == "last":
        return output_steps  # type: ignore[return-value]
    if isinstance(output_steps, str):
        raise InputError(
            f"output_steps: expected None, 'last' or a list of step indices, got {output_steps!r}"
        )
    if not isinstance(output_steps, Sequence) or not output_steps:
        raise InputError(
            "output_steps: expected None, 'last' or a non-empty list of step indices, got "
            f"{output_steps!r}"
        )
    for s in output_steps:
        if isinstance(s, bool) or not isinstance(s, int):
            raise InputTypeError(f"output_steps: expected integer step indices, got {s!r}")
    return tuple(output_steps)


class TanhRNN(nn.Module):
    """A tanh RNN mapping ``(N, T, n_in)`` sequences to ``(N, T', n_out)`` output logits.

    The initial state ``h_0`` is zero by default ([S13 Table 4] lists no initial
    state parameter); ``initial_state="learned"`` adds a trainable ``h0`` (shape ``(n_hidden,)``,
    a hidden *state*, not a pre-activation), as Sutskever's HF-RNN code [HF-RNN] does (``h_init``).

    Parameters: ``W_in (n_hidden, n_in)``, ``W_hh (n_hidden, n_hidden)``, ``b_h (n_hidden,)``,
    ``W_out (n_out, n_hidden)``, ``b_out (n_out,)`` and, if learned, ``h0``. They are plain
    ``nn.Parameter`` s (the weights are shared across time, so no ``nn.Linear`` fast path can
    apply). Default values are PyTorch-style uniform; use :func:`hessfree.models.init.esn_init_`
    for the paper's initialization.

    Args:
        n_in: input dimension.
        n_hidden: number of tanh hidden units (default 100, [S13 §4]).
        n_out: output dimension.
        output: output nonlinearity for :meth:`output_nonlinearity` and the matching loss:
            ``"linear"`` (squared error), ``"logistic"`` (BCE) or ``"softmax"`` (softmax
            cross-entropy over the last dimension).
        output_steps: where to emit outputs: ``None`` (every step, ``T' = T``), ``"last"``
            (``T' = 1``) or a list of step indices (negative ones count from the end).
        initial_state: ``"zero"`` (default) or ``"learned"``.
    """

    hidden_nonlinearity = "tanh"

    def __init__(self, n_in: int, n_hidden: int = 100, n_out: int = 1, output: str = "linear",
                 output_steps: str | Sequence[int] | None = None,
                 initial_state: str = "zero") -> None:
        super().__init__()
        self.n_in = check_positive_int(n_in, "n_in")
        self.n_hidden = check_positive_int(n_hidden, "n_hidden")
        self.n_out = check_positive_int(n_out, "n_out")
        n_in, n_hidden, n_out = self.n_in, self.n_hidden, self.n_out
        self.output = check_name(output, OUTPUTS, "output")
        self.output_steps = _check_steps(output_steps)
        check_name(initial_state, INITIAL_STATES, "initial_state")
        self.W_in = nn.Parameter(torch.empty(n_hidden, n_in))
        self.W_hh = nn.Parameter(torch.empty(n_hidden, n_hidden))
        self.b_h = nn.Parameter(torch.empty(n_hidden))
        self.W_out = nn.Parameter(torch.empty(n_out, n_hidden))
        self.b_out = nn.Parameter(torch.empty(n_out))
        self.h0 = nn.Parameter(torch.zeros(n_hidden)) if initial_state == "learned" else None
        self.reset_parameters()

    @property
    def initial_state(self) -> str:
        """``"learned"`` when ``h0`` is a parameter, else ``"zero"``."""
        return "zero" if self.h0 is None else "learned"

    def reset_parameters(self) -> None:
        """PyTorch's ``nn.Linear``-style default: uniform in ``±1/sqrt(fan_in)``."""
        for w, b, fan_in in ((self.W_in, self.b_h, self.n_in + self.n_hidden),
                             (self.W_hh, None, self.n_in + self.n_hidden),
                             (self.W_out, self.b_out, self.n_hidden)):
            bound = fan_in ** -0.5
            nn.init.uniform_(w, -bound, bound)
            if b is not None:
                nn.init.uniform_(b, -bound, bound)
        if self.h0 is not None:
            nn.init.zeros_(self.h0)

    def extra_repr(self) -> str:
        """Sizes and options, for ``print(model)``."""
        return (f"n_in={self.n_in}, n_hidden={self.n_hidden}, n_out={self.n_out}, "
                f"output={self.output!r}, output_steps={self.output_steps!r}, "
                f"initial_state={self.initial_state!r}")

    def _step_index(self, T: int) -> Tensor | None:
        steps = self.output_steps
        if steps is None:
            return None
        if steps == "last":
            steps = (T - 1,)
        bad = [s for s in steps if not -T <= s < T]
        if bad:
            raise InputError(f"output_steps: indices {bad} are out of range for T = {T} steps")
        return torch.tensor([s % T for s in steps], dtype=torch.long)

    def forward(self, x: Tensor, return_hidden: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Output logits ``(N, T', n_out)``; with ``return_hidden`` also the hidden pre-activations.

        Args:
            x: input sequences, shape ``(N, T, n_in)``, batch first.
            return_hidden: also return the ``(N, T, n_hidden)`` pre-activations ``a_t`` (the
                argument of tanh) of this forward pass, for structural damping ([HF-RNN]).
        """
        if not isinstance(x, Tensor):
            raise InputTypeError(f"x: expected a tensor, got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.n_in or x.shape[1] == 0:
            raise InputError(
                f"x: expected shape (N, T, {self.n_in}) with T >= 1, got {tuple(x.shape)}"
            )
        u = torch.matmul(x, self.W_in.T) + self.b_h  # W_in x_t + b_h for every step at once
        w_hh_t = self.W_hh.T
        if self.h0 is None:
            h = u.new_zeros(u.shape[0], self.n_hidden)
        else:
            h = self.h0.expand(u.shape[0], self.n_hidden)
        idx = self._step_index(u.shape[1])
        wanted = None if idx is None else set(idx.tolist())
        pre, outs = [], {}
        # unbind and per-step outputs, not u[:, t] and a stack of hidden states: indexing and
        # stacking (N, T, H) tensors costs T full-size zero fills in (double) backward
        for t, u_t in enumerate(u.unbind(1)):
            a = u_t + h @ w_hh_t
            h = torch.tanh(a)
            pre.append(a)
            if wanted is None or t in wanted:
                outs[t] = torch.addmm(self.b_out, h, self.W_out.T)
        order = range(u.shape[1]) if idx is None else idx.tolist()
        out = torch.stack([outs[t] for t in order], dim=1)
        if return_hidden:
            return out, torch.stack(pre, dim=1)
        return out

    def output_nonlinearity(self, z: Tensor) -> Tensor:
        """The output nonlinearity applied to logits ``z`` (softmax over the last dimension)."""
        return output_function(self.output)(z)

    def weight_layers(self) -> list[tuple[str, Tensor, Tensor | None, str]]:
        """``(name, weight, bias, unit nonlinearity)`` per weight matrix, for sparse init."""
        return [("W_in", self.W_in, self.b_h, "tanh"), ("W_hh", self.W_hh, None, "tanh"),
                ("W_out", self.W_out, self.b_out, self.output)]
