"""Every curvature operator against dense float64 references (jacrev / hessian)."""

import pytest
import torch
from curvature_cases import LOSSES, MODELS, Reference, make_case, rel_err

import hessfree

BACKENDS = ("double-backward", "forward", "jvp")
TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


SEQUENTIAL = ("mlp", "autoencoder")  # nn.Sequential of Linear and elementwise units


def _operators(problem, batch, backend):
    ops = {
        "ggn": hessfree.GGN(problem, batch, backend=backend),
        "fisher": hessfree.EmpiricalFisher(problem, batch, backend=backend),
    }
    if backend != "sequential":
        ops["hessian"] = hessfree.Hessian(problem, batch, backend=backend)
    return ops


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss_name", LOSSES)
@pytest.mark.parametrize("model_name", MODELS)
def test_products_match_dense_reference(model_name, loss_name, reduction, dtype):
    # a fixed seed per case (hash() of strings changes between processes)
    seed = 100 * MODELS.index(model_name) + 10 * LOSSES.index(loss_name) + (reduction == "sum")
    model, loss, batch = make_case(model_name, loss_name, reduction, dtype, seed=seed)
    wd = 0.01
    problem = hessfree.Problem(model, loss, weight_decay=wd)
    ref = Reference(model, loss_name, reduction, batch, weight_decay=wd)
    mats = {"ggn": ref.ggn(), "hessian": ref.hessian(), "fisher": ref.fisher()}
    g = torch.Generator().manual_seed(seed + 1)
    V = torch.randn(ref.theta.numel(), 3, generator=g, dtype=torch.float64)
    backends = BACKENDS + (("sequential",) if model_name in SEQUENTIAL else ())
    for backend in backends:
        for kind, op in _operators(problem, batch, backend).items():
            got = torch.stack([op @ V[:, j].to(dtype) for j in range(3)], 1)
            assert got.dtype == dtype
            err = rel_err(got, mats[kind] @ V)
            assert err < TOL[dtype], (kind, backend, err)
            assert rel_err(op.grad, ref.grad()) < TOL[dtype], (kind, backend)
            assert abs(op.value - float(ref.objective(ref.theta))) <= TOL[dtype] * max(
                1.0, abs(op.value))


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("backend", BACKENDS + ("sequential", "auto"))
def test_dense_equals_reference_ggn(model_name, backend):
    model, loss, batch = make_case(model_name, "bce", "mean", torch.float64, seed=3)
    problem = hessfree.Problem(model, loss)
    if backend == "sequential" and model_name not in SEQUENTIAL:
        with pytest.raises(ValueError, match="backend: 'sequential' needs an nn.Sequential"):
            hessfree.GGN(problem, batch, backend=backend)
        return
    G = hessfree.GGN(problem, batch, backend=backend)
    if backend == "auto":
        assert G.backend == ("sequential" if model_name in SEQUENTIAL else "double-backward")
    ref = Reference(model, "bce", "mean", batch).ggn()
    assert rel_err(G.dense(), ref) < 1e-12


@pytest.mark.parametrize("loss_name", LOSSES)
@pytest.mark.parametrize("model_name", MODELS)
def test_ggn_symmetric_psd(model_name, loss_name):
    model, loss, batch = make_case(model_name, loss_name, "mean", torch.float64, seed=7)
    D = hessfree.GGN(hessfree.Problem(model, loss), batch).dense()
    assert torch.allclose(D, D.T, atol=1e-12 * D.abs().max())
    assert torch.linalg.eigvalsh(D).min() > -1e-10 * D.abs().max()


def test_hessian_is_indefinite_somewhere():
    """A check that could fail: the Hessian of a tanh MLP is not PSD, while its GGN is."""
    model, loss, batch = make_case("mlp", "mse", "mean", torch.float64, seed=11, n=3)
    H = hessfree.Hessian(hessfree.Problem(model, loss), batch).dense()
    assert torch.linalg.eigvalsh(H).min() < 0


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_linear_model_mse_ggn_equals_hessian(reduction):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    x, t = torch.randn(9, 4, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64)
    problem = hessfree.Problem(model, hessfree.losses.MSE(reduction), weight_decay=0.1)
    G = hessfree.GGN(problem, (x, t)).dense()
    H = hessfree.Hessian(problem, (x, t)).dense()
    assert rel_err(G, H) < 1e-13
    # the closed form for the first row of W: 2 s XᵀX + weight decay
    s = 1 / 9 if reduction == "mean" else 1.0
    expected = 2 * s * x.T @ x + 0.1 * torch.eye(4, dtype=torch.float64)
    assert torch.allclose(G[:4, :4], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model_name", ["mlp", "autoencoder", "tuple"])
@pytest.mark.parametrize("loss_name", LOSSES)
def test_fisher_diagonal_both_methods(model_name, loss_name):
    model, loss, batch = make_case(model_name, loss_name, "mean", torch.float64, seed=5, n=7)
    F = hessfree.EmpiricalFisher(hessfree.Problem(model, loss, weight_decay=0.01), batch)
    dense_diag = F.dense().diagonal()
    vm = F.diagonal(method="vmap", chunk_size=3)
    assert rel_err(vm, dense_diag) < 1e-12
    assert rel_err(F.diagonal(method="linear"), dense_diag) < 1e-12
    assert rel_err(F.diagonal(), dense_diag) < 1e-12


def test_fisher_diagonal_rnn_masked():
    model, loss, (x, t) = make_case("rnn", "ce", "sum", torch.float64, seed=2)
    mask = (torch.rand(t.shape, generator=torch.Generator().manual_seed(0)) > 0.4).double()
    F = hessfree.EmpiricalFisher(hessfree.Problem(model, loss), (x, (t, mask)))
    assert rel_err(F.diagonal(), F.dense().diagonal()) < 1e-12
    with pytest.raises(ValueError, match="method: 'linear'"):
        F.diagonal(method="linear")  # weight sharing over time: no (δ²)ᵀ(x²) identity


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_masked_targets_match_reference(dtype):
    model, loss, (x, t) = make_case("rnn", "mse", "mean", dtype, seed=4)
    mask = torch.zeros(t.shape[:-1], dtype=dtype)
    mask[:, -1] = 1
    mask[0, 1] = 1
    G = hessfree.GGN(hessfree.Problem(model, loss), (x, (t, mask)))
    ref = Reference(model, "mse", "mean", (x, t))
    # reference: squared error only where the mask is on
    m64 = mask.double()[..., None]
    out = ref.f(ref.theta)
    J = torch.func.jacrev(lambda th: ref.f(th).reshape(-1))(ref.theta)
    HL = torch.diag((2 * m64.expand_as(out)).reshape(-1)) / out.shape[0]
    v = torch.randn(ref.theta.numel(), dtype=torch.float64)
    assert rel_err(G @ v.to(dtype), J.T @ HL @ J @ v) < TOL[dtype]
    masked_value = float(((out - t.double()).square() * m64).sum() / out.shape[0])
    assert abs(G.value - masked_value) < TOL[dtype] * max(1, masked_value)
