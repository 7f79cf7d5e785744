"""Peak memory of a GGN product with a 50k vocabulary, against a gradient's (issue 18, part 2).

A small causal language model (token embedding, one causal ``nn.TransformerEncoderLayer``,
LayerNorm, an untied head to V = 50,257 logits: GPT-2's vocabulary) on B x T = 4 x 32 tokens,
float32: the logits alone are B·T·V = 6.4M numbers (25.7 MB), as much as the embedding and the
head together. What a GGN product keeps and allocates per token is then the whole question.

Each measurement runs in a fresh child process: peak RSS (VmHWM, reset through
/proc/self/clear_refs) minus the RSS before the operation, i.e. what the operation needs on top
of the model and the data. The children run with ``MALLOC_MMAP_THRESHOLD_=65536``, so every
tensor of 64 KiB or more is mapped on its own and returned to the system when freed: the RSS
then follows the live tensors, and memory freed by an earlier step cannot hide a later peak.

- ``gradient (torch CE)``: ``F.cross_entropy(model(x)).backward()``, a plain training step;
- ``gradient``: ``Problem.value_and_grad`` with ``TokenCrossEntropy`` (hessfree's gradient);
- ``GGN set-up``: building the cached operator (forward pass, the ``Jᵀw`` graph, the loss state);
- ``GGN product``: one ``G @ v`` on the operator built beforehand (what each CG iteration adds);
- the same two with the output Hessian applied to all tokens at once (``slice_tokens=B·T``, the
  temporaries of an unsliced closed form), and with the classic ``hessfree.losses.CrossEntropy``
  (closed form, probabilities stored, unsliced).

    python benchmarks/bench_vocab_memory.py [--vocab 50257] [--batch 4] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from bench_products import _rss_kb  # the same RSS reading (this folder is on sys.path)
from torch import nn

import hessfree


class TinyLM(nn.Module):
    """Token embedding, one causal pre-LN encoder layer, LayerNorm, an untied head."""

    def __init__(self, vocab: int, d: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True,
                                                norm_first=True, activation="gelu")
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T, V)``."""
        t = ids.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        return self.head(self.norm(self.layer(self.emb(ids), src_mask=mask, is_causal=True)))


def _reset_peak() -> int:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _rss_kb("VmRSS")


def _child(what: str, vocab: int, batch: int, tokens: int) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = TinyLM(vocab).eval()
    ids = torch.randint(0, vocab, (batch, tokens))
    loss = {"classic": hessfree.losses.CrossEntropy(),
            "unsliced": hessfree.TokenCrossEntropy(shift=True, slice_tokens=batch * tokens)
            }.get(what.split(":")[-1], hessfree.TokenCrossEntropy(shift=True))
    targets = ids if not isinstance(loss, hessfree.losses.CrossEntropy) else ids.roll(-1, 1)
    problem = hessfree.Problem(model, loss)
    params = problem.parameters()
    v = torch.randn(sum(p.numel() for p in params.values()))
    if what.startswith("product"):
        G = hessfree.GGN(problem, (ids, targets), check=False)
        G @ v  # the first product's one-off allocations are not the steady state
    base = _reset_peak()
    if what == "torch-gradient":
        logits = model(ids)
        F.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1)).backward()
    elif what == "gradient":
        problem.value_and_grad(params, (ids, targets))
    elif what.startswith("setup"):
        G = hessfree.GGN(problem, (ids, targets), check=False)
    elif what.startswith("product"):
        G @ v
    print(json.dumps({"what": what, "peak_mb": (_rss_kb("VmHWM") - base) / 1024}))


MEASUREMENTS = ("torch-gradient", "gradient", "setup", "product", "setup:unsliced",
                "product:unsliced", "setup:classic", "product:classic")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.vocab, args.batch, args.tokens)
        return
    res = {}
    for what in MEASUREMENTS:
        proc = subprocess.run([sys.executable, __file__, "--child", what, "--vocab",
                               str(args.vocab), "--batch", str(args.batch), "--tokens",
                               str(args.tokens)], capture_output=True, text=True,
                              env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
        if proc.returncode:
            raise SystemExit(proc.stderr)
        res[what] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]
    logits_mb = args.batch * args.tokens * args.vocab * 4 / 2**20
    grad = res["gradient"]
    print(f"V = {args.vocab}, B x T = {args.batch} x {args.tokens}, float32; logits "
          f"{logits_mb:.1f} MiB")
    print(f"| {'peak memory over model+data':34s} | {'MiB':>7s} | {'x gradient':>10s} |")
    print(f"|{'-' * 36}|{'-' * 9}|{'-' * 12}|")
    names = {"torch-gradient": "gradient, torch's cross_entropy", "gradient": "gradient",
             "setup": "GGN set-up (cached)", "product": "GGN product",
             "setup:unsliced": "GGN set-up, unsliced H_L",
             "product:unsliced": "GGN product, unsliced H_L",
             "setup:classic": "GGN set-up, losses.CrossEntropy",
             "product:classic": "GGN product, losses.CrossEntropy"}
    for what in MEASUREMENTS:
        print(f"| {names[what]:34s} | {res[what]:7.1f} | {res[what] / grad:10.2f} |")


if __name__ == "__main__":
    main()
