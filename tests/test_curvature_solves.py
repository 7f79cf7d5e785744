"""Solves with curvature operators against dense ``torch.linalg.solve`` of the damped matrix."""

from __future__ import annotations

import pytest
import torch
from curvature_cases import make_case

import hessfree
from hessfree.cg import MartensProgress, ResidualTolerance
from hessfree.cg.block import solve_batched
from hessfree.cg.minres import solve_minres
from hessfree.cg.shifted import solve_shifted
from hessfree.curvature import lowrank_inverse, solve
from hessfree.errors import InputError, InputTypeError

F64 = torch.float64


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def ggn_case():
    model, loss, batch = make_case("mlp", "ce", "mean", F64, seed=3, n=12)
    G = hessfree.GGN(hessfree.Problem(model, loss, weight_decay=1e-4), batch)
    return G, G.dense()


def dense_solve(D, B, lam):
    return torch.linalg.solve(D + lam * torch.eye(D.shape[0], dtype=D.dtype), B)


def true_residual(D, B, X, lam):
    return torch.linalg.vector_norm(B - (D + lam * torch.eye(D.shape[0], dtype=D.dtype)) @ X,
                                    dim=0)


@pytest.mark.parametrize("lam", [1e-3, 0.1, 2.0])
@pytest.mark.parametrize("k", [None, 1, 5])
def test_solve_equals_a_dense_solve_and_certifies_its_residual(ggn_case, lam, k):
    G, D = ggn_case
    g = torch.Generator().manual_seed(1)
    B = torch.randn(G.dim, k or 1, generator=g, dtype=F64)
    B = B[:, 0] if k is None else B
    res = G.solve(B, lam, rtol=1e-12)
    assert res.x.shape == B.shape
    assert rel(res.x, dense_solve(D, B, lam)) < 1e-8
    Xk = res.x.reshape(G.dim, -1)
    truth = true_residual(D, B.reshape(G.dim, -1), Xk, lam)
    assert res.residuals.shape == (() if k is None else (k,))
    # the reported residuals are the true ones (the product and the dense matrix agree to
    # rounding), and they meet the tolerance: a certificate
    assert torch.allclose(res.residuals.reshape(-1), truth, rtol=1e-3, atol=1e-13)
    assert res.converged and (res.relative_residuals <= 1e-12 + 1e-15).all()
    assert res.method == "cg" and not res.shifted


def test_several_dampings_share_one_krylov_basis(ggn_case):
    G, D = ggn_case
    B = torch.randn(G.dim, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    lams = [1.0, 1e-3, 0.1]
    before = G.products
    res = G.solve(B, lams, rtol=1e-12)
    assert res.shifted and res.x.shape == (3, G.dim, 3) and res.residuals.shape == (3, 3)
    for i, lam in enumerate(lams):
        assert rel(res.x[i], dense_solve(D, B, lam)) < 1e-8
        truth = true_residual(D, B, res.x[i], lam)
        assert torch.allclose(res.residuals[i], truth, rtol=1e-3, atol=1e-13)
    assert res.converged and res.products == G.products - before
    # the seed (the smallest damping) is the slowest; the shifted systems cost no products:
    # k columns per iteration of the seed plus the certificate of the m·k solutions
    assert res.products == int(res.iters[1].sum()) + 9
    separate = G.solve(B, lams, rtol=1e-12, shifted=False)
    assert not separate.shifted and res.products < separate.products
    for i in range(3):
        assert rel(separate.x[i], res.x[i]) < 1e-8


def test_hot_start_preconditioner_and_martens_stop(ggn_case):
    G, D = ggn_case
    b = torch.randn(G.dim, generator=torch.Generator().manual_seed(4), dtype=F64)
    cold = G.solve(b, 0.01, rtol=1e-12)
    exact = dense_solve(D, b, 0.01)
    warm = G.solve(b, 0.01, rtol=1e-12, x0=exact + 1e-7 * b)
    assert int(warm.iters) < int(cold.iters) and rel(warm.x, exact) < 1e-8
    jacobi = 1 / (torch.diagonal(D) + 0.01)
    pre = G.solve(b, 0.01, rtol=1e-12, M=jacobi)
    assert rel(pre.x, exact) < 1e-8 and pre.converged
    martens = G.solve(b, 0.01, stop=MartensProgress())
    assert martens.reasons == ("martens progress",) and martens.tolerance is None
    assert not martens.converged  # no tolerance promised: only the certificate
    truth = true_residual(D, b[:, None], martens.x[:, None], 0.01)
    assert torch.allclose(martens.residuals.reshape(1), truth, rtol=1e-6)


def test_hessian_is_refused_by_cg_and_solved_by_minres():
    model, loss, batch = make_case("mlp", "ce", "mean", F64, seed=5, n=8)
    H = hessfree.Hessian(hessfree.Problem(model, loss), batch)
    D = H.dense()
    lam_min = float(torch.linalg.eigvalsh(D)[0])
    assert lam_min < 0  # the Hessian is indefinite here
    B = torch.randn(H.dim, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.raises(InputError, match=r"not positive definite.*method='minres'"):
        H.solve(B, 0.0, rtol=1e-10)
    lam = 0.5 * abs(lam_min)
    res = H.solve(B, lam, method="minres", rtol=1e-12, max_iters=2000)
    assert rel(res.x, dense_solve(D, B, lam)) < 1e-8
    assert torch.allclose(res.residuals, true_residual(D, B, res.x, lam), rtol=1e-3,
                          atol=1e-13)
    # with enough damping the Hessian is positive definite and CG applies
    big = H.solve(B, 2 * abs(lam_min) + 0.1, rtol=1e-12)
    assert rel(big.x, dense_solve(D, B, 2 * abs(lam_min) + 0.1)) < 1e-8


@pytest.mark.parametrize("kind", ["fisher", "damped", "quadratic"])
def test_every_operator_solves(kind):
    model, loss, batch = make_case("autoencoder", "mse", "mean", F64, seed=1, n=6)
    problem = hessfree.Problem(model, loss, weight_decay=1e-3)
    G = hessfree.GGN(problem, batch)
    op = {"fisher": lambda: hessfree.EmpiricalFisher(problem, batch),
          "damped": lambda: G.damped(0.3),
          "quadratic": lambda: hessfree.Quadratic(G, G.grad, 0.3)}[kind]()
    D = op.dense()
    b = torch.randn(op.dim, generator=torch.Generator().manual_seed(3), dtype=F64)
    res = op.solve(b, 0.05, rtol=1e-12)
    assert rel(res.x, dense_solve(D, b, 0.05)) < 1e-8
    if kind == "quadratic":  # no B: the minimiser of q
        q = op
        assert rel(q.solve(rtol=1e-12).x, q.minimizer()) < 1e-8


def test_float32_and_parameter_shaped_right_hand_sides():
    model, loss, batch = make_case("mlp", "bce", "mean", torch.float32, seed=2, n=10)
    G = hessfree.GGN(hessfree.Problem(model, loss), batch)
    D = G.dense().double()
    b = [torch.randn_like(p) for p in model.parameters()]
    res = G.solve(b, 0.1)
    assert isinstance(res.x, list) and [t.shape for t in res.x] == [t.shape for t in b]
    flat = torch.cat([t.reshape(-1) for t in b]).double()
    x = torch.cat([t.reshape(-1) for t in res.x]).double()
    assert rel(x, dense_solve(D, flat, 0.1)) < 1e-4
    assert res.converged and res.residuals.dtype == F64
    named = dict(zip([n for n, _ in model.named_parameters()], b))
    assert isinstance(G.solve(named, 0.1).x, dict)


def test_lowrank_inverse_is_exact_for_a_low_rank_ggn():
    # 3 cases x 3 classes: the GGN has rank <= 6 (softmax loses one direction per case)
    model, loss, batch = make_case("mlp", "ce", "sum", F64, seed=7, n=3)
    G = hessfree.GGN(hessfree.Problem(model, loss), batch)
    D = G.dense()
    rank = int((torch.linalg.eigvalsh(D) > 1e-10 * float(D.norm())).sum())
    assert rank <= 6
    low = lowrank_inverse(G, rank, generator=torch.Generator().manual_seed(0), tol=1e-12)
    assert low.products > 0
    B = torch.randn(G.dim, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    for lam in (1e-2, 1.0):
        assert rel(low.solve(B, lam), dense_solve(D, B, lam)) < 1e-8
    # as a preconditioner it makes CG converge at once
    res = G.solve(B, 1e-2, M=low.preconditioner(1e-2), rtol=1e-12)
    assert int(res.iters.max()) <= 3 and rel(res.x, dense_solve(D, B, 1e-2)) < 1e-8
    with pytest.raises(InputError, match="damping"):
        low.solve(B, 0.0)


def test_bad_arguments_get_one_line():
    A = torch.eye(4, dtype=F64) * 2
    with pytest.raises(InputError, match="B: expected shape"):
        solve(A, torch.ones(3, dtype=F64))
    with pytest.raises(InputError, match="B: expected dtype"):
        solve(A, torch.ones(4))
    with pytest.raises(InputTypeError, match="op:"):
        solve("A", torch.ones(4, dtype=F64))
    with pytest.raises(InputError, match="damping"):
        solve(A, torch.ones(4, dtype=F64), [])
    with pytest.raises(InputError, match="method"):
        solve(A, torch.ones(4, dtype=F64), method="lsqr")
    with pytest.raises(InputError, match="shifted"):
        solve(A, torch.ones(4, dtype=F64), [1.0, 2.0], shifted=True, x0=torch.ones(4, dtype=F64))
    with pytest.raises(InputError, match="rtol"):
        solve(A, torch.ones(4, dtype=F64), stop=ResidualTolerance(1e-3), rtol=1e-3)
    with pytest.raises(InputError, match="minres"):
        solve(A, torch.ones(4, dtype=F64), method="minres", stop=MartensProgress())
    res = solve(A, torch.ones(4, dtype=F64), [1.0, 3.0], x0=torch.zeros(2, 4, dtype=F64))
    assert torch.allclose(res.x, torch.stack([torch.full((4,), 1 / 3.0), torch.full((4,), 0.2)])
                          .to(F64))


# -- the block solvers on dense matrices ----------------------------------------------------
def spd(n, seed, low=-3, high=1):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return Q @ torch.diag(torch.logspace(low, high, n, dtype=F64)) @ Q.T


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_batched_cg_columns_are_independent_cg_runs(dtype):
    A = spd(30, 0).to(dtype)
    B = torch.randn(30, 4, generator=torch.Generator().manual_seed(1), dtype=dtype)
    shifts = [0.1, 1.0, 0.5, 3.0]
    out = solve_batched(lambda V: A @ V, B, shifts, stop=ResidualTolerance(1e-5), max_iters=200)
    for j, s in enumerate(shifts):
        one = hessfree.cg.solve(A + s * torch.eye(30, dtype=dtype), B[:, j],
                                stop=ResidualTolerance(1e-5), max_iters=200, store=False)
        assert out.reasons[j] == one.reason
        if dtype == F64:
            assert out.iters[j] == one.iters and rel(out.x[:, j], one.x) < 1e-6
        else:  # float32: the block product rounds differently from (A + sI) v
            assert abs(out.iters[j] - one.iters) <= 2 and rel(out.x[:, j], one.x) < 1e-3
    # frozen columns leave the block: products = the sum of the columns' iterations
    assert out.products == sum(out.iters)


def test_shifted_cg_matches_cg_on_each_shift():
    A = spd(40, 3)
    B = torch.randn(40, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    shifts = [0.5, 0.01, 2.0]
    out = solve_shifted(lambda V: A @ V, B, shifts, stop=ResidualTolerance(1e-11),
                        max_iters=300)
    for j in range(2):
        for i, s in enumerate(shifts):
            ref = torch.linalg.solve(A + s * torch.eye(40, dtype=F64), B[:, j])
            assert rel(out.x[:, j, i], ref) < 1e-9
            q = j * 3 + i
            true = float((B[:, j] - (A + s * torch.eye(40, dtype=F64)) @ out.x[:, j, i]).norm())
            assert abs(float(out.residual_norms[q]) - true) < 1e-3 * true + 1e-12
    # one product per right-hand side and iteration of its seed (the smallest shift)
    assert out.products == max(out.iters[:3]) + max(out.iters[3:])


def test_minres_on_an_indefinite_matrix():
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(25, 25, generator=g, dtype=F64))
    ev = torch.linspace(-2, 3, 25, dtype=F64)
    ev[ev.abs() < 0.1] = 0.4
    A = Q @ torch.diag(ev) @ Q.T
    B = torch.randn(25, 3, generator=g, dtype=F64)
    out = solve_minres(lambda V: A @ V, B, rtol=1e-12, max_iters=200)
    assert rel(out.x, torch.linalg.solve(A, B)) < 1e-9
    assert set(out.reasons) == {"residual tolerance"}
    cg = solve_batched(lambda V: A @ V, B, stop=ResidualTolerance(1e-12))
    assert "negative curvature" in cg.reasons
