"""Diagonals of curvature operators against the diagonals of dense float64 references."""

from __future__ import annotations

import math

import pytest
import torch
from curvature_cases import LOSSES, MODELS, Reference, make_case
from torch.func import functional_call, jacrev

import hessfree
from hessfree.curvature import diag, jacobian
from hessfree.errors import InputError, InputTypeError

F64 = torch.float64


def chunked(batch, cut=2):
    """The same cases as two chunks (sums over cases are accumulated chunk by chunk)."""
    (x, t) = batch
    if isinstance(x, tuple):
        return [(tuple(a[:cut] for a in x), t[:cut]), (tuple(a[cut:] for a in x), t[cut:])]
    return [(x[:cut], t[:cut]), (x[cut:], t[cut:])]


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("loss_name", LOSSES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_exact_ggn_diagonal_equals_the_dense_diagonal(model_name, loss_name, reduction):
    model, loss, batch = make_case(model_name, loss_name, reduction, F64, seed=2, n=5)
    ref = torch.diagonal(Reference(model, loss_name, reduction, batch, 1e-3).ggn())
    problem = hessfree.Problem(model, loss, weight_decay=1e-3)
    for b in (batch, chunked(batch)):
        est = diag(hessfree.GGN(problem, b), "exact")
        assert float((est.value - ref).abs().max() / ref.abs().max()) < 1e-10
        assert est.stderr.abs().max() == 0 and est.samples == 1
    # cost: one pass per output of a case with a nonzero eigenvalue of H_L, per chunk
    outputs = {"mlp": 3, "autoencoder": 6, "rnn": 12, "tuple": 3}[model_name]
    null = {"ce": outputs // (3 if model_name != "autoencoder" else 6)}.get(loss_name, 0)
    assert est.passes == 2 * (outputs - null)


def test_exact_fisher_diagonal_and_float32():
    model, loss, batch = make_case("mlp", "ce", "mean", F64, seed=4, n=7)
    problem = hessfree.Problem(model, loss, weight_decay=1e-2)
    ref = torch.diagonal(Reference(model, "ce", "mean", batch, 1e-2).fisher())
    est = diag(hessfree.EmpiricalFisher(problem, batch), "exact")
    assert float((est.value - ref).abs().max() / ref.abs().max()) < 1e-10
    m32, l32, b32 = make_case("autoencoder", "bce", "mean", torch.float32, seed=4, n=7)
    m64, _, b64 = make_case("autoencoder", "bce", "mean", F64, seed=4, n=7)
    d32 = diag(hessfree.GGN(hessfree.Problem(m32, l32), b32), "exact").value
    d64 = torch.diagonal(Reference(m64, "bce", "mean", b64).ggn())
    assert d32.dtype == torch.float32
    assert float((d32.double() - d64).abs().max() / d64.abs().max()) < 1e-5


def zscores(est, exact):
    return (est.value - exact) / est.stderr.clamp_min(1e-300)


@pytest.mark.parametrize("method", ["mc", "gnb", "hutchinson"])
@pytest.mark.parametrize("loss_name", LOSSES)
def test_estimators_lie_within_their_standard_errors(method, loss_name):
    model, loss, batch = make_case("autoencoder", loss_name, "mean", F64, seed=5, n=12)
    problem = hessfree.Problem(model, loss, weight_decay=1e-3)
    G = hessfree.GGN(problem, batch)
    exact = diag(G, "exact").value
    for seed in range(3):
        est = diag(G, method, samples=200, generator=torch.Generator().manual_seed(seed),
                   groups=[slice(0, G.dim)])
        assert est.samples == 200 and est.method == method
        z = zscores(est, exact)
        # errors of different entries share the sampled labels or probes: judged together
        assert float((z.abs() < 4).double().mean()) >= 0.9
        assert float(z.square().mean()) < 4  # errors of the size the s.e. says (chi-square
        # tails: a squared sampled gradient is skewed, so a few s.e. and not a normal 3)
        tr, se = est.group_traces()
        assert abs(float(tr[0]) - float(exact.sum())) < 5 * float(se[0])
        assert math.isclose(float(tr[0]), float(est.value.sum()), rel_tol=1e-9)
    cost = {"mc": est.passes, "gnb": est.passes, "hutchinson": est.products}[method]
    assert cost == 200


def test_hessian_diagonal_by_hutchinson():
    model, loss, batch = make_case("mlp", "ce", "mean", F64, seed=6, n=9)
    H = hessfree.Hessian(hessfree.Problem(model, loss), batch)
    exact = torch.diagonal(Reference(model, "ce", "mean", batch).hessian())
    est = diag(H, "hutchinson", samples=300, generator=torch.Generator().manual_seed(0))
    z = zscores(est, exact)
    assert float((z.abs() < 4).double().mean()) >= 0.95 and float(z.square().mean()) < 3
    damped = diag(H.damped(0.7), "hutchinson", samples=300,
                  generator=torch.Generator().manual_seed(0))
    assert torch.allclose(damped.value, est.value + 0.7, rtol=1e-10, atol=1e-12)


def test_refusals_name_the_argument():
    model, loss, batch = make_case("mlp", "mse", "mean", F64, seed=0, n=4)
    problem = hessfree.Problem(model, loss)
    H = hessfree.Hessian(problem, batch)
    with pytest.raises(InputError, match="method: 'exact' needs a GGN"):
        diag(H, "exact")
    with pytest.raises(InputError, match="method: 'mc' estimates a GGN"):
        diag(H, "mc")
    with pytest.raises(InputError, match="samples"):
        diag(hessfree.GGN(problem, batch), "hutchinson", samples=1)
    with pytest.raises(InputError, match="samples: the exact diagonal"):
        diag(hessfree.GGN(problem, batch), "exact", samples=10)
    with pytest.raises(InputError, match="method: expected one of"):
        diag(H, "bartlett")
    with pytest.raises(InputTypeError, match="generator"):
        diag(H, "hutchinson", generator=0)
    generic = hessfree.Problem(model, torch.nn.MSELoss())
    with pytest.raises(InputError, match="matching loss"):
        diag(hessfree.GGN(generic, batch), "gnb")
    # a generic loss still has an exact GGN diagonal (its H_L by double backward)
    ref = torch.diagonal(hessfree.GGN(generic, batch).dense())
    assert torch.allclose(diag(hessfree.GGN(generic, batch), "exact").value, ref, rtol=1e-10)


@pytest.mark.parametrize("model_name", ["mlp", "rnn", "tuple"])
def test_jacobian_equals_jacrev(model_name):
    model, loss, batch = make_case(model_name, "mse", "mean", F64, seed=3, n=4)
    problem = hessfree.Problem(model, loss)
    params = problem.resolve_params(None)
    J, out = jacobian(problem, params, batch[0])
    args = batch[0] if isinstance(batch[0], tuple) else (batch[0],)
    ref = jacrev(lambda p: functional_call(model, p, args))(dict(params))
    n, d = out.shape[0], out[0].numel()
    dense = torch.cat([ref[k].reshape(n, d, -1) for k in params], 2)
    assert J.shape == dense.shape and torch.allclose(J, dense, rtol=1e-12, atol=1e-14)
