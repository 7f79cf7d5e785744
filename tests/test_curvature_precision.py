"""The precision policy: bfloat16/float16 models, curvature, CG and the HF update in float32.

References are dense float64 ``torch.func`` matrices of the same model at the weights the
16-bit model actually holds (its rounded weights, exact in float64), so what is measured is the
policy's own error. The tolerance is 8 units of rounding of the model's dtype (``2⁻⁸`` for
bfloat16, ``2⁻¹¹`` for float16): the forward and Jacobian products of a two-block model round
each activation once per operation, a handful of roundings that partly cancel (measured:
1-3 units); everything after the logits is float32, whose rounding is 2¹⁶ times smaller.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformer_cases import Dense, module_logits, rel

import hessfree
from hessfree.curvature.precision import Precision
from hessfree.errors import InputError
from hessfree.models import GPT

UNIT = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
BACKENDS = {torch.bfloat16: ("double-backward", "jvp", "forward"),
            torch.float16: ("double-backward",)}


def _pair(dtype: torch.dtype, seed: int, layers: int = 2, width: int = 16) -> tuple[GPT, GPT]:
    """A 16-bit GPT and a float64 copy holding exactly its rounded weights."""
    torch.manual_seed(seed)
    low = GPT(11, block_size=8, n_layer=layers, n_head=2, n_embd=width, bias=True)
    low = low.to(dtype).eval()
    high = GPT(11, block_size=8, n_layer=layers, n_head=2, n_embd=width, bias=True)
    high = high.double().eval()
    high.load_state_dict({k: v.double() for k, v in low.state_dict().items()})
    return low, high


def _batch(seed: int, b: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 11, (b, 8), generator=g)
    return ids, ids.masked_fill(torch.rand(b, 8, generator=g) < 0.2, -100)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seed", [0, 1])
def test_products_equal_float64_references_to_the_promised_accuracy(dtype, seed):
    low, high = _pair(dtype, seed)
    ids, labels = _batch(seed + 10)
    loss = hessfree.TokenCrossEntropy(shift=True)
    dense = Dense(module_logits(high, ids), dict(high.named_parameters()), labels, shift=True)
    grad = dense.J.T @ torch.func.grad(dense.loss_of_z)(dense.z)
    V = torch.randn(dense.theta.numel(), 3, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    problem = hessfree.Problem(low, loss, precision="float32")
    assert problem.precision == Precision(dtype)
    tol = 8 * UNIT[dtype]
    # the Hessian's reference: float64 forward-over-reverse at the rounded weights
    with sdpa_kernel(SDPBackend.MATH):
        hvp = torch.func.vmap(lambda v: torch.func.jvp(torch.func.grad(
            lambda th: dense.loss_of_z(dense.flat_logits(th))), (dense.theta,), (v,))[1])
        HV_ref = hvp(V.T).T
    for backend in BACKENDS[dtype]:
        chunks = [(ids[:2], labels[:2]), (ids[2:], labels[2:])]
        G = hessfree.GGN(problem, chunks, backend=backend)
        F = hessfree.EmpiricalFisher(problem, (ids, labels), backend=backend)
        assert G.dtype == F.dtype == torch.float32
        GV, FV = G @ V.float(), F @ V.float()
        assert GV.dtype == FV.dtype == G.grad.dtype == torch.float32
        assert rel(GV.double(), dense.ggn(V)) < tol, backend
        assert rel(FV.double(), dense.fisher(V)) < tol, backend
        assert rel(G.grad.double(), grad) < tol
        assert G.value == pytest.approx(dense.value(), rel=tol)
        if backend == "jvp":  # uncached: nothing kept between products, the same policy
            lean = hessfree.GGN(problem, chunks, backend=backend, cache=False)
            LV = lean @ V.float()
            assert LV.dtype == lean.grad.dtype == torch.float32
            assert rel(LV.double(), dense.ggn(V)) < tol and rel(lean.grad.double(), grad) < tol
        if dtype == torch.bfloat16:
            H = hessfree.Hessian(problem, (ids, labels), backend=backend)
            HV = H @ V.float()
            assert HV.dtype == torch.float32 and rel(HV.double(), HV_ref) < tol, backend
            assert rel(H.grad.double(), grad) < tol
    # the model was not touched: its weights are still the 16-bit ones
    assert all(p.dtype == dtype for p in low.parameters())


def test_a_float32_model_is_unchanged_by_the_policy():
    torch.manual_seed(0)
    model = GPT(11, block_size=8, n_layer=1, n_head=2, n_embd=8).eval()
    ids, labels = _batch(3)
    loss = hessfree.TokenCrossEntropy(shift=True)
    mixed = hessfree.Problem(model, loss, precision="float32")
    assert mixed.precision is None
    v = torch.randn(sum(p.numel() for p in model.parameters()))
    a = hessfree.GGN(mixed, (ids, labels)) @ v
    b = hessfree.GGN(hessfree.Problem(model, loss), (ids, labels)) @ v
    assert torch.equal(a, b)


def test_cg_in_float32_on_a_bfloat16_model_solves_the_float64_system():
    """CG's iterates are float32 whatever the model; the solution of the damped system is the
    float64 one to the products' accuracy times the (damped, small) condition number."""
    low, high = _pair(torch.bfloat16, 4, layers=1, width=8)
    ids, labels = _batch(5)
    dense = Dense(module_logits(high, ids), dict(high.named_parameters()), labels, shift=True)
    lam = 1.0
    A = dense.ggn(torch.eye(dense.theta.numel(), dtype=torch.float64)) + lam * torch.eye(
        dense.theta.numel(), dtype=torch.float64)
    b = torch.randn(dense.theta.numel(), generator=torch.Generator().manual_seed(6),
                    dtype=torch.float64)
    problem = hessfree.Problem(low, hessfree.TokenCrossEntropy(shift=True), precision="float32")
    G = hessfree.GGN(problem, (ids, labels))
    x = G.solve(b.float(), damping=lam, max_iters=200).x
    assert x.dtype == torch.float32
    cond = float(torch.linalg.cond(A))
    assert rel(x.double().reshape(-1), torch.linalg.solve(A, b)) < 8 * UNIT[torch.bfloat16] * cond


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_hf_keeps_float32_master_weights_and_writes_them_back(dtype):
    low, _ = _pair(dtype, 7)
    ids, _ = _batch(8, b=16)
    problem = hessfree.Problem(low, hessfree.TokenCrossEntropy(shift=True), precision="float32")
    opt = hessfree.HessianFree(problem, config=hessfree.HFConfig(initial_lambda=1.0,
                                                                 cg_max_iters=20))
    start = {n: p.detach().clone() for n, p in low.named_parameters()}
    losses = [opt.step((ids, ids)).loss_after for _ in range(4)]
    assert losses[-1] < opt.history[0].loss_before
    assert all(m.dtype == torch.float32 for m in opt.params.values())
    assert opt.last_solution.dtype == torch.float32
    live = dict(low.named_parameters())
    for n, m in opt.params.items():
        assert live[n].dtype == dtype and torch.equal(live[n], m.to(dtype))
    # the masters keep what the 16-bit weights cannot hold (else updates below one rounding
    # unit of a weight would be lost every step)
    assert any(not torch.equal(m, live[n].float()) for n, m in opt.params.items())
    assert any(not torch.equal(live[n], start[n]) for n in live)
    # an exact resume: the masters travel in the state
    state = opt.state_dict()
    low2, _ = _pair(dtype, 7)
    opt2 = hessfree.HessianFree(hessfree.Problem(low2, hessfree.TokenCrossEntropy(shift=True),
                                                 precision="float32"), config=opt.base_config)
    opt2.load_state_dict(state)
    for n, m in opt.params.items():
        assert torch.equal(opt2.params[n], m)
        assert torch.equal(dict(low2.named_parameters())[n], live[n])
    a, b = opt.step((ids, ids)), opt2.step((ids, ids))
    assert a.loss_after == b.loss_after


def test_combinations_that_make_no_sense_are_refused_in_one_line():
    loss = hessfree.TokenCrossEntropy(shift=True)
    low, _ = _pair(torch.bfloat16, 0)
    with pytest.raises(InputError, match="precision: expected None or 'float32'"):
        hessfree.Problem(low, loss, precision="float64")
    with pytest.raises(InputError, match="precision: 'float32' on a float64 model"):
        hessfree.Problem(GPT(11, 8, 1, 2, 8).double(), loss, precision="float32")
    with pytest.raises(InputError, match="precision: a policy needs an nn.Module"):
        hessfree.Problem(lambda p, x: x, loss, precision="float32")
    mlp = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(torch.bfloat16)
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    mixed = hessfree.Problem(mlp, hessfree.losses.MSE(), precision="float32")
    with pytest.raises(InputError, match="backend: 'sequential' computes without the model's"):
        hessfree.GGN(mixed, (x, y), backend="sequential")
    assert hessfree.GGN(mixed, (x, y)).backend == "double-backward"  # auto does not pick it
    half, _ = _pair(torch.float16, 0)
    ids, labels = _batch(1)
    fp16 = hessfree.Problem(half, loss, precision="float32")
    assert hessfree.GGN(fp16, (ids, labels)).backend == "double-backward"
    for backend in ("jvp", "forward"):
        with pytest.raises(InputError, match=f"backend: '{backend}' is forward mode"):
            hessfree.GGN(fp16, (ids, labels), backend=backend)
    with pytest.raises(InputError, match="Hessian: second derivatives through a float16"):
        hessfree.Hessian(fp16, (ids, labels))
    with pytest.raises(InputError, match="params: torch.bfloat16 parameters would make CG"):
        hessfree.HessianFree(hessfree.Problem(low, loss))
    assert "precision='float32'" in repr(fp16)


def test_the_readme_precision_example_runs(capsys):
    from test_curvature_attention import readme_code

    torch.manual_seed(0)
    ns: dict = {}
    exec(compile(readme_code("### A model in bfloat16 or float16"), "README.md", "exec"), ns)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "torch.float32 torch.bfloat16"
    losses = [float(line.split()[0]) for line in lines[:-1]]
    assert len(losses) == 3 and losses[-1] < ns["opt"].history[0].loss_before


def test_the_torch_optim_facade_steps_a_bfloat16_model_with_float32_masters():
    from hessfree.integrations.optim import HessianFreeOptimizer

    low, _ = _pair(torch.bfloat16, 9)
    ids, _ = _batch(10, b=16)
    problem = hessfree.Problem(low, hessfree.TokenCrossEntropy(shift=True), precision="float32")
    opt = HessianFreeOptimizer(low.parameters(), problem,
                               hessfree.HFConfig(initial_lambda=1.0, cg_max_iters=10))
    first = opt.step(lambda: (ids, ids))
    opt.step(lambda: (ids, ids))
    assert opt.hf.history[-1].loss_after < first
    live = dict(low.named_parameters())
    assert all(torch.equal(live[n], m.to(torch.bfloat16)) for n, m in opt.hf.params.items())
