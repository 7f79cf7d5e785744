"""The operator base: composition (sums, scalings, damping), the one product counter, checks.

Every operator of the package is a ``hessfree.linops.FlatOperator``; CG, the spectral methods,
quadratics and HF take any of them. Checked against dense float64 matrices.
"""

from __future__ import annotations

import pytest
import torch
from curvature_cases import make_case, rel_err

import hessfree
from hessfree import cg
from hessfree.curvature import eigsh
from hessfree.errors import InputError, InputTypeError
from hessfree.linops import (
    Combination,
    Counted,
    DenseOperator,
    FlatOperator,
    FunctionOperator,
    as_operator,
    symmetric_matrix,
)

F64 = torch.float64


def _spd(n, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, n, generator=g, dtype=F64)
    return q @ q.T + n * torch.eye(n, dtype=F64)


def _ggn(structural=0.0, n=6):
    model, loss, batch = make_case("rnn" if structural else "autoencoder", "mse", "mean", F64,
                                   seed=4, n=n)
    problem = hessfree.Problem(model, loss, weight_decay=0.01)
    return hessfree.GGN(problem, batch, structural_damping=structural)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_sums_scalings_and_damping_equal_the_dense_matrices(dtype):
    A, B = _spd(7, 0).to(dtype), _spd(7, 1).to(dtype)
    a, b = DenseOperator(A), DenseOperator(B)
    v = torch.randn(7, 3, generator=torch.Generator().manual_seed(2), dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-13
    for op, dense in ((a + b, A + B), (2.5 * a, 2.5 * A), (a + (-0.5) * b, A - 0.5 * B),
                      (a.damped(0.3), A + 0.3 * torch.eye(7, dtype=dtype)),
                      (3.0 * (a + b) + a.identity(), 3 * (A + B) + torch.eye(7, dtype=dtype))):
        assert isinstance(op, Combination) and op.shape == (7, 7) and op.dtype == dtype
        assert rel_err(op @ v, dense @ v) < tol
        assert rel_err(op @ v[:, 0], dense @ v[:, 0]) < tol
        assert rel_err(op.dense(), dense) < tol


def test_every_product_is_counted_once_by_each_operator_it_reaches():
    a, b = DenseOperator(_spd(5, 0)), DenseOperator(_spd(5, 1))
    s = a + 2.0 * b
    s @ torch.ones(5, dtype=F64)
    s @ torch.ones(5, 4, dtype=F64)
    assert (s.products, a.products, b.products) == (5, 5, 5)
    damped = a.damped(1.0)
    damped.matvec(torch.ones(5, dtype=F64))
    assert (damped.products, a.products) == (1, 6)  # the identity term costs no product


def test_a_curvature_operator_counts_products_through_damping_and_quadratics():
    G = _ggn()
    v = torch.randn(G.dim, generator=torch.Generator().manual_seed(0), dtype=F64)
    D = G.damped(0.7)
    assert torch.equal(D @ v, G._curvature(v).add_(v, alpha=0.7))  # op + λ·I, bit for bit
    q = hessfree.Quadratic(G, v, 0.7)
    q @ v
    q.value(v)
    assert (G.products, D.products, q.products) == (3, 1, 2)


def test_structural_damping_is_a_term_of_the_damped_combination():
    G = _ggn(structural=0.05)
    v = torch.randn(G.dim, generator=torch.Generator().manual_seed(1), dtype=F64)
    D = G.damped(2.0)
    assert D.structural == pytest.approx(0.1) and D.base is G
    S_v = G.structural_mv(v)
    assert G.products == 2
    assert rel_err(D @ v, G @ v + 0.1 * S_v + 2.0 * v) < 1e-12
    assert G.products == 4


def test_counted_reports_each_product_and_its_time():
    seen = []
    op = Counted(DenseOperator(_spd(4, 3)), lambda k, s: seen.append((k, s)))
    op @ torch.ones(4, dtype=F64)
    op @ torch.ones(4, 3, dtype=F64)
    assert [k for k, _ in seen] == [1, 3] and all(s >= 0 for _, s in seen)
    assert op.products == op.op.products == 4


def test_cg_spectral_and_quadratics_take_any_operator():
    A = _spd(12, 5)
    b = torch.randn(12, generator=torch.Generator().manual_seed(6), dtype=F64)
    ops = [DenseOperator(A), DenseOperator(A - 2 * torch.eye(12, dtype=F64)).damped(2.0),
           FunctionOperator(lambda v: A @ v, 12, F64, "cpu"),
           Counted(DenseOperator(A), lambda k, s: None)]
    want = torch.linalg.solve(A, b)
    top = torch.linalg.eigvalsh(A)[-2:]
    for op in ops:
        res = cg.solve(op, b, stop=cg.ResidualTolerance(1e-12), max_iters=100)
        assert rel_err(res.x, want) < 1e-9 and res.products == res.iters
        assert rel_err(eigsh(op, 2, generator=torch.Generator().manual_seed(0),
                             return_eigenvectors=False), top) < 1e-10


def test_function_operators_are_checked_and_never_hand_back_their_input():
    v = torch.ones(3, dtype=F64)
    same = FunctionOperator(lambda x: x, 3, F64, "cpu")
    out = same @ v
    out.add_(1.0)
    assert torch.equal(v, torch.ones(3, dtype=F64))
    with pytest.raises(InputError, match=r"A: `A @ v` returned shape \(2,\)"):
        FunctionOperator(lambda x: x[:2], 3, F64, "cpu") @ v
    with pytest.raises(InputError, match="A: the size, dtype, device of a function operator"):
        FunctionOperator(lambda x: x).dim
    assert torch.equal(FunctionOperator(lambda x: 2 * x) @ v, 2 * v)  # usable without a size


def test_as_operator_and_the_one_matrix_check_name_the_argument():
    assert isinstance(as_operator(_spd(3, 0)), FlatOperator)
    with pytest.raises(InputTypeError, match="op: expected an operator"):
        as_operator("nope", name="op")
    with pytest.raises(InputError, match=r"A: expected shape \(4, 4\) to match b"):
        as_operator(_spd(3, 0), 4, F64, "cpu", match="b")
    with pytest.raises(InputError, match="A: expected dtype torch.float32 on cpu \\(like b\\)"):
        as_operator(_spd(3, 0), 3, torch.float32, "cpu", match="b")
    with pytest.raises(InputError, match="M: expected a symmetric matrix"):
        symmetric_matrix(torch.triu(torch.ones(3, 3, dtype=F64)), "M")
    with pytest.raises(InputError, match="M: expected finite entries"):
        symmetric_matrix(torch.full((2, 2), float("nan")), "M")
    with pytest.raises(InputError, match="M: expected a non-empty square 2-D tensor"):
        symmetric_matrix(torch.ones(2, 3), "M")
    with pytest.raises(InputError, match="operators: cannot combine"):
        DenseOperator(_spd(3, 0)) + DenseOperator(_spd(4, 0))
