"""``hessfree reproduce``: the Table 1 and Table 5 protocols end to end at a tiny fraction."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

from hessfree.errors import InputError
from hessfree.runs.cli import main
from hessfree.runs.reproduce import plan
from hessfree.runs.results import read_results

SMALL_AE = ["--set", "n_train=200", "--set", "n_test=50", "--set", "numchunks=2"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_plan_follows_the_fraction_rule():
    jobs = plan("table1", 0.01, ["curves-ae"])
    by_cell = {}
    for j in jobs:
        by_cell.setdefault(j.cell, []).append(j)
    assert set(by_cell) == {"0", "0.9N", "0.99N", "0.995N", "0.999N", "0.9M", "0.99M",
                            "0.995M", "0.999M", "HF*", "HF†"}
    assert all(len(by_cell[c]) == 6 for c in by_cell if c not in ("HF*", "HF†"))
    nag = by_cell["0.999N"][0]
    assert nag.steps == 7500 and nag.overrides["batch_size"] == 200
    assert nag.overrides["mu_max"] == 0.999 and nag.overrides["final_steps"] == 10
    (hf,) = by_cell["HF*"]
    assert hf.budget == pytest.approx(7500 * 200 / 20000)  # NAG's gradient-equivalents
    (hfm,) = by_cell["HF†"]
    assert hfm.steps == 80 and hfm.overrides["fraction"] == 0.01  # A.6's CG totals · f
    t5 = plan("table5", 0.1, ["addition"], ["nag", "hf"], [0.995], [1e-4])
    assert [(j.cell, j.steps) for j in t5 if j.optimizer == "nag"] == [("0.995N", 5000)]
    assert t5[0].overrides["schedule"] == "rnn" and t5[0].overrides["mu0"] == 0.995


@pytest.mark.parametrize("args, needle", [
    (("table3", 0.1), "table: expected one of"),
    (("table1", 0.0), "--fraction: expected a finite number in (0, 1]"),
    (("table1", 2.0), "--fraction"),
    (("table1", 0.1, ["addition"]), "--experiments: 'addition' is not in table1"),
    (("table5", 0.1, None, ["hf-momentum"]), "--optimizers: 'hf-momentum' is not in table5"),
    (("table1", 0.1, None, None, [1.5]), "--mu"),
])
def test_bad_plans_are_refused(args, needle):
    with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        plan(*args)


@pytest.mark.parametrize("argv, needle", [
    (["--device", "tpu"], "--device: unknown device 'tpu'"),
    (["--dtype", "float16"], "--dtype: expected one of"),
    (["--seed", "-1"], "--seed: expected an integer in"),
    (["--jobs", "0"], "--jobs: expected an integer >= 1"),
])
def test_bad_run_options_are_refused_before_any_run_starts(capsys, tmp_path, argv, needle):
    out = tmp_path / "t1"
    code, _, err = run(capsys, "reproduce", "table1", "--fraction", "1e-5", "--experiments",
                       "curves-ae", "--out", out, *argv, *SMALL_AE)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_setting_no_run_has_is_refused():
    with pytest.raises(InputError, match=r"no run of table1 has the setting\(s\) \['T'\]"):
        plan("table1", 0.01, ["curves-ae"], overrides={"T": 5})


def test_table1_end_to_end_at_a_tiny_fraction(capsys, tmp_path):
    out = tmp_path / "t1"
    code, stdout, err = run(capsys, "reproduce", "table1", "--fraction", "1e-5",
                            "--experiments", "curves-ae", "--mu", "0.99", "--lrs", "0.01,0.005",
                            "--out", out, *SMALL_AE)
    assert code == 0, err
    md = (out / "summary.md").read_text()
    assert "| experiment | 0 | 0.99N | 0.99M | HF† | HF* |" in md
    row = next(line for line in md.splitlines() if line.startswith("| curves-ae |"))
    assert "(0.48)" in row and "(0.096)" in row and "(0.058)" in row and "(0.11)" in row
    assert (out / "curves-ae.png").read_bytes()[:4] == b"\x89PNG"
    with h5py.File(out / "summary.h5", "r") as f:
        cells = json.loads(f.attrs["cells"])
        assert cells == ["0", "0.99N", "0.99M", "HF†", "HF*"]
        ours, paper = f["train_error"][0], f["paper"][0]
        assert np.all(np.isfinite(ours)) and paper[cells.index("HF*")] == 0.11
        best_lr = f["best_lr"][0]
        assert best_lr[cells.index("0.99N")] in (0.01, 0.005)
        assert math.isnan(best_lr[cells.index("HF*")])
    runs = sorted(p.parent.name for p in (out / "curves-ae").glob("*/results.h5"))
    assert runs == sorted(["sgd-0-lr0.01", "sgd-0-lr0.005", "nag-0.99N-lr0.01",
                           "nag-0.99N-lr0.005", "cm-0.99M-lr0.01", "cm-0.99M-lr0.005", "hf",
                           "hf-momentum"])
    nag = read_results(out / "curves-ae" / "nag-0.99N-lr0.01" / "results.h5")
    assert len(nag.steps["step"]) == 8 and nag.attrs["config"]["mu_max"] == 0.99
    # the summary is written again from the finished runs, which are not run twice
    before = (out / "curves-ae" / "hf" / "results.h5").stat().st_mtime_ns
    code, _, err = run(capsys, "reproduce", "table1", "--fraction", "1e-5", "--experiments",
                       "curves-ae", "--mu", "0.99", "--lrs", "0.01,0.005", "--out", out,
                       "--resume", *SMALL_AE)
    assert code == 0, err
    assert (out / "curves-ae" / "hf" / "results.h5").stat().st_mtime_ns == before
    code, _, err = run(capsys, "reproduce", "table1", "--fraction", "1e-5", "--experiments",
                       "curves-ae", "--out", out, *SMALL_AE)
    assert code == 2 and "is not empty" in err
    # --summary-only runs nothing: the runs of a larger plan that are not there are listed,
    # and a run that was killed (its file still says running, no writer) is marked
    with h5py.File(out / "curves-ae" / "hf-momentum" / "results.h5", "r+") as f:
        f.attrs["status"] = "running"
    code, stdout, err = run(capsys, "reproduce", "table1", "--fraction", "1e-5",
                            "--experiments", "curves-ae", "--mu", "0.99,0.9", "--lrs",
                            "0.01,0.005", "--out", out, "--summary-only", *SMALL_AE)
    assert code == 0, err
    assert (out / "curves-ae" / "hf" / "results.h5").stat().st_mtime_ns == before
    assert not (out / "curves-ae" / "nag-0.9N-lr0.01").exists()
    md = (out / "summary.md").read_text()
    assert "Not started: " in md and "curves-ae nag-0.9N-lr0.005" in md and "0.99N" in md
    assert "Unfinished runs" in md and "curves-ae hf-momentum (" in md
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "reproduce", "table1", "--fraction", "1e-5", "--experiments",
                       "curves-ae", "--out", empty, "--summary-only", *SMALL_AE)
    assert code == 2 and "holds none of the runs" in err


def test_table5_end_to_end(capsys, tmp_path):
    out = tmp_path / "t5"
    code, _, err = run(capsys, "reproduce", "table5", "--fraction", "2e-4", "--experiments",
                       "addition", "--optimizers", "nag,hf", "--mu", "0.995", "--lrs",
                       "0.001,0.0001", "--out", out, "--set", "T=20",
                       "--set", "n_hidden=8", "--set", "n_test=100", "--set", "grad_cases=100",
                       "--set", "curv_cases=50", "--set", "cg_max_iters=5")
    assert code == 0, err
    md = (out / "summary.md").read_text()
    assert "| addition |" in md and "(0.00025)" in md
    with h5py.File(out / "summary.h5", "r") as f:
        assert json.loads(f.attrs["cells"]) == ["0.995N", "HF"]
        assert np.all((f["test_error"][0] >= 0) & (f["test_error"][0] <= 1))


# -- Eq. 5 at a fraction, seeds ------------------------------------------------------------------
def _peak_mu(job):
    """The largest μ the job's schedule uses before its final low-μ stretch (its settings)."""
    from hessfree.runs.settings import MomentumSettings

    o = job.overrides
    s = MomentumSettings(**{k: o[k] for k in ("schedule", "mu_max", "final_steps", "mu_stage")})
    sched = s.mu_schedule(job.steps)
    return max(sched(t) for t in range(0, job.steps - s.final_steps, max(1, s.mu_stage)))


@pytest.mark.parametrize("fraction", [0.02, 0.002])
def test_scaled_stages_reach_every_mu_max_within_the_shortened_run(fraction):
    """Eq. 5's stages scaled by f: μ_max is reached (same sixth of the run as at f = 1)."""
    for j in plan("table1", fraction, ["curves-ae"], ["nag"], lrs=[0.01]):
        assert j.overrides["mu_stage"] == max(1, round(250 * fraction))
        assert _peak_mu(j) == pytest.approx(j.overrides["mu_max"])


def test_unscaled_stages_stop_short_of_the_higher_mu_max():
    """The published f = 0.02 runs before this change: k <= 59, μ <= 1 - 1/120."""
    jobs = {j.cell: j for j in plan("table1", 0.02, ["curves-ae"], ["nag"], lrs=[0.01],
                                    mu_stages="unscaled")}
    assert jobs["0.999N"].overrides["mu_stage"] == 250
    assert _peak_mu(jobs["0.999N"]) == pytest.approx(1 - 1 / 120)
    assert _peak_mu(jobs["0.99N"]) == pytest.approx(0.99)
    t5 = plan("table5", 0.1, ["addition"], ["nag"], [0.995], [1e-4])
    assert t5[0].overrides["warm_steps"] == 100  # 1000 warm updates · f
    with pytest.raises(InputError, match="--mu-stages"):
        plan("table1", 0.02, ["curves-ae"], mu_stages="halved")


def test_seeds_multiply_the_runs_and_name_them():
    grid = [0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001]
    jobs = plan("table1", 0.02, ["curves-ae"], ["sgd", "nag", "cm", "hf", "hf-momentum"],
                [0.99, 0.999], grid, seeds=3)
    nag = [j for j in jobs if j.cell == "0.999N"]
    assert len(nag) == 6 * 3 and {j.lr for j in nag} == set(grid)  # the paper's whole grid
    assert {j.seed for j in jobs} == {0, 1, 2} and len(jobs) == (6 * 5 + 2) * 3
    assert {j.name for j in jobs if j.optimizer == "hf"} == {"hf-seed0", "hf-seed1", "hf-seed2"}
    assert [j.seed for j in plan("table1", 0.02, ["curves-ae"], ["hf"], seeds=[4, 9])] == [4, 9]
    assert [j.name for j in plan("table1", 0.02, ["curves-ae"], ["hf"], seed=7)] == ["hf"]
    for bad in (0, [1, 1], [-1]):
        with pytest.raises(InputError, match="--seeds"):
            plan("table1", 0.02, ["curves-ae"], ["hf"], seeds=bad)


def test_seeds_end_to_end_mean_spread_best_lr_and_mu_reached(capsys, tmp_path):
    out = tmp_path / "seeds"
    argv = ["reproduce", "table1", "--fraction", "1e-5", "--experiments", "curves-ae",
            "--optimizers", "nag,hf", "--mu", "0.999", "--lrs", "0.05,0.01,0.005",
            "--seeds", "2", "--out", out, *SMALL_AE]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    names = sorted(p.parent.name for p in (out / "curves-ae").glob("*/results.h5"))
    assert names == sorted([f"nag-0.999N-lr{lr}-seed{s}" for lr in ("0.05", "0.01", "0.005")
                            for s in (0, 1)] + ["hf-seed0", "hf-seed1"])
    finals = {}
    for p in (out / "curves-ae").glob("nag-*/results.h5"):
        r = read_results(p)
        finals[p.parent.name] = (float(r.eval["train_error"][-1]), float(np.max(r.steps["mu"])))
    means = {lr: np.mean([finals[f"nag-0.999N-lr{lr}-seed{s}"][0] for s in (0, 1)])
             for lr in ("0.05", "0.01", "0.005")}
    best = min(means, key=means.get)
    spread = np.std([finals[f"nag-0.999N-lr{best}-seed{s}"][0] for s in (0, 1)], ddof=1)
    with h5py.File(out / "summary.h5", "r") as f:
        cells = json.loads(f.attrs["cells"])
        k = cells.index("0.999N")
        assert f.attrs["mu_stages"] == "scaled" and json.loads(f.attrs["seeds"]) == [0, 1]
        assert f["mean"][0, k] == pytest.approx(means[best], rel=1e-12)
        assert f["std"][0, k] == pytest.approx(spread, rel=1e-9)
        assert f["n_seeds"][0, k] == 2 and f["best_lr"][0, k] == float(best)
        assert bool(f["best_lr_on_edge"][0, k]) == (best in ("0.05", "0.005"))
        assert f["mu_reached"][0, k] == max(finals[f"nag-0.999N-lr{best}-seed{s}"][1]
                                            for s in (0, 1))
        assert len(f["runs/seed"]) == 8 and set(f["runs/seed"][:]) == {0.0, 1.0}
    md = (out / "summary.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| curves-ae |"))
    assert " ± " in row and "(0.074)" in row
    assert "| μ reached |" in md and "Eq. 5's stages and the RNN warm-up scaled" in md
    if best in ("0.05", "0.005"):
        assert "on the edge of the grid searched for: curves-ae 0.999N" in md
    # resumable: a second call runs nothing and tables the same numbers
    before = (out / "curves-ae" / "hf-seed1" / "results.h5").stat().st_mtime_ns
    code, _, err = run(capsys, *argv, "--resume")
    assert code == 0, err
    assert (out / "curves-ae" / "hf-seed1" / "results.h5").stat().st_mtime_ns == before


# -- the whole plan is refused before any run starts ---------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["--lrs", ","], "--lrs: expected at least one value, got none"),
    (["--mu", ","], "--mu: expected at least one value, got none"),
    (["--experiments", ","], "--experiments: expected at least one value, got none"),
    (["--lrs", "0.01,-1"], "--lrs: expected a finite number > 0"),
    (["--set", "lr=-1"], "--set lr: table1 gives its runs their lr (choose it with --lrs)"),
    (["--set", "mu_max=0.5"], "--set mu_max: table1 gives its runs their mu_max (choose it with "
                              "--mu)"),
    (["--set", "fraction=0.5"], "--set fraction: table1 gives its runs their fraction"),
    (["--set", "eval_cases=abc"], "--set eval_cases: expected int, got 'abc'"),
    (["--set", "cg_max_iters=-1"], "--set: cg_max_iters: expected an integer in [1,"),
    (["--set", "si_scale=0"], "si_scale"),
    (["--set", "final_mu=2"], "curves-ae sgd-0-lr0.05: --set: final_mu"),
    (["--set", "T=20"], "no run of table1 has the setting(s) ['T']"),
])
def test_a_bad_plan_is_refused_before_any_run_starts(capsys, tmp_path, argv, needle):
    out = tmp_path / "t1"
    code, _, err = run(capsys, "reproduce", "table1", "--fraction", "1e-5", "--experiments",
                       "curves-ae", "--out", out, *SMALL_AE, *argv)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_the_plan_holds_typed_checked_settings():
    jobs = plan("table1", 1e-4, ["curves-ae"], ["nag", "hf", "hf-momentum"], [0.99], [0.01],
                overrides={"n_train": "200", "numchunks": "2", "cg_max_iters": "7"})
    by = {j.optimizer: j for j in jobs}
    assert by["nag"].overrides["n_train"] == 200 and by["nag"].overrides["lr"] == 0.01
    assert by["hf"].overrides == {"n_train": 200, "numchunks": 2, "cg_max_iters": 7}
    assert by["hf-momentum"].overrides["fraction"] == 1e-4
    assert "cg_max_iters" not in by["nag"].overrides  # only the settings a run has


def test_a_damaged_results_file_is_refused_before_any_run_resumes(capsys, tmp_path):
    out = tmp_path / "t1"
    argv = ["reproduce", "table1", "--fraction", "1e-5", "--experiments", "curves-ae",
            "--optimizers", "sgd,hf", "--lrs", "0.01", "--out", out, *SMALL_AE]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    sgd, hf = (out / "curves-ae" / n / "results.h5" for n in ("sgd-0-lr0.01", "hf"))
    with h5py.File(hf, "r+") as f:
        f.attrs["status"] = "running"  # as a killed run leaves it: --resume would continue it
    with h5py.File(sgd, "r+") as f:
        del f["steps/loss"]
    before = hf.stat().st_mtime_ns
    code, _, err = run(capsys, *argv, "--resume")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "/steps/loss: the column is missing" in err
    assert hf.stat().st_mtime_ns == before  # nothing ran


def test_jobs_in_worker_processes_run_the_same_path_as_in_process(capsys, tmp_path):
    argv = ["reproduce", "table5", "--fraction", "1e-4", "--experiments", "addition",
            "--optimizers", "nag,hf", "--mu", "0.995", "--lrs", "0.001", "--dtype",
            "float64", "--set", "T=20", "--set", "n_hidden=8", "--set", "n_test=50",
            "--set", "grad_cases=50", "--set", "curv_cases=25", "--set", "cg_max_iters=4"]
    for jobs in (1, 2):
        code, _, err = run(capsys, *argv, "--jobs", jobs, "--out", tmp_path / f"j{jobs}")
        assert code == 0, err
    names = sorted(p.parent.name for p in (tmp_path / "j1" / "addition").glob("*/results.h5"))
    assert names == ["hf", "nag-0.995N-lr0.001"]
    for name in names:
        a, b = (read_results(tmp_path / j / "addition" / name / "results.h5")
                for j in ("j1", "j2"))
        assert a.attrs["config"] == b.attrs["config"] and a.attrs["spec"]["seed"] == 0
        for k in a.steps:
            if not k.startswith("seconds"):
                np.testing.assert_array_equal(a.steps[k], b.steps[k], err_msg=f"{name} {k}")
