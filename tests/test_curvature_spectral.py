"""hessfree.curvature.spectral (eigsh, trace, density) and the block products it runs on.

References: ``torch.linalg.eigvalsh`` of dense float64 matrices (built independently by
torch.func in ``curvature_cases.Reference``), ``scipy.sparse.linalg.eigsh`` on the same operator,
exact traces, and diagonal matrices whose spectrum is known.
"""

import math

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch
from curvature_cases import Reference, make_case, rel_err

import hessfree
from hessfree.curvature import SpectralDensity, TraceEstimate, density, eigsh, trace
from hessfree.errors import InputError, InputTypeError
from hessfree.linops import single_threaded_blas

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _problem(model_name, loss_name, dtype=F64, seed=0, n=8, wd=0.0):
    model, loss, batch = make_case(model_name, loss_name, "mean", dtype, seed=seed, n=n)
    return hessfree.Problem(model, loss, weight_decay=wd), batch, model, loss_name


def operators(dtype=F64):
    """name -> (operator, dense float64 matrix from the independent reference)."""
    out = {}
    problem, batch, model, ln = _problem("autoencoder", "bce", dtype, seed=1, n=10, wd=1e-3)
    ref = Reference(model, ln, "mean", batch, weight_decay=1e-3)
    G = hessfree.GGN(problem, batch)
    out["ggn"] = (G, ref.ggn())
    out["damped"] = (G.damped(0.1), ref.ggn() + 0.1 * torch.eye(G.dim, dtype=F64))
    out["quadratic"] = (hessfree.Quadratic(G, G.grad, 0.05),
                        ref.ggn() + 0.05 * torch.eye(G.dim, dtype=F64))
    problem, batch, model, ln = _problem("mlp", "mse", dtype, seed=2, n=12)
    ref = Reference(model, ln, "mean", batch)
    out["hessian"] = (hessfree.Hessian(problem, batch), ref.hessian())
    problem, batch, model, ln = _problem("rnn", "ce", dtype, seed=3, n=6)
    ref = Reference(model, ln, "mean", batch)
    out["fisher"] = (hessfree.EmpiricalFisher(problem, batch), ref.fisher())
    Qm, _ = torch.linalg.qr(torch.randn(60, 60, generator=gen(4), dtype=F64))
    dense = (Qm * torch.linspace(-2.0, 7.0, 60, dtype=F64)) @ Qm.T
    dense = (dense + dense.T) / 2
    out["dense"] = (dense.to(dtype), dense)
    return out


@pytest.fixture(scope="module")
def ops64():
    return operators()


NAMES = ("ggn", "damped", "quadratic", "hessian", "fisher", "dense")


# -- eigsh ---------------------------------------------------------------------------------------
PSD = ("ggn", "damped", "quadratic", "fisher")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("which", ["LA", "SA"])
def test_eigsh_matches_dense_spectrum_and_scipy(ops64, name, which):
    op, A = ops64[name]
    ref = torch.linalg.eigvalsh(A)
    scale = float(ref.abs().max())
    k = 4
    want = ref[-k:] if which == "LA" else ref[:k]
    if which == "SA" and name in PSD:
        # rank-deficient PSD: the bottom is a multiple eigenvalue inside a cluster some 1e-8·||A||
        # wide; a block of k finds k copies, and the test (residual <= tol·|θ|) is met at a
        # tolerance above the cluster's width
        tol = 1e-4
        vals, vecs = eigsh(op, k, which, block=k, tol=tol, generator=gen(0))
        assert bool(((vals - want).abs() <= tol * want.abs() + 1e-12 * scale).all())
        residual = float((A @ vecs - vecs * vals).norm(dim=0).max())
        assert residual <= tol * float(want.abs().max()) + 1e-12 * scale
        return
    vals, vecs = eigsh(op, k, which, generator=gen(0))
    assert vals.dtype == F64 and vecs.shape == (A.shape[0], k)
    assert torch.all(vals[1:] >= vals[:-1])  # ascending, like scipy
    assert float((vals - want).abs().max()) <= 1e-8 * scale
    # eigenvectors: unit, orthogonal, A y = θ y
    assert float((vecs.T @ vecs - torch.eye(k, dtype=F64)).abs().max()) < 1e-8
    assert float((A @ vecs - vecs * vals).norm(dim=0).max()) < 1e-6 * scale
    # scipy's ARPACK on the same operator (float64 through to_scipy())
    sop = op.numpy() if isinstance(op, torch.Tensor) else op.to_scipy()
    with single_threaded_blas():
        sc = np.sort(sla.eigsh(sop, k, which=which, return_eigenvectors=False))
    np.testing.assert_allclose(vals.numpy(), sc, rtol=1e-6)


def test_eigsh_hessian_is_indefinite_and_both_ends_are_found(ops64):
    op, A = ops64["hessian"]
    ref = torch.linalg.eigvalsh(A)
    assert ref[0] < -1e-3 and ref[-1] > 1e-3
    vals = eigsh(op, 4, "BE", return_eigenvectors=False, generator=gen(1))
    want = torch.cat([ref[:2], ref[-2:]])
    assert float((vals - want).abs().max()) < 1e-8 * float(ref.abs().max())
    lm = eigsh(op, 3, "LM", return_eigenvectors=False, generator=gen(1))
    by_mag = ref[torch.argsort(ref.abs())[-3:]].sort().values
    assert float((lm - by_mag).abs().max()) < 1e-8 * float(ref.abs().max())


@pytest.mark.parametrize("block", [2, 3])
def test_eigsh_block_matches_single_vector(ops64, block):
    op, A = ops64["ggn"]
    ref = torch.linalg.eigvalsh(A)[-5:]
    start = op.products
    vals = eigsh(op, 5, "LA", block=block, return_eigenvectors=False, generator=gen(2))
    assert (op.products - start) % block == 0
    assert float((vals - ref).abs().max()) < 1e-8 * float(ref[-1])


def test_eigsh_finds_a_multiple_eigenvalue_with_a_block():
    lam = torch.cat([torch.linspace(0.0, 1.0, 197, dtype=F64), torch.full((3,), 2.0, dtype=F64)])
    Qm, _ = torch.linalg.qr(torch.randn(200, 200, generator=gen(5), dtype=F64))
    A = (Qm * lam) @ Qm.T
    A = (A + A.T) / 2
    vals, vecs = eigsh(A, 3, "LA", block=3, generator=gen(0))
    torch.testing.assert_close(vals, torch.full((3,), 2.0, dtype=F64), rtol=1e-10, atol=0)
    assert float((vecs.T @ vecs - torch.eye(3, dtype=F64)).abs().max()) < 1e-10


def test_eigsh_restarts_until_converged_and_reports_failure():
    # clustered top: 40 basis vectors do not resolve it, restarts do
    lam = torch.cat([torch.linspace(0.0, 1.0, 400, dtype=F64),
                     1.0 + torch.tensor([1e-3, 2e-3, 3e-3], dtype=F64)])
    A = torch.diag(lam)
    vals = eigsh(A, 3, "LA", ncv=12, return_eigenvectors=False, generator=gen(0))
    torch.testing.assert_close(vals, lam[-3:], rtol=1e-10, atol=0)
    with pytest.raises(RuntimeError, match="not converged after 0 restarts"):
        eigsh(A, 3, "LA", ncv=12, maxiter=0, generator=gen(0))


def test_eigsh_invariant_start_space_breaks_down_and_goes_on():
    # 3 distinct eigenvalues: the Krylov space of any start vector has dimension 3; each fresh
    # direction after a breakdown brings one more copy of each multiple eigenvalue
    A = torch.diag(torch.tensor([1.0] * 10 + [2.0] * 10 + [5.0] * 10, dtype=F64))
    vals, vecs = eigsh(A, 5, "LA", generator=gen(0))
    torch.testing.assert_close(vals, torch.full((5,), 5.0, dtype=F64), rtol=1e-12, atol=0)
    assert float((vecs.T @ vecs - torch.eye(5, dtype=F64)).abs().max()) < 1e-12
    A = torch.diag(torch.tensor([1.0] * 10 + [2.0] * 10 + [5.0], dtype=F64))
    vals = eigsh(A, 3, "LA", ncv=12, return_eigenvectors=False, generator=gen(0))
    torch.testing.assert_close(vals, torch.tensor([2.0, 2.0, 5.0], dtype=F64), rtol=1e-12,
                               atol=0)


def test_eigsh_float32_and_v0():
    ops = operators(torch.float32)
    op, A = ops["ggn"]
    ref = torch.linalg.eigvalsh(A)[-3:]
    v0 = torch.ones(op.dim)
    vals, vecs = eigsh(op, 3, v0=v0)
    assert vals.dtype == torch.float32 and vecs.dtype == torch.float32
    assert float((vals.double() - ref).abs().max()) < 1e-4 * float(ref[-1])
    again = eigsh(op, 3, v0=v0, return_eigenvectors=False)
    assert torch.equal(again, vals)  # v0 fixes the run


def test_eigsh_accepts_objects_with_matvec_only(ops64):
    _, A = ops64["dense"]

    class MatvecOnly:
        shape = tuple(A.shape)
        dtype = F64

        def __init__(self):
            self.calls = 0

        def matvec(self, v):
            self.calls += 1
            return A @ v

    op = MatvecOnly()
    vals = eigsh(op, 2, block=2, return_eigenvectors=False, generator=gen(0))
    torch.testing.assert_close(vals, torch.linalg.eigvalsh(A)[-2:], rtol=1e-10, atol=0)
    assert op.calls > 0


def test_eigsh_bad_inputs(ops64):
    op, A = ops64["dense"]
    n = A.shape[0]
    cases = [
        (dict(k=0), "k: expected an integer with 1 <= k < n"),
        (dict(k=n), "k: expected an integer with 1 <= k < n"),
        (dict(k=2.0), "k: expected an integer"),
        (dict(which="XX"), "which: expected one of"),
        (dict(ncv=3, k=3), "ncv: expected an integer"),
        (dict(block=n), "block: expected an integer"),
        (dict(tol=-1.0), "tol: expected"),
        (dict(maxiter=-1), "maxiter: expected"),
        (dict(v0=torch.ones(n + 1, dtype=F64)), "v0: expected shape"),
        (dict(v0=torch.ones(n)), "v0: expected dtype torch.float64"),
        (dict(v0=torch.zeros(n, dtype=F64)), "v0: expected finite, nonzero"),
    ]
    for kw, msg in cases:
        with pytest.raises(InputError, match=msg):
            eigsh(op, **{"k": 2, **kw})
    with pytest.raises(InputError, match="op: expected a non-empty square 2-D tensor"):
        eigsh(torch.ones(3, 4, dtype=F64), 1)
    with pytest.raises(InputError, match="op: expected a symmetric matrix"):
        eigsh(torch.triu(torch.ones(4, 4, dtype=F64)), 1)
    with pytest.raises(InputTypeError, match="op: expected an operator"):
        eigsh(type("NoProduct", (), {"shape": (4, 4)})(), 1)
    with pytest.raises(InputError, match="op: expected a square operator"):
        eigsh(type("Rect", (), {"shape": (4, 5), "matvec": lambda s, v: v})(), 1)
    with pytest.raises(InputTypeError, match="generator: expected a torch.Generator"):
        eigsh(op, 2, generator=0)


# -- trace ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ggn", "hessian", "damped"])
def test_trace_within_a_few_standard_errors(ops64, name):
    op, A = ops64[name]
    exact = float(torch.trace(A))
    est = trace(op, 64, generator=gen(0))
    assert isinstance(est, TraceEstimate) and est.samples == 64 and est.values.shape == (64,)
    assert est.stderr > 0 and abs(est.estimate - exact) < 4 * est.stderr
    assert est.estimate == pytest.approx(float(est.values.mean()))


def test_trace_standard_error_shrinks_with_samples(ops64):
    op, A = ops64["dense"]
    few = trace(op, 40, generator=gen(1), block=5)
    many = trace(op, 640, generator=gen(2))
    # stderr ∝ 1/sqrt(samples): a ratio of 4 expected, and wide margins for the randomness
    assert 2.5 < few.stderr / many.stderr < 6.5
    exact = float(torch.trace(A))
    assert abs(many.estimate - exact) < 4 * many.stderr
    g = trace(op, 200, generator=gen(3), distribution="gaussian")
    assert abs(g.estimate - exact) < 4 * g.stderr
    assert g.stderr > many.stderr  # Gaussian probes have the larger variance (and fewer here)


def test_trace_rademacher_is_exact_on_a_diagonal():
    d = torch.linspace(-1.0, 3.0, 50, dtype=F64)
    est = trace(torch.diag(d), 4, generator=gen(0))
    assert est.estimate == pytest.approx(float(d.sum()), rel=1e-12) and est.stderr < 1e-12


def test_trace_counts_products_and_rejects_bad_inputs(ops64):
    op, _ = ops64["ggn"]
    start = op.products
    trace(op, 10, block=4, generator=gen(0))
    assert op.products - start == 10
    with pytest.raises(InputError, match="samples: expected an integer >= 2"):
        trace(op, 1)
    with pytest.raises(InputError, match="distribution: expected one of"):
        trace(op, 5, distribution="uniform")
    with pytest.raises(InputError, match="block: expected an integer >= 1"):
        trace(op, 5, block=0)


# -- density -------------------------------------------------------------------------------------
def test_density_of_a_known_discrete_spectrum():
    # 300 eigenvalues at 1, 200 at 3, 100 at 6: every Rademacher probe puts weight count/n on each
    d = torch.cat([torch.full((300,), 1.0), torch.full((200,), 3.0), torch.full((100,), 6.0)])
    A = torch.diag(d.double())
    sd = density(A, num_probes=4, num_steps=20, sigma=0.1, grid=2000, generator=gen(0))
    assert isinstance(sd, SpectralDensity)
    assert torch.equal(sd.steps, torch.full((4,), 3))  # the Krylov space is invariant after 3
    for p in range(4):
        torch.testing.assert_close(sd.nodes[p, :3], torch.tensor([1.0, 3.0, 6.0], dtype=F64))
        torch.testing.assert_close(sd.weights[p, :3], torch.tensor([0.5, 1 / 3, 1 / 6],
                                                                    dtype=F64))
    assert float(sd.weights[:, 3:].abs().max()) == 0.0
    assert float(torch.trapezoid(sd.density, sd.grid)) == pytest.approx(1.0, abs=1e-6)
    for lo, hi, mass in [(0.5, 1.5, 0.5), (2.5, 3.5, 1 / 3), (5.5, 6.5, 1 / 6)]:
        inside = (sd.grid >= lo) & (sd.grid <= hi)
        integral = float(torch.trapezoid(sd.density[inside], sd.grid[inside]))
        assert integral == pytest.approx(mass, abs=1e-3)
        assert sd.mass(lo, hi) == pytest.approx(mass, abs=1e-12)
    assert float(sd.density[(sd.grid > 1.6) & (sd.grid < 2.4)].max()) < 1e-6


class Diagonal:
    """A diagonal operator given by its entries (``matvec``/``matmat`` only, no dense matrix)."""

    def __init__(self, d):
        self.d, self.dim, self.dtype, self.device = d, d.numel(), d.dtype, d.device

    def matvec(self, v):
        return self.d * v

    def matmat(self, V):
        return self.d[:, None] * V


def test_density_of_a_uniform_spectrum_and_its_moments():
    d = torch.linspace(0.0, 1.0, 2000, dtype=F64)
    A = Diagonal(d)
    sd = density(A, num_probes=6, num_steps=40, sigma=0.02, generator=gen(1), block=4)
    # Gauss quadrature is exact for low moments: Σ τ θ^j = vᵀAʲv = tr(Aʲ)/n for ±1 probes
    for j in (1, 2):
        moments = (sd.weights * sd.nodes ** j).sum(1)
        torch.testing.assert_close(moments, torch.full((6,), float((d ** j).mean()),
                                                       dtype=F64), rtol=1e-10, atol=0)
    torch.testing.assert_close(sd.weights.sum(1), torch.ones(6, dtype=F64))
    inner = (sd.grid > 0.15) & (sd.grid < 0.85)
    assert float((sd.density[inner] - 1.0).abs().max()) < 0.15  # flat density 1 on [0, 1]
    assert sd.mass(0.0, 0.5) == pytest.approx(0.5, abs=0.05)


def test_density_of_curvature_operators(ops64):
    for name in ("ggn", "hessian"):
        op, A = ops64[name]
        ref = torch.linalg.eigvalsh(A)
        start = op.products
        sd = density(op, num_probes=3, num_steps=15, generator=gen(2))
        assert op.products - start == 45
        valid = sd.weights > 0
        assert float(sd.nodes[valid].min()) >= float(ref[0]) - 1e-9
        assert float(sd.nodes[valid].max()) <= float(ref[-1]) + 1e-9
        assert float(torch.trapezoid(sd.density, sd.grid)) == pytest.approx(1.0, abs=1e-3)
        # the first moment of each probe is its Rayleigh quotient: mean ≈ tr(A)/n
        est = float((sd.weights * sd.nodes).sum(1).mean())
        assert est == pytest.approx(float(torch.trace(A)) / A.shape[0], rel=0.5)


def test_density_bad_inputs(ops64):
    op, A = ops64["dense"]
    with pytest.raises(InputError, match="num_steps: expected an integer"):
        density(op, num_steps=A.shape[0] + 1)
    with pytest.raises(InputError, match="num_probes: expected an integer >= 1"):
        density(op, num_probes=0)
    with pytest.raises(InputError, match="sigma: expected"):
        density(op, num_steps=5, sigma=0.0)
    with pytest.raises(InputError, match="grid: expected a 1-D floating-point tensor"):
        density(op, num_steps=5, grid=torch.zeros(3, 3))
    with pytest.raises(InputError, match="grid: expected an integer >= 2"):
        density(op, num_steps=5, grid=1)


# -- block products ------------------------------------------------------------------------------
KINDS = {"ggn": hessfree.GGN, "hessian": hessfree.Hessian, "fisher": hessfree.EmpiricalFisher}


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("model_name,loss_name", [("mlp", "ce"), ("autoencoder", "bce"),
                                                  ("rnn", "mse"), ("tuple", "bce")])
def test_block_products_equal_single_products(model_name, loss_name, dtype):
    seed = 10 + len(model_name) + (dtype == F64)
    problem, batch, _, _ = _problem(model_name, loss_name, dtype, seed=seed, n=7, wd=0.01)
    tol = 1e-5 if dtype == torch.float32 else 1e-13
    for kind, cls in KINDS.items():
        for backend in ("double-backward", "forward", "sequential"):
            if backend == "sequential" and (kind == "hessian" or model_name in ("rnn", "tuple")):
                continue
            op = cls(problem, batch, backend=backend)
            for k in (1, 3):
                V = torch.randn(op.dim, k, generator=gen(seed + k), dtype=dtype)
                loop = torch.stack([op.matvec(V[:, j].contiguous()) for j in range(k)], 1)
                start = op.products
                out = op.matmat(V)
                assert op.products - start == k and out.shape == (op.dim, k)
                assert rel_err(out, loop) < tol, (kind, backend, k)
                D = op.damped(0.25)
                assert rel_err(D @ V, loop + 0.25 * V) < tol, (kind, backend, k)


@pytest.mark.parametrize("model_name,loss_name", [("autoencoder", "ce"), ("rnn", "bce")])
def test_batched_double_backward_equals_single_products(monkeypatch, model_name, loss_name):
    """The ``is_grads_batched`` path (used off the CPU) forced on, against single products."""
    monkeypatch.setattr(hessfree.curvature.products, "batched_backward", lambda device: True)
    problem, batch, _, _ = _problem(model_name, loss_name, F64, seed=50, n=5, wd=0.01)
    for kind, cls in KINDS.items():
        op = cls(problem, batch, backend="double-backward")
        V = torch.randn(op.dim, 3, generator=gen(51), dtype=F64)
        loop = torch.stack([op.matvec(V[:, j].contiguous()) for j in range(3)], 1)
        assert rel_err(op @ V, loop) < 1e-13, kind
    G = hessfree.GGN(problem, batch, backend="double-backward", structural_damping=0.5) \
        if model_name == "rnn" else None
    if G is not None:
        D = G.damped(0.2)
        loop = torch.stack([D.matvec(V[:, j].contiguous()) for j in range(3)], 1)
        assert rel_err(D @ V, loop) < 1e-13


@pytest.mark.parametrize("backend", ["double-backward", "forward", "sequential"])
def test_block_products_match_dense_references(backend):
    problem, batch, model, ln = _problem("autoencoder", "ce", F64, seed=21, n=9, wd=0.003)
    ref = Reference(model, ln, "mean", batch, weight_decay=0.003)
    V = torch.randn(ref.theta.numel(), 6, generator=gen(22), dtype=F64)
    dense = {"ggn": ref.ggn, "hessian": ref.hessian, "fisher": ref.fisher}
    for kind, cls in KINDS.items():
        if backend == "sequential" and kind == "hessian":
            continue
        op = cls(problem, batch, backend=backend)
        assert rel_err(op @ V, dense[kind]() @ V) < 1e-12, kind
        q = hessfree.Quadratic(op, op.grad, 0.5)
        assert rel_err(q @ V, dense[kind]() @ V + 0.5 * V) < 1e-12, kind


def test_block_products_with_structural_damping_chunks_and_masks():
    model, loss, (x, t) = make_case("rnn", "ce", "mean", F64, seed=30, n=8)
    mask = (torch.rand(8, 4, generator=gen(31)) > 0.3).to(F64)
    chunks = [(x[:3], (t[:3], mask[:3])), (x[3:], (t[3:], mask[3:]))]
    problem = hessfree.Problem(model, loss, weight_decay=0.05)
    V = torch.randn(sum(p.numel() for p in model.parameters()), 4, generator=gen(32), dtype=F64)
    for backend, cache in [("double-backward", True), ("double-backward", False),
                           ("forward", True)]:
        G = hessfree.GGN(problem, chunks, backend=backend, cache=cache, structural_damping=0.3)
        D = G.damped(0.7)  # adds 0.7 I + 0.21 S
        loop = torch.stack([D.matvec(V[:, j].contiguous()) for j in range(4)], 1)
        start = G.products
        assert rel_err(D @ V, loop) < 1e-13
        assert G.products - start == 4  # the base counts the block's columns


def test_block_products_with_an_autodiff_loss():
    problem, batch, _, _ = _problem("mlp", "mse", F64, seed=40, n=6)
    problem = hessfree.Problem(problem.model, torch.nn.functional.smooth_l1_loss)
    for backend in ("double-backward", "forward", "sequential"):
        G = hessfree.GGN(problem, batch, backend=backend)
        V = torch.randn(G.dim, 3, generator=gen(41), dtype=F64)
        loop = torch.stack([G.matvec(V[:, j].contiguous()) for j in range(3)], 1)
        assert rel_err(G @ V, loop) < 1e-13


def test_quadratic_spectrum_uses_the_torch_lanczos(ops64):
    q, A = ops64["quadratic"]
    ref = torch.linalg.eigvalsh(A)
    s = hessfree.quadratic.spectrum(q, k=2)
    assert s.method == "lanczos"
    top = float(ref[-1])
    # tol = 1e-8 relative to λ_max at both ends (the bottom through λ_max·I − A)
    np.testing.assert_allclose(s.largest, ref.numpy()[::-1][:2], rtol=0, atol=1e-8 * top)
    np.testing.assert_allclose(s.smallest, ref.numpy()[:2], rtol=0, atol=1e-8 * top)
    assert math.isclose(s.condition, top / float(ref[0]), rel_tol=1e-7)
