"""Phases of an HF run: validation, advancing by steps or CG iterations, exact mid-phase resume,
the phase's objective, the held-out batch, the quadratic a step solves, and the A.6 presets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import hessfree
from hessfree.errors import InputError
from hessfree.hf import BatchSpec, HFConfig, Phase, PhaseSchedule
from hessfree.runs import experiments

F64 = torch.float64


def problem(seed=0, wd=1e-3):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * 0.5)
    x = torch.randn(64, 4, generator=g, dtype=F64)
    y = torch.randn(64, 3, generator=g, dtype=F64)
    return model, hessfree.Problem(model, hessfree.losses.MSE(), weight_decay=wd), (x, y)


def two_phases():
    quick = HFConfig.momentum_like(cg_max_iters=3, initial_lambda=1.0)
    slow = quick.replace(cg_max_iters=7, cg_decay=0.99)
    return PhaseSchedule((Phase("a", cg_steps=7, config=quick),
                          Phase("b", steps=2, config=slow, weight_decay=0.0),
                          Phase("c", config=slow)))


def test_phases_advance_by_cg_steps_then_by_steps():
    _, prob, batch = problem()
    opt = hessfree.HessianFree(prob, phases=two_phases())
    stats = [opt.step(batch) for _ in range(7)]
    # phase a: 7 CG iterations = 3 updates of 3 (the third passes 7), then b: 2 updates, then c
    assert [s.phase for s in stats] == [0, 0, 0, 1, 1, 2, 2]
    assert [s.cg_iters for s in stats] == [3, 3, 3, 7, 7, 7, 7]
    assert [s.cg_decay for s in stats][3:] == [0.99] * 4
    assert opt.cg_total == 9 + 28


def test_the_phase_owns_the_objective():
    _, prob, batch = problem(wd=1e-2)
    opt = hessfree.HessianFree(prob, phases=two_phases())
    for _ in range(3):
        assert opt.objective is prob
        opt.step(batch)
    assert opt.phase.name == "b" and opt.objective.weight_decay == 0.0
    assert prob.weight_decay == 1e-2  # the user's problem is never changed
    params = prob.parameters()
    with_wd = prob.value(params, batch)
    assert opt.objective.value(params, batch) < with_wd


def test_resume_in_the_middle_of_a_phase_is_exact():
    model, prob, batch = problem()
    opt = hessfree.HessianFree(prob, phases=two_phases())
    for _ in range(4):
        opt.step(batch)
    state = opt.state_dict()
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rest = [opt.step(batch) for _ in range(3)]

    model2, prob2, _ = problem()
    model2.load_state_dict(saved)
    opt2 = hessfree.HessianFree(prob2, phases=two_phases())
    opt2.load_state_dict(state)
    again = [opt2.step(batch) for _ in range(3)]
    for a, b in zip(rest, again):
        assert (a.phase, a.loss_before, a.rho, a.lambda_after) == \
            (b.phase, b.loss_before, b.rho, b.lambda_after)
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k])


def test_a_state_of_other_phases_or_config_is_refused():
    _, prob, batch = problem()
    opt = hessfree.HessianFree(prob, phases=two_phases())
    opt.step(batch)
    state = opt.state_dict()
    other = hessfree.HessianFree(prob, phases=PhaseSchedule.single())
    with pytest.raises(InputError, match="saved with other phases"):
        other.load_state_dict(state)
    plain = hessfree.HessianFree(prob).state_dict()
    with pytest.raises(InputError, match="differing fields: initial_lambda"):
        hessfree.HessianFree(prob, config=HFConfig(initial_lambda=2.0)).load_state_dict(plain)
    with pytest.raises(InputError, match="version"):
        hessfree.HessianFree(prob).load_state_dict({**plain, "version": 99})


@pytest.mark.parametrize("make, needle", [
    (lambda: PhaseSchedule(()), "non-empty"),
    (lambda: PhaseSchedule((Phase("a"), Phase("b"))), "only the last phase may run without"),
    (lambda: PhaseSchedule((Phase("a", steps=1), Phase("a"))), "names must be unique"),
    (lambda: Phase("a", steps=1, cg_steps=2), "not both"),
    (lambda: Phase("a", steps=0), "steps: expected an integer >= 1"),
    (lambda: Phase("a", gradient=BatchSpec("same")), "only meaningful for the curvature"),
    (lambda: Phase("a", weight_decay=math.nan), "weight_decay"),
    (lambda: BatchSpec("chunk"), "parts"),
    (lambda: BatchSpec("minibatch"), "exactly one of them"),
    (lambda: BatchSpec("minibatch", fraction=1.5, size=None), "fraction"),
    (lambda: BatchSpec("all", parts=3), "not used by a 'all' batch"),
    (lambda: BatchSpec("every"), "kind: expected one of"),
])
def test_inconsistent_phases_are_refused(make, needle):
    with pytest.raises(InputError, match=needle):
        make()


def test_schedule_round_trips_through_json():
    import json

    s = two_phases()
    again = PhaseSchedule.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again == s


def test_quadratic_is_the_one_the_step_solves():
    _, prob, batch = problem()
    opt = hessfree.HessianFree(prob, config=HFConfig(initial_lambda=0.5))
    q = opt.quadratic(batch)
    seen = []
    opt.step(batch, on_quadratic=seen.append)
    (q2,) = seen
    v = torch.randn(q.dim, dtype=F64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(q.g, q2.g) and q.lam == q2.lam == 0.5
    torch.testing.assert_close(q @ v, q2 @ v, rtol=0, atol=0)


def test_heldout_batch_measures_rho_and_rejection_on_unseen_cases():
    _, prob, (x, y) = problem()
    fit, held = (x[:32], y[:32]), (x[32:], y[32:])
    for on_check in (True, False):
        _, prob, _ = problem()
        cfg = HFConfig.momentum_like(cg_max_iters=5, initial_lambda=1e-3, line_search=False,
                                     reject_on_heldout=on_check)
        opt = hessfree.HessianFree(prob, config=cfg)
        held_before = prob.value(prob.parameters(), held)
        fit_before = prob.value(prob.parameters(), fit)
        s = opt.step(fit, heldout_batch=held)
        assert s.heldout_loss_before == held_before and math.isfinite(s.heldout_loss_after)
        # ρ: the held-out batch's change against the model built with its own gradient
        assert s.heldout_model_change != s.model_change
        want = (s.heldout_loss_after - s.heldout_loss_before) / s.heldout_model_change
        assert s.rho == pytest.approx(want) or (s.rho == -math.inf and want < 0)
        if on_check:
            assert s.accepted == (s.heldout_loss_after <= s.heldout_loss_before)
        else:
            fit_after = s.curv_loss_after  # the fitted batch's objective after the step
            assert s.accepted == (fit_after <= fit_before)
    plain = hessfree.HessianFree(problem()[1], config=cfg).step(fit)
    assert math.isnan(plain.heldout_loss_before) and math.isnan(plain.heldout_model_change)


def test_reset_on_reject_does_not_carry_the_rejected_direction():
    for reset in (False, True):
        _, prob, batch = problem()
        cfg = HFConfig.momentum_like(cg_max_iters=4, initial_lambda=1.0, learning_rate=50.0,
                                     line_search=False,  # rate 50: the step overshoots
                                     reset_on_reject=reset)
        opt = hessfree.HessianFree(prob, config=cfg)
        before = opt.last_solution.clone()
        s = opt.step(batch)
        assert not s.accepted and s.reason == "loss increased"
        assert torch.equal(opt.last_solution, before) == reset


def test_momentum_like_line_search_shortens_an_overshooting_step_from_its_rate():
    _, prob, batch = problem()
    cfg = HFConfig.momentum_like(cg_max_iters=4, initial_lambda=1.0, learning_rate=50.0)
    opt = hessfree.HessianFree(prob, config=cfg)
    f0 = prob.value(prob.parameters(), batch)
    s = opt.step(batch)  # rate 50 overshoots (the test above); Armijo shortens it instead
    k = round(math.log(s.step_size / 50.0) / math.log(cfg.ls_shrink))
    assert s.accepted and k >= 1 and s.step_size == pytest.approx(50.0 * cfg.ls_shrink ** k)
    assert s.ls_evals == k + 1 and s.loss_after < f0
    assert s.loss_after == pytest.approx(prob.value(prob.parameters(), batch), rel=1e-6)


def test_a6_presets_and_the_fraction_rule():
    exp = experiments.get("curves-ae")
    _, full = exp.settings_for("hf-momentum")
    phases = full.phases(20000, fresh=False)
    assert [(p.name, p.cg_steps) for p in phases.phases] == \
        [("minibatch", 250_000), ("full", 100_000), ("final", 500_000)]
    assert full.total_updates(20000) == 5000 + 500 + 2500
    first = phases[0].config
    assert first.cg_max_iters == 50 and first.learning_rate(4500) == 1.0
    assert first.learning_rate(5000) == pytest.approx(0.5)  # 500/(t - 4000)
    assert first.cg_decay(4000) == 0.95 and first.cg_decay(4500) == pytest.approx(0.999)
    _, small = exp.settings_for("hf-momentum", {"fraction": "0.01"})
    sp = small.phases(20000, fresh=False)
    assert [p.cg_steps for p in sp.phases] == [2500, 1000, 5000]
    c = sp[0].config
    # the same relative point of the run gives the same ε and ζ
    assert c.learning_rate(50) == pytest.approx(first.learning_rate(5000))
    assert c.cg_decay(45) == pytest.approx(first.cg_decay(4500))
    assert phases[2].weight_decay == 0.0 and phases[1].weight_decay is None
    _, mnist = experiments.get("mnist-ae").settings_for("hf-momentum")
    mp = mnist.phases(60000, fresh=False)
    assert [p.name for p in mp.phases] == ["minibatch", "full"]
    assert mp[1].curvature.kind == "minibatch" and mp[0].config.learning_rate(1000) == 0.25
