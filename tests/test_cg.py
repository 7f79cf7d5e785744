"""Tests of hessfree.cg.solve: convergence, φ, preconditioning, hot start, grid, failures."""

import math

import numpy as np
import pytest
import torch

from hessfree import cg

F32, F64 = torch.float32, torch.float64
DTYPES = [F32, F64]
DTYPE_IDS = ["float32", "float64"]


def spd(n, cond, seed, dtype=F64, eigenvalues=None):
    """A = Q diag(λ) Qᵀ (λ log-spaced in [1, cond] unless given) and b, built in float64."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    lam = torch.logspace(0, math.log10(cond), n, dtype=F64) if eigenvalues is None else eigenvalues
    a = (q * lam) @ q.T
    a = (a + a.T) / 2
    b = torch.randn(n, generator=g, dtype=F64)
    return a.to(dtype), b.to(dtype)


def numpy_solution(a, b):
    """The float64 solution of the (possibly float32-rounded) system."""
    return np.linalg.solve(a.double().numpy(), b.double().numpy())


class Counting:
    """Operator with @ that counts its products and can return NaN at a given call."""

    def __init__(self, a, nan_at=None, value=math.nan):
        self.a, self.calls, self.nan_at, self.value = a, 0, nan_at, value

    def __matmul__(self, v):
        self.calls += 1
        out = self.a @ v
        if self.calls == self.nan_at:
            out = out.clone()
            out[0] = self.value
        return out


# (rtol of the residual rule, bound on ‖x − x*‖/‖x*‖). The bound is κ·rtol (the error given the
# residual) where that is meaningful; for float32 at κ >= 1e3 CG's recursive residual drifts from
# b − Ax (attainable accuracy ~ eps·κ), so the bound is ~10x the worst error seen over 10 seeds.
TOLS = {
    (F32, 1e1): (1e-5, 1e-4),
    (F32, 1e3): (1e-4, 2e-3),
    (F32, 1e6): (1e-3, 3e-2),
    (F64, 1e1): (1e-10, 1e-9),
    (F64, 1e3): (1e-10, 1e-8),
    (F64, 1e6): (1e-9, 1e-7),
}


@pytest.mark.parametrize("seed", [0, 1], ids=lambda s: f"seed={s}")
@pytest.mark.parametrize("n", [10, 50, 200], ids=lambda n: f"n={n}")
@pytest.mark.parametrize("cond", [1e1, 1e3, 1e6], ids=lambda c: f"cond={c:.0e}")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_residual_rule_converges_to_numpy_solve(dtype, cond, n, seed):
    a, b = spd(n, cond, seed=1000 * n + seed + int(math.log10(cond)), dtype=dtype)
    rtol, err_tol = TOLS[dtype, cond]
    res = cg.solve(a, b, stop=cg.ResidualTolerance(rtol), max_iters=100 * n, store=False)
    assert res.reason == cg.RESIDUAL_TOLERANCE, res.reason
    x_star = numpy_solution(a, b)
    x = res.x.double().numpy()
    assert np.linalg.norm(x - x_star) <= err_tol * np.linalg.norm(x_star)
    eps = torch.finfo(dtype).eps
    residual = np.linalg.norm(b.double().numpy() - a.double().numpy() @ x)
    assert residual <= max(2 * rtol, 10 * eps * cond) * np.linalg.norm(b.double().numpy())
    assert res.x.dtype == dtype and res.products == res.iters


@pytest.mark.parametrize("hot", [False, True], ids=["x0=None", "x0=random"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_no_preconditioner_equals_ones_bit_for_bit(dtype, hot):
    a, b = spd(40, 1e3, seed=7, dtype=dtype)
    x0 = torch.randn(40, generator=torch.Generator().manual_seed(3)).to(dtype) if hot else None
    kw = dict(x0=x0, stop=[cg.MartensProgress(), cg.ResidualTolerance(1e-7)], store=cg.Every())
    plain = cg.solve(a, b, M=None, **kw)
    ones = cg.solve(a, b, M=torch.ones(40, dtype=dtype), **kw)
    assert (plain.iters, plain.reason, plain.products) == (ones.iters, ones.reason, ones.products)
    assert torch.equal(plain.x, ones.x) and torch.equal(plain.phi, ones.phi)
    for (i, xi), (j, xj) in zip(plain.iterates, ones.iterates, strict=True):
        assert i == j and torch.equal(xi, xj)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_inverse_of_diagonal_a_as_preconditioner_converges_in_one_iteration(dtype):
    d = torch.logspace(-3, 3, 30, dtype=F64).to(dtype)
    b = torch.randn(30, generator=torch.Generator().manual_seed(0)).to(dtype)
    res = cg.solve(torch.diag(d), b, M=1 / d, stop=cg.ResidualTolerance(1e-5))
    assert res.iters == 1 and res.reason in (cg.RESIDUAL_TOLERANCE, cg.CONVERGED)
    torch.testing.assert_close(res.x, b / d)


def test_jacobi_preconditioner_helps_on_a_badly_scaled_system():
    a, b = spd(60, 1e2, seed=5)
    s = torch.logspace(-2, 2, 60, dtype=F64)
    a = s[:, None] * a * s[None, :]
    stop = cg.ResidualTolerance(1e-10)
    plain = cg.solve(a, b, stop=stop, max_iters=5000)
    jacobi = cg.solve(a, b, M=1 / torch.diagonal(a), stop=stop, max_iters=5000)
    assert jacobi.reason == cg.RESIDUAL_TOLERANCE and jacobi.iters < plain.iters / 2
    np.testing.assert_allclose(jacobi.x.numpy(), numpy_solution(a, b), rtol=1e-6)


@pytest.mark.parametrize("precond", [False, True], ids=["M=None", "M=1/diag"])
@pytest.mark.parametrize("hot", [False, True], ids=["x0=None", "x0=random"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_phi_equals_quadratic_value_at_every_iterate(dtype, hot, precond):
    a, b = spd(50, 1e3, seed=11, dtype=dtype)
    x0 = torch.randn(50, generator=torch.Generator().manual_seed(2)).to(dtype) if hot else None
    m = 1 / torch.diagonal(a) if precond else None
    res = cg.solve(a, b, x0=x0, M=m, stop=[], max_iters=60, store=cg.Every())
    assert [i for i, _ in res.iterates] == list(range(1, res.iters + 1))
    assert res.phi.dtype == F64 and res.phi.device.type == "cpu"
    assert len(res.phi) == res.iters + 1
    a64, b64 = a.double(), b.double()
    start = torch.zeros(50, dtype=F64) if x0 is None else x0.double()
    direct = [cg.quadratic_value(a64, b64, start)]
    direct += [cg.quadratic_value(a64, b64, xi.double()) for _, xi in res.iterates]
    # φ is ½(r − b)ᵀx with CG's recursive r; in float32 r drifts from Ax − b by rounding.
    tol = 1e-10 if dtype == F64 else 1e-4
    torch.testing.assert_close(res.phi, torch.stack(direct), rtol=0, atol=tol * res.phi.abs().max())


def expected_grid(first, ratio, limit):
    """ceil(first·ratioʲ) in closed form (the solver multiplies step by step), deduplicated."""
    out, j = set(), 0
    while math.ceil(first * ratio**j) <= limit:
        out.add(math.ceil(first * ratio**j))
        j += 1
    return out


@pytest.mark.parametrize(
    "first, ratio, iters", [(5, 1.3, 60), (5, 1.3, 54), (1, 1.1, 12), (2, 2.0, 40)]
)
def test_stored_iterates_follow_the_geometric_grid(first, ratio, iters):
    a, b = spd(300, 1e4, seed=13)
    seen = {}
    res = cg.solve(
        a, b, stop=[], max_iters=iters, store=cg.Geometric(ratio, first=first),
        callback=lambda i, x, phi: seen.__setitem__(i, x.clone()),
    )
    assert res.reason == cg.MAX_ITERATIONS and res.iters == iters
    assert [i for i, _ in res.iterates] == sorted(expected_grid(first, ratio, iters) | {iters})
    for i, xi in res.iterates:
        assert torch.equal(xi, seen[i])
    assert res.iterates[-1][1] is res.x


def test_default_store_is_martens_grid_and_false_keeps_only_the_last():
    a, b = spd(300, 1e4, seed=13)
    default = cg.solve(a, b, stop=[], max_iters=40)
    # ceil(5·1.3ʲ) for j = 0..7: 5, 6.5, 8.45, 10.985, 14.28, 18.56, 24.13, 31.37 -> and the last
    assert [i for i, _ in default.iterates] == [5, 7, 9, 11, 15, 19, 25, 32, 40]
    none = cg.solve(a, b, stop=[], max_iters=40, store=False)
    assert [i for i, _ in none.iterates] == [40] and torch.equal(none.x, default.x)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_hot_start_from_the_solution_stops_at_once(dtype):
    a, b = spd(30, 1e2, seed=17, dtype=dtype)
    x0 = torch.from_numpy(numpy_solution(a, b)).to(dtype)
    keep = x0.clone()
    res = cg.solve(a, b, x0=x0, stop=cg.ResidualTolerance(1e-5))
    assert (res.iters, res.products, res.reason) == (0, 1, cg.RESIDUAL_TOLERANCE)
    assert torch.equal(res.x, x0) and res.x is not x0 and torch.equal(x0, keep)
    assert res.iterates == [(0, res.x)] and len(res.phi) == 1


def test_exact_zero_residual_reports_converged():
    a = torch.diag(torch.tensor([2.0, 4.0, 8.0]))
    b = torch.tensor([2.0, 4.0, 8.0])
    res = cg.solve(a, b, x0=torch.ones(3))
    assert (res.reason, res.iters, res.products) == (cg.CONVERGED, 0, 1)
    zero = cg.solve(a, torch.zeros(3))
    assert (zero.reason, zero.iters, zero.products) == (cg.CONVERGED, 0, 0)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_k_distinct_eigenvalues_reach_the_exact_minimum_in_at_most_k_steps(k):
    n = 40
    distinct = torch.linspace(0.5, 20.0, k, dtype=F64)
    lam = distinct[torch.arange(n) % k]
    a, b = spd(n, 1, seed=100 + k, eigenvalues=lam)
    res = cg.solve(a, b, stop=cg.ResidualTolerance(1e-10), max_iters=n)
    assert res.reason in (cg.RESIDUAL_TOLERANCE, cg.CONVERGED) and res.iters <= k
    x_star = numpy_solution(a, b)
    phi_star = -0.5 * float(b.numpy() @ x_star)
    assert abs(res.phi[-1].item() - phi_star) <= 1e-10 * abs(phi_star)
    np.testing.assert_allclose(res.x.numpy(), x_star, rtol=0, atol=1e-8 * np.abs(x_star).max())


def test_default_stop_is_martens_rule_firing_at_the_first_index_the_formula_gives():
    a, b = spd(300, 1e3, seed=19)
    res = cg.solve(a, b)
    assert res.reason == cg.MARTENS_PROGRESS
    phi = res.phi.tolist()
    fires = [i for i in range(len(phi)) if cg.martens_progress(phi, i)]
    assert fires[0] == res.iters


@pytest.mark.parametrize("hot", [False, True], ids=["x0=None", "x0=random"])
@pytest.mark.parametrize(
    "case", ["max iterations", "residual tolerance", "martens progress", "negative curvature",
             "non-finite"]
)
def test_product_count_is_exact(case, hot):
    if case == "negative curvature":
        lam = torch.linspace(1, 10, 30, dtype=F64)
        lam[:3] = torch.tensor([-0.5, -1.0, -2.0], dtype=F64)
        a, b = spd(30, 1, seed=0, eigenvalues=lam)
    else:
        a, b = spd(200, 1e3, seed=23)
    op = Counting(a, nan_at=4 if case == "non-finite" else None)
    x0 = 0.95 * torch.ones(len(b), dtype=F64) if hot else None
    stop = {"max iterations": [], "residual tolerance": cg.ResidualTolerance(1e-6)}.get(case)
    res = cg.solve(op, b, x0=x0, stop=stop, max_iters=40 if case == "max iterations" else 250)
    assert res.reason == case
    assert res.products == op.calls
    failed = case in ("negative curvature", "non-finite")  # the product of the bad step counts
    assert res.products == res.iters + int(hot) + int(failed)


def test_negative_curvature_returns_the_iterate_before_the_bad_direction():
    lam = torch.linspace(1, 10, 30, dtype=F64)
    lam[:3] = torch.tensor([-0.5, -1.0, -2.0], dtype=F64)
    a, b = spd(30, 1, seed=0, eigenvalues=lam)
    res = cg.solve(a, b, stop=[], store=cg.Every())
    assert res.reason == cg.NEGATIVE_CURVATURE and res.iters >= 1
    assert torch.isfinite(res.x).all() and len(res.phi) == res.iters + 1
    clean = cg.solve(a, b, stop=[], max_iters=res.iters)
    assert torch.equal(res.x, clean.x)
    # zero curvature along the very first direction: nothing to take, x stays x_0 = 0
    flat = cg.solve(torch.diag(torch.tensor([1.0, -1.0])), torch.tensor([1.0, 1.0]))
    assert (flat.reason, flat.iters, flat.products) == (cg.NEGATIVE_CURVATURE, 0, 1)
    assert torch.equal(flat.x, torch.zeros(2))


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_non_finite_product_at_iteration_3_returns_the_last_finite_iterate(dtype, value):
    a, b = spd(50, 1e2, seed=29, dtype=dtype)
    res = cg.solve(Counting(a, nan_at=3, value=value), b, stop=[], store=cg.Every())
    assert (res.reason, res.iters, res.products) == (cg.NON_FINITE, 2, 3)
    clean = cg.solve(a, b, stop=[], max_iters=2)
    assert torch.equal(res.x, clean.x) and torch.isfinite(res.x).all()
    assert torch.equal(res.phi, clean.phi)


def test_non_finite_preconditioner_keeps_the_finite_iterate_it_came_after():
    a, b = spd(50, 1e2, seed=31)
    calls = []

    def m(r):
        calls.append(1)
        return r * math.nan if len(calls) == 3 else r.clone()

    res = cg.solve(a, b, M=m, stop=[])
    # M is applied at x_0, x_1, x_2: x_2 is finite, but rᵀz is not, so CG stops there.
    assert (res.reason, res.iters, res.products) == (cg.NON_FINITE, 2, 2)
    assert torch.equal(res.x, cg.solve(a, b, stop=[], max_iters=2).x)


def test_overflowing_update_is_undone_exactly():
    # float32: α = rᵀr / pᵀAp = 1e36 / 1e11 = 1e25 is finite, but x = α·p = 1e43 overflows.
    a = torch.tensor([[1e-25]])
    b = torch.tensor([1e18])
    res = cg.solve(a, b)
    assert (res.reason, res.iters, res.products) == (cg.NON_FINITE, 0, 1)
    assert torch.equal(res.x, torch.zeros(1)) and res.phi.tolist() == [0.0]


def test_callback_sees_every_iteration():
    a, b = spd(60, 1e2, seed=37)
    trace = []
    res = cg.solve(
        a, b, stop=cg.ResidualTolerance(1e-8), store=cg.Every(),
        callback=lambda i, x, phi: trace.append((i, x.clone(), phi)),
    )
    assert [i for i, _, _ in trace] == list(range(res.iters + 1))
    assert [phi for _, _, phi in trace] == res.phi.tolist()
    for (i, xi), (j, xj, _) in zip(res.iterates, trace[1:], strict=True):
        assert i == j and torch.equal(xi, xj)


def test_operator_forms_agree():
    a, b = spd(25, 1e2, seed=41)

    class Dense:
        shape = (25, 25)

        def __matmul__(self, v):
            return a @ v

    kw = dict(stop=cg.ResidualTolerance(1e-9))
    ref = cg.solve(a, b, **kw)
    for form in (Dense(), lambda v: a @ v, cg.as_operator(lambda v: a @ v)):
        res = cg.solve(form, b, **kw)
        assert torch.equal(res.x, ref.x) and res.iters == ref.iters


def test_max_iters_zero_returns_the_start():
    a, b = spd(10, 10, seed=43)
    x0 = torch.ones(10, dtype=F64)
    res = cg.solve(a, b, x0=x0, max_iters=0)
    assert (res.reason, res.iters, res.products) == (cg.MAX_ITERATIONS, 0, 1)
    assert torch.equal(res.x, x0)
    torch.testing.assert_close(res.phi[0], cg.quadratic_value(a, b, x0))


def test_rule_at_the_cap_wins_over_max_iterations():
    a, b = spd(10, 10, seed=47)
    res = cg.solve(a, b, stop=cg.MaxIters(3), max_iters=3)
    assert res.reason == cg.MAX_ITERATIONS and res.iters == 3
    res = cg.solve(a, b, stop=lambda state: "mine" if state.i == 3 else None, max_iters=3)
    assert res.reason == "mine"


def test_inputs_that_require_grad_are_not_tracked():
    a, b = spd(10, 10, seed=53)
    b = b.clone().requires_grad_()
    res = cg.solve(a, b, stop=cg.ResidualTolerance(1e-8))
    assert not res.x.requires_grad and b.grad is None


def test_reason_strings():
    assert cg.REASONS == (
        "martens progress", "residual tolerance", "max iterations", "negative curvature",
        "non-finite", "converged", "deadline",
    )


def test_deadline_stops_after_at_least_one_iteration():
    """A passed deadline stops CG after its first iteration; a far one never fires."""
    import time

    a, b = spd(30, 30, seed=5)
    past = cg.solve(a, b, stop=cg.Deadline(time.perf_counter() - 1.0), max_iters=50)
    assert past.reason == cg.DEADLINE and past.iters == 1
    far = cg.solve(a, b, stop=[cg.ResidualTolerance(1e-10), cg.Deadline(time.perf_counter()
                                                                          + 1e6)])
    assert far.reason == cg.RESIDUAL_TOLERANCE


A3 = torch.eye(3)
B3 = torch.ones(3)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(b=torch.ones(3, 1)), ValueError, r"^b: expected a flat 1-D tensor"),
        (dict(b=torch.ones(3, dtype=torch.int64)), ValueError, r"^b: expected a floating"),
        (dict(b=[1.0, 2.0, 3.0]), TypeError, r"^b: expected a Tensor"),
        (dict(b=torch.tensor([1.0, math.nan, 1.0])), ValueError, r"^b: expected finite"),
        (dict(x0=torch.ones(4)), ValueError, r"^x0: expected a flat 1-D tensor of length 3 \("),
        (dict(x0=torch.ones(3, dtype=F64)), ValueError, r"^x0: expected dtype torch.float32"),
        (dict(A=torch.ones(3, 4)), ValueError, r"^A: expected a non-empty square 2-D tensor"),
        (dict(A=torch.ones(3)), ValueError, r"^A: expected a non-empty square 2-D tensor"),
        (dict(A=torch.eye(4)), ValueError, r"^A: expected shape \(3, 3\)"),
        (dict(A=torch.eye(3, dtype=F64)), ValueError, r"^A: expected dtype torch.float32"),
        (dict(A="matrix"), TypeError, r"^A: expected an operator"),
        (dict(A=lambda v: v[:2]), ValueError, r"^A: `A @ v` returned shape \(2,\)"),
        (dict(A=lambda v: v.numpy()), TypeError, r"^A: `A @ v` returned ndarray"),
        (dict(M=torch.ones(4)), ValueError, r"^M: expected a flat 1-D tensor of length 3"),
        (dict(M=torch.ones(3, 3)), ValueError, r"^M: expected a flat 1-D tensor of length 3"),
        (dict(M=torch.ones(3, dtype=F64)), ValueError, r"^M: expected dtype torch.float32"),
        (dict(M=torch.tensor([1.0, 0.0, 1.0])), ValueError, r"^M: expected positive"),
        (dict(M=lambda r: r[:1]), ValueError, r"^M: M\(r\) returned shape \(1,\)"),
        (dict(M="diag"), TypeError, r"^M: expected a 1-D tensor"),
        (dict(max_iters=-1), ValueError, r"^max_iters: expected an integer >= 0, got -1"),
        (dict(max_iters=2.5), ValueError, r"^max_iters: expected an integer"),
        (dict(stop=3), TypeError, r"^stop: expected a stopping rule"),
        (dict(stop=[cg.MaxIters(3), "x"]), TypeError, r"^stop\[1\]: expected a stopping rule"),
        (dict(store="grid"), TypeError, r"^store: expected a storage policy"),
        (dict(callback=3), TypeError, r"^callback: expected a callable"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_input_raises_naming_the_argument(kwargs, error, match):
    args = dict(A=A3, b=B3) | kwargs
    with pytest.raises(error, match=match):
        cg.solve(**args)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_runs_on_the_device_and_dtype_of_b_and_leaves_inputs_alone(dtype, device):
    a, b = spd(40, 1e2, seed=59, dtype=dtype)
    a, b = a.to(device), b.to(device)
    m, x0 = 1 / torch.diagonal(a), 0.95 * torch.ones(40, dtype=dtype, device=device)
    keep = [t.clone() for t in (a, b, m, x0)]
    res = cg.solve(a, b, x0=x0, M=m, stop=cg.ResidualTolerance(1e-4))
    assert res.x.device.type == device and res.x.dtype == dtype
    assert all(x.device.type == device for _, x in res.iterates)
    assert res.phi.device.type == "cpu" and res.phi.dtype == F64
    for before, after in zip(keep, (a, b, m, x0), strict=True):
        assert torch.equal(before, after)
    ref = cg.solve(a.cpu().double(), b.cpu().double(), x0=x0.cpu().double(), M=m.cpu().double(),
                   stop=cg.ResidualTolerance(1e-4))
    torch.testing.assert_close(res.x.cpu().double(), ref.x, rtol=1e-3, atol=1e-4)
