"""The command line end to end, in a temporary folder: train, compare, plot, report, errors."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from hessfree.runs.cli import main
from hessfree.runs.results import read_results

SMALL_AE = ["--set", "n_train=256", "--set", "n_test=64"]
SMALL_HF = SMALL_AE + ["--set", "grad_chunk=128", "--set", "cg_max_iters=8",
                       "--set", "initial_lambda=1.0"]
SMALL_RNN = ["--set", "T=20", "--set", "n_hidden=8", "--set", "grad_cases=64",
             "--set", "curv_cases=32", "--set", "cg_max_iters=8", "--set", "n_test=64",
             "--set", "n_train=64"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def train(capsys, tmp_path, *argv):
    out_arg = [] if "--resume" in argv else ["--out", tmp_path]  # a resumed run stays put
    code, out, err = run(capsys, "train", *argv, *out_arg, "--quiet")
    assert code == 0, err
    path = Path(out.strip().splitlines()[-1])
    assert path.is_file() and path.name == "results.h5"
    return path


def test_list(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    for name in ("curves-ae", "mnist-ae", "faces-ae", "addition", "memorization-20bit",
                 "mnist-mlp", "toy-quartic", "sequence-reversal"):
        assert name in out
    assert "hf, hf-momentum, nag, cm, sgd" in out


def test_train_curves_hf_and_nag_then_plot_and_report(capsys, tmp_path):
    hf = train(capsys, tmp_path, "curves-ae", "--optimizer", "hf", "--steps", 3,
               "--eval-every", 1, *SMALL_HF)
    nag = train(capsys, tmp_path, "curves-ae", "--optimizer", "nag", "--steps", 20,
                "--eval-every", 10, *SMALL_AE, "--set", "batch_size=32")
    r = read_results(hf)
    assert r.attrs["experiment"] == "curves-ae" and r.attrs["optimizer"] == "hf"
    assert len(r.steps["step"]) == 3 and list(r.eval["step"]) == [0, 1, 2, 3]
    assert np.all(np.isfinite(r.eval["train_error"]))
    assert r.eval["train_error"][-1] < r.eval["train_error"][0]
    assert set(r.params("final")) and r.attrs["status"] == "finished"
    n = read_results(nag)
    assert len(n.steps["step"]) == 20 and len(n.eval["step"]) == 3
    for x, y in (("steps", "train_error"), ("grad-equiv", "test_error"), ("seconds", "loss"),
                 ("steps", "lambda")):
        out_png = tmp_path / f"{x}-{y}.png"
        code, out, err = run(capsys, "plot", hf, nag, "--x", x, "--y", y, "--out", out_png)
        assert code == 0, err
        data = out_png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    code, out, _ = run(capsys, "report", hf, nag)
    assert code == 0 and "curves-ae" in out and "0.11" in out and "0.096" in out


def test_train_rnn_task_with_hf(capsys, tmp_path):
    path = train(capsys, tmp_path, "addition", "--optimizer", "hf", "--steps", 2,
                 "--eval-every", 2, *SMALL_RNN)
    r = read_results(path)
    assert len(r.steps["step"]) == 2 and 0 <= r.eval["train_error"][-1] <= 1
    assert np.all(r.steps["cg_iters"] > 0)


def test_saved_quadratic_and_compare(capsys, tmp_path):
    path = train(capsys, tmp_path, "curves-ae", "--optimizer", "hf", "--steps", 2,
                 "--save-quadratics-every", 1, *SMALL_HF)
    with h5py.File(path, "r") as f:
        assert sorted(f["quadratics"].keys(), key=int) == ["0", "1"]
    png = tmp_path / "cmp.png"
    code, out, err = run(capsys, "compare", f"{path}:quadratics/1", "--iters", 20, "--plot", png)
    assert code == 0, err
    assert "cg" in out and "nag" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_resume_gives_the_same_trajectory(capsys, tmp_path):
    args = ["toy-quartic", "--optimizer", "nag", "--eval-every", 2, "--checkpoint-every", 3]
    full = train(capsys, tmp_path / "a", *args, "--steps", 8)
    part = train(capsys, tmp_path / "b", *args, "--steps", 5)  # checkpoint at 3, end at 5
    resumed = train(capsys, tmp_path / "c", *args, "--steps", 8, "--resume", part.parent)
    assert resumed == part
    a, b = read_results(full), read_results(resumed)
    for k in a.steps:
        if k != "seconds":
            np.testing.assert_array_equal(a.steps[k], b.steps[k], err_msg=k)
    # the evaluation the interrupted run made at its end (step 5) is kept, the others agree
    assert list(b.eval["step"]) == [0, 2, 4, 5, 6, 8] and list(a.eval["step"]) == [0, 2, 4, 6, 8]
    keep = b.eval["step"] != 5
    np.testing.assert_array_equal(a.eval["train_error"], b.eval["train_error"][keep])
    for k, v in a.params("final").items():
        np.testing.assert_array_equal(v, b.params("final")[k])


def test_resume_hf_continues_from_its_checkpoint(capsys, tmp_path):
    args = ["curves-ae", "--optimizer", "hf-momentum", *SMALL_AE, "--set", "cg_max_iters=8",
            "--set", "initial_lambda=1.0", "--set", "batch_divisor=4",
            "--eval-every", 2, "--checkpoint-every", 2]
    full = train(capsys, tmp_path / "a", *args, "--steps", 4)
    part = train(capsys, tmp_path / "b", *args, "--steps", 3)
    train(capsys, tmp_path / "c", *args, "--steps", 4, "--resume", part)
    a, b = read_results(full), read_results(part)
    assert len(b.steps["step"]) == 4
    for k in ("loss", "lambda_after", "cg_iters", "rho"):
        np.testing.assert_array_equal(a.steps[k], b.steps[k], err_msg=k)


def test_killed_run_leaves_a_readable_file(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "hessfree", "train", "toy-quartic", "--optimizer", "sgd",
         "--steps", "10000000", "--eval-every", "1000", "--out", str(tmp_path), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    files = []
    while time.time() < deadline and not files:
        files = list(tmp_path.glob("*/*/results.h5"))
        time.sleep(0.2)
    time.sleep(1.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert files
    r = read_results(files[0])
    n = len(r.steps["step"])
    assert n > 10
    np.testing.assert_array_equal(r.steps["step"], np.arange(n))
    assert np.all(np.isfinite(r.steps["loss"]))


@pytest.mark.parametrize("argv,needle", [
    (["train", "nope"], "experiment: unknown 'nope'; valid: "),
    (["train", "toy-quartic", "--optimizer", "adam", "--steps", "1"], "--optimizer: expected"),
    (["train", "toy-quartic", "--steps", "1", "--set", "bogus=1"], "--set: unknown key(s)"),
    (["train", "toy-quartic", "--optimizer", "nag", "--steps", "1", "--set", "lr=fast"],
     "--set lr: expected float"),
    (["train", "toy-quartic", "--steps", "1", "--set", "lr"], "--set: expected KEY=VALUE"),
    (["train", "toy-quartic"], "budget: give --steps, --seconds or --budget"),
    (["train", "toy-quartic", "--steps", "1", "--device", "cuda"], "--device cuda"),
    (["train", "toy-quartic", "--steps", "1", "--dtype", "float16"], "--dtype"),
    (["plot", "missing.h5"], "results: no such file"),
    (["report", "missing.h5"], "results: no such file"),
    (["compare", "missing.h5"], "quadratic: no such file"),
    (["train", "toy-quartic", "--steps", "1", "--resume", "nowhere"],
     "--resume: no such run folder 'nowhere'"),
    (["train", "toy-quartic", "--steps", "1", "--resume", "."],
     "--resume: '.' is not a run folder (expected results.h5 and checkpoint.pt in '.')"),
])
def test_bad_input_one_line_exit_2(capsys, tmp_path, argv, needle):
    if "--device" in argv:
        import torch
        if torch.cuda.is_available():
            pytest.skip("CUDA present")
    code, out, err = run(capsys, *argv, *(["--out", tmp_path] if argv[0] == "train" else []))
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unreadable_results_file(capsys, tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file")
    code, _, err = run(capsys, "report", bad)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_momentum_like_runs_the_a6_phases(capsys, tmp_path):
    path = train(capsys, tmp_path, "curves-ae", "--optimizer", "hf-momentum", "--steps", 6,
                 *SMALL_AE, "--set", "batch_divisor=8", "--set", "cg_max_iters=3",
                 "--set", "minibatch_cg_steps=6", "--set", "full_cg_steps=10",
                 "--set", "full_cg_iters=5", "--set", "final_cg_steps=5",
                 "--set", "final_weight_decay=0", "--set", "initial_lambda=1.0",
                 "--set", "grad_chunk=100")
    r = read_results(path)
    assert list(r.steps["phase"]) == [0, 0, 1, 1, 2, 2]  # the last phase goes on past its end
    assert list(r.steps["cg_iters"]) == [3, 3, 5, 5, 5, 5]
    assert list(r.steps["cg_decay"]) == pytest.approx([0.95, 0.95] + [0.995] * 4)
    assert [p["name"] for p in r.attrs["phases"]["phases"]] == ["minibatch", "full", "final"]
    # minibatch of 256/8 = 32 cases (its gradient, then per-case gradients for the
    # preconditioner) and a check minibatch of 32 for ρ (its gradient), then the whole
    # training set for the gradient (in chunks)
    assert list(r.steps["grad_cases"][:2]) == [3 * 32, 3 * 32]
    assert all(c > 0 for c in r.steps["heldout_loss_before"][:2])
    assert all(g >= 256 for g in r.steps["grad_cases"][2:])


def test_user_registered_experiment(capsys, tmp_path):
    import torch
    from torch import nn

    import hessfree
    from hessfree.runs import experiments

    @experiments.register
    def tiny_regression():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 3, generator=g)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
        return experiments.Experiment(
            name="tiny-regression", description="user experiment",
            data=lambda s, seed: experiments.Dataset((x, y), (x, y)),
            model=lambda s, gen: nn.Linear(3, 1), loss=lambda s: hessfree.losses.MSE(),
            error=lambda m, b, s: float(((m(b[0]) - b[1]) ** 2).mean()), error_name="mse",
            settings={"data": {}, "nag": {"weight_decay": 0.0, "batch_size": 16, "lr": 0.05,
                                          "mu_max": 0.9, "final_mu": 0.9, "final_steps": 0}})

    assert "tiny-regression" in experiments.names()
    path = train(capsys, tmp_path, "tiny-regression", "--optimizer", "nag", "--steps", 60)
    r = read_results(path)
    assert r.eval["train_error"][-1] < 0.01 * r.eval["train_error"][0]


@pytest.mark.parametrize("budget", [["--seconds", "0.05"], ["--budget", "0.3"],
                                    ["--steps", "3"]])
def test_progress_bar_survives_an_overshot_budget(capsys, tmp_path, budget):
    """The last step passes the seconds/grad-equiv total; the bar (not quiet) must still close."""
    code, out, err = run(capsys, "train", "toy-quartic", "--optimizer", "nag", *budget,
                         "--out", tmp_path)
    assert code == 0, err
    path = Path(out.strip().splitlines()[-1])
    assert len(read_results(path).steps["step"]) >= 1
    assert "toy-quartic nag" in err  # the bar was drawn on stderr


def test_every_option_has_a_help_text_and_reproduce_shows_its_defaults():
    import argparse

    from hessfree.runs.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [(name, action.dest) for name, p in sub.choices.items() for action in p._actions
               if not action.help and not isinstance(action, argparse._HelpAction)]
    assert missing == []
    text = " ".join(sub.choices["reproduce"].format_help().split())
    for shown in ("(default: 0)", "(default: 1)", "(default: cpu)", "(default: float32)",
                  "(default: reproduce)", "(default: auto)", "(default: all)"):
        assert shown in text, shown
