"""Plans and progress: the wall-clock budget's decisions, the progress lines' estimates, the
plan printed before the first run, the plan's line over workers, per-update cost estimates."""

from __future__ import annotations

import logging
import re

import pytest

from hessfree.runs import clock, costs, progress, reproduce
from hessfree.runs.cli import main
from hessfree.runs.threads import Threads


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_reserves_the_final_work_and_starts_only_what_fits():
    t = Clock()
    b = clock.WallBudget(60.0, spent=0.0, clock=t)
    assert b.room_for_update(False)  # nothing measured: the first update starts
    b.eval_took(4.0)
    b.checkpoint_took(1.0)
    assert b.end_by() == pytest.approx(55.0)  # S less the final evaluation and checkpoint
    for seconds in (10.0, 4.0, 10.0):
        t.now += seconds
        b.update_took(seconds)
    t.now = 44.0
    assert b.room_for_update(False)  # 11 s left before the reserve: a 10 s update fits
    t.now = 46.0
    assert not b.room_for_update(False)
    assert b.room_for_update(True)  # it can cut its own work: its smallest update (4 s) fits
    t.now = 51.5
    assert not b.room_for_update(True)


def test_intermediate_evaluations_keep_to_their_share():
    t = Clock()
    b = clock.WallBudget(100.0, clock=t)
    b.eval_took(2.0)
    t.now = 10.0
    assert not b.room_for_eval()  # 2 + 2 s of 10 s would be 40 % > 20 %
    t.now = 30.0
    assert b.room_for_eval()  # 4 s of 30 s
    t.now = 95.0
    assert b.room_for_eval()  # 3 s before the final evaluation's reserve: one fits
    t.now = 96.5
    assert not b.room_for_eval()  # it would eat into the final work's reserve


def test_a_resumed_budget_counts_the_earlier_sessions():
    t = Clock()
    b = clock.WallBudget(60.0, spent=50.0, clock=t)
    assert b.elapsed() == 50.0 and b.end_by() == pytest.approx(10.0)
    t.now = 10.5
    assert not b.room_for_update(False)


def test_evaluations_are_cut_to_a_tenth_of_the_budget():
    # a probe of 256 + 256 cases took 0.768 s: 1 ms per pass-case; 60,000 + 10,000 cases
    # would take 130 s, the budget allows 6 s: 2n + n <= 6000 -> n = 2000
    assert clock.eval_limit(0.768, (256, 256), (60_000, 10_000), 60.0) == 2000
    assert clock.eval_limit(0.768, (256, 256), (1000, 500), 60.0) is None  # 2.5 s: all
    assert clock.eval_limit(10.0, (256, 256), (60_000, 10_000), 1.0) == 256  # the floor


def test_the_estimate_is_right_after_the_first_updates_not_skewed_by_the_first_eval(capsys):
    """A run whose first evaluation takes as long as 100 updates: after 5 updates the line's
    remaining time is within 2x of the truth (restart_clock); without it, 20x off."""
    t = Clock()
    line = progress.RunBar("exp hf", "steps", 100, 0, Threads(1, "--threads 1"))
    line.bar._time = t
    line.bar.start_t = line.bar.last_print_t = 0.0
    t.now = 100.0  # the first evaluation
    line.restart_clock()
    for _ in range(5):
        t.now += 1.0
        line.stepped(line.bar.n + 1, {"loss": "1"})
    d = line.bar.format_dict
    rate = (d["n"] - d["initial"]) / d["elapsed"]
    remaining = (d["total"] - d["n"]) / rate
    assert 95 / 2 <= remaining <= 95 * 2
    assert (d["total"] - d["n"]) / (d["n"] / (t.now - 0.0)) > 20 * 95 / 10  # the old way
    line.close()
    assert "1 thread" in capsys.readouterr().err


def test_the_plan_line_counts_estimated_seconds():
    plan = reproduce._PlanBar([10.0, None, 30.0], quiet=False)
    assert plan.bar.total == pytest.approx(60.0)  # the unknown job weighs the mean, 20
    plan.report(2, 0.5)
    assert plan.bar.n == pytest.approx(15.0)
    plan.report(2, 0.25)  # a late report never moves it back
    assert plan.bar.n == pytest.approx(15.0)
    plan.finish(0)
    assert plan.bar.n == pytest.approx(25.0) and "1/3 runs done" in plan.bar.desc
    plan.close()


def test_costs_estimate_updates_and_evaluations(monkeypatch):
    monkeypatch.setattr(costs, "COSTS", {
        "measured": {"date": "d", "cores": 2, "load": 0.5, "threads": 1},
        "experiments": {"exp": {"eval": 2.0, "update": {"nag": 0.01, "hf": 5.0},
                                "grad_equiv": {"hf": 0.5}, "ge_per_update": {"hf": 10.0}}}})
    # 1000 updates of 10 ms, evaluated every 20: 52 evaluations of 2 s
    assert costs.estimate("exp", "nag", 1000, None, 20) == pytest.approx(10 + 52 * 2)
    assert costs.estimate("exp", "cm", 1000, None, 20) == pytest.approx(10 + 52 * 2)  # NAG's
    # 100 gradient-equivalents at 0.5 s: 10 updates, each evaluated, and the first
    assert costs.estimate("exp", "hf", None, 100, 1) == pytest.approx(50 + 12 * 2)
    assert costs.estimate("exp", "hf-momentum", 10, None, 1) is None  # not measured
    assert costs.estimate("other", "nag", 10, None, 1) is None
    monkeypatch.setattr(costs, "load", lambda: 8.0)
    monkeypatch.setattr(costs, "cores", lambda: 2)
    assert costs.load_factor() == pytest.approx(4.0)  # 8 on 2 cores against 2 on 2


def test_reproduce_prints_its_plan_before_the_first_run(monkeypatch, tmp_path, caplog):
    """The must-hold: `reproduce ... --fraction 0.001` says how many runs it planned before the
    first one starts (with their budgets and, where measured, the time)."""
    seen: list[str] = []

    def first_run(*args, **kwargs):
        seen.append(caplog.text)
        raise SystemExit(0)  # stop the plan here: only what came before the first run counts

    monkeypatch.setattr(reproduce, "run_job", first_run)
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit):
        main(["reproduce", "table1", "--fraction", "0.001", "--optimizers", "nag,hf",
              "--experiments", "curves-ae", "--out", str(tmp_path / "r"), "--quiet"])
    assert len(seen) == 1
    text = seen[0]
    assert "reproduce table1 at f = 0.001: 25 runs" in text
    assert re.search(r"curves-ae +nag +24 runs of 750 updates", text)
    assert re.search(r"curves-ae +hf +1 run of 7.5 gradient-equivalents", text)


def test_the_plan_gives_each_group_and_the_whole_an_estimated_time(monkeypatch):
    """With measured costs (benchmarks/plan_costs.py) the plan says how long each group of
    runs and the whole plan take, scaled by the load, split over --jobs."""
    monkeypatch.setattr(costs, "COSTS", {
        "measured": {"date": "2026-01-02", "cores": 2, "load": 0.0, "threads": 1,
                     "command": "python benchmarks/plan_costs.py"},
        "experiments": {"curves-ae": {"eval": 1.0, "update": {"nag": 0.02},
                                      "grad_equiv": {"hf": 2.0}, "ge_per_update": {"hf": 5.0}}}})
    monkeypatch.setattr(costs, "load_factor", lambda: 1.0)
    jobs = reproduce.plan("table1", 0.001, ["curves-ae"], ["nag", "hf"], None, None, None,
                          None, 0, "scaled")
    text, estimates = reproduce.describe("table1", 0.001, jobs, 2)
    nag = [e for j, e in zip(jobs, estimates) if j.optimizer == "nag"]
    hf = [e for j, e in zip(jobs, estimates) if j.optimizer == "hf"]
    # NAG: 750 updates of 20 ms and their evaluations (every 15 updates: 52 of 1 s)
    assert nag[0] == pytest.approx(750 * 0.02 + (750 // 15 + 2) * 1.0)
    assert hf[0] == pytest.approx(7.5 * 2.0 + (7.5 / 5.0 // 1 + 2) * 1.0)
    assert re.search(r"curves-ae +nag +24 runs of 750 updates: about 67 s each", text)
    total = (sum(nag) + sum(hf)) / 2
    assert f"estimated {total / 60:.0f} min with --jobs 2" in text
    assert "measured 2026-01-02 on 2 cores" in text


def test_a_products_bar_counts_what_the_operator_spent(capsys):
    """`compare`, the demo's comparison and its reference solve: a bar over the products the
    operator counts during the block (nothing when quiet)."""

    class Counted:
        products = 5  # spent before the block: not counted

    op = Counted()
    with progress.products(op, 10, "compare"):
        op.products += 7
    err = capsys.readouterr().err
    assert "compare" in err and "7/10" in err
    with progress.products(op, 10, "compare", quiet=True):
        op.products += 1
    assert capsys.readouterr().err == ""
