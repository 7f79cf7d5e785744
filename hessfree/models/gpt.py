"""A GPT-style causal language model (nanoGPT's layout), for curvature and HF on transformers.

:class:`GPT` is the decoder-only transformer of GPT-2 as nanoGPT writes it ([Rad19];
[nanoGPT]; [Vas17]): token and learned position embeddings, ``n_layer`` pre-LayerNorm blocks
(causal multi-head self-attention through ``torch.nn.functional.scaled_dot_product_attention``,
then a GELU MLP of width ``4·n_embd``, each added back to the residual stream), a final
LayerNorm, and an output layer tied to the token embedding. ``forward(ids)`` returns the
logits ``(B, T, V)``: the model of :class:`~hessfree.curvature.sequence_loss.TokenCrossEntropy`
with ``shift=True`` (position ``t`` predicts token ``t + 1``), for the Gauss-Newton matrix and
HF.

No dropout (curvature products need a deterministic forward pass). Initialization as GPT-2's:
weights normal with std 0.02, the projections back into the residual stream scaled by
``1/sqrt(2·n_layer)``, biases zero. :func:`char_gpt` is nanoGPT's character-level
configuration (6 layers, 6 heads, width 384, context 256: 10.7M parameters for 65 symbols).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hessfree import _checks
from hessfree.errors import InputError

__all__ = ["GPT", "char_gpt"]


class _Attention(nn.Module):
    """Causal multi-head self-attention: one ``(d, 3d)`` projection, SDPA, one ``(d, d)``."""

    def __init__(self, d: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(d, 3 * d, bias=bias)
        self.c_proj = nn.Linear(d, d, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))


class _Block(nn.Module):
    """``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))`` (pre-LN, as GPT-2)."""

    def __init__(self, d: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, bias=bias)
        self.attn = _Attention(d, heads, bias)
        self.ln_2 = nn.LayerNorm(d, bias=bias)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d, bias=bias), nn.GELU(),
                                 nn.Linear(4 * d, d, bias=bias))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only transformer, nanoGPT's layout, output layer tied to the token embedding.

    Args:
        vocab_size: the number of tokens ``V``.
        block_size: the longest sequence (positions embedded).
        n_layer, n_head, n_embd: blocks, attention heads, width (``n_embd % n_head == 0``).
        bias: biases in the linear layers and LayerNorms (nanoGPT's ``bias``).
    """

    def __init__(self, vocab_size: int, block_size: int = 256, n_layer: int = 6,
                 n_head: int = 6, n_embd: int = 384, bias: bool = False) -> None:
        super().__init__()
        v = _checks.integer(vocab_size, "vocab_size", minimum=1)
        self.block_size = _checks.integer(block_size, "block_size", minimum=1)
        layers = _checks.integer(n_layer, "n_layer", minimum=1)
        heads = _checks.integer(n_head, "n_head", minimum=1)
        d = _checks.integer(n_embd, "n_embd", minimum=1)
        if d % heads:
            raise InputError(f"n_embd: must be a multiple of n_head ({heads}), got {d}")
        self.wte = nn.Embedding(v, d)
        self.wpe = nn.Embedding(self.block_size, d)
        self.blocks = nn.ModuleList(_Block(d, heads, bias) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, bias=bias)
        self.reset_parameters(layers)

    def reset_parameters(self, n_layer: int) -> None:
        """GPT-2's initialization: N(0, 0.02²), residual projections / sqrt(2·n_layer)."""
        for name, p in self.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight")) or name == "ln_f.weight":
                nn.init.ones_(p)
            elif p.dim() < 2:
                nn.init.zeros_(p)
            elif name.endswith(("c_proj.weight", "mlp.2.weight")):  # into the residual stream
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))
            else:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, ids: Tensor) -> Tensor:
        """Logits ``(B, T, V)`` for token ids ``(B, T)``, ``T <= block_size``."""
        t = ids.shape[-1]
        if t > self.block_size:
            raise InputError(f"ids: sequences of {t} tokens are longer than block_size "
                             f"{self.block_size}")
        x = self.wte(ids) + self.wpe(torch.arange(t, device=ids.device))
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)


def char_gpt(vocab_size: int = 65, block_size: int = 256) -> GPT:
    """NanoGPT's character-level configuration: 6 layers, 6 heads, width 384, no biases."""
    return GPT(vocab_size, block_size, n_layer=6, n_head=6, n_embd=384, bias=False)
