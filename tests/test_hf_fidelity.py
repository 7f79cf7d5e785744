"""HF's presets do what their sources' active code does: HFDemo (HF*) and HF-RNN.

Each reference below is written from the source's code path (cited per test), computed here
independently of the optimizer (its own CG runs, its own objective evaluations), and compared
with what one ``HessianFree.step`` did.
"""

import math

import pytest
import torch
from torch import nn

import hessfree
from hessfree import cg
from hessfree.hf import HessianFree, HFConfig
from hessfree.hf.backtrack import cg_backtrack
from hessfree.hf.stepsize import LINE_SEARCH_FAILED, first_decrease

F64 = torch.float64


def _mlp_problem(seed=0, n=60, d=5, h=7, k=3):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, k)).double()
    x = torch.randn(n, d, generator=g, dtype=F64)
    t = torch.randn(n, k, generator=g, dtype=F64)
    return model, hessfree.Problem(model, hessfree.losses.MSE(), weight_decay=1e-3), x, t


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _shift(theta, step):
    out, i = {}, 0
    for n, p in theta.items():
        out[n] = p + step[i:i + p.numel()].view_as(p)
        i += p.numel()
    return out


# -- the step-size policies and backtracking rules, as functions ------------------------------
def test_first_decrease_takes_the_first_rate_with_any_decrease():
    """[HF-RNN] ``line_search``: ``distances = [.8**i for i in range(50)] + [0]``."""
    calls = []

    def f(a):
        calls.append(a)
        return 1.0 + (0.0 if a > 0.5 else -1e-12)  # no decrease until the rate is <= 0.5

    s = first_decrease(f, 1.0, HFConfig.hf_rnn())
    assert s.rejection is None and s.alpha == pytest.approx(0.8 ** 4)  # 0.4096, the first <= .5
    assert calls == pytest.approx([0.8 ** i for i in range(5)]) and s.evaluations == 5


def test_first_decrease_rejects_after_fifty_rates_and_never_takes_nan():
    calls = []

    def f(a):
        calls.append(a)
        return math.nan if a > 0.9 else 2.0

    s = first_decrease(f, 1.0, HFConfig.hf_rnn())
    assert s.rejection == LINE_SEARCH_FAILED and s.alpha == 0.0 and s.value == 1.0
    assert len(calls) == 50 and calls[-1] == pytest.approx(0.8 ** 49)


def test_armijo_tests_sixty_rates_as_hfdemo():
    """HFDemo: ``while j < 60`` tests the rates 0.8^0 ... 0.8^59; the 60th reduction rejects."""
    from hessfree.hf.stepsize import armijo

    calls = []
    res = armijo(lambda a: calls.append(a) or 5.0, 1.0, -1.0)
    assert not res.accepted and len(calls) == 60 and calls[-1] == pytest.approx(0.8 ** 59)


def test_backtracking_rules():
    """walk-back (HFDemo: on ties it keeps walking back) and best (HF-RNN: first lowest)."""
    its = [(i, torch.tensor([float(i)])) for i in (1, 11, 21, 31)]
    values = {1: 3.0, 11: 1.0, 21: 1.0, 31: 2.0}
    f = lambda x: values[int(x)]  # noqa: E731
    walk = cg_backtrack(f, its)
    assert walk.iteration == 11 and walk.evaluations == 4  # 2 -> 1 -> 1 (tie: on) -> 3 stop
    best = cg_backtrack(f, its, "best")
    assert best.iteration == 11 and best.value == 1.0 and best.evaluations == 4
    values[1] = math.nan
    assert cg_backtrack(f, its, "best").iteration == 11
    with pytest.raises(ValueError, match="rule"):
        cg_backtrack(f, its, "median")


def test_every_with_a_start_is_hf_rnns_evaluation_grid():
    assert sorted(cg.Every(10, first=1).grid(35)) == [1, 11, 21, 31]
    assert sorted(cg.Every(10).grid(35)) == [10, 20, 30]


# -- HFDemo (HF*) -------------------------------------------------------------------------------
def test_martens2010_backtracks_on_the_gradient_batch_and_measures_rho_on_the_chunk():
    """HFDemo's active lines: ``computeLL(paramsp + chs{j}, indata, outdata, numchunks)`` walks
    back on the whole training set; ``rho = (oldll_chunk - ll_chunk)/denom`` on the chunk with
    ``denom`` from the undamped curvature and the whole-set gradient."""
    model, problem, x, t = _mlp_problem(1)
    cfg = HFConfig.martens2010(initial_lambda=0.5)
    assert (cfg.backtrack_batch, cfg.backtrack_rule, cfg.rho_damped) == ("gradient",
                                                                          "walk-back", False)
    theta = _params(model)
    whole, chunk = (x, t), (x[:15], t[:15])
    stats = HessianFree(problem, config=cfg).step(whole, chunk)

    # the reference: the same CG (its inputs computed here), the walk-back on the whole set
    f0, g = problem.value_and_grad(theta, whole)
    G = hessfree.GGN(problem, chunk, params=theta)
    diag = hessfree.EmpiricalFisher(problem, whole, params=theta).diagonal()
    M = (diag + 0.5).pow(-0.75)
    res = cg.solve(G.damped(0.5), -g, M=M, stop=cg.MartensProgress(), max_iters=250,
                   store=cg.Geometric(1.3, first=5))
    its = res.iterates
    vals = [problem.value(_shift(theta, s), whole) for _, s in its]
    j = len(its) - 1
    while j > 0 and vals[j - 1] <= vals[j]:
        j -= 1
    assert stats.backtrack_iter == its[j][0] and stats.cg_iters == res.iters
    p = its[j][1]
    denom = float(g @ p + 0.5 * p @ (G @ p))
    rho = (problem.value(_shift(theta, p), chunk) - G.value) / denom
    assert stats.rho == pytest.approx(rho, rel=1e-9)
    assert stats.curv_loss_after == pytest.approx(problem.value(_shift(theta, p), chunk),
                                                  rel=1e-12)


# -- HF-RNN ---------------------------------------------------------------------------------------
def _hf_rnn_reference(problem, theta, grad_b, curv_b, bt_b, lam, mu, x0=None):
    """[HF-RNN] ``get_new_direction`` for one step: CG without preconditioner (Martens' test,
    cap 300), the held-out objective at x_1, x_11, ... (and an early-stopped last iterate), the
    lowest kept; ρ on the curvature batch with the damped model."""
    _, g = problem.value_and_grad(theta, grad_b)
    G = hessfree.GGN(problem, curv_b, params=theta, structural_damping=mu)
    A = G.damped(lam)
    res = cg.solve(A, -g, x0=x0, stop=cg.MartensProgress(), max_iters=300,
                   store=cg.Every(10, first=1))
    cands = [(i, s) for i, s in res.iterates
             if (i - 1) % 10 == 0 or res.reason != cg.MAX_ITERATIONS]
    best_i, best_s, best_v = None, None, math.inf
    for i, s in cands:  # if BT_cur < BT_best: keep it
        v = problem.value(_shift(theta, s), bt_b) - problem.value(theta, bt_b)
        if v < best_v:
            best_i, best_s, best_v = i, s, v
    model = float(g @ best_s + 0.5 * best_s @ (A @ best_s))  # model(..., damp=True)
    red = problem.value(_shift(theta, best_s), curv_b) - G.value
    rho = -math.inf if red > 0 else red / model
    return res, best_i, best_s, rho


def _rnn_problem(seed=0, n=40, T=6):
    torch.manual_seed(seed)
    rnn = hessfree.models.TanhRNN(2, 6, 1, output_steps="last").double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, T, 2, generator=g, dtype=F64)
    y = torch.randn(n, 1, 1, generator=g, dtype=F64)
    return rnn, hessfree.Problem(rnn, hessfree.losses.MSE(), weight_decay=2e-5), x, y


@pytest.mark.parametrize("seed", [0, 1])
def test_hf_rnn_step_is_the_sources_step(seed):
    rnn, problem, x, y = _rnn_problem(seed)
    lam, mu = 0.05, 0.03
    cfg = HFConfig.hf_rnn(initial_lambda=lam, structural_damping=mu)
    theta = _params(rnn)
    grad_b, curv_b, bt_b, ls_b = (x, y), (x[:10], y[:10]), (x[10:20], y[10:20]), (x[20:30],
                                                                                   y[20:30])
    opt = HessianFree(problem, config=cfg)
    with pytest.raises(ValueError, match="backtrack_batch"):
        opt.step(grad_b, curv_b, search_batch=ls_b)
    with pytest.raises(ValueError, match="search_batch"):
        opt.step(grad_b, curv_b, backtrack_batch=bt_b)
    stats = opt.step(grad_b, curv_b, backtrack_batch=bt_b, search_batch=ls_b)
    res, best_i, best_s, rho = _hf_rnn_reference(problem, theta, grad_b, curv_b, bt_b, lam, mu)
    assert stats.cg_iters == res.iters and stats.backtrack_iter == best_i
    assert (best_i - 1) % 10 == 0 or res.reason != cg.MAX_ITERATIONS
    assert stats.rho == pytest.approx(rho, rel=1e-9)
    # the first of 0.8^i that lowers the search batch's objective, evaluated here
    f0 = problem.value(theta, ls_b)
    rates = [0.8 ** i for i in range(50)]
    want = next(a for a in rates if problem.value(_shift(theta, a * best_s), ls_b) < f0)
    assert stats.accepted and stats.step_size == pytest.approx(want)
    moved = torch.cat([p.detach().reshape(-1) for p in rnn.parameters()])
    start = torch.cat([p.reshape(-1) for p in theta.values()])
    torch.testing.assert_close(moved, start + want * best_s, rtol=1e-12, atol=1e-14)
    # the next CG starts from 0.95 × the last CG iterate, not the chosen one
    torch.testing.assert_close(opt.last_solution, res.x, rtol=1e-10, atol=1e-13)


def test_hf_rnn_rejected_step_keeps_rho_for_lambda_and_restarts_cg_from_zero():
    """No rate lowers the search objective (θ minimises it): rate 0, ``CG_x *= 0``, and λ
    follows ρ as computed before the search ([HF-RNN] ``optimize``)."""
    rnn, problem, x, y = _rnn_problem(2)
    theta = _params(rnn)
    with torch.no_grad():
        y_fit = rnn(x)  # targets the model already fits exactly: every step raises the loss
    ls_b = (x[20:30], y_fit[20:30])
    problem0 = hessfree.Problem(rnn, hessfree.losses.MSE())  # no weight decay: θ is the min
    cfg = HFConfig.hf_rnn(initial_lambda=1.0, structural_damping=0.03)
    opt = HessianFree(problem0, config=cfg)
    fit = (x[:10], y[:10])  # gradient and curvature on the same cases: a good step there
    stats = opt.step(fit, fit, backtrack_batch=(x[10:20], y[10:20]), search_batch=ls_b)
    assert not stats.accepted and stats.reason == LINE_SEARCH_FAILED and stats.ls_evals == 50
    for n, p in rnn.named_parameters():
        assert torch.equal(p.detach(), theta[n])
    assert not bool(opt.last_solution.any())
    assert stats.rho >= 0.25  # a good step on the curvature batch: λ is not raised
    assert opt.lam == pytest.approx(hessfree.hf.lm_update(1.0, stats.rho, cfg)) and opt.lam <= 1
    # HFDemo's way (boost_on_reject): λ × 3/2 whatever ρ was, and the solution is carried on
    rnn.load_state_dict({n: v.clone() for n, v in theta.items()}, strict=False)
    opt2 = HessianFree(problem0, config=cfg.replace(boost_on_reject=True, zero_on_reject=False))
    opt2.step(fit, fit, backtrack_batch=(x[10:20], y[10:20]), search_batch=ls_b)
    assert opt2.lam == pytest.approx(1.5) and bool(opt2.last_solution.any())


def test_hf_rnn_config_refuses_armijo_on_a_held_out_batch():
    with pytest.raises(ValueError, match="ls_batch"):
        HFConfig.hf_rnn(ls_rule="armijo")
    with pytest.raises(ValueError, match="backtrack_rule"):
        HFConfig(backtrack_rule="median")
