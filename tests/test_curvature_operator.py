"""Operator behaviour: vector formats, chunks, caching, scipy, damping, structural damping."""

import numpy as np
import pytest
import torch
from curvature_cases import Reference, make_case, rel_err

import hessfree


def _problem(model_name="autoencoder", loss_name="bce", reduction="mean", dtype=torch.float64,
             seed=0, n=6, wd=0.0):
    model, loss, batch = make_case(model_name, loss_name, reduction, dtype, seed=seed, n=n)
    return hessfree.Problem(model, loss, weight_decay=wd), batch


def test_flat_list_dict_agree_and_keep_form():
    problem, batch = _problem()
    G = hessfree.GGN(problem, batch)
    v = torch.randn(G.dim, dtype=torch.float64)
    as_dict = G.layout.split(v)
    flat = G @ v
    got_list = G @ list(as_dict.values())
    got_dict = G @ as_dict
    assert isinstance(got_list, list) and isinstance(got_dict, dict)
    assert list(got_dict) == list(as_dict)
    assert torch.equal(hessfree.vectors.flatten(got_list), flat)
    assert torch.equal(hessfree.vectors.flatten(got_dict), flat)
    assert torch.equal(G.mv(v), flat)


def test_to_scipy_agrees_with_matmul():
    problem, batch = _problem(dtype=torch.float32)
    G = hessfree.GGN(problem, batch)
    A = G.to_scipy()
    assert A.shape == (G.dim, G.dim) and A.dtype == np.float64
    x = np.random.default_rng(0).standard_normal(G.dim)
    ref = (G @ torch.from_numpy(x).float()).double().numpy()
    np.testing.assert_allclose(A @ x, ref, rtol=1e-6, atol=1e-7)
    D = G.damped(0.5).to_scipy()
    np.testing.assert_allclose(D @ x, ref + 0.5 * x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["ggn", "hessian", "fisher"])
def test_chunked_equals_concatenated(kind, reduction):
    problem, (x, t) = _problem("mlp", "ce", reduction, n=10, wd=0.02)
    cls = {"ggn": hessfree.GGN, "hessian": hessfree.Hessian,
           "fisher": hessfree.EmpiricalFisher}[kind]
    full = cls(problem, (x, t))
    chunks = [(x[:3], t[:3]), (x[3:4], t[3:4]), (x[4:], t[4:])]  # sizes 3, 1, 6
    parts = cls(problem, chunks)
    assert parts.n_cases == 10 and len(parts.chunks) == 3
    v = torch.randn(full.dim, dtype=torch.float64)
    assert rel_err(parts @ v, full @ v) < 1e-13
    assert rel_err(parts.grad, full.grad) < 1e-13
    assert abs(parts.value - full.value) < 1e-13 * abs(full.value)
    if kind == "fisher":
        assert rel_err(parts.diagonal(), full.diagonal()) < 1e-13
    value, grad = problem.value_and_grad(problem.parameters(), chunks)
    assert abs(value - full.value) < 1e-12 and rel_err(grad, full.grad) < 1e-13
    assert abs(problem.value(problem.parameters(), chunks) - full.value) < 1e-12


@pytest.mark.parametrize("backend", ["double-backward", "forward", "jvp", "sequential"])
def test_uncached_equals_cached(backend):
    problem, (x, t) = _problem("mlp" if backend == "sequential" else "rnn", "mse", n=8)
    chunks = [(x[:5], t[:5]), (x[5:], t[5:])]
    a = hessfree.GGN(problem, chunks, backend=backend)
    b = hessfree.GGN(problem, chunks, backend=backend, cache=False)
    v = torch.randn(a.dim, dtype=torch.float64)
    assert rel_err(b @ v, a @ v) < 1e-14 and rel_err(b.grad, a.grad) < 1e-14
    assert a.products == 1 and b.products == 1


def test_damped_operator():
    problem, batch = _problem()
    G = hessfree.GGN(problem, batch)
    D = G.damped(0.3)
    v = torch.randn(G.dim, dtype=torch.float64)
    assert rel_err(D @ v, G @ v + 0.3 * v) < 1e-15
    assert rel_err(D.dense(), G.dense() + 0.3 * torch.eye(G.dim, dtype=torch.float64)) < 1e-15
    for bad in (-1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="lam"):
            G.damped(bad)


@pytest.mark.parametrize("backend", ["double-backward", "forward"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_structural_damping_matches_dense(backend, reduction):
    model, loss, batch = make_case("rnn", "bce", reduction, torch.float64, seed=9)
    mu, lam = 0.03, 2.0
    G = hessfree.GGN(hessfree.Problem(model, loss), batch, backend=backend,
                     structural_damping=mu)
    ref = Reference(model, "bce", reduction, batch)
    S, Gref = ref.structural(), ref.ggn()
    assert S.abs().max() > 0
    eye = torch.eye(G.dim, dtype=torch.float64)
    assert rel_err(G.dense(), Gref) < 1e-12  # undamped product excludes the structural term
    assert rel_err(G.damped(lam).dense(), Gref + lam * eye + mu * lam * S) < 1e-12
    v = torch.randn(G.dim, dtype=torch.float64)
    assert rel_err(G.structural_mv(v), S @ v) < 1e-11


def test_structural_damping_needs_hidden_units():
    problem, batch = _problem("mlp", "mse")
    with pytest.raises(ValueError, match="structural_damping"):
        hessfree.GGN(problem, batch, structural_damping=0.03)
    with pytest.raises(ValueError, match="structural_damping"):
        hessfree.GGN(problem, batch, structural_damping=-1)


def test_function_model_and_autodiff_loss():
    torch.manual_seed(0)
    W = torch.randn(3, 4, dtype=torch.float64)

    def f(params, x):
        return torch.tanh(x @ params["W"].T) @ params["V"]

    params = {"W": W, "V": torch.randn(3, 2, dtype=torch.float64)}
    x, t = torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    generic = hessfree.Problem(f, torch.nn.MSELoss(reduction="sum"))
    matching = hessfree.Problem(f, hessfree.losses.MSE("sum"))
    a = hessfree.GGN(generic, (x, t), params=params)
    b = hessfree.GGN(matching, (x, t), params=params)
    assert rel_err(a.dense(), b.dense()) < 1e-13
    assert abs(a.value - b.value) < 1e-12
    # a generic torch mean loss divides by every element: its chunks still weigh per case
    mean = hessfree.Problem(f, torch.nn.MSELoss())
    full = hessfree.GGN(mean, (x, t), params=params)
    parts = hessfree.GGN(mean, [(x[:2], t[:2]), (x[2:], t[2:])], params=params)
    assert rel_err(parts.dense(), full.dense()) < 1e-13
    assert rel_err(full.dense(), b.dense() / (7 * 2)) < 1e-13
    with pytest.raises(ValueError, match="params"):
        hessfree.GGN(generic, (x, t))


def test_value_and_grad_from_same_pass_match_autograd():
    problem, batch = _problem("tuple", "ce", wd=0.05)
    G = hessfree.GGN(problem, batch)
    ref = Reference(problem.model, "ce", "mean", batch, weight_decay=0.05)
    assert rel_err(G.grad, ref.grad()) < 1e-13
    assert abs(G.value - float(ref.objective(ref.theta))) < 1e-13
    value, grad = problem.value_and_grad(problem.parameters(), batch)
    assert rel_err(grad, G.grad) < 1e-14 and abs(value - G.value) < 1e-14


def test_operator_counts_products():
    problem, batch = _problem()
    G = hessfree.GGN(problem, batch)
    v = torch.randn(G.dim, dtype=torch.float64)
    for _ in range(3):
        G @ v
    G.damped(1.0) @ v
    assert G.products == 4


@pytest.mark.parametrize("make", [
    lambda: hessfree.models.DeepAutoencoder([6, 5, 2, 5, 6]),
    lambda: hessfree.models.MLP([5, 4, 3], "tanh"),
    lambda: hessfree.models.MLP([5, 4, 4, 3], "relu", output="linear"),
    lambda: hessfree.models.DeepAutoencoder([6, 4, 2, 4, 6], output="linear"),
], ids=["ae", "mlp-tanh", "mlp-relu", "ae-linear-out"])
def test_package_models_use_the_sequential_backend(make):
    torch.manual_seed(0)
    model = make().double()
    x = torch.randn(7, model.sizes[0], dtype=torch.float64)
    t = torch.rand(7, model.sizes[-1], dtype=torch.float64)
    problem = hessfree.Problem(model, hessfree.losses.BCEWithLogits(), weight_decay=0.01)
    auto = hessfree.GGN(problem, (x, t))
    generic = hessfree.GGN(problem, (x, t), backend="double-backward")
    assert auto.backend == "sequential"
    assert rel_err(auto.dense(), generic.dense()) < 1e-13
    assert rel_err(auto.grad, generic.grad) < 1e-14 and abs(auto.value - generic.value) < 1e-14
    fa = hessfree.EmpiricalFisher(problem, (x, t))
    fg = hessfree.EmpiricalFisher(problem, (x, t), backend="double-backward")
    assert fa.backend == "sequential" and rel_err(fa.dense(), fg.dense()) < 1e-13


def test_frozen_parameter_falls_back_to_autodiff():
    torch.manual_seed(0)
    model = hessfree.models.MLP([5, 4, 3], "tanh").double()
    model.layers[0].bias.requires_grad_(False)
    problem = hessfree.Problem(model, hessfree.losses.MSE())
    G = hessfree.GGN(problem, (torch.randn(6, 5, dtype=torch.float64),
                               torch.randn(6, 3, dtype=torch.float64)))
    assert G.backend == "double-backward" and G.dim == 4 * 5 + 3 * 4 + 3


@pytest.mark.parametrize("backend", ["double-backward", "forward", "sequential"])
def test_operator_survives_in_place_parameter_updates(backend):
    problem, batch = _problem("mlp", "mse")
    G = hessfree.GGN(problem, batch, backend=backend)
    v = torch.randn(G.dim, dtype=torch.float64)
    before = G @ v
    with torch.no_grad():
        for p in problem.model.parameters():
            p.mul_(1.5)
    assert torch.equal(G @ v, before)
    assert rel_err(hessfree.GGN(problem, batch, backend=backend) @ v, before) > 1e-3
