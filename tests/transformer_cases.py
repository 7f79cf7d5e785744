"""Small attention models, token batches and dense torch.func references for the transformer tests.

The references use only torch.func (jacrev, hessian; torch.autograd for the Hessian of the
parameters, see :func:`dense_hessian`), torch's own ``F.cross_entropy`` and
PyTorch's math attention kernel (``sdpa_kernel(SDPBackend.MATH)``), never hessfree's loss or
attention code, so a wrong closed form or a wrong scope in hessfree cannot cancel out. Tiny
sizes (2 layers, d_model 16, vocabulary 50, 8 tokens) keep the dense matrices small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacrev
from torch.nn.attention import SDPBackend, sdpa_kernel

VOCAB, D, T = 50, 16, 8


class CausalLM(nn.Module):
    """Tied embeddings, learned positions, a causal pre-LN ``nn.TransformerEncoder`` with GELU.

    ``forward(ids)`` or ``forward(ids, pad)`` with ``pad`` a 0/1 (B, T) mask of real tokens
    (right padding), passed as the key padding mask.
    """

    def __init__(self, vocab: int = VOCAB, d: int = D, layers: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(T + 4, d) * 0.1)
        layer = nn.TransformerEncoderLayer(d, 2, 2 * d, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, ids: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        t = ids.shape[1]
        h = self.emb(ids) + self.pos[:t]
        causal = nn.Transformer.generate_square_subsequent_mask(t, dtype=h.dtype)
        key_pad = None if pad is None else pad == 0
        h = self.encoder(h, mask=causal, src_key_padding_mask=key_pad, is_causal=True)
        return self.norm(h) @ self.emb.weight.T  # the output embedding is the input one


class Seq2SeqLM(nn.Module):
    """An ``nn.TransformerDecoderLayer`` (causal self-attention, cross-attention to a source)."""

    def __init__(self, vocab: int = VOCAB, d: int = D) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.decoder = nn.TransformerDecoderLayer(d, 2, 2 * d, dropout=0.0, activation="gelu",
                                                  batch_first=True)
        self.head = nn.Linear(d, vocab)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        t = tgt.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(t, dtype=self.emb.weight.dtype)
        h = self.decoder(self.emb(tgt), self.emb(src), tgt_mask=causal, tgt_is_causal=True)
        return self.head(h)


class SDPABlock(nn.Module):
    """A nanoGPT-style block calling ``F.scaled_dot_product_attention`` itself (causal)."""

    def __init__(self, vocab: int = VOCAB, d: int = D, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.emb = nn.Embedding(vocab, d)
        self.ln1, self.ln2, self.ln_f = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, t = ids.shape
        x = self.emb(ids)
        q, k, v = self.qkv(self.ln1(x)).split(x.shape[-1], -1)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, -1))
        x = x + self.mlp(self.ln2(x))
        return self.head(self.ln_f(x))


def token_batch(n: int, seed: int, t: int = T, vocab: int = VOCAB, pad_from: dict | None = None):
    """``(ids, labels, pad)``: labels are the ids with -100 at padding and a few random places."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, t), generator=g)
    pad = torch.ones(n, t, dtype=torch.long)
    for row, start in (pad_from or {}).items():
        pad[row, start:] = 0
    labels = ids.clone()
    labels[pad == 0] = -100
    labels[torch.rand(n, t, generator=g) < 0.15] = -100
    return ids, labels, pad


def seeded(model: nn.Module, seed: int, scale: float = 0.3, perturb: bool = False) -> nn.Module:
    """``model`` in float64 and eval mode, parameters drawn from ``seed`` (``scale`` times a
    normal draw; with ``perturb``, added to the model's own initial values)."""
    g = torch.Generator().manual_seed(seed)
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64) * scale
            p.add_(noise) if perturb else p.copy_(noise)
    return model


# -- dense references ---------------------------------------------------------------------------
def ref_loss(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """Mean token cross-entropy over labels != -100, by torch's own F.cross_entropy."""
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=-100)


def ref_per_sequence(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """Per-sequence summed token cross-entropy (B,), by F.cross_entropy."""
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    per_token = F.cross_entropy(logits.movedim(-1, 1), labels, ignore_index=-100,
                                reduction="none")
    return per_token.reshape(labels.shape[0], -1).sum(1)


class Dense:
    """Dense Jacobian of the logits and the loss's dense Hessian at the logits, math attention.

    ``logits_of(params) -> logits`` calls the model; ``labels`` and ``shift`` define the loss.
    """

    def __init__(self, logits_of, params: dict, labels: torch.Tensor, shift: bool) -> None:
        self.params = {n: p.detach() for n, p in params.items()}
        self.names = list(self.params)
        self.shapes = [p.shape for p in self.params.values()]
        self.sizes = [p.numel() for p in self.params.values()]
        self.logits_of, self.labels, self.shift = logits_of, labels, shift
        theta = torch.cat([p.reshape(-1) for p in self.params.values()])
        with sdpa_kernel(SDPBackend.MATH):
            self.z = self.flat_logits(theta).detach()
            self.J = jacrev(self.flat_logits)(theta)                    # (m, dim)
            self.H_L = hessian(self.loss_of_z)(self.z)                  # (m, m)
            per_seq = jacrev(self.per_sequence)(theta)                  # (B, dim)
        counted = int((labels[:, 1:] if shift else labels).ne(-100).sum())
        self.EF = per_seq.T @ per_seq / counted
        self.theta = theta

    def unflat(self, theta: torch.Tensor) -> dict:
        return {n: t.view(s) for n, t, s in
                zip(self.names, torch.split(theta, self.sizes), self.shapes)}

    def flat_logits(self, theta: torch.Tensor) -> torch.Tensor:
        return self.logits_of(self.unflat(theta)).reshape(-1)

    def loss_of_z(self, z: torch.Tensor) -> torch.Tensor:
        return ref_loss(z.view(self.labels.shape + (-1,)), self.labels, self.shift)

    def per_sequence(self, theta: torch.Tensor) -> torch.Tensor:
        z = self.logits_of(self.unflat(theta))
        return ref_per_sequence(z, self.labels, self.shift)

    def ggn(self, V: torch.Tensor) -> torch.Tensor:
        return self.J.T @ (self.H_L @ (self.J @ V))

    def fisher(self, V: torch.Tensor) -> torch.Tensor:
        return self.EF @ V

    def value(self) -> float:
        return float(self.loss_of_z(self.z))


def dense_hessian(logits_of, params: dict, subset: list[str], labels, shift: bool):
    """The dense Hessian of the loss with respect to the parameters in ``subset`` (flat, in
    ``params``' order), by ``torch.autograd.functional.hessian`` (one double backward per row).

    Not ``torch.func.hessian``: in torch 2.13 the vmapped second derivatives of ``F.layer_norm``
    across its input and its weight are wrong (``jacrev(jacrev(f))`` and ``jacfwd(jacrev(f))``
    of ``f(b, w) = layer_norm(x + b, w).sin().sum()`` give an asymmetric matrix, 0.4 relative
    off), so a torch.func Hessian of any pre- or post-LN transformer is not a reference.
    """
    fixed = {n: p.detach() for n, p in params.items()}
    subset = [n for n in fixed if n in subset]
    sizes = [fixed[n].numel() for n in subset]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        local = dict(fixed)
        for n, t in zip(subset, torch.split(theta, sizes)):
            local[n] = t.view(fixed[n].shape)
        return ref_loss(logits_of(local), labels, shift)

    theta = torch.cat([fixed[n].reshape(-1) for n in subset])
    with sdpa_kernel(SDPBackend.MATH):
        return torch.autograd.functional.hessian(loss, theta)


def module_logits(model: nn.Module, *args, **kwargs):
    """``params -> model(*args, **kwargs)`` through functional_call (logits of an HF output)."""
    def logits_of(params: dict) -> torch.Tensor:
        out = functional_call(model, params, args, kwargs)
        return out if isinstance(out, torch.Tensor) else out.logits

    return logits_of


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(float(b.norm()), 1e-300))
