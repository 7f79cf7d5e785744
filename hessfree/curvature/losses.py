"""Matching losses on pre-nonlinearity outputs, with closed-form output Hessians.

A *matching* loss pairs an output nonlinearity with the loss whose gradient with respect to the
pre-nonlinearity ``z`` is ``f(z) - t`` ([HFDemo], "canonical link"; [Sch02]; [M10 §4.2]):
squared error for linear units, cross-entropy for logistic units, softmax cross-entropy.
Its Hessian with respect to ``z`` is then positive semi-definite and cheap, so the Gauss-Newton
matrix ``Jᵀ H_L J`` is PSD and ``H_L u`` has a closed form.

Reductions follow [HFDemo] and [S13 Table 1], **not** torch's element-wise mean:
``reduction="mean"`` sums the per-case loss over all output dimensions (and time steps) and then
averages over cases (the first dimension); ``reduction="sum"`` also sums over cases.

Targets may carry a mask: pass ``(values, mask)`` as the targets, with ``mask`` of shape
``outputs.shape[:-1]`` (one weight per case and time step, broadcast over the last dimension).
Masked-out positions contribute nothing; ``mean`` still divides by the number of cases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hessfree.batches import count, unsqueeze
from hessfree.errors import InputError, InputTypeError

__all__ = [
    "MSE",
    "BCEWithLogits",
    "CrossEntropy",
    "LossState",
    "MatchingLoss",
    "AutodiffLoss",
    "as_loss",
    "split_mask",
]

REDUCTIONS = ("mean", "sum")


def split_mask(targets: Any) -> tuple[Tensor, Tensor | None]:
    """Split ``targets`` into ``(values, mask)``; ``mask`` is None when there is none."""
    if isinstance(targets, (tuple, list)):
        if len(targets) != 2:
            raise InputError(
                "targets: expected a tensor or a pair (values, mask), "
                f"got a sequence of length {len(targets)}"
            )
        return targets[0], targets[1]
    return targets, None


@dataclass
class LossState:
    """What the curvature products need from the loss at one batch of outputs.

    Attributes:
        value: the (scaled) loss, a 0-d tensor without graph.
        grad: ``dL/dz`` (scaled), shaped like the outputs.
        scale: the factor applied to the summed per-case losses (``1/N`` or ``1``).
        hvp: ``u -> H_L u`` (scaled) for ``u`` shaped like the outputs.
    """

    value: Tensor
    grad: Tensor
    scale: float
    hvp: Callable[[Tensor], Tensor]

    def per_case_grad(self) -> Tensor:
        """Unscaled per-case output gradients ``e_i = dl_i/dz_i`` (rows of ``grad / scale``)."""
        return self.grad / self.scale


class _Reduced:
    """A loss with a per-case reduction: ``mean`` (``1/N`` of the sum) or ``sum``."""

    reduction: str

    def _set_reduction(self, reduction: str, what: str = "reduction") -> None:
        if reduction not in REDUCTIONS:
            raise InputError(f"{what}: expected 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction

    def scale_for(self, n_cases: int) -> float:
        """Factor applied to the summed per-case losses of ``n_cases`` cases."""
        return 1.0 / n_cases if self.reduction == "mean" else 1.0

    def count(self, targets: Any) -> int:
        """How many terms the ``mean`` divides by in a batch with these targets: its cases.

        The sums over cases (:mod:`hessfree.curvature.accumulate`) add these counts over the
        chunks and ranks, and :meth:`scale_for` of the total weighs the batch (a loss that
        averages over something else, such as the tokens that count in
        :class:`~hessfree.curvature.sequence_loss.TokenCrossEntropy`, overrides it).
        """
        return count(targets)


class MatchingLoss(_Reduced):
    """Base class of the closed-form matching losses.

    Args:
        reduction: ``"mean"`` (sum over output dimensions, average over cases) or ``"sum"``.
    """

    #: name used in saved files and messages
    name = "loss"

    def __init__(self, reduction: str = "mean") -> None:
        self._set_reduction(reduction)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reduction={self.reduction!r})"

    def __call__(self, outputs: Tensor, targets: Any) -> Tensor:
        """The loss, differentiable (twice) with respect to ``outputs``."""
        return self.value(outputs, targets, self.scale_for(outputs.shape[0]))

    def value(self, outputs: Tensor, targets: Any, scale: float, check: bool = True) -> Tensor:
        """``scale`` times the summed per-case losses (differentiable)."""
        return self.per_case(outputs, targets, check).sum() * scale

    def per_case(self, outputs: Tensor, targets: Any, check: bool = True) -> Tensor:
        """Per-case losses, shape ``(N,)`` (summed over every non-case dimension).

        ``check=False`` skips the data-dependent target checks (needed under ``vmap``).
        """
        return self._per_case(outputs, *self._split(outputs, targets, check))

    def prepare(self, outputs: Tensor, targets: Any, scale: float, check: bool = True,
                ) -> LossState:
        """Value, ``dL/dz`` and the closed-form ``H_L u`` at ``outputs`` (no graph kept).

        ``check=False`` skips :meth:`check` (the targets were checked by an earlier pass).
        """
        values, mask = self._split(outputs, targets, check)
        with torch.no_grad():
            return self._prepare(outputs.detach(), values, mask, scale)

    def _split(self, outputs: Tensor, targets: Any, check: bool) -> tuple[Tensor, Tensor | None]:
        """``(values, mask)`` of ``targets``, checked against ``outputs`` unless ``check=False``."""
        values, mask = split_mask(targets)
        if check:
            self.check(outputs, values, mask)
        return values, mask

    def _per_case(self, outputs: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
        """Per-case losses of split targets: the elementwise losses summed per case."""
        elem = self._elementwise(outputs, values)
        if mask is not None:
            elem = elem * mask.unsqueeze(-1) if elem.dim() == outputs.dim() else elem * mask
        return elem.reshape(outputs.shape[0], -1).sum(1)

    def check(self, outputs: Tensor, values: Tensor, mask: Tensor | None) -> None:
        """Raise ``InputError`` when targets or mask do not fit the outputs or the loss.

        One pass of cheap reductions per batch (called when a batch is evaluated or an operator
        is set up, never per product).
        """
        if outputs.dim() < 1:
            raise InputError("outputs: expected at least one (case) dimension, got a scalar")
        _check_real(outputs, values,
                    f"shape {tuple(outputs.shape)} (the model's outputs) for {type(self).__name__}",
                    f"floating-point values for {type(self).__name__}")
        self._check_domain(values)
        _check_mask(outputs, mask)

    def _check_domain(self, values: Tensor) -> None:
        """Targets outside the loss's domain (a subclass's rule; MSE takes any real)."""

    def _elementwise(self, z: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _prepare(self, z: Tensor, t: Tensor, mask: Tensor | None, scale: float) -> LossState:
        raise NotImplementedError


def _check_real(outputs: Tensor, values: Tensor, shape: str, kind: str) -> None:
    """Real-valued targets: ``outputs``' shape (else "expected ``shape``"), floating point."""
    if values.shape != outputs.shape:
        raise InputError(f"targets: expected {shape}, got {tuple(values.shape)}")
    if not values.is_floating_point():
        raise InputError(f"targets: expected {kind}, got {values.dtype}")


def _check_mask(outputs: Tensor, mask: Tensor | None) -> None:
    if mask is None:
        return
    if mask.shape != outputs.shape[:-1]:
        raise InputError(
            f"targets mask: expected shape {tuple(outputs.shape[:-1])} (outputs.shape[:-1]), "
            f"got {tuple(mask.shape)}"
        )
    if mask.numel() and bool((mask < 0).any()):
        raise InputError("targets mask: expected weights >= 0, got negative values")


def _range(values: Tensor) -> tuple[float, float]:
    """``(min, max)`` of ``values``, read with one host sync."""
    lo, hi = torch.stack([values.min(), values.max()]).tolist()
    return lo, hi


def _check_unit_interval(values: Tensor, what: str) -> None:
    if not values.numel():
        return
    lo, hi = _range(values)
    if lo < 0 or hi > 1:
        raise InputError(f"targets: {what} expects values in [0, 1], got values in "
                         f"[{lo:.4g}, {hi:.4g}]")


def _check_distributions(values: Tensor, mask: Tensor | None) -> None:
    """Soft targets are distributions over the last dimension (where the mask is on)."""
    _check_unit_interval(values, "CrossEntropy with soft targets")
    if not values.numel():
        return
    sums = values.sum(-1)
    tol = max(1e-4, 10 * torch.finfo(values.dtype).eps * values.shape[-1])
    off = (sums - 1).abs() > tol
    if mask is not None:
        off &= mask > 0
    if bool(off.any()):
        bad = float(sums[off].flatten()[0])
        raise InputError(f"targets: CrossEntropy's soft targets must sum to 1 over the classes "
                         f"(last dimension), got a sum of {bad:.4g}")


def _weights(mask: Tensor | None, scale: float) -> Tensor | float:
    """Per-position weight: ``scale`` times the mask broadcast over the last dimension."""
    return scale if mask is None else mask.unsqueeze(-1) * scale


class MSE(MatchingLoss):
    """Squared error for linear output units: per case ``sum_d (z_d - t_d)^2``.

    Matching loss of the identity ([Sch02]; [HFDemo]): ``dL/dz = 2 (z - t)``, ``H_L = 2 I``.
    This is the papers' reported "squared error" per case ([HFDemo] ``errtype='L2'``), and the
    objective HFDemo minimises for linear outputs ("the doubled version of the squared-error
    objective"); its FACES weight cost is halved (1e-5/2) because the code of the paper scaled
    this objective differently by a factor 2 ([HFDemo]).
    """

    name = "mse"

    def _elementwise(self, z: Tensor, t: Tensor) -> Tensor:
        return (z - t).square()

    def _prepare(self, z: Tensor, t: Tensor, mask: Tensor | None, scale: float) -> LossState:
        w = _weights(mask, scale)
        diff = z - t
        value = (diff.square() * w).sum()
        grad = diff * (2 * w)

        def hvp(u: Tensor) -> Tensor:
            return u * (2 * w)

        return LossState(value, grad, scale, hvp)


class BCEWithLogits(MatchingLoss):
    """Cross-entropy for logistic output units, on logits ``z``.

    Per case ``sum_d softplus(z_d) - t_d z_d`` (``t`` in [0, 1]); ``dL/dz = sigma(z) - t``,
    ``H_L = diag(sigma(z)(1 - sigma(z)))`` (matching loss of the logistic, [Sch02]).
    """

    name = "bce"

    def _check_domain(self, values: Tensor) -> None:
        """Targets are probabilities: in [0, 1]."""
        _check_unit_interval(values, "BCEWithLogits")

    def _elementwise(self, z: Tensor, t: Tensor) -> Tensor:
        return F.softplus(z) - t * z

    def _prepare(self, z: Tensor, t: Tensor, mask: Tensor | None, scale: float) -> LossState:
        w = _weights(mask, scale)
        p = torch.sigmoid(z)
        value = ((F.softplus(z) - t * z) * w).sum()
        grad = (p - t) * w
        h: list[Tensor] = []  # H_L = σ(1-σ)·w, built on the first product only

        def hvp(u: Tensor) -> Tensor:
            if not h:
                h.append(p * (1 - p) * w)
            return u * h[0]

        return LossState(value, grad, scale, hvp)


class CrossEntropy(MatchingLoss):
    """Softmax cross-entropy on logits, classes along the **last** dimension.

    Targets are class indices (integer tensor of shape ``outputs.shape[:-1]``) or probability
    vectors (same shape as the outputs). ``dL/dz = s p - t`` and ``H_L = s (diag(p) - p pᵀ)`` with
    ``p = softmax(z)`` and ``s = sum_k t_k`` (1 for indices).
    """

    name = "cross_entropy"

    def check(self, outputs: Tensor, values: Tensor, mask: Tensor | None) -> None:
        """Accept class indices of shape ``outputs.shape[:-1]`` or soft targets."""
        if outputs.dim() < 2:
            raise InputError(
                "outputs: CrossEntropy expects at least (cases, classes), "
                f"got shape {tuple(outputs.shape)}"
            )
        if values.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
            if values.shape != outputs.shape[:-1]:
                raise InputError(
                    f"targets: class indices must have shape {tuple(outputs.shape[:-1])} "
                    f"(outputs.shape[:-1]), got {tuple(values.shape)}"
                )
            n = outputs.shape[-1]
            lo, hi = _range(values) if values.numel() else (0, 0)
            if lo < 0 or hi >= n:
                raise InputError(f"targets: class indices must lie in [0, {n}), got values outside")
        elif values.shape == outputs.shape[:-1]:
            raise InputError(
                f"targets: class indices must be an integer tensor (torch.long), got "
                f"{values.dtype} of shape {tuple(values.shape)}; convert them with .long() "
                f"(probability targets have the outputs' shape {tuple(outputs.shape)})")
        else:
            _check_real(outputs, values,
                        f"class indices of shape {tuple(outputs.shape[:-1])} or probabilities "
                        f"of shape {tuple(outputs.shape)}",
                        "class indices (integers) or probabilities (floating point)")
            _check_distributions(values, mask)
        _check_mask(outputs, mask)

    def _soft(self, z: Tensor, t: Tensor) -> Tensor:
        if t.is_floating_point():
            return t
        return F.one_hot(t.long(), z.shape[-1]).to(z.dtype)

    def _elementwise(self, z: Tensor, t: Tensor) -> Tensor:
        logp = torch.log_softmax(z, dim=-1)
        if t.is_floating_point():
            return -(t * logp)
        return -logp.gather(-1, t.long().unsqueeze(-1)).squeeze(-1)

    def _prepare(self, z: Tensor, t: Tensor, mask: Tensor | None, scale: float) -> LossState:
        w = _weights(mask, scale)
        logp = torch.log_softmax(z, dim=-1)
        p = logp.exp()
        soft = self._soft(z, t)
        s = soft.sum(-1, keepdim=True)
        value = (-(soft * logp) * w).sum()
        grad = (p * s - soft) * w
        ws = w * s

        def hvp(u: Tensor) -> Tensor:
            pu = p * u
            return (pu - p * pu.sum(-1, keepdim=True)) * ws

        return LossState(value, grad, scale, hvp)


class AutodiffLoss(_Reduced):
    """Any callable ``loss(outputs, targets) -> scalar``, with ``H_L u`` by double backward.

    The reduction is read from the callable's ``reduction`` attribute when it has one (torch
    losses do), else assumed ``"mean"``; it decides how chunks of a list of minibatches are
    weighted. The loss must be a sum or mean of independent per-case terms.
    """

    name = "autodiff"

    def __init__(self, fn: Callable[[Tensor, Any], Tensor]) -> None:
        self.fn = fn
        self._set_reduction(getattr(fn, "reduction", "mean"), "loss: reduction (of a generic loss)")

    def __repr__(self) -> str:
        return f"AutodiffLoss({self.fn!r})"

    def __call__(self, outputs: Tensor, targets: Any) -> Tensor:
        """The wrapped loss."""
        return self._scalar(outputs, targets)

    def _scalar(self, outputs: Tensor, targets: Any) -> Tensor:
        value = self.fn(outputs, targets)
        if not isinstance(value, Tensor) or value.dim() != 0:
            raise InputError("loss: expected the loss callable to return a scalar tensor")
        return value

    def value(self, outputs: Tensor, targets: Any, scale: float, check: bool = True) -> Tensor:
        """``scale`` times the summed per-case losses (differentiable)."""
        return self._scalar(outputs, targets) * (scale / self.scale_for(outputs.shape[0]))

    def per_case(self, outputs: Tensor, targets: Any, check: bool = True) -> Tensor:
        """Per-case losses, by applying the loss to one case at a time (vmap-friendly)."""
        def one(z: Tensor, t: Any) -> Tensor:
            return self._scalar(z.unsqueeze(0), unsqueeze(t))

        return torch.func.vmap(one)(outputs, targets)

    def prepare(self, outputs: Tensor, targets: Any, scale: float, check: bool = True,
                ) -> LossState:
        """Value, gradient and a cached double-backward ``H_L u`` at ``outputs``.

        ``check`` is accepted for symmetry with :meth:`MatchingLoss.prepare` (nothing to check).
        """
        z = outputs.detach().requires_grad_(True)
        with torch.enable_grad():
            value = self.value(z, targets, scale)
            (grad,) = torch.autograd.grad(value, z, create_graph=True)

        def hvp(u: Tensor) -> Tensor:
            if not grad.requires_grad:
                return torch.zeros_like(u)
            (hu,) = torch.autograd.grad(grad, z, u, retain_graph=True, materialize_grads=True)
            return hu

        return LossState(value.detach(), grad.detach(), scale, hvp)


LossLike = MatchingLoss | AutodiffLoss


def as_loss(loss: Any) -> LossLike:
    """Wrap ``loss``: matching losses pass through, other callables get the autodiff fallback."""
    if isinstance(loss, (MatchingLoss, AutodiffLoss)):
        return loss
    if callable(loss):
        return AutodiffLoss(loss)
    raise InputTypeError(
        "loss: expected hessfree.losses.MSE/BCEWithLogits/CrossEntropy or a callable "
        f"loss(outputs, targets) -> scalar, got {type(loss).__name__}"
    )
