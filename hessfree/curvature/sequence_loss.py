"""Token-level softmax cross-entropy for sequence outputs ``(B, T, V)``: language-model losses.

:class:`TokenCrossEntropy` is the loss Hugging Face's models train with ([HF-Loss]): softmax
cross-entropy per token, labels equal to ``ignore_index`` (-100) counting for nothing, and the
mean taken over the tokens that count — **in the whole batch**: over every chunk of a chunked
batch and every rank of a process group, the normaliser is the global number of counted tokens
(:meth:`TokenCrossEntropy.count` feeds the sums over chunks and ranks), exactly as on the joined
batch; not the number of sequences, and not a mean of per-chunk means. With ``shift=True``
position ``t`` predicts label ``t + 1`` (causal language models: ``logits[:, :-1]`` against
``labels[:, 1:]``); the last position then predicts nothing.

The split into model and loss for the Gauss-Newton matrix ([Sch02]; [M10 §4.2]): the model's
outputs ``z`` are the **logits**, and the loss is the token cross-entropy of ``softmax(z)``. Its
output Hessian is block diagonal over the tokens, ``w_t (diag(p_t) − p_t p_tᵀ)`` with
``p_t = softmax(z_t)`` and ``w_t`` the token's weight (``1/N_tokens`` or 0); each block is PSD
(``uᵀ(diag p − p pᵀ)u = Σ p u² − (Σ p u)² ≥ 0`` by Jensen), so ``G = Jᵀ H_L J`` is PSD whatever
the network, attention and normalisation layers in ``J``. It is applied in closed form,
``H_L u = w ⊙ (p ⊙ u − p (pᵀu))``, never as a ``V × V`` block, and in slices of tokens so that
the temporaries of a large vocabulary stay at ``slice × V`` numbers: the set-up keeps the
log-normaliser per token (not the probabilities) and recomputes ``p`` slice by slice in each
product.

Cases (for the empirical Fisher and its diagonal, and for chunking and sharding) are the
sequences, the rows of the batch: the per-case loss of a sequence is the sum of its tokens'
losses, and the EF is ``(1/N_tokens) Σ_sequences ∇l_s ∇l_sᵀ``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hessfree import _checks
from hessfree.curvature.losses import LossState, MatchingLoss, split_mask
from hessfree.errors import InputError

__all__ = ["TokenCrossEntropy", "IGNORE_INDEX"]

#: Hugging Face's (and torch's) label for a token that does not count
IGNORE_INDEX = -100

#: numbers held at once by one slice of the closed-form products (about 32 MiB in float64)
SLICE_NUMBERS = 1 << 22

_INTEGER = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


class TokenCrossEntropy(MatchingLoss):
    """Softmax cross-entropy per token on logits ``(B, T, V)`` (or ``(B, V)``), labels ``(B, T)``.

    Args:
        ignore_index: labels equal to it count for nothing (Hugging Face's -100).
        shift: next-token prediction as Hugging Face's causal LMs do it: the logits at ``t``
            are scored against the label at ``t + 1``; the labels are given unshifted (the
            ``input_ids`` themselves, padding set to ``ignore_index``).
        reduction: ``"mean"``: divided by the number of tokens that count in the whole batch
            (over chunks and ranks); ``"sum"``: summed.
        slice_tokens: tokens per slice of the closed-form products (None: about
            :data:`SLICE_NUMBERS` numbers per slice, ``SLICE_NUMBERS // V`` tokens).

    Targets are integer labels of shape ``outputs.shape[:-1]``, or ``(labels, mask)`` with a
    0/1 padding mask of the same shape (positions with mask 0 count for nothing, like
    ``ignore_index``; shifted with the labels).
    """

    name = "token_cross_entropy"

    def __init__(self, ignore_index: int = IGNORE_INDEX, shift: bool = False,
                 reduction: str = "mean", slice_tokens: int | None = None) -> None:
        super().__init__(reduction)
        self.ignore_index = _checks.integer(ignore_index, "ignore_index")
        self.shift = _checks.boolean(shift, "shift")
        self.slice_tokens = None if slice_tokens is None else \
            _checks.integer(slice_tokens, "slice_tokens", minimum=1)

    def __repr__(self) -> str:
        return (f"TokenCrossEntropy(ignore_index={self.ignore_index}, shift={self.shift}, "
                f"reduction={self.reduction!r})")

    def __call__(self, outputs: Tensor, targets: Any) -> Tensor:
        """The loss (differentiable twice), averaged over the tokens that count in this batch."""
        return self.value(outputs, targets, self.scale_for(self.count(targets)))

    # -- the tokens that count ---------------------------------------------------------------
    def _labels(self, targets: Any) -> tuple[Tensor, Tensor]:
        """``(safe labels, counts)``: shifted if asked, ignored ones replaced by 0; a bool mask.

        Only tensor operations (no data-dependent Python), so it runs under ``vmap``.
        """
        return self._labels_of(*split_mask(targets))

    def _labels_of(self, labels: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """:meth:`_labels` of targets already split into labels and mask."""
        valid = labels != self.ignore_index
        if mask is not None:
            valid = valid & (mask != 0)
        if self.shift:
            valid = F.pad(valid[..., 1:], (0, 1), value=False)
            labels = F.pad(labels[..., 1:], (0, 1), value=0)
        return torch.where(valid, labels, torch.zeros_like(labels)).long(), valid

    def count(self, targets: Any) -> int:
        """The tokens that count in a batch with these targets (after the shift)."""
        return int(self._labels(targets)[1].sum())

    def token_weights(self, targets: Any) -> Tensor:
        """1 at the positions of the logits whose (shifted) label counts, else 0 (bool)."""
        return self._labels(targets)[1]

    def scale_for(self, n_cases: int) -> float:
        """``1/N`` for ``mean`` over ``N`` counted tokens; refuses a batch with none."""
        if self.reduction == "mean" and n_cases == 0:
            raise InputError("batch: no token counts (every label is ignore_index "
                             f"{self.ignore_index} or masked out), so the mean over tokens is "
                             "undefined")
        return super().scale_for(n_cases)

    def check(self, outputs: Tensor, values: Tensor, mask: Tensor | None) -> None:
        """Integer labels of shape ``outputs.shape[:-1]`` in ``[0, V)`` or ``ignore_index``."""
        if outputs.dim() < 2:
            raise InputError("outputs: TokenCrossEntropy expects (cases, [tokens,] vocabulary) "
                             f"logits, got shape {tuple(outputs.shape)}")
        if self.shift and outputs.dim() < 3:
            raise InputError("outputs: shift=True needs a token dimension, (cases, tokens, "
                             f"vocabulary), got shape {tuple(outputs.shape)}")
        if values.dtype not in _INTEGER:
            raise InputError(f"targets: TokenCrossEntropy takes integer token ids, got "
                             f"{values.dtype}; for soft targets use hessfree.losses.CrossEntropy")
        if values.shape != outputs.shape[:-1]:
            raise InputError(f"targets: token ids must have shape {tuple(outputs.shape[:-1])} "
                             f"(outputs.shape[:-1]), got {tuple(values.shape)}")
        v = outputs.shape[-1]
        bad = (values != self.ignore_index) & ((values < 0) | (values >= v))
        if mask is not None:
            if mask.shape != values.shape:
                raise InputError(f"targets mask: expected shape {tuple(values.shape)} (the "
                                 f"labels'), got {tuple(mask.shape)}")
            if mask.numel() and bool(((mask != 0) & (mask != 1)).any()):
                raise InputError("targets mask: expected a 0/1 padding mask")
            bad &= mask != 0
        if values.numel() and bool(bad.any()):
            raise InputError(f"targets: token ids must lie in [0, {v}) or be ignore_index "
                             f"{self.ignore_index}, got values outside")

    # -- values --------------------------------------------------------------------------------
    def _per_case(self, outputs: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
        """Per-sequence losses ``(B,)``: the sum of the counted tokens' cross-entropies."""
        labels, valid = self._labels_of(values, mask)
        nll = torch.logsumexp(outputs, -1) - outputs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        nll = torch.where(valid, nll, torch.zeros_like(nll))
        return nll.reshape(outputs.shape[0], -1).sum(1)

    def _prepare(self, z: Tensor, t: Tensor, mask: Tensor | None, scale: float) -> LossState:
        """Value, ``dL/dz`` and the closed-form ``H_L u``, sliced over tokens."""
        labels, valid = self._labels_of(t, mask)
        return self._token_state(z, labels, valid, scale)

    def _step(self, v: int) -> int:
        return self.slice_tokens or max(1, SLICE_NUMBERS // max(v, 1))

    def _token_state(self, z: Tensor, labels: Tensor, valid: Tensor, scale: float) -> LossState:
        v = z.shape[-1]
        zf = z.reshape(-1, v)  # (P, V): every position of every sequence
        n_pos = zf.shape[0]
        lab = labels.reshape(-1, 1)
        w = valid.reshape(-1, 1).to(z.dtype) * scale  # (P, 1)
        step = self._step(v)
        slices = [slice(a, min(a + step, n_pos)) for a in range(0, n_pos, step)]
        lse = zf.new_empty(n_pos, 1)
        grad = torch.empty_like(zf)
        for sl in slices:
            lse[sl] = torch.logsumexp(zf[sl], -1, keepdim=True)
            g = torch.sub(zf[sl], lse[sl], out=grad[sl]).exp_()  # p
            g.scatter_add_(-1, lab[sl], g.new_full((g.shape[0], 1), -1.0)).mul_(w[sl])
        value = ((lse - zf.gather(-1, lab)) * w).sum()

        def hvp(u: Tensor) -> Tensor:
            """``w ⊙ (p ⊙ u − p (pᵀu))`` per token, one slice of tokens at a time.

            ``u`` is shaped like the logits, or has leading columns.
            """
            uf = u.reshape(-1, n_pos, v)
            out = torch.empty_like(uf)
            for sl in slices:
                p = torch.sub(zf[sl], lse[sl]).exp_()
                o = torch.mul(uf[:, sl], p, out=out[:, sl])
                o.addcmul_(p, o.sum(-1, keepdim=True), value=-1.0).mul_(w[sl])
            return out.reshape(u.shape)

        return LossState(value, grad.reshape(z.shape), scale, hvp)
