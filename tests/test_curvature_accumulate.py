"""The one accumulator of sums over cases: chunks, streams, the count from the loss, weight decay.

Every sum (objective, gradient, operator set-up and products, EF diagonal, the fused pass) goes
through ``hessfree.curvature.accumulate.Accumulator``; these tests pin its contract against
references computed on the joined batch with torch alone (the distributed half is in
tests/test_distributed.py, through tests/_dist_products.py).
"""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest
import torch
from curvature_cases import Reference, TokenMSE, make_case, rel_err, sequence_case
from torch.utils.data import DataLoader, TensorDataset

import hessfree
from hessfree.batches import Chunks
from hessfree.curvature.accumulate import (
    DIAGONAL,
    GRADIENT,
    PLAIN,
    SQUARES,
    VALUE,
    Accumulator,
)
from hessfree.curvature.sequential import value_grad_diagonal

F64 = torch.float64


def _loader(x, t, size):
    return DataLoader(TensorDataset(x, t), batch_size=size, shuffle=False)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("form", ["tuple", "list", "loader"])
def test_value_gradient_and_count_equal_the_joined_batch(form, reduction):
    model, loss, (x, t) = make_case("mlp", "ce", reduction, F64, seed=3, n=10)
    problem = hessfree.Problem(model, loss, weight_decay=0.02)
    batch = {"tuple": (x, t), "list": [(x[:3], t[:3]), (x[3:4], t[3:4]), (x[4:], t[4:])],
             "loader": _loader(x, t, 4)}[form]
    ref = Reference(model, "ce", reduction, (x, t), weight_decay=0.02)
    e = problem.evaluate(problem.parameters(), batch, grad=True)
    assert e.count == e.cases == 10 and e.diag is None
    assert abs(e.value - float(ref.objective(ref.theta))) < 1e-13 * abs(e.value)
    assert rel_err(e.grad, ref.grad()) < 1e-13
    assert problem.value(problem.parameters(), batch) == e.value
    assert problem.n_cases(batch) == 10


@pytest.mark.parametrize("form", ["tuple", "list", "loader"])
def test_a_loss_that_counts_tokens_averages_over_them_across_chunks(form):
    model, x, y, mask = sequence_case()
    problem = hessfree.Problem(model, TokenMSE(), weight_decay=0.01)
    joined = (x, (y, mask))
    batch = {"tuple": joined,
             "list": [(x[:2], (y[:2], mask[:2])), (x[2:], (y[2:], mask[2:]))],
             "loader": DataLoader(TensorDataset(x, y, mask), batch_size=3, shuffle=False,
                                  collate_fn=lambda rows: (torch.stack([r[0] for r in rows]),
                                                           (torch.stack([r[1] for r in rows]),
                                                            torch.stack([r[2] for r in rows]))))
             }[form]
    params = problem.parameters()
    layout = hessfree.vectors.ParamLayout.from_params(params)
    theta = hessfree.vectors.flatten(params).detach()

    def objective(th):
        z = torch.func.functional_call(model, layout.split(th), (x,))
        return ((z - y).square() * mask[..., None]).sum() / mask.sum() \
            + 0.005 * th.square().sum()

    e = problem.evaluate(params, batch, grad=True)
    assert e.count == int(mask.sum())
    assert abs(e.value - float(objective(theta))) < 1e-13 * abs(e.value)
    assert rel_err(e.grad, torch.func.grad(objective)(theta)) < 1e-13
    # the curvature of the joined batch, whatever the chunks
    G, G1 = hessfree.GGN(problem, batch), hessfree.GGN(problem, joined)
    v = torch.randn(G.dim, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert (G.count, G.n_cases, e.cases) == (e.count, 7, 7) and rel_err(G @ v, G1 @ v) < 1e-13
    J = torch.func.jacrev(lambda th: torch.func.functional_call(
        model, layout.split(th), (x,)).reshape(-1))(theta)
    w = (2 * mask[..., None].expand_as(y) / mask.sum()).reshape(-1)
    ggn = J.T @ (w[:, None] * J) + 0.01 * torch.eye(G.dim, dtype=F64)
    assert rel_err(G1 @ v, ggn @ v) < 1e-12


def test_weight_decay_enters_each_sum_once_however_many_chunks():
    x = torch.ones(9, 2, dtype=F64)
    chunks = Chunks.of([(x[:2], x[:2]), (x[2:5], x[2:5]), (x[5:], x[5:])])
    theta = torch.tensor([1.0, -2.0, 3.0], dtype=F64)
    acc = Accumulator(hessfree.losses.MSE(), weight_decay=0.5)
    zero = torch.zeros(3, dtype=F64)

    def nothing(chunk, scale):
        return torch.zeros((), dtype=F64), zero.clone(), zero.clone(), zero.clone()

    s = acc.sums(chunks, nothing, (VALUE, GRADIENT, DIAGONAL, PLAIN), theta)
    assert s.count == 9 and s.weight == 1 / 9 and not s.deferred
    value, grad, diag, plain = s.parts
    assert value == 0.25 * 14.0  # wd/2 · ||θ||²
    assert torch.equal(grad, 0.5 * theta) and torch.equal(diag, torch.full((3,), 0.5, dtype=F64))
    assert torch.equal(plain, zero)


@pytest.mark.parametrize("deferred", [False, True])
def test_the_weight_is_applied_once_before_or_after_the_pass(deferred):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(10, 4, generator=g, dtype=F64)
    chunks = Chunks.of([(a[:4], a[:4]), (a[4:], a[4:])])
    acc = Accumulator(hessfree.losses.MSE())
    seen = []

    def per_chunk(chunk, scale):
        seen.append(scale)
        x = chunk.inputs
        return (x * scale).sum(0), (x * scale).square().sum(0), (x.sum() * scale)

    s = acc.sums(chunks, per_chunk, (PLAIN, SQUARES, VALUE), deferred=deferred)
    assert seen == ([1.0, 1.0] if deferred else [0.1, 0.1]) and s.deferred == deferred
    assert s.scale == (1.0 if deferred else 0.1)
    assert s.weight_after == (0.1 if deferred else None)
    torch.testing.assert_close(s.parts[0], a.mean(0), rtol=1e-14, atol=0)
    torch.testing.assert_close(s.parts[1], a.square().mean(0), rtol=1e-14, atol=0)
    assert abs(s.parts[2] - float(a.sum()) / 10) < 1e-14


def test_fold_adds_into_the_totals_it_returns():
    a = torch.arange(12.0, dtype=F64).reshape(6, 2)
    chunks = Chunks.of([(a[:1], a[:1]), (a[1:], a[1:])])

    def step(chunk, scale, totals):
        buf = torch.zeros(2, dtype=F64) if totals is None else totals[0]
        ones = torch.full((chunk.n, 1), scale, dtype=F64)
        buf.view(2, 1).addmm_(chunk.inputs.T.square(), ones)  # summed in place
        return [buf]

    s = Accumulator(hessfree.losses.MSE("sum")).fold(chunks, step, (PLAIN,))
    assert s.count == 6 and s.weight == 1.0
    torch.testing.assert_close(s.parts[0], a.square().sum(0))


def test_the_fused_pass_equals_its_parts():
    model, loss, (x, t) = make_case("autoencoder", "bce", "mean", F64, seed=2, n=9)
    problem = hessfree.Problem(model, loss, weight_decay=0.01)
    params = problem.parameters()
    for batch in ((x, t), [(x[:4], t[:4]), (x[4:], t[4:])], _loader(x, t, 4)):
        e = value_grad_diagonal(problem, params, batch)
        ref_value, ref_grad = problem.value_and_grad(params, (x, t))
        assert e.count == 9 and abs(e.value - ref_value) < 1e-13
        assert rel_err(e.grad, ref_grad) < 1e-13
        diag = hessfree.curvature.fisher_diagonal(problem, params, (x, t), method="vmap")
        assert rel_err(e.diag, diag) < 1e-12


@contextlib.contextmanager
def _reads(counter: Counter):
    names = ("item", "tolist", "__bool__", "__float__", "__int__")
    saved = {m: getattr(torch.Tensor, m) for m in names}

    def wrap(name, fn):
        def read(self, *a, **k):
            counter[name] += 1
            return fn(self, *a, **k)
        return read

    try:
        for m, fn in saved.items():
            setattr(torch.Tensor, m, wrap(m, fn))
        yield
    finally:
        for m, fn in saved.items():
            setattr(torch.Tensor, m, fn)


def test_an_evaluation_of_checked_chunks_reads_one_value_from_the_device():
    model, loss, (x, t) = make_case("autoencoder", "bce", "mean", F64, seed=1, n=12)
    problem = hessfree.Problem(model, loss, weight_decay=0.1)
    params = problem.parameters()
    chunks = Chunks.of([(x[:4], t[:4]), (x[4:8], t[4:8]), (x[8:], t[8:])], "grad_batch")
    counter: Counter = Counter()
    with _reads(counter):
        value = problem.evaluate(params, chunks, check=False).value
    assert sum(counter.values()) == 1  # three chunks, weight decay: one read
    assert abs(value - problem.value(params, (x, t))) < 1e-13 * abs(value)


def test_chunks_are_checked_once_where_they_enter():
    x = torch.randn(4, 3)
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"grad_batch\[1\]: the batch contains non-finite"):
        Chunks.of([(x, x), (bad, x)], "grad_batch")
    c = Chunks.of((x, x), "grad_batch")
    assert Chunks.of(c) is c and not c.streamed and c.first().n == 4
    assert "1 chunk(s), 4 cases" in repr(c)
    loader = Chunks.of(_loader(x, x, 3))
    assert loader.streamed and [ch.n for ch in loader] == [3, 1] == [ch.n for ch in loader]
    with pytest.raises(ValueError, match="shuffle=True"):
        Chunks.of(DataLoader(TensorDataset(x, x), batch_size=2, shuffle=True))
