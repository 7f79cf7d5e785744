"""Tests of CM / NAG / SGD ([S13 Eq. 1-4]) and the μ schedules."""

import copy
import io
import math
import pickle

import pytest
import torch
from torch.func import functional_call, grad

from hessfree.models import MLP
from hessfree.momentum import CM, NAG, SGD
from hessfree.schedules import Constant as ConstantSchedule
from hessfree.schedules import RNNSchedule, SutskeverSchedule

# ---------------------------------------------------------------------------------------------
# schedules


def eq5(t, mu_max, warm=250):
    """[S13 Eq. 5] written literally, with log2."""
    return min(1 - 2 ** (-1 - math.log2(math.floor(t / warm) + 1)), mu_max)


@pytest.mark.parametrize("t, before_cap", [
    (0, 0.5), (249, 0.5), (250, 0.75), (1000, 0.9), (12250, 0.99), (124750, 0.999),
])
def test_sutskever_schedule_values(t, before_cap):
    s = SutskeverSchedule(1.0)
    assert s(t) == pytest.approx(before_cap, abs=1e-12)
    assert s(t) == pytest.approx(eq5(t, 1.0), abs=1e-12)
    for mu_max in (0.999, 0.995, 0.99, 0.9, 0.0):
        assert SutskeverSchedule(mu_max)(t) == pytest.approx(min(before_cap, mu_max), abs=1e-12)


def test_sutskever_schedule_matches_eq5_everywhere():
    s = SutskeverSchedule(0.995, warm=250)
    for t in list(range(0, 3000, 7)) + [24749, 24750, 10**6]:
        assert s(t) == pytest.approx(eq5(t, 0.995), abs=1e-12)


def test_sutskever_schedule_final_phase():
    s = SutskeverSchedule(0.999, total_steps=750_000)  # the paper's run ([S13 §3])
    assert s(748_999) == pytest.approx(eq5(748_999, 0.999)) and s(748_999) > 0.99
    assert s(749_000) == 0.9
    assert s(749_999) == 0.9
    # μ_max = 0 stays 0 ("unless µ is 0, in which case it is unchanged")
    zero = SutskeverSchedule(0.0, total_steps=2000)
    assert [zero(t) for t in (0, 999, 1000, 1999)] == [0.0] * 4
    # a short run: the final phase never raises μ above the schedule
    short = SutskeverSchedule(0.99, total_steps=1500)
    assert short(500) == pytest.approx(eq5(500, 0.99)) and short(500) < 0.9  # 5/6, kept
    assert short(1250) == 0.9 and eq5(1250, 0.99) > 0.9  # 11/12, reduced
    # final_steps / final_mu are honoured
    custom = SutskeverSchedule(0.99, final_mu=0.5, final_steps=10, total_steps=5000)
    assert custom(4989) == pytest.approx(eq5(4989, 0.99)) and custom(4990) == 0.5


def test_rnn_and_constant_schedules():
    s = RNNSchedule(0.995)
    assert [s(0), s(999), s(1000), s(49_999)] == [0.9, 0.9, 0.995, 0.995]
    assert RNNSchedule(0.0, warm_mu=0.5, warm_steps=3)(2) == 0.5
    assert ConstantSchedule(0.7)(12345) == 0.7


def test_schedules_pickle():
    for s in (SutskeverSchedule(0.99, total_steps=10), RNNSchedule(0.98), ConstantSchedule(0.3)):
        r = pickle.loads(pickle.dumps(s))
        assert r == s and [r(t) for t in (0, 5, 2000)] == [s(t) for t in (0, 5, 2000)]


@pytest.mark.parametrize("make, match", [
    (lambda: SutskeverSchedule(1.5), "mu_max"),
    (lambda: SutskeverSchedule(0.9, warm=0), "warm"),
    (lambda: SutskeverSchedule(0.9, final_mu=-0.1), "final_mu"),
    (lambda: SutskeverSchedule(0.9, total_steps=-1), "total_steps"),
    (lambda: RNNSchedule(float("nan")), "mu0"),
    (lambda: CM([torch.zeros(1, requires_grad=True)], lr=0.1, schedule=ConstantSchedule(2.0)),
     "schedule"),
    (lambda: SutskeverSchedule(0.9)(-1), "t"),
])
def test_schedule_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ---------------------------------------------------------------------------------------------
# a small nonlinear problem in float64


def make_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MLP([3, 6, 2], "tanh", output="linear").double()
    x = torch.randn(16, 3, generator=g, dtype=torch.float64)
    y = torch.randn(16, 2, generator=g, dtype=torch.float64)
    return model, x, y


def loss_of(model, x, y):
    return (model(x) - y).square().sum(1).mean()


def run(model, opt, x, y, steps, record=None):
    for _ in range(steps):
        opt.zero_grad()
        loss_of(model, x, y).backward()
        opt.step()
        if record is not None:
            record.append(record_fn(model, opt))


def record_fn(model, opt):
    if isinstance(opt, CM):
        return [t.clone() for t in opt.true_params()]
    return [p.detach().clone() for p in model.parameters()]


def assert_lists_close(a, b, atol=1e-12):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=atol)


@pytest.mark.parametrize("mu", [0.9, 0.5])
def test_nag_constant_mu_equals_torch_sgd_nesterov(mu):
    """SGD-nesterov's parameters are exactly our look-ahead point φ."""
    ours, x, y = make_problem()
    ref = copy.deepcopy(ours)
    opt = NAG(ours.parameters(), lr=0.05, schedule=mu)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=mu, nesterov=True)
    start = [p.detach().clone() for p in ours.parameters()]
    for _ in range(20):
        run(ours, opt, x, y, 1)
        run(ref, ref_opt, x, y, 1)
        assert_lists_close(list(ours.parameters()), list(ref.parameters()))
    moved = sum((p.detach() - s).abs().max() for p, s in zip(ours.parameters(), start))
    assert moved > 1e-2
    # torch's buffer is −v/ε
    for p in ours.parameters():
        torch.testing.assert_close(opt.state[p]["momentum_buffer"],
                                   -0.05 * ref_opt.state[ref.get_parameter(
                                       _name(ours, p))]["momentum_buffer"], rtol=0, atol=1e-12)


def _name(model, param):
    return next(n for n, p in model.named_parameters() if p is param)


def test_cm_and_sgd_equal_torch_sgd():
    for ours_cls, kw, torch_kw in ((CM, {"schedule": 0.9}, {"momentum": 0.9}),
                                   (SGD, {}, {})):
        ours, x, y = make_problem(1)
        ref = copy.deepcopy(ours)
        opt = ours_cls(ours.parameters(), lr=0.05, **kw)
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, **torch_kw)
        for _ in range(20):
            run(ours, opt, x, y, 1)
            run(ref, ref_opt, x, y, 1)
            assert_lists_close(list(ours.parameters()), list(ref.parameters()))


def reference_momentum(model, x, y, lr, schedule, steps, nesterov):
    """Eq. 1-4 literally: ∇f evaluated at θ (CM) or at θ + μ_t v (NAG), a second point."""
    names = [n for n, _ in model.named_parameters()]
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    v = {n: torch.zeros_like(p) for n, p in theta.items()}

    def f(params):
        return (functional_call(model, params, (x,)) - y).square().sum(1).mean()

    out = []
    for t in range(steps):
        mu = schedule(t)
        at = {n: theta[n] + mu * v[n] for n in names} if nesterov else theta
        g = grad(f)(at)
        for n in names:
            v[n] = mu * v[n] - lr * g[n]
            theta[n] = theta[n] + v[n]
        out.append([theta[n].clone() for n in names])
    return out


@pytest.mark.parametrize("cls, nesterov", [(NAG, True), (CM, False)])
def test_time_varying_mu_matches_direct_reference(cls, nesterov):
    sched = SutskeverSchedule(0.99, warm=3, final_steps=4, total_steps=20)
    mus = [sched(t) for t in range(21)]
    assert len(set(mus)) >= 5  # μ really varies, and drops in the final phase
    model, x, y = make_problem(2)
    ref = reference_momentum(copy.deepcopy(model), x, y, 0.05, sched, 20, nesterov)
    opt = cls(model.parameters(), lr=0.05, schedule=sched)
    ours = []
    run(model, opt, x, y, 20, ours)
    for a, b in zip(ours, ref):
        assert_lists_close(a, b)
    assert opt.t == 20 and opt.grads_used == 20
    if nesterov:  # the model holds φ_t = θ_t + μ_t v_t
        phi = [p.detach() for p in model.parameters()]
        v = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
        assert_lists_close(phi, [th + mus[20] * vv for th, vv in zip(ours[-1], v)])
        assert max((a - b).abs().max() for a, b in zip(phi, ours[-1])) > 1e-4


def test_nag_differs_from_cm_on_the_same_problem():
    runs = []
    for cls in (NAG, CM):
        model, x, y = make_problem(3)
        rec = []
        run(model, cls(model.parameters(), lr=0.05, schedule=0.9), x, y, 10, rec)
        runs.append(rec[-1])
    assert max((a - b).abs().max() for a, b in zip(*runs)) > 1e-4


# ---------------------------------------------------------------------------------------------
# Theorem 2.1: on a quadratic, NAG along eigenvector i is CM with momentum μ(1 − λ_i ε)


def test_theorem_2_1_eigendirections():
    g = torch.Generator().manual_seed(4)
    lam = torch.tensor([0.1, 1.0, 10.0, 60.0], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    a = q @ torch.diag(lam) @ q.T
    x0 = torch.randn(4, generator=g, dtype=torch.float64)
    lr, mu, steps = 0.01, 0.9, 40
    theta = torch.nn.Parameter(x0.clone())
    opt = NAG([theta], lr=lr, schedule=mu)
    traj = []
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * theta @ a @ theta).backward()
        opt.step()
        traj.append(q.T @ opt.true_params()[0])
    # reference: independent scalar CM recurrences in the eigenbasis
    c, v = q.T @ x0, torch.zeros(4, dtype=torch.float64)
    mu_eff = mu * (1 - lam * lr)
    cm_c, cm_v = c.clone(), v.clone()
    for t in range(steps):
        v = mu_eff * v - lr * lam * c
        c = c + v
        cm_v = mu * cm_v - lr * lam * cm_c
        cm_c = cm_c + cm_v
        torch.testing.assert_close(traj[t], c, rtol=0, atol=1e-12)
    # plain CM with the same μ follows a different path in the high-curvature directions
    assert (traj[-1] - cm_c).abs().max() > 1e-3


def test_theorem_2_1_recurrence_matrix():
    """One NAG update is linear in (θ, v); in eigendirection i its matrix is CM's with μ_i."""
    lam_i, lr, mu = 30.0, 0.01, 0.95
    mu_i = mu * (1 - lam_i * lr)
    cm_matrix = torch.tensor([[1 - lr * lam_i, mu_i], [-lr * lam_i, mu_i]], dtype=torch.float64)
    cols = []
    for theta0, v0 in ((1.0, 0.0), (0.0, 1.0)):
        # the model holds φ = θ + μ v; the velocity buffer is v
        theta = torch.nn.Parameter(torch.tensor([theta0 + mu * v0], dtype=torch.float64))
        opt = NAG([theta], lr=lr, schedule=mu)
        opt.state[theta]["momentum_buffer"] = torch.tensor([v0], dtype=torch.float64)
        assert opt.true_params()[0].item() == pytest.approx(theta0, abs=1e-15)
        (0.5 * lam_i * theta.square()).sum().backward()
        opt.step()
        v1 = opt.state[theta]["momentum_buffer"].item()
        cols.append([opt.true_params()[0].item(), v1])
    torch.testing.assert_close(torch.tensor(cols, dtype=torch.float64).T, cm_matrix,
                               rtol=0, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# the seed blog's toy problem


def steps_to_near_zero(cls, mu, max_steps=1000):
    """Updates until f(θ) ≤ 1/256, i.e. ‖θ‖ ≤ ‖θ₀‖/4 (θ₀ = 0.5·1, ‖θ₀‖ = 1, f(θ₀) = 1).

    "Near zero" = within a quarter of the starting distance to the minimum; with it the blog's
    "about 200 (SGD) vs about 10 (CM/NAG)" holds. f is evaluated at the true iterate θ.
    """
    x = torch.nn.Parameter(torch.full((4,), 0.5, dtype=torch.float64))
    opt = SGD([x], lr=0.01) if cls is SGD else cls([x], lr=0.01, schedule=mu)
    for k in range(max_steps):
        if float(opt.true_params()[0].square().sum().square()) <= 1 / 256:
            return k
        opt.zero_grad()
        x.square().sum().square().backward()
        opt.step()
    return None


def test_toy_quartic_sgd_vs_momentum():
    n_sgd = steps_to_near_zero(SGD, 0.0)
    n_cm = steps_to_near_zero(CM, 0.9)
    n_nag = steps_to_near_zero(NAG, 0.9)
    # measured: SGD 186, CM 9, NAG 10
    assert 150 <= n_sgd <= 250
    assert 5 <= n_cm <= 15 and 5 <= n_nag <= 15
    assert n_sgd >= 10 * max(n_cm, n_nag)


# ---------------------------------------------------------------------------------------------
# state, counters, true parameters


def test_state_dict_resumes_exactly():
    sched = SutskeverSchedule(0.99, warm=2)
    model, x, y = make_problem(5)
    opt = NAG(model.parameters(), lr=0.05, schedule=sched)
    run(model, opt, x, y, 7)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    run(model, opt, x, y, 6)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    model2, _, _ = make_problem(99)
    model2.load_state_dict(saved["model"])
    opt2 = NAG(model2.parameters(), lr=1.0, schedule=0.1)
    opt2.load_state_dict(saved["opt"])
    assert opt2.t == 7 and opt2.grads_used == 7
    assert opt2.param_groups[0]["schedule"] == sched and opt2.param_groups[0]["lr"] == 0.05
    run(model2, opt2, x, y, 6)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    for a, b in zip(opt.true_params(), opt2.true_params()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="state_dict"):
        opt2.load_state_dict(torch.optim.SGD(model2.parameters(), lr=0.1).state_dict())


def test_at_true_params_swaps_and_restores():
    model, x, y = make_problem(6)
    opt = NAG(model.parameters(), lr=0.05, schedule=0.9)
    run(model, opt, x, y, 5)
    phi = [p.detach().clone() for p in model.parameters()]
    theta = opt.true_params()
    with opt.at_true_params():
        for p, th in zip(model.parameters(), theta):
            assert torch.equal(p, th)
        inside = loss_of(model, x, y).item()
    for p, ph in zip(model.parameters(), phi):
        assert torch.equal(p, ph)
    assert inside != loss_of(model, x, y).item()
    # CM holds θ itself
    cm = CM(model.parameters(), lr=0.05)
    assert all(torch.equal(a, p) for a, p in zip(cm.true_params(), model.parameters()))


def test_param_groups_and_skipped_params():
    model, x, y = make_problem(7)
    first, rest = list(model.parameters())[:2], list(model.parameters())[2:]
    opt = NAG([{"params": first, "lr": 0.01, "schedule": RNNSchedule(0.5, warm_steps=2)},
               {"params": rest}], lr=0.05, schedule=0.9)
    assert isinstance(opt.param_groups[1]["schedule"], ConstantSchedule)
    frozen = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt.add_param_group({"params": [frozen]})
    run(model, opt, x, y, 3)
    assert torch.equal(frozen, torch.ones(3, dtype=torch.float64))  # no grad: untouched
    assert "momentum_buffer" not in opt.state[frozen]


@pytest.mark.parametrize("make, exc, match", [
    (lambda p: NAG(p, lr=0.0), ValueError, "lr"),
    (lambda p: CM(p, lr=float("inf")), ValueError, "lr"),
    (lambda p: NAG(p, lr=0.1, schedule=1.5), ValueError, "schedule"),
    (lambda p: NAG(p, lr=0.1, schedule="fast"), TypeError, "schedule"),
    (lambda p: CM(p, lr=0.1, schedule=lambda t: 2.0), ValueError, "schedule"),
])
def test_optimizer_bad_input(make, exc, match):
    with pytest.raises(exc, match=match):
        make([torch.nn.Parameter(torch.zeros(2))])


def test_schedule_checked_at_every_step_before_any_change():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = NAG([p], lr=0.1, schedule=lambda t: 0.5 if t < 2 else float("nan"))
    p.grad = torch.ones(2)
    opt.step()
    before = (p.detach().clone(), opt.state[p]["momentum_buffer"].clone())
    with pytest.raises(ValueError, match="schedule"):  # the 2nd update needs μ_2 = NaN
        opt.step()
    assert torch.equal(p, before[0]) and torch.equal(opt.state[p]["momentum_buffer"], before[1])
    assert opt.t == 1


@pytest.mark.parametrize("cls", [NAG, CM, SGD])
@pytest.mark.parametrize("bad", [math.nan, math.inf, torch.tensor(-math.inf)])
def test_a_non_finite_closure_loss_is_rejected_when_asked(cls, bad):
    """``skip_non_finite``: a closure's non-finite loss rejects the update, finite gradients or
    not; without the option the update is taken (as every torch.optim optimizer)."""
    kw = {} if cls is SGD else {"schedule": 0.9}
    p = torch.nn.Parameter(torch.ones(3))
    opt = cls([p], lr=0.1, skip_non_finite=True, **kw)

    def closure(loss):
        def run():
            p.grad = torch.tensor([1.0, 2.0, 3.0])
            return loss
        return run

    assert opt.step(closure(1.5)) == 1.5 and opt.t == 1
    before = p.detach().clone()
    mu = opt.mu
    assert opt.step(closure(bad)) is bad
    assert torch.equal(p.detach(), before) and opt.rejected == 1 and opt.t == 1
    assert opt.mu == mu and opt.grads_used == 2
    plain = cls([torch.nn.Parameter(torch.ones(3))], lr=0.1, **kw)
    plain.step(closure(bad))
    assert plain.t == 1 and plain.rejected == 0


def test_mu_is_the_schedule_on_the_optimizer_clock():
    sched = SutskeverSchedule(0.99)
    p = torch.nn.Parameter(torch.ones(2))
    opt = NAG([p], lr=0.1, schedule=sched)
    for t in range(3):
        assert opt.mu == sched(t)
        p.grad = torch.ones(2)
        opt.step()
    assert SGD([p], lr=0.1).mu == 0.0
