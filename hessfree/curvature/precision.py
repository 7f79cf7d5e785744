"""The precision policy: a bfloat16 or float16 model, curvature, CG and the HF update in float32.

``Problem(model, loss, precision="float32")`` on a model whose parameters are bfloat16 or
float16 ([MP18 §3]'s mixed precision, for second-order steps):

* **float32** — the parameters every operator and optimizer works with (``resolve_params``
  returns float32 copies; :class:`~hessfree.HessianFree` keeps them as master weights and
  writes each update back into the model, rounded to its dtype), every flat vector (gradient,
  ``v``, ``G v``, the EF diagonal, CG's iterates and residuals, the update, the hot start),
  the model's outputs from where the loss starts (the loss value, its gradient and its
  curvature ``H_L``: the softmax is taken in float32), and every sum over chunks and ranks.
* **the model's dtype** — the forward pass and the Jacobian products through the model
  (``J v`` and ``Jᵀ u`` for the GGN, ``H v`` for the Hessian, each chunk's gradient): the
  parameters are cast to it on entry (a cast autodiff differentiates: tangents are rounded to
  it, cotangents come back as float32), floating-point inputs too.

What it promises: a product equals the float64 product at the model's rounded weights to a
relative error of a few units of the model dtype's rounding (``2⁻⁸`` for bfloat16, ``2⁻¹¹``
for float16), times the depth of the model, whatever the batch size or number of chunks (the
sums are float32); CG and the update lose nothing more than float32 does. float16 has
float32's precision minus 13 bits but a range of ``6·10⁻⁵ … 6.5·10⁴``: a cotangent of a mean
over ``N`` cases is of order ``1/N`` and becomes subnormal (loses bits) past ``N`` of about
``10⁴`` per chunk; no loss scaling is applied, so prefer bfloat16 for large batches.

Refused with one line: a policy on a model that is not an ``nn.Module`` (a function's dtype is
its own), a float32 policy on a float64 model (it would round the weights), policies other
than ``None`` and ``"float32"`` (float64 accumulation around a 8- or 11-bit model adds nothing
over float32), the analytic ``"sequential"`` backend under a mixed policy (it computes
without the model's forward pass, so it would not run in the model's dtype), and the
forward-mode backends (``"forward"``, ``"jvp"``) on a float16 model (torch's forward-mode
LayerNorm returns NaN in float16; ``"auto"`` picks ``"double-backward"`` there).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hessfree.batches import leaves, to
from hessfree.errors import InputError

__all__ = ["POLICIES", "Precision", "precision_policy", "usable_backend"]

#: the policies ``Problem(precision=)`` takes
POLICIES = (None, "float32")
_HALF = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Precision:
    """A mixed policy: the model computes in ``compute``, everything else in ``accumulate``."""

    compute: torch.dtype
    accumulate: torch.dtype = torch.float32

    def working(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Float32 copies of ``params``: what operators and optimizers compute at."""
        return {n: p.detach().to(self.accumulate, copy=True) for n, p in params.items()}

    def model_params(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``params`` cast to the model's dtype (differentiable: autodiff sees the cast)."""
        return {n: p.to(self.compute) for n, p in params.items()}

    def inputs(self, inputs: Any) -> Any:
        """Floating-point inputs cast to the model's dtype (token ids and masks kept)."""
        found = leaves(inputs)
        return to(inputs, found[0].device, self.compute) if found else inputs

    def outputs(self, res: Any) -> Any:
        """The model's outputs (or ``(outputs, hidden)``) in float32, where the loss starts."""
        if isinstance(res, Tensor):
            return res.to(self.accumulate) if res.is_floating_point() else res
        if isinstance(res, tuple):
            return tuple(self.outputs(r) for r in res)
        return res

    def __str__(self) -> str:
        return (f"{str(self.compute).removeprefix('torch.')} model, "
                f"{str(self.accumulate).removeprefix('torch.')} accumulation")


def precision_policy(precision: Any, model: Any) -> Precision | None:
    """The policy ``Problem(precision=)`` names, for ``model``; None where nothing is mixed.

    Raises:
        InputError: a policy other than None/"float32", one on a function model or on a
            float64 model.
    """
    if precision is None:
        return None
    if precision not in POLICIES:
        raise InputError(
            f"precision: expected None or 'float32' (curvature, CG and the update in float32 "
            f"around a bfloat16/float16 model), got {precision!r}")
    if not isinstance(model, nn.Module):
        raise InputError("precision: a policy needs an nn.Module (the dtype of a function "
                         "f(params, inputs) is its parameters'); pass float32 params instead")
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    if len(dtypes) != 1:
        raise InputError(f"precision: the model's trainable parameters must share one dtype, "
                         f"got {sorted(map(str, dtypes))}")
    (dtype,) = dtypes
    if dtype == torch.float64:
        raise InputError("precision: 'float32' on a float64 model would round its weights; "
                         "drop precision= (a float64 model computes everything in float64)")
    if dtype not in _HALF:  # a float32 model: already float32 throughout
        return None
    return Precision(dtype)


def usable_backend(precision: Precision, backend: str, chosen: bool, kind: str = "ggn") -> str:
    """``backend`` if it can run under ``precision``; ``chosen``: picked by ``"auto"``.

    ``"sequential"`` computes without the model's forward pass, so not in its dtype: refused.
    Forward mode in float16 is refused too (``"auto"`` takes ``"double-backward"`` instead):
    torch 2.13's forward-mode rule of LayerNorm returns NaN in float16 on the CPU. So is the
    Hessian (``kind="hessian"``) of a float16 model: its double backward returned NaN on a
    GPT (the GGN's, which differentiates once less, does not).
    """
    if precision.compute == torch.float16 and kind == "hessian":
        raise InputError(
            "Hessian: second derivatives through a float16 model return NaN in torch (measured "
            "on a GPT); use the GGN, or a bfloat16 model")
    if backend == "sequential":
        raise InputError(
            f"backend: 'sequential' computes without the model's forward pass, so it cannot "
            f"run in the model's dtype ({precision}); use 'double-backward', 'jvp' or 'auto'")
    if precision.compute == torch.float16 and backend in ("forward", "jvp"):
        if chosen:
            return "double-backward"
        raise InputError(
            f"backend: {backend!r} is forward mode, which returns NaN through a float16 "
            "LayerNorm in torch; use 'double-backward' (or 'auto'), or a bfloat16 model")
    return backend
