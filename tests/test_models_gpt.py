"""The GPT-style language model: its shape, causality, sizes, refusals and exact products."""

from __future__ import annotations

import pytest
import torch
from transformer_cases import Dense, module_logits, rel

import hessfree
from hessfree.errors import InputError
from hessfree.models import GPT, char_gpt


def _tiny(seed: int = 0, dtype=torch.float64) -> GPT:
    torch.manual_seed(seed)
    return GPT(11, block_size=8, n_layer=2, n_head=2, n_embd=8, bias=True).to(dtype).eval()


def test_char_gpt_is_nanogpts_character_model():
    model = char_gpt()
    n = sum(p.numel() for p in model.parameters())
    # nanoGPT prints 10.65M: it leaves the position embedding (256 x 384) out of its count
    assert n == 10_745_088 and n - 256 * 384 == 10_646_784
    assert len(model.blocks) == 6 and model.blocks[0].attn.heads == 6
    assert all(p.dim() > 1 or "ln" in name for name, p in model.named_parameters())  # no bias


def test_logits_are_causal_and_the_head_is_the_embedding():
    model = _tiny()
    ids = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(1))
    logits = model(ids)
    assert logits.shape == (3, 8, 11)
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 11
    after = model(changed)
    assert torch.equal(after[:, :5], logits[:, :5]) and not torch.allclose(after[:, 5:],
                                                                          logits[:, 5:])
    assert "lm_head.weight" not in dict(model.named_parameters())  # one tied matrix
    with torch.no_grad():
        model.wte.weight[3].zero_()
    assert torch.equal(model(ids)[..., 3], torch.zeros(3, 8, dtype=torch.float64))


def test_initialization_is_gpt2s():
    torch.manual_seed(0)
    model = GPT(50, 16, n_layer=8, n_head=4, n_embd=64)
    std = {n: float(p.detach().std()) for n, p in model.named_parameters()}
    assert std["wte.weight"] == pytest.approx(0.02, rel=0.05)
    assert std["blocks.0.attn.c_proj.weight"] == pytest.approx(0.02 / 4, rel=0.1)  # 1/sqrt(16)
    assert std["blocks.0.mlp.2.weight"] == pytest.approx(0.02 / 4, rel=0.1)
    assert torch.equal(model.blocks[0].ln_1.weight, torch.ones(64))


def test_bad_sizes_and_long_sequences_are_refused_in_one_line():
    with pytest.raises(InputError, match="n_embd: must be a multiple of n_head"):
        GPT(10, n_layer=1, n_head=3, n_embd=8)
    with pytest.raises(InputError, match="longer than block_size 8"):
        _tiny()(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("backend, cache", [("auto", True), ("jvp", True), ("jvp", False)])
def test_products_on_the_gpt_equal_dense_references(backend, cache):
    """GGN and EF on the GPT (fused attention by default: hessfree scopes it to math) against
    dense float64 torch.func references with labels that do not all count."""
    model = _tiny(2)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 11, (3, 7), generator=g)
    labels = ids.masked_fill(torch.rand(3, 7, generator=g) < 0.2, -100)
    problem = hessfree.Problem(model, hessfree.TokenCrossEntropy(shift=True))
    dense = Dense(module_logits(model, ids), problem.parameters(), labels, shift=True)
    V = torch.randn(dense.theta.numel(), 2, generator=g, dtype=torch.float64)
    G = hessfree.GGN(problem, [(ids[:1], labels[:1]), (ids[1:], labels[1:])], backend=backend,
                     cache=cache)
    F = hessfree.EmpiricalFisher(problem, (ids, labels), backend=backend, cache=cache)
    assert rel(G @ V, dense.ggn(V)) < 1e-10 and rel(F @ V, dense.fisher(V)) < 1e-10
    assert G.value == pytest.approx(dense.value(), rel=1e-12)
