"""Sequence losses across processes: real gloo groups of 3 ranks (a causal
``nn.TransformerEncoder`` LM) and 2 ranks (a Hugging Face GPT-2 with dict batches), uneven
shards.

Each rank holds some sequences (in chunks of different sizes) with different numbers of tokens
that count; products, gradients, values, the EF diagonal and the token count of a distributed
Problem with :class:`hessfree.TokenCrossEntropy` equal one process on the joined batch
(float64, relative 1e-12): the mean is over the tokens of the whole batch. The workers are
``tests/_dist_sequences.py``; the launcher is the one of ``tests/test_distributed.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from extras import require
from test_distributed import launch, rel

import hessfree

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available")


@pytest.mark.parametrize("model, world, n", [("encoder", 3, 7), ("gpt2", 2, 5)])
def test_token_losses_across_ranks_equal_the_joined_batch(tmp_path, model, world, n):
    if model == "gpt2":
        require("transformers")
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from _dist_sequences import case, quantities

    done = launch([str(HERE / "_dist_sequences.py"), str(tmp_path), str(n), "3", model], world,
                  tmp_path)
    assert all(p.returncode == 0 for p in done), [p.stderr[-3000:] for p in done]
    net, loss, batch, v, V = case(model, n, 3)
    ref = quantities(hessfree.Problem(net, loss, weight_decay=1e-3), batch, v, V)
    labels = batch["labels"] if isinstance(batch, dict) else batch[1]
    assert int(ref["ggn_count"]) == int(labels[:, 1:].ne(-100).sum())
    for k in ("ggn", "fisher"):  # the uncached jvp operators are the cached ones
        for q in ("mv", "mm", "grad"):
            assert rel(ref[f"{k}_lean_{q}"], ref[f"{k}_{q}"]) < 1e-12, (k, q)
    for r in range(world):
        got = torch.load(tmp_path / f"rank{r}.pt")
        for k, want in ref.items():
            assert got[k].shape == want.shape, k
            assert rel(got[k].double(), want.double()) < 1e-12, (k, rel(got[k], want))
