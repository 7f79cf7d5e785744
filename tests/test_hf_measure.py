"""The measurement policy of an HF step (which batch measures what), the batches it is given or
draws from its source, phases read without side effects, and old saved states."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

import hessfree
from hessfree.errors import InputError
from hessfree.hf import BatchSpec, HFConfig, Phase, PhaseSchedule
from hessfree.hf.measure import (
    BACKTRACK,
    CURVATURE,
    GRADIENT,
    HELDOUT,
    SEARCH,
    THETA,
    Values,
    resolve,
)
from hessfree.hf.phases import ROLES
from hessfree.hf.record import StepRecord

F64 = torch.float64
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_martens_measures_as_hfdemo():
    """HFDemo: gradient, fused preconditioner and backtracking on the whole set, ρ on the
    chunk, Armijo on the whole set."""
    m = resolve(HFConfig.martens2010(), {GRADIENT, CURVATURE}, 1.0)
    assert (m.curvature, m.precondition, m.fused, m.backtrack, m.rho) == \
        (CURVATURE, GRADIENT, True, GRADIENT, CURVATURE)
    assert (m.search, m.search_rule, m.reject, m.rho_backtracked) == \
        (GRADIENT, "armijo", None, True)


def test_hf_rnn_measures_on_its_held_out_batches():
    m = resolve(HFConfig.hf_rnn(), {GRADIENT, CURVATURE, BACKTRACK, SEARCH}, 1.0)
    assert (m.precondition, m.backtrack, m.rho, m.search, m.search_rule) == \
        (None, BACKTRACK, CURVATURE, SEARCH, "first-decrease")
    for missing, arg in ((BACKTRACK, "backtrack_batch"), (SEARCH, "search_batch")):
        with pytest.raises(InputError, match=f"^{arg}: the config evaluates on a held-out"):
            resolve(HFConfig.hf_rnn(), {GRADIENT, CURVATURE, BACKTRACK, SEARCH} - {missing}, 1)
    # the local model alone needs no held-out batch
    assert resolve(HFConfig.hf_rnn(), {GRADIENT}, held_out=False).curvature == GRADIENT


def test_without_a_curvature_batch_every_curvature_measurement_is_the_gradient_batch():
    cfg = HFConfig(backtrack_batch="curvature", precond_batch="curvature")
    m = resolve(cfg, {GRADIENT}, 1.0)
    assert m.curvature == m.precondition == m.backtrack == m.rho == GRADIENT and not m.fused


@pytest.mark.parametrize("check, on_check, rate, want", [
    (True, True, 0.5, HELDOUT), (True, False, 1.0, CURVATURE), (False, True, 1.0, CURVATURE),
    (False, False, 0.7, CURVATURE),
])
def test_a_fixed_rate_is_judged_on_the_heldout_batch_or_where_its_value_is_known(
        check, on_check, rate, want):
    given = {GRADIENT, CURVATURE} | ({HELDOUT} if check else set())
    cfg = HFConfig(line_search=False, backtrack_batch="curvature", reject_on_heldout=on_check)
    m = resolve(cfg, given, rate)
    assert m.reject == want and m.rho == (HELDOUT if check else CURVATURE) and m.search is None
    assert resolve(cfg.replace(reject_worse=False), given, rate).reject is None
    assert resolve(cfg.replace(backtrack_batch="gradient"), {GRADIENT, CURVATURE},
                   1.0).reject == GRADIENT  # rate 1: the backtracking batch's known value


def test_every_combination_of_switches_resolves_to_roles_the_step_has():
    switches = dict(backtracking=(True, False), backtrack_batch=("gradient", "curvature",
                                                                  "heldout"),
                    preconditioner=(True, False), precond_batch=("gradient", "curvature"),
                    line_search=(True, False), ls_rule=("armijo", "first-decrease"),
                    ls_batch=("gradient", "heldout"), reject_worse=(True, False),
                    reject_on_heldout=(True, False), rho_after_backtracking=(True, False))
    seen = 0
    for values in itertools.product(*switches.values()):
        kw = dict(zip(switches, values))
        if kw["ls_batch"] == "heldout" and kw["ls_rule"] == "armijo":
            continue  # refused by HFConfig
        cfg = HFConfig(**kw)
        for given in ({GRADIENT}, {GRADIENT, CURVATURE}, {GRADIENT, CURVATURE, HELDOUT}):
            given = given | {BACKTRACK, SEARCH}
            for rate in (1.0, 0.5):
                m = resolve(cfg, given, rate)
                roles = [m.curvature, m.precondition, m.backtrack, m.rho, m.search, m.reject]
                assert all(r is None or r in given for r in roles), (kw, given, m)
                assert (m.search is None) == (not cfg.line_search)
                seen += 1
    assert seen > 1000


def test_values_are_measured_once_and_read_after():
    model = nn.Linear(3, 2).double()
    problem = hessfree.Problem(model, hessfree.losses.MSE())
    x = torch.randn(5, 3, dtype=F64)
    batches = {GRADIENT: hessfree.batches.Chunks.of((x, x[:, :2]))}
    theta = {n: p.detach() for n, p in model.named_parameters()}
    record = StepRecord(0, 0, 1.0, 0.0)
    layout = hessfree.vectors.ParamLayout.from_params(theta)
    values = Values(problem, theta, layout, batches, record)
    step = torch.ones(layout.numel, dtype=F64)
    first = values.at(GRADIENT, (3, 0.5), step)
    assert values.at(GRADIENT, (3, 0.5), step) == first and record.forwards == 1
    shifted = {n: t + 0.5 * s for (n, t), s in zip(theta.items(), layout.split(step).values())}
    assert first == problem.value(shifted, (x, x[:, :2]))
    assert values.known(GRADIENT, THETA) is None and values.known(GRADIENT, (3, 1.0)) is None


# -- the step's batches: given, or drawn from the source by role -------------------------------
def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * 0.5)
    x = torch.randn(40, 4, generator=g, dtype=F64)
    y = torch.randn(40, 3, generator=g, dtype=F64)
    return model, hessfree.Problem(model, hessfree.losses.MSE(), weight_decay=1e-3), x, y


class Source:
    """Slices of (x, y) by role and update, recording what it was asked for."""

    def __init__(self, x, y):
        self.x, self.y, self.calls = x, y, []

    def draw(self, spec, t, role):
        self.calls.append((spec.kind, t, ROLES[role]))
        if spec.kind == "same":
            return None
        lo = (8 * (t + role)) % 32
        return (self.x[lo:lo + 8], self.y[lo:lo + 8])


def _phases():
    cfg = HFConfig.momentum_like(cg_max_iters=4, initial_lambda=1.0)
    return PhaseSchedule((Phase("a", steps=2, gradient=BatchSpec("minibatch", size=8),
                                config=cfg, heldout=BatchSpec("minibatch", size=8)),
                          Phase("b", gradient=BatchSpec("minibatch", size=8),
                                curvature=BatchSpec("minibatch", size=8), config=cfg)))


def test_a_step_draws_the_batches_its_phase_names_from_the_source():
    model, problem, x, y = _problem()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    source = Source(x, y)
    drawn = hessfree.HessianFree(problem, phases=_phases(), source=source)
    got = [drawn.step() for _ in range(4)]
    assert source.calls[:3] == [("minibatch", 0, "gradient"), ("same", 0, "curvature"),
                                ("minibatch", 0, "heldout")]
    assert [r for _, t, r in source.calls if t == 3] == ["gradient", "curvature"]
    # the same steps given their batches explicitly
    model.load_state_dict(start)
    given = hessfree.HessianFree(problem, phases=_phases())
    replay = Source(x, y)
    for t in range(4):
        phase = given.phase
        grad = replay.draw(phase.gradient, t, 0)
        curv = replay.draw(phase.curvature, t, 1)
        check = None if phase.heldout is None else replay.draw(phase.heldout, t, 2)
        s = given.step(grad, curv, heldout_batch=check)
        a = dataclasses.asdict(s)
        b = dataclasses.asdict(got[t])
        assert {k: v for k, v in a.items() if not k.startswith("seconds")} == \
            {k: v for k, v in b.items() if not k.startswith("seconds")}


def test_batches_are_all_given_or_all_drawn():
    _, problem, x, y = _problem()
    opt = hessfree.HessianFree(problem)
    with pytest.raises(InputError, match="^grad_batch: required"):
        opt.step()
    with pytest.raises(InputError, match="^grad_batch: required with heldout_batch"):
        opt.step(heldout_batch=(x, y))
    with pytest.raises(TypeError):  # optional arguments are keyword-only
        opt.step((x, y), None, lambda q: None)
    with pytest.raises(ValueError, match=r"^heldout_batch\[1\]: the batch contains non-finite"):
        opt.step((x, y), heldout_batch=[(x, y), (x.clone().fill_(float("nan")), y)])


def test_reading_the_phase_changes_nothing():
    _, problem, x, y = _problem()
    opt = hessfree.HessianFree(problem, phases=_phases())
    for _ in range(2):
        opt.step((x[:8], y[:8]), heldout_batch=(x[8:16], y[8:16]))
    before = opt.state_dict()
    assert before["phase"] == [1, 0, 0]  # moved on after the last step of phase "a"
    for _ in range(3):
        assert opt.phase_index == 1 and opt.phase.name == "b" and opt.config.cg_max_iters == 4
    assert opt.state_dict()["phase"] == before["phase"]


def test_the_determinism_probe_runs_once():
    _, problem, x, y = _problem()
    calls = Counter()
    real = problem.check_deterministic

    def counted(*a, **k):
        calls["probe"] += 1
        return real(*a, **k)

    problem.check_deterministic = counted
    opt = hessfree.HessianFree(problem, config=HFConfig(cg_max_iters=5))
    for k in range(3):
        opt.step((x, y), (x[8 * k:8 * k + 8], y[8 * k:8 * k + 8]))
    assert calls["probe"] == 1
    model = problem.model
    model.train()
    model.append(nn.Dropout(0.5))  # training-mode randomness is still refused every step
    with pytest.raises(InputError, match="Dropout/BatchNorm in training mode"):
        opt.step((x, y))


def test_a_state_saved_by_an_earlier_hessfree_loads():
    """A state written by hessfree 0081983: its config lacks the fields added since, its phase
    counters were saved before moving on to the next phase."""
    saved = torch.load(FIXTURES / "hf-state-0081983.pt", weights_only=False)
    state = saved["state"]
    assert "cg_store_every" not in state["config"] and state["phase"] == [0, 2, 10]
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    model.load_state_dict(saved["model"])
    problem = hessfree.Problem(model, hessfree.losses.MSE(), weight_decay=1e-3)
    phases = PhaseSchedule.from_dict(state["phases"])
    opt = hessfree.HessianFree(problem, config=HFConfig.from_dict(state["config"]),
                               phases=phases)
    opt.load_state_dict(state)
    assert opt.phase.name == "b" and opt.t == 2 and opt.lam == state["lam"]
    assert torch.equal(opt.last_solution, state["last_solution"])
    x, y = saved["x"], saved["y"]
    assert opt.step((x, y), (x[:12], y[:12])).phase == 1
    with pytest.raises(InputError, match="saved with another config; differing fields: "
                                         "cg_max_iters"):
        hessfree.HessianFree(problem, config=HFConfig.from_dict(state["config"]).replace(
            cg_max_iters=7), phases=phases).load_state_dict(state)


def test_a_held_out_backtracking_value_is_never_read_as_another_batchs():
    """Armijo on the gradient batch judges rate 1 by the gradient batch's value there (here
    measured for ρ, the gradient batch being the curvature batch), never by the held-out
    batch's value from the backtracking."""
    model, problem, x, y = _problem(3)
    cfg = HFConfig(backtrack_batch="heldout", cg_max_iters=5, preconditioner=False)
    opt = hessfree.HessianFree(problem, config=cfg)
    s = opt.step((x[:20], y[:20]), backtrack_batch=(x[20:], y[20:]))
    assert s.accepted and s.step_size == 1.0
    moved = {n: p.detach() for n, p in model.named_parameters()}
    assert s.loss_after == pytest.approx(problem.value(moved, (x[:20], y[:20])), rel=1e-12)


def test_a_fixed_rate_judged_on_a_held_out_batch_compares_that_batch_before_and_after():
    """θ minimises the held-out batch's objective, so any step raises it: rejected there,
    whatever the curvature batch says."""
    model, problem, x, y = _problem(4)
    with torch.no_grad():
        y_fit = model(x)
    problem0 = hessfree.Problem(model, hessfree.losses.MSE())
    cfg = HFConfig(backtrack_batch="heldout", line_search=False, cg_max_iters=5,
                   preconditioner=False)
    assert resolve(cfg, {GRADIENT, CURVATURE, BACKTRACK}, 1.0).reject == BACKTRACK
    opt = hessfree.HessianFree(problem0, config=cfg)
    s = opt.step((x[:20], y[:20]), (x[:10], y[:10]), backtrack_batch=(x[20:], y_fit[20:]))
    assert not s.accepted and s.reason == "loss increased"
