"""The reliability cases of the command line and the API: no lost results, no silent wrong run.

Each test pins one way a run or file used to be lost or silently wrong (a plot written over its
results file, a resume that dropped an evaluation or ignored its arguments, budgets or settings
that are not numbers, parameters the model does not use, targets outside a loss's domain, NaN
written into parameters, λ growing without bound, tracebacks instead of one-line errors).
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import hessfree
from hessfree.errors import InputError
from hessfree.runs import experiments
from hessfree.runs.cli import main
from hessfree.runs.results import read_results
from hessfree.runs.settings import flat

SMALL_AE = ["--set", "n_train=64", "--set", "n_test=16"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code, err, needle):
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err


def train(capsys, tmp_path, *argv):
    code, out, err = run(capsys, "train", *argv, "--out", tmp_path, "--quiet")
    assert code == 0, err
    return Path(out.strip().splitlines()[-1])


@pytest.fixture
def nag_run(capsys, tmp_path):
    return train(capsys, tmp_path, "toy-quartic", "--optimizer", "nag", "--steps", 7,
                 "--eval-every", 3, "--checkpoint-every", 3)


# -- 1. plots never overwrite results; format by extension ------------------------------------
def test_plot_refuses_to_overwrite_its_input_or_any_hdf5(capsys, nag_run, tmp_path):
    before = nag_run.read_bytes()
    code, _, err = run(capsys, "plot", nag_run, "--out", nag_run)
    one_line_error(code, err, "one of the input files")
    other = train(capsys, tmp_path / "b", "toy-quartic", "--optimizer", "cm", "--steps", 2)
    png_named_h5 = other.with_suffix(".png")
    os.replace(other, png_named_h5)  # an HDF5 file behind an image name
    code, _, err = run(capsys, "plot", nag_run, "--out", png_named_h5)
    one_line_error(code, err, "existing HDF5 file")
    assert nag_run.read_bytes() == before and png_named_h5.read_bytes()[:4] == b"\x89HDF"


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF"),
                                           (".svg", b"<?xml")])
def test_plot_format_follows_the_extension(capsys, nag_run, tmp_path, suffix, magic):
    out = tmp_path / f"fig{suffix}"
    code, _, err = run(capsys, "plot", nag_run, "--out", out)
    assert code == 0, err
    assert out.read_bytes()[: len(magic)] == magic
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # not 0600


def test_plot_refuses_unknown_image_formats(capsys, nag_run, tmp_path):
    code, _, err = run(capsys, "plot", nag_run, "--out", tmp_path / "fig.jpg")
    one_line_error(code, err, ".png, .pdf, .svg")


# -- 3. resume keeps the rows its checkpoint covers -------------------------------------------
def test_resuming_a_finished_run_keeps_every_row(capsys, nag_run):
    before = read_results(nag_run)
    assert list(before.eval["step"]) == [0, 3, 6, 7]  # 7 is not a multiple of 3
    code, _, err = run(capsys, "train", "--resume", nag_run.parent, "--steps", 7, "--quiet")
    assert code == 0, err
    after = read_results(nag_run)
    assert list(after.eval["step"]) == [0, 3, 6, 7]
    np.testing.assert_array_equal(after.steps["loss"], before.steps["loss"])


# -- 4. resume refuses what would change the run ----------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["curves-ae"], "experiment 'toy-quartic', the command asks for 'curves-ae'"),
    (["--optimizer", "cm"], "optimizer 'nag', the command asks for 'cm'"),
    (["--seed", "3"], "seed 0, the command asks for 3"),
    (["--dtype", "float64"], "dtype 'float32', the command asks for 'float64'"),
    (["--set", "lr=0.5"], "lr=0.01 (asked 0.5)"),
    (["--set", "bogus=1"], "--set: unknown key(s) ['bogus']"),
    (["--out", "elsewhere"], "--out: a resumed run stays in its folder"),
])
def test_resume_refuses_a_different_run(capsys, nag_run, argv, needle):
    code, _, err = run(capsys, "train", "--resume", nag_run.parent, "--steps", 9, *argv)
    one_line_error(code, err, needle)
    assert len(read_results(nag_run).steps["step"]) == 7  # untouched


def test_resume_accepts_same_values_and_records_what_may_change(capsys, nag_run):
    code, _, err = run(capsys, "train", "toy-quartic", "--resume", nag_run.parent, "--steps", 9,
                       "--optimizer", "nag", "--seed", "0", "--set", "lr=0.01",
                       "--eval-every", "4", "--device", "cpu", "--quiet")
    assert code == 0, err
    res = read_results(nag_run)
    assert len(res.steps["step"]) == 9
    (resumed,) = res.attrs["resumes"]
    assert resumed["at_step"] == 7 and resumed["changes"] == {"device": "cpu", "eval_every": 4}
    assert res.attrs["spec"]["eval_every"] == 4


# -- 5. budgets ---------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["--seconds", "nan"], "--seconds: expected a finite number > 0, got nan"),
    (["--budget", "nan"], "--budget: expected a finite number > 0, got nan"),
    (["--budget", "inf"], "--budget: expected a finite number > 0, got inf"),
    (["--steps", "0"], "--steps: expected an integer >= 1, got 0"),
    (["--steps", "-3"], "--steps: expected an integer >= 1, got -3"),
    (["--seconds", "0"], "--seconds: expected a finite number > 0, got 0"),
    (["--seconds", "-1"], "--seconds: expected a finite number > 0, got -1"),
    (["--steps", "2.5"], "--steps: expected an integer, got '2.5'"),
    ([], "budget: give --steps, --seconds or --budget"),
])
def test_every_budget_is_a_finite_positive_number(capsys, tmp_path, argv, needle):
    code, _, err = run(capsys, "train", "toy-quartic", "--optimizer", "nag", *argv,
                       "--out", tmp_path)
    one_line_error(code, err, needle)
    assert not (tmp_path / "toy-quartic").exists()  # nothing half-made


# -- 6. every numeric setting validated once, CLI and API alike ---------------------------------
def _numeric_keys(record):
    return [k for k, v in flat(record).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]


@pytest.mark.parametrize("optimizer", ["hf", "hf-momentum", "nag"])
def test_every_numeric_setting_refuses_nan_and_out_of_range(optimizer):
    exp = experiments.get("curves-ae")
    data, opt = exp.settings_for(optimizer)
    keys = _numeric_keys(data) + _numeric_keys(opt)
    assert len(keys) > 8
    for key in keys:
        with pytest.raises(InputError, match=key):
            exp.settings_for(optimizer, {key: "nan"})
        with pytest.raises(InputError, match=key):
            exp.settings_for(optimizer, {key: "-5"})


def test_weight_decay_and_numchunks_from_the_cli(capsys, tmp_path):
    for setting, needle in (("weight_decay=nan", "weight_decay: expected a finite number"),
                            ("numchunks=0", "numchunks: expected an integer >= 1"),
                            ("numchunks=-2", "numchunks: expected an integer >= 1")):
        code, _, err = run(capsys, "train", "curves-ae", "--steps", 1, *SMALL_AE,
                           "--set", setting, "--out", tmp_path)
        one_line_error(code, err, needle)


@pytest.mark.parametrize("wd", [math.nan, math.inf, -1.0])
def test_problem_weight_decay_must_be_finite_and_non_negative(wd):
    with pytest.raises(InputError, match="weight_decay"):
        hessfree.Problem(nn.Linear(2, 1), hessfree.losses.MSE(), weight_decay=wd)


# -- 7. parameters the model does not use -----------------------------------------------------
def test_hessian_free_refuses_parameters_the_model_does_not_use():
    problem = hessfree.Problem(nn.Linear(3, 1), hessfree.losses.MSE())
    with pytest.raises(InputError, match=r"\['w', 'b'\] are not parameters of the model"):
        hessfree.HessianFree(problem, params={"w": torch.zeros(1, 3), "b": torch.zeros(1)})
    with pytest.raises(InputError, match="expected the shape of the model's parameter"):
        hessfree.HessianFree(problem, params={"weight": torch.zeros(3, 1)})


# -- 8. targets outside a loss's domain; complex models ---------------------------------------
def test_losses_refuse_targets_outside_their_domain():
    model = nn.Linear(3, 4)
    x = torch.randn(5, 3)
    ce = hessfree.Problem(model, hessfree.losses.CrossEntropy())
    bad = torch.full((5, 4), -0.5)
    with pytest.raises(InputError, match=r"values in \[0, 1\]"):
        hessfree.GGN(ce, (x, bad))
    with pytest.raises(InputError, match="must sum to 1"):
        ce.value(ce.parameters(), (x, torch.full((5, 4), 0.5)))
    bce = hessfree.Problem(model, hessfree.losses.BCEWithLogits())
    with pytest.raises(InputError, match=r"BCEWithLogits expects values in \[0, 1\]"):
        hessfree.HessianFree(bce).step((x, torch.full((5, 4), 3.0)))
    good = torch.softmax(torch.randn(5, 4), -1)
    assert ce.value(ce.parameters(), (x, good)) > 0


@pytest.mark.filterwarnings("ignore:Complex modules are a new feature:UserWarning")
def test_complex_models_are_refused_alike_by_operators_and_hf():
    model = nn.Linear(3, 1).to(torch.complex64)
    problem = hessfree.Problem(model, hessfree.losses.MSE())
    x, y = torch.randn(4, 3, dtype=torch.complex64), torch.randn(4, 1)
    for build in (lambda: hessfree.GGN(problem, (x, y)), lambda: hessfree.HessianFree(problem)):
        with pytest.raises(TypeError, match="expected a real floating-point tensor"):
            build()


# -- 9. NaN gradients in the momentum methods -------------------------------------------------
@pytest.mark.parametrize("cls", [hessfree.NAG, hessfree.CM, hessfree.SGD])
def test_momentum_optimizers_reject_non_finite_gradients_when_asked(cls):
    p = torch.nn.Parameter(torch.ones(3))
    kw = {} if cls is hessfree.SGD else {"schedule": 0.9}
    default, safe = cls([p], lr=0.1, **kw), None
    p.grad = torch.tensor([1.0, float("nan"), 0.0])
    default.step()
    assert torch.isnan(p).any()  # documented: like torch.optim, NaN goes in
    q = torch.nn.Parameter(torch.ones(3))
    safe = cls([q], lr=0.1, skip_non_finite=True, **kw)
    q.grad = torch.tensor([1.0, 2.0, 3.0])
    safe.step()
    before = q.detach().clone()
    q.grad = torch.tensor([1.0, float("inf"), 0.0])
    safe.step()
    assert torch.equal(q.detach(), before) and safe.rejected == 1 and safe.t == 1


def test_the_trainer_rejects_a_nan_update_and_records_it(capsys, tmp_path, monkeypatch):
    from hessfree.curvature.problem import Problem

    real = Problem.value_and_grad
    calls = {"n": 0}

    def poisoned(self, params, batch):
        value, grad = real(self, params, batch)
        calls["n"] += 1
        return (value, grad * math.nan) if calls["n"] == 3 else (value, grad)

    monkeypatch.setattr(Problem, "value_and_grad", poisoned)
    path = train(capsys, tmp_path, "toy-quartic", "--optimizer", "nag", "--steps", 5)
    res = read_results(path)
    assert list(res.steps["accepted"]) == [True, True, False, True, True]
    assert res.steps["reason"][2] == "non-finite gradient"
    assert all(np.isfinite(v).all() for v in res.params("final").values())


def test_the_trainer_rejects_an_update_whose_loss_alone_is_not_finite(capsys, tmp_path,
                                                                      monkeypatch):
    """The momentum runner leaves rejection to the optimizer (``skip_non_finite``), which also
    rejects a non-finite loss with a finite gradient."""
    from hessfree.curvature.problem import Problem

    real = Problem.value_and_grad
    calls = {"n": 0}

    def poisoned(self, params, batch):
        value, grad = real(self, params, batch)
        calls["n"] += 1
        return (math.inf, grad) if calls["n"] == 2 else (value, grad)

    monkeypatch.setattr(Problem, "value_and_grad", poisoned)
    path = train(capsys, tmp_path, "toy-quartic", "--optimizer", "cm", "--steps", 4)
    res = read_results(path)
    assert list(res.steps["accepted"]) == [True, False, True, True]
    assert res.steps["reason"][1] == "non-finite gradient" and res.steps["loss"][1] == math.inf


# -- 11. λ has a maximum; no progress ends the run cleanly ------------------------------------
def test_a_converged_problem_ends_the_run_with_its_results(capsys, tmp_path):
    w = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)

    @experiments.register
    def exactly_linear():
        x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
        y = x @ w.float().T

        def model(s, g):
            m = nn.Linear(3, 1, bias=False)
            with torch.no_grad():
                m.weight.copy_(w)
            return m

        return experiments.Experiment(
            name="exactly-linear", description="at its optimum from the start",
            data=lambda s, seed: experiments.Dataset((x, y), (x, y)), model=model,
            loss=lambda s: hessfree.losses.MSE(),
            error=lambda m, b, s: float(((m(b[0]) - b[1]) ** 2).sum(1).mean()),
            error_name="squared error", settings={"hf": {"numchunks": 1}})

    path = train(capsys, tmp_path, "exactly-linear", "--optimizer", "hf", "--steps", 500,
                 "--dtype", "float64")
    res = read_results(path)
    assert res.attrs["status"].startswith("finished: ")
    assert len(res.steps["step"]) < 100 and "final" in res.param_sets
    assert res.steps["lambda_after"].max() <= hessfree.HFConfig().lambda_max


# -- 12. tracebacks that must be one-line errors ----------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["--eval-every", "0"], "--eval-every: expected an integer >= 1, got 0"),
    (["--checkpoint-every", "0"], "--checkpoint-every: expected an integer >= 1, got 0"),
    (["--checkpoint-minutes", "0"], "--checkpoint-minutes: expected a finite number > 0"),
    (["--seed", str(2**70)], "--seed: expected an integer in [0, "),
    (["--seed", "-1"], "--seed: expected an integer in [0, "),
    (["--save-quadratics-every", "0"], "--save-quadratics-every: expected an integer >= 1"),
])
def test_bad_intervals_and_seeds(capsys, tmp_path, argv, needle):
    code, _, err = run(capsys, "train", "toy-quartic", "--optimizer", "hf", "--steps", 1, *argv,
                       "--out", tmp_path)
    one_line_error(code, err, needle)


def test_save_quadratics_is_refused_for_momentum_methods(capsys, tmp_path):
    code, _, err = run(capsys, "train", "toy-quartic", "--optimizer", "nag", "--steps", 1,
                       "--save-quadratics-every", "1", "--out", tmp_path)
    one_line_error(code, err, "only HF builds quadratics")


@pytest.mark.parametrize("content", [b"garbage", b"PK\x03\x04 not a zip", b"12 not a number"])
def test_a_corrupt_checkpoint_is_a_clean_error(capsys, nag_run, content):
    nag_run.with_name("checkpoint.pt").write_bytes(content)
    code, _, err = run(capsys, "train", "--resume", nag_run.parent, "--steps", 9)
    one_line_error(code, err, "not a readable checkpoint")


def test_a_bad_json_attribute_is_a_clean_error(capsys, nag_run):
    with h5py.File(nag_run, "r+", locking=False) as f:
        f.attrs["config"] = "{not json"
    code, _, err = run(capsys, "report", nag_run)
    one_line_error(code, err, "attribute 'config' is not valid JSON")


def _delete(f, name):
    del f[name]


def _as_group(f, name):
    del f[name]
    f.create_group(name)


def _as_matrix(f, name):
    del f[name]
    f.create_dataset(name, data=np.zeros((3, 2)))


def _bad_fields(f, name):
    f[name.rsplit("/", 1)[0]].attrs["fields"] = "not JSON"


@pytest.mark.parametrize("damage, needle", [
    (_delete, "/steps/loss: the column is missing"),
    (_as_group, "/steps/loss: not a column"),
    (_as_matrix, "/steps/loss: not a column"),
    (_bad_fields, "/steps: attribute 'fields' is not a JSON list"),
])
@pytest.mark.parametrize("command", ["report", "plot", "resume"])
def test_a_missing_or_damaged_column_is_one_line(capsys, nag_run, tmp_path, damage, needle,
                                                 command):
    with h5py.File(nag_run, "r+", locking=False) as f:
        damage(f, "steps/loss")
    argv = {"report": ["report", nag_run],
            "plot": ["plot", nag_run, "--y", "loss", "--out", tmp_path / "p.png"],
            "resume": ["train", "--resume", nag_run.parent, "--steps", 9, "--quiet"]}[command]
    code, _, err = run(capsys, *argv)
    one_line_error(code, err, needle)
    assert str(nag_run) in err and "damaged" in err
    assert not (nag_run.parent / ".lock").exists()  # a refused resume lets go of the run


def test_a_column_a_file_never_had_is_skipped_or_named(capsys, nag_run, tmp_path):
    """A consistent file without a column (written by other code) plots what it has."""
    with h5py.File(nag_run, "r+", locking=False) as f:
        del f["eval/seconds"]
        fields = json.loads(f["eval"].attrs["fields"])
        f["eval"].attrs["fields"] = json.dumps([k for k in fields if k != "seconds"])
    code, out, err = run(capsys, "report", nag_run)
    assert code == 0, err
    code, _, err = run(capsys, "plot", nag_run, "--x", "seconds", "--out", tmp_path / "p.png")
    one_line_error(code, err, "no run has the fields to plot y='train_error' against "
                   "x='seconds'")
    code, _, err = run(capsys, "plot", nag_run, "--x", "steps", "--out", tmp_path / "p.png")
    assert code == 0, err


def test_compare_names_the_file_and_lists_saved_quadratics(capsys, tmp_path):
    path = train(capsys, tmp_path, "toy-quartic", "--optimizer", "hf", "--steps", 3,
                 "--save-quadratics-every", "2")
    code, _, err = run(capsys, "compare", f"{path}:quadratics/7")
    one_line_error(code, err, "saved quadratics: quadratics/0, quadratics/2")
    assert str(path) in err
    code, _, err = run(capsys, "compare", f"{path}:steps/loss")  # a dataset, not a group
    one_line_error(code, err, "no quadratic at 'steps/loss'")
    nag = train(capsys, tmp_path, "toy-quartic", "--optimizer", "nag", "--steps", 2)
    code, _, err = run(capsys, "compare", nag)
    one_line_error(code, err, "holds no saved quadratic")


def test_a_curvature_batch_of_the_wrong_width_is_a_clean_error():
    problem = hessfree.Problem(nn.Linear(3, 1), hessfree.losses.MSE())
    opt = hessfree.HessianFree(problem)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    with pytest.raises(InputError, match=r"the model failed on inputs of shape \[\(1, 5\)\]"):
        opt.step((x, y), (torch.randn(4, 5), torch.randn(4, 1)))


def test_an_internal_bug_keeps_its_traceback(capsys, tmp_path, monkeypatch):
    from hessfree.runs import runners

    def broken(self, on_quadratic=None):
        raise ValueError("an internal bug")

    monkeypatch.setattr(runners.MomentumRunner, "step", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["train", "toy-quartic", "--optimizer", "nag", "--steps", "2", "--out",
              str(tmp_path), "--quiet"])


# -- 13. small ones -----------------------------------------------------------------------------
def test_error_messages_keep_their_closing_quotes(capsys, tmp_path):
    code, _, err = run(capsys, "train", "toy-quartic", "--optimizer", "nag", "--steps", 1,
                       "--set", "lr=abc", "--out", tmp_path)
    one_line_error(code, err, "got 'abc'")
    code, _, err = run(capsys, "train", "nope", "--steps", 1, "--out", tmp_path)
    one_line_error(code, err, "unknown 'nope';")


def test_report_shows_updates_done_and_marks_killed_runs(capsys, nag_run):
    code, out, _ = run(capsys, "report", nag_run)
    row = next(line for line in out.splitlines() if "toy-quartic" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "finished" and cells[3] == "7" and cells[8] == "7"
    with h5py.File(nag_run, "r+", locking=False) as f:  # as a SIGKILL leaves it
        f.attrs["status"] = "running"
    code, out, _ = run(capsys, "report", nag_run)
    assert "unfinished (killed)" in out


def test_status_attribute_while_running_and_after(capsys, nag_run):
    attrs = read_results(nag_run).attrs
    assert attrs["status"] == "finished" and attrs["steps_done"] == 7
    assert json.loads(json.dumps(attrs["spec"]))["steps"] == 7


def test_a_setting_renamed_since_still_reads(capsys, tmp_path):
    """``check`` (the momentum-like HF's held-out ρ minibatch) is ``heldout_rho`` now: old
    results files and checkpoints, and ``--set check=...``, still read."""
    from hessfree.runs.settings import MomentumHFSettings, from_flat

    old = flat(MomentumHFSettings())
    old["check"] = old.pop("heldout_rho")
    assert not from_flat(MomentumHFSettings, {**old, "check": False}).heldout_rho
    path = train(capsys, tmp_path, "toy-quartic", "--optimizer", "hf-momentum", "--steps", 2,
                 "--set", "check=false")
    assert read_results(path).attrs["config"]["heldout_rho"] is False
    code, _, err = run(capsys, "train", "--resume", path.parent, "--steps", 3, "--quiet",
                       "--set", "check=false")
    assert code == 0, err
