"""Tests of hessfree.quadratic.compare, spectrum and plot against theory and numpy references."""

import math
import os

import numpy as np
import pytest
import torch
from curvature_cases import make_case

import hessfree
from hessfree.errors import InputError
from hessfree.quadratic import (
    MU_GRID,
    Quadratic,
    compare,
    largest_eigenvalue,
    plot,
    spectrum,
)
from hessfree.schedules import SutskeverSchedule

F64 = torch.float64


def rotated(eigenvalues, seed):
    """Q diag(λ) Qᵀ with a random orthogonal Q, and a random b (float64)."""
    gen = torch.Generator().manual_seed(seed)
    lam = torch.as_tensor(eigenvalues, dtype=F64)
    q, _ = torch.linalg.qr(torch.randn(len(lam), len(lam), generator=gen, dtype=F64))
    a = (q * lam) @ q.T
    return Quadratic.from_dense((a + a.T) / 2, torch.randn(len(lam), generator=gen, dtype=F64))


def diagonal(kappa, n, seed):
    """diag(1, 5..κ): condition number κ, λ_min = 1 separated from the rest."""
    lam = torch.cat([torch.ones(1, dtype=F64), torch.linspace(5, kappa, n - 1, dtype=F64)])
    gen = torch.Generator().manual_seed(seed)
    return Quadratic.from_dense(torch.diag(lam), torch.randn(n, generator=gen, dtype=F64)), lam


def numpy_q_star(q):
    A, b = q.A.numpy(), q.b.numpy()
    return -0.5 * b @ np.linalg.solve(A, b)


def numpy_momentum(A, b, iters, eps, mus, nesterov):
    """Sutskever et al. 2013 Eq. 1-4 written out directly, the gradient computed at each point."""
    x, v = np.zeros(len(b)), np.zeros(len(b))
    out = [0.0]
    for t in range(iters):
        y = x + mus[t] * v if nesterov else x
        v = mus[t] * v - eps * (A @ y - b)
        x = x + v
        out.append(-b @ x + 0.5 * x @ A @ x)
    return np.array(out)


# -- CG -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_cg_reaches_the_minimum_in_n_distinct_eigenvalues(seed):
    # 40 dimensions, 8 distinct eigenvalues: exact CG needs 8 steps
    q = rotated(np.repeat(np.linspace(1, 30, 8), 5), seed)
    c = compare(q, iters=40, methods=("cg",))
    star = numpy_q_star(q)
    assert c.q_star == pytest.approx(star, rel=1e-12)
    assert abs(c.values["cg"][8] - star) <= 1e-8 * abs(star)
    assert abs(c.values["cg"][7] - star) > 1e-8 * abs(star)  # and not before
    # all distinct (n = 20): within n steps
    q = rotated(np.linspace(1, 50, 20), seed)
    c = compare(q, iters=20, methods=("cg",))
    assert abs(c.values["cg"][20] - numpy_q_star(q)) <= 1e-8 * abs(numpy_q_star(q))
    assert np.all(np.diff(c.values["cg"]) <= 1e-12)  # CG decreases q monotonically


# -- NAG, CM, GD ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nag_rate_with_optimal_constant_momentum(seed):
    kappa = 100.0
    q, lam = diagonal(kappa, 50, seed)
    s = 1 / math.sqrt(kappa)
    mu = (1 - s) / (1 + s)
    c = compare(q, iters=150, methods=("nag",), mu=mu, L=kappa)
    k = np.arange(151)
    err = c.values["nag"] - numpy_q_star(q)
    # Nesterov's bound (2004, Thm 2.2.3; Sutskever et al. 2013 §2 with ε = 1/L, constant μ):
    # q_k − q* <= (1 − 1/√κ)^k (q_0 − q* + λ_min/2 ‖x*‖²), at every k
    x_star = (q.b / lam).numpy()
    phi0 = -numpy_q_star(q) + 0.5 * x_star @ x_star
    assert np.all(err[:120] <= (1 - s) ** k[:120] * phi0 * (1 + 1e-9))
    # the exact rate on a quadratic: along λ_min, μ and ε give a double root 1 − 1/√κ of the
    # NAG recursion (Theorem 2.1), so q_k − q* ~ (1 + k/√κ)² (1 − 1/√κ)^(2k). Fitted slope of
    # log((q_k − q*) / (1 + k/√κ)²) over k = 20..60, within 2% of 2·log(1 − 1/√κ).
    w = slice(20, 60)
    slope = np.polyfit(k[w], np.log(err[w] / (1 + k[w] * s) ** 2), 1)[0]
    assert slope / (2 * math.log(1 - s)) == pytest.approx(1, abs=0.02)
    assert c.mu == {"nag": mu} and c.eps == 1 / kappa


@pytest.mark.parametrize("seed", [0, 1])
def test_gd_rate(seed):
    kappa = 100.0
    q, _ = diagonal(kappa, 30, seed)
    c = compare(q, iters=400, methods=("gd",), L=kappa)
    k = np.arange(401)
    err = c.values["gd"] - numpy_q_star(q)
    # with ε = 1/L each eigencomponent contracts by |1 − λ/L| <= 1 − 1/κ: a bound at every k
    assert np.all(err <= (1 - 1 / kappa) ** (2 * k) * err[0] * (1 + 1e-9))
    # and λ_min = 1 dominates: fitted slope over k = 100..400 within 1% of 2·log(1 − 1/κ)
    slope = np.polyfit(k[100:], np.log(err[100:]), 1)[0]
    assert slope / (2 * math.log(1 - 1 / kappa)) == pytest.approx(1, abs=0.01)


@pytest.mark.parametrize("method", ["nag", "cm"])
@pytest.mark.parametrize("mu", [0.9, "schedule"])
def test_momentum_against_direct_numpy_recursion(method, mu):
    q = rotated(np.logspace(0, 2, 25), 3)
    iters = 300  # crosses t = 250, where the schedule moves from 0.5 to 0.75
    c = compare(q, iters=iters, methods=(method,), mu=mu, mu_max=0.99)
    mus = [0.9] * iters if mu == 0.9 else [0.5] * 250 + [0.75] * 50
    ref = numpy_momentum(q.A.numpy(), q.b.numpy(), iters, c.eps, mus, method == "nag")
    np.testing.assert_allclose(c.values[method], ref, rtol=1e-9, atol=1e-12)
    assert c.final_check[method] < 1e-10  # tracked A x agrees with a direct product
    L = np.linalg.eigvalsh(q.A.numpy())[-1]
    assert c.L == pytest.approx(L, rel=1e-6)


def test_schedule():
    # 1 − 2^(−1 − log2(j + 1)) = 1 − 1/(2(j + 1)), j = ⌊t/250⌋
    ts = (0, 249, 250, 499, 500, 749, 750, 1000)
    assert [SutskeverSchedule(0.999)(t) for t in ts] == \
        pytest.approx([0.5, 0.5, 0.75, 0.75, 5 / 6, 5 / 6, 0.875, 0.9], rel=1e-15)
    assert SutskeverSchedule(0.99)(10**6) == 0.99
    q = rotated(np.logspace(0, 2, 10), 0)
    a = compare(q, iters=50, methods=("nag",), mu="schedule")
    b = compare(q, iters=50, methods=("nag",), mu=0.5)
    np.testing.assert_array_equal(a.values["nag"], b.values["nag"])
    assert a.mu["nag"] == "schedule(mu_max=0.999)"


def test_mu_grid_keeps_the_best_final_value():
    q = rotated(np.logspace(0, 3, 30), 4)
    c = compare(q, iters=60, methods=("nag", "cm"))
    for m in ("nag", "cm"):
        finals = {mu: compare(q, iters=60, methods=(m,), mu=mu, L=c.L).values[m][-1]
                  for mu in MU_GRID}
        assert c.mu_search[m] == pytest.approx(finals, rel=1e-12)
        assert c.mu[m] == min(finals, key=finals.get)
        assert c.values[m][-1] == pytest.approx(min(finals.values()), rel=1e-12)
    assert c.tuning_products == 2 * (len(MU_GRID) - 1) * 60


def test_products_are_counted_equal_and_honestly():
    model, loss, batch = make_case("autoencoder", "bce", "mean", F64, seed=0, n=8)
    G = hessfree.GGN(hessfree.Problem(model, loss), batch)
    q = Quadratic(G, G.grad, 1e-3)
    start = G.products  # the operator's own counter, independent of Quadratic's
    c = compare(q, iters=30, mu=(0.9, 0.99))
    assert c.products == {"cg": 30, "nag": 30, "cm": 30, "gd": 30}
    assert c.check_products == 4 and c.L_products > 0 and c.tuning_products == 60
    total = sum(c.products.values()) + c.L_products + c.tuning_products + c.check_products
    assert G.products - start == total
    assert all(len(v) == 31 and v[0] == 0.0 for v in c.values.values())
    assert c.q_star is None and c.cg_reason == "max iterations"
    # the dense twin gives the same trajectories (the GGN is exact to rounding)
    twin = Quadratic.from_dense(q.dense(), q.b)
    d = compare(twin, iters=30, mu=(0.9, 0.99), L=c.L)
    for m in c.values:
        np.testing.assert_allclose(d.values[m], c.values[m], rtol=1e-7, atol=1e-12)


def test_table_and_format():
    q = rotated(np.logspace(0, 2, 12), 0)
    c = compare(q, iters=30, mu=0.9)
    rows = c.table(ks=(1, 10, 30))
    assert [r[0] for r in rows] == ["cg", "nag", "cm", "gd"]
    for m, vals in rows:
        assert vals == [c.values[m][1], c.values[m][10], c.values[m][30]]
    assert c.default_ks() == (10, 20, 30)
    assert [len(v) for _, v in c.table()] == [3] * 4
    with pytest.raises(ValueError, match=r"ks: expected an integer in \[0, 30\]"):
        c.table(ks=(31,))
    text = c.format()
    assert "k=30" in text and "mu[nag] = 0.9" in text and "CG stopped" in text
    # CG is best at equal products on this quadratic (the point of Fig. 5)
    assert all(rows[0][1][i] <= r[1][i] + 1e-12 for r in rows for i in range(3))


def test_compare_errors():
    q = rotated([1.0, 2.0, 3.0], 0)
    with pytest.raises(ValueError, match="iters: expected an integer >= 1"):
        compare(q, iters=0)
    with pytest.raises(ValueError, match="methods: expected distinct names"):
        compare(q, methods=("cg", "adam"))
    with pytest.raises(ValueError, match=r"mu: expected a finite number in \[0, 1\)"):
        compare(q, methods=("nag",), mu=1.0)
    with pytest.raises(ValueError, match="mu: expected a number"):
        compare(q, methods=("nag",), mu="fast")
    with pytest.raises(ValueError, match="L: expected a finite largest eigenvalue > 0"):
        compare(q, methods=("gd",), L=-1.0)
    with pytest.raises(TypeError, match="q: expected a hessfree.Quadratic"):
        compare(torch.eye(3))


# -- spectrum, Lanczos, plot ----------------------------------------------------------------------
def test_spectrum_dense_against_eigvalsh():
    q = rotated(np.logspace(-1, 3, 60), 7)
    ref = np.linalg.eigvalsh(q.A.numpy())
    s = spectrum(q, k=4)
    assert s.method == "lanczos" and s.products > 0
    np.testing.assert_allclose(s.largest, ref[::-1][:4], rtol=1e-8)
    np.testing.assert_allclose(s.smallest, ref[:4], rtol=1e-8)
    assert s.condition == pytest.approx(ref[-1] / ref[0], rel=1e-8)
    small = spectrum(rotated([1.0, 2.0, 5.0], 0), k=2)
    assert small.method == "dense" and small.condition == pytest.approx(5.0)
    assert "condition number" in s.format()
    with pytest.raises(ValueError, match="k: expected an integer >= 1"):
        spectrum(q, k=0)


def test_spectrum_operator_backed_against_eigvalsh():
    model, loss, batch = make_case("autoencoder", "bce", "mean", F64, seed=1, n=10)
    G = hessfree.GGN(hessfree.Problem(model, loss), batch)
    lam = 0.05
    q = Quadratic(G, G.grad, lam)
    ref = np.linalg.eigvalsh((G.dense() + lam * torch.eye(G.dim, dtype=F64)).numpy())
    s = spectrum(q, k=3)
    np.testing.assert_allclose(s.largest, ref[::-1][:3], rtol=1e-7)
    np.testing.assert_allclose(s.smallest, ref[:3], rtol=1e-7)
    L, cost = largest_eigenvalue(q)
    assert L == pytest.approx(ref[-1], rel=1e-6) and cost > 0


def test_plot_writes_a_file(tmp_path):
    pytest.importorskip("matplotlib")
    q = rotated(np.logspace(0, 2, 12), 0)
    c = compare(q, iters=20, mu=0.9)
    path = plot(c, tmp_path / "cmp.png")
    assert os.path.getsize(path) > 1000 and sorted(os.listdir(tmp_path)) == ["cmp.png"]
    c.q_star = None  # unknown minimum: q itself is drawn
    plot(c, tmp_path / "cmp.svg")
    assert open(tmp_path / "cmp.svg").read(200).lstrip().startswith("<?xml")


def test_plot_follows_the_umask_and_never_overwrites_results(tmp_path):
    pytest.importorskip("matplotlib")
    h5py = pytest.importorskip("h5py")
    c = compare(rotated(np.logspace(0, 1, 6), 1), iters=8, mu=0.9)
    old = os.umask(0o022)
    try:
        path = plot(c, tmp_path / "sub" / "cmp.png")  # a missing folder is made
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644
    results = tmp_path / "results.png"
    with h5py.File(results, "w") as f:  # an HDF5 file under an image name
        f["x"] = 1
    with pytest.raises(InputError, match="path: .*HDF5"):
        plot(c, results)
    with h5py.File(results, "r") as f:
        assert f["x"][()] == 1


@pytest.mark.parametrize("dtype,rtol,tol",
                         [(torch.float64, 1e-10, 1e-12), (torch.float32, 1e-5, 1e-6)])
def test_minimum_matches_the_dense_solve(dtype, rtol, tol):
    from hessfree.quadratic import minimum

    g = torch.Generator().manual_seed(5)
    Q, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=F64))
    A = (Q * torch.logspace(0, 3, 40, dtype=F64)) @ Q.T
    b = torch.randn(40, generator=g, dtype=F64)
    q = Quadratic.from_dense(A.to(dtype), b=b.to(dtype))
    ref = -0.5 * float(b.numpy() @ np.linalg.solve(A.numpy(), b.numpy()))
    m = minimum(q, rtol=rtol, max_iters=500)
    assert m.converged and m.reason == "residual tolerance" and 0 < m.products <= 500
    assert m.value == pytest.approx(ref, rel=tol)
    short = minimum(q, rtol=rtol, max_iters=3)  # not converged: says so
    assert not short.converged and short.products == 3 and short.value > m.value
    with pytest.raises(InputError, match="rtol"):
        minimum(q, rtol=0.0)
