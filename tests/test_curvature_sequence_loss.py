"""TokenCrossEntropy: values, gradients and the closed-form H_L against torch; the token count as
the normaliser across chunks; checks. References use torch's F.cross_entropy and torch.func."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import hessian
from transformer_cases import (
    CausalLM,
    Dense,
    SDPABlock,
    module_logits,
    ref_loss,
    rel,
    seeded,
    token_batch,
)

import hessfree
from hessfree.curvature.sequence_loss import TokenCrossEntropy
from hessfree.errors import InputError


def _logits(b: int = 3, t: int = 6, v: int = 7, seed: int = 0, dtype=torch.float64):
    return torch.randn(b, t, v, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("slice_tokens", [None, 1, 4])
def test_value_gradient_and_output_hessian_equal_torch(shift, slice_tokens):
    z = _logits()
    labels = torch.randint(0, 7, (3, 6), generator=torch.Generator().manual_seed(1))
    labels[0, 2:4] = -100
    loss = TokenCrossEntropy(shift=shift, slice_tokens=slice_tokens)
    n = loss.count(labels)
    assert n == int((labels[:, 1:] if shift else labels).ne(-100).sum())
    state = loss.prepare(z, labels, 1.0 / n)
    ref = ref_loss(z, labels, shift)
    assert abs(float(state.value) - float(ref)) < 1e-14
    assert float(loss(z, labels)) == pytest.approx(float(ref), abs=1e-14)
    zg = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ref_loss(zg, labels, shift), zg)
    assert rel(state.grad, grad) < 1e-13
    H = hessian(lambda x: ref_loss(x.view(z.shape), labels, shift))(z.reshape(-1))
    U = torch.randn(4, *z.shape, generator=torch.Generator().manual_seed(2), dtype=z.dtype)
    for u in U:  # one vector, then four at once (leading columns)
        assert rel(state.hvp(u).reshape(-1), H @ u.reshape(-1)) < 1e-13
    block = state.hvp(U).reshape(4, -1)
    assert rel(block, U.reshape(4, -1) @ H) < 1e-13
    assert torch.linalg.eigvalsh(H).min() > -1e-14  # PSD


def test_a_padding_mask_counts_like_ignore_index():
    z = _logits(seed=3)
    labels = torch.randint(0, 7, (3, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 3:] = 0
    ignored = labels.masked_fill(mask == 0, -100)
    for shift in (False, True):
        loss = TokenCrossEntropy(shift=shift)
        assert loss.count((labels, mask)) == loss.count(ignored)
        a = loss.prepare(z, (labels, mask), 0.1)
        b = loss.prepare(z, ignored, 0.1)
        assert torch.equal(a.grad, b.grad) and float(a.value) == float(b.value)
        assert torch.equal(loss.per_case(z, (labels, mask)), loss.per_case(z, ignored))


def test_per_case_losses_are_per_sequence_sums():
    z = _logits(seed=5)
    labels = torch.randint(0, 7, (3, 6), generator=torch.Generator().manual_seed(6))
    labels[2, :] = -100
    per = TokenCrossEntropy(shift=True).per_case(z, labels)
    ref = F.cross_entropy(z[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100,
                          reduction="none").sum(1)
    assert rel(per, ref) < 1e-14 and per[2] == 0


def test_the_normaliser_is_the_token_count_of_the_whole_batch():
    """Chunks with different token counts: the mean over all tokens, not a mean of means, and
    not a mean over sequences."""
    torch.manual_seed(0)
    model = CausalLM().double().eval()
    ids, labels, _ = token_batch(4, 7)
    labels[0, 1:] = -100  # sequence 0 counts for nothing after the shift
    labels[3, 4:] = -100
    problem = hessfree.Problem(model, TokenCrossEntropy(shift=True))
    params = problem.parameters()
    chunks = [(ids[:1], labels[:1]), (ids[1:3], labels[1:3]), (ids[3:], labels[3:])]
    with torch.no_grad():
        want = float(ref_loss(model(ids), labels, shift=True))
    assert problem.value(params, (ids, labels)) == pytest.approx(want, rel=1e-13)
    assert problem.value(params, chunks) == pytest.approx(want, rel=1e-13)
    assert problem.value(params, iter_once(chunks)) == pytest.approx(want, rel=1e-13)
    G = hessfree.GGN(problem, chunks)
    assert G.count == int(labels[:, 1:].ne(-100).sum()) and G.n_cases == 4
    means = [float(ref_loss(model(x), y, True)) for x, y in chunks[1:]]
    assert abs(sum(means) / 2 - want) > 1e-3  # a mean of means would differ


class iter_once:  # noqa: N801  a re-iterable source, read chunk by chunk (deferred weights)
    def __init__(self, chunks):
        self.chunks = chunks

    def __iter__(self):
        return iter(self.chunks)


def test_a_batch_with_no_token_that_counts_is_refused():
    model = CausalLM().double().eval()
    ids, labels, _ = token_batch(2, 0)
    labels[:, 1:] = -100
    problem = hessfree.Problem(model, TokenCrossEntropy(shift=True))
    with pytest.raises(InputError, match="no token counts"):
        problem.value(problem.parameters(), (ids, labels))


@pytest.mark.parametrize("targets, match", [
    (torch.rand(2, 5), "integer token ids"),
    (torch.zeros(2, 4, dtype=torch.long), "must have shape"),
    (torch.full((2, 5), 9), r"lie in \[0, 7\)"),
    ((torch.zeros(2, 5, dtype=torch.long), torch.full((2, 5), 0.5)), "0/1 padding mask"),
    ((torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 4)), "targets mask"),
])
def test_bad_targets_get_one_line(targets, match):
    with pytest.raises(InputError, match=match):
        TokenCrossEntropy().prepare(torch.zeros(2, 5, 7), targets, 1.0)


def test_shift_needs_a_token_dimension_and_arguments_are_checked():
    with pytest.raises(InputError, match="shift=True needs a token dimension"):
        TokenCrossEntropy(shift=True).prepare(torch.zeros(2, 7), torch.zeros(2, dtype=torch.long),
                                              1.0)
    with pytest.raises(InputError, match="slice_tokens"):
        TokenCrossEntropy(slice_tokens=0)
    with pytest.raises(InputError, match="reduction"):
        TokenCrossEntropy(reduction="none")
    summed = TokenCrossEntropy(reduction="sum")
    z, y = _logits(), torch.randint(0, 7, (3, 6))
    assert float(summed(z, y)) == pytest.approx(float(F.cross_entropy(
        z.reshape(-1, 7), y.reshape(-1), reduction="sum")), rel=1e-13)


def test_ggn_diagonals_divide_by_the_token_count():
    """hessfree.curvature.diag sums over chunks with the loss's count: exact equals the dense
    diagonal of Jᵀ H_L J, and the Monte-Carlo estimate (labels drawn at the tokens that
    count) agrees with it within its standard error."""
    model = seeded(SDPABlock(vocab=7, d=8), 3)
    ids, labels, _ = token_batch(3, 5, t=4, vocab=7)
    labels[1, 2] = -100
    problem = hessfree.Problem(model, TokenCrossEntropy(shift=True))
    ref = Dense(module_logits(model, ids), problem.parameters(), labels, shift=True)
    want = ((ref.H_L @ ref.J) * ref.J).sum(0)
    G = hessfree.GGN(problem, [(ids[:1], labels[:1]), (ids[1:], labels[1:])])
    exact = hessfree.curvature.diag(G, method="exact")
    assert rel(exact.value, want) < 1e-10
    mc = hessfree.curvature.diag(G, method="mc", samples=64,
                                 generator=torch.Generator().manual_seed(0))
    z = (mc.value - want).abs() / mc.stderr.clamp_min(1e-12)
    assert float((z < 4).double().mean()) > 0.95
