"""A laplace-torch backend on hessfree's exact curvature: ``Laplace(..., backend=HessfreeGGN)``.

laplace-torch ([Dax21]) fits a Laplace approximation through a *curvature interface* whose
``full``, ``diag``, ``kron`` and ``jacobians`` give the loss, the curvature of the summed
log-likelihood and the model's Jacobians. :class:`HessfreeGGN` and :class:`HessfreeEF`
implement it with hessfree's operators on any ``nn.Module`` hessfree supports:

* ``full`` — the dense GGN (``Σ_i J_iᵀ H_i J_i``) or empirical Fisher, one batched product per
  block of columns of the identity (:meth:`hessfree.linops.FlatOperator.dense`);
* ``diag`` — the exact diagonal (:func:`hessfree.curvature.diag`, ``method="exact"``): one
  per-case-gradient pass per output, no dense matrix;
* ``jacobians`` / ``last_layer_jacobians`` — per-case Jacobians (:func:`hessfree.curvature.
  jacobian`), ``(batch, outputs, parameters)``;
* ``kron`` — refused in one line: hessfree computes exact curvature, not Kronecker factors.

All weights and the last layer (``Laplace(subset_of_weights="last_layer")``: the curvature of
the last layer on the features ``model.forward_with_features`` gives), subnetworks (rows and
columns of the full matrix, entries of the diagonal), classification and regression.
laplace-torch's conventions are kept: the loss is the *sum* over cases of
``CrossEntropyLoss`` or ``MSELoss``, and curvature and loss are multiplied by its ``factor``
(``1/2`` for regression, which turns ``MSELoss`` into the Gaussian negative log-likelihood).

Requires the ``laplace-torch`` package (an optional extra, see the README for installing it
without ``torchvision``).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import torch
from laplace.curvature import CurvatureInterface, EFInterface, GGNInterface
from torch import Tensor, nn

from hessfree.curvature.diagonals import diag
from hessfree.curvature.jacobians import jacobian
from hessfree.curvature.losses import MSE, CrossEntropy
from hessfree.curvature.operator import GGN, CurvatureOperator, EmpiricalFisher
from hessfree.curvature.problem import Problem
from hessfree.errors import InputError

__all__ = ["HessfreeEF", "HessfreeGGN", "HessfreeInterface"]

KRON_REFUSAL = ("hessian_structure: 'kron' asks for Kronecker factors, which the hessfree "
                "backend does not approximate (it computes exact curvature); use "
                "hessian_structure='full' or 'diag' with it, or a K-FAC backend such as "
                "CurvlinopsGGN for 'kron'")


class HessfreeInterface(CurvatureInterface):
    """The shared part of :class:`HessfreeGGN` and :class:`HessfreeEF`.

    Args:
        model: the network (a ``laplace.utils.FeatureExtractor`` for last-layer Laplace).
        likelihood: ``"classification"`` or ``"regression"``.
        last_layer: curvature of the last layer only (set by laplace-torch's ``LLLaplace``).
        subnetwork_indices: indices of the flattened parameters to keep (``SubnetLaplace``).
        dict_key_x: key of the inputs in dict batches (refused: hessfree calls the model on
            tensors).
        dict_key_y: key of the targets in dict batches.
        backend: hessfree's ``J v`` backend (``"auto"``, ``"double-backward"``, ...).
        chunk_size: cases per per-case-gradient slice of the diagonal and the Jacobians.
    """

    operator: type[CurvatureOperator] = GGN

    def __init__(self, model: nn.Module, likelihood: str, last_layer: bool = False,
                 subnetwork_indices: torch.LongTensor | None = None,
                 dict_key_x: str = "input_ids", dict_key_y: str = "labels",
                 backend: str = "auto", chunk_size: int | None = None) -> None:
        super().__init__(model, likelihood, last_layer, subnetwork_indices, dict_key_x,
                         dict_key_y)
        self.hessfree_backend = backend
        self.chunk_size = chunk_size
        self.hessfree_loss = CrossEntropy("sum") if likelihood == "classification" \
            else MSE("sum")

    def _problem(self, x: Any, y: Tensor | None = None) -> tuple[Problem, Any]:
        """The hessfree problem and batch.

        The whole model on ``x``, or the last layer on the features of ``x``.
        """
        if isinstance(x, MutableMapping):
            raise InputError("x: the hessfree backend calls the model on tensors; dict "
                             "batches (Hugging Face style) are not supported here")
        if self.last_layer:
            with torch.no_grad():
                _, features = self.model.forward_with_features(x)
            return Problem(self._model, self.hessfree_loss), (features.detach(), y)
        return Problem(self._model, self.hessfree_loss), (x, y)

    def _operator(self, x: Any, y: Tensor) -> CurvatureOperator:
        problem, batch = self._problem(x, y)
        return self.operator(problem, batch, backend=self.hessfree_backend)

    def _select(self, H: Tensor) -> Tensor:
        idx = self.subnetwork_indices
        if idx is None:
            return H
        return H[idx] if H.dim() == 1 else H[idx][:, idx]

    def full(self, x: Any, y: Tensor, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """The loss and the dense curvature ``(P, P)``, both times laplace-torch's factor."""
        op = self._operator(x, y)
        H = op.dense(max_dim=op.dim)
        loss = torch.as_tensor(op.value, dtype=H.dtype, device=H.device)
        return self.factor * loss, self.factor * self._select(H)

    def diag(self, x: Any, y: Tensor, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """The loss and the exact diagonal ``(P,)``, both times laplace-torch's factor."""
        op = self._operator(x, y)
        d = diag(op, "exact", chunk_size=self.chunk_size).value
        loss = torch.as_tensor(op.value, dtype=d.dtype, device=d.device)
        return self.factor * loss, self.factor * self._select(d)

    def kron(self, x: Any, y: Tensor, N: int, **kwargs: Any) -> Any:
        """Refused: hessfree computes exact curvature, not Kronecker factors."""
        raise InputError(KRON_REFUSAL)

    def jacobians(self, x: Any, enable_backprop: bool = False) -> tuple[Tensor, Tensor]:
        """Per-case Jacobians ``(batch, outputs, parameters)`` and the outputs.

        With ``enable_backprop`` (gradients through the Jacobians, for marginal-likelihood
        training of the inputs) laplace-torch's own ``torch.func`` path is used.
        """
        if enable_backprop:
            return super().jacobians(x, enable_backprop)
        if self.last_layer:
            return self.last_layer_jacobians(x)
        problem, _ = self._problem(x)
        J, f = jacobian(problem, problem.resolve_params(None), x, self.chunk_size)
        J = J if self.subnetwork_indices is None else J[:, :, self.subnetwork_indices]
        return J.detach(), f.detach()

    def last_layer_jacobians(self, x: Any, enable_backprop: bool = False
                             ) -> tuple[Tensor, Tensor]:
        """Jacobians of the outputs with respect to the last layer's parameters."""
        if enable_backprop:
            return super().last_layer_jacobians(x, enable_backprop)
        with torch.no_grad():
            f, features = self.model.forward_with_features(x)
        problem = Problem(self.model.last_layer, self.hessfree_loss)
        J, _ = jacobian(problem, problem.resolve_params(None), features.detach(),
                        self.chunk_size)
        return J.detach(), f.detach()


class HessfreeGGN(HessfreeInterface, GGNInterface):
    """The generalized Gauss-Newton matrix (laplace-torch's default curvature) by hessfree."""

    operator = GGN

    def __init__(self, model: nn.Module, likelihood: str, last_layer: bool = False,
                 subnetwork_indices: torch.LongTensor | None = None,
                 dict_key_x: str = "input_ids", dict_key_y: str = "labels",
                 backend: str = "auto", chunk_size: int | None = None,
                 stochastic: bool = False) -> None:
        if stochastic:
            raise InputError("stochastic: the hessfree backend gives the exact GGN; for a "
                             "Monte-Carlo diagonal call hessfree.curvature.diag(op, 'mc')")
        super().__init__(model, likelihood, last_layer, subnetwork_indices, dict_key_x,
                         dict_key_y, backend, chunk_size)


class HessfreeEF(HessfreeInterface, EFInterface):
    """The empirical Fisher ``Σ_i ∇l_i ∇l_iᵀ`` by hessfree."""

    operator = EmpiricalFisher
