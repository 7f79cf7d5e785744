"""Artifacts of runs (``hessfree artifact``): every table kept, read back equal, no machine path."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

from hessfree.errors import InputError
from hessfree.quadratic import Comparison
from hessfree.runs import evidence
from hessfree.runs.cli import main, reproduce_command
from hessfree.runs.results import read_results

SMALL_AE = ["--set", "n_train=200", "--set", "n_test=50", "--set", "numchunks=2"]
REPRODUCE = ["reproduce", "table1", "--fraction", "1e-5", "--experiments", "curves-ae",
             "--optimizers", "nag,hf", "--mu", "0.999", "--lrs", "0.01,0.005", "--seeds", "2",
             *SMALL_AE]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f":
        return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    return a.dtype == b.dtype and np.array_equal(a, b) if a.dtype.kind != "O" else \
        [str(x) for x in a] == [str(x) for x in b]


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """A Table 1 folder at a tiny fraction: NAG at two rates and HF*, two seeds each."""
    out = tmp_path_factory.mktemp("t1") / "runs"
    assert main([*REPRODUCE, "--out", str(out)]) == 0
    return out


def command(out):
    return "OMP_NUM_THREADS=1 hessfree " + " ".join(REPRODUCE[:-6]) + " " + " ".join(
        f"--set {s}" for s in SMALL_AE[1::2]) + f" --out {out.name}"


def test_the_artifact_of_a_reproduce_folder_keeps_its_tables(capsys, reproduced, tmp_path):
    art = tmp_path / "artifacts" / "t1"
    code, _, err = run(capsys, "artifact", reproduced, "--out", art, "--command",
                       command(reproduced), "--max-rows", "5")
    assert code == 0, err
    ev = evidence.read(art)
    assert ev.meta["finished"] == "6 of 6" and ev.finished == 6 and len(ev.planned) == 6
    assert ev.command.startswith("OMP_NUM_THREADS=1 hessfree reproduce table1")
    for path in sorted(reproduced.glob("*/*/results.h5")):
        res, mine = read_results(path), ev.run(f"curves-ae/{path.parent.name}")
        assert list(mine.eval) == list(res.eval)
        assert all(same(mine.eval[k], res.eval[k]) for k in res.eval)
        assert mine.attrs["seed"] == res.attrs["seed"] and mine.finished
        assert mine.attrs["config"] == json.loads(json.dumps(res.attrs["config"], default=str))
        st = res.steps
        assert mine.attrs["rows"] == len(st["step"])
        assert mine.attrs["not_accepted"] == int((~st["accepted"]).sum())
        assert mine.attrs["grad_equiv"] == pytest.approx(float(np.sum(st["grad_equiv"])))
        if len(st["step"]) <= 5:  # HF*: the whole step table
            assert list(mine.steps) == list(st)
            assert all(same(mine.steps[k], st[k]) for k in st)
        else:  # NAG: its counts
            assert mine.steps is None and mine.attrs["mu_max"] == float(np.max(st["mu"]))
    # the package's own summary, computed from the same runs
    with h5py.File(reproduced / "summary.h5", "r") as a, h5py.File(art / "summary.h5", "r") as b:
        assert np.array_equal(a["mean"][()], b["mean"][()], equal_nan=True)
        assert sorted(x.decode() for x in b["runs/path"][()]) == sorted(ev.runs)
    assert ev.summary()["cells"] == ["0.999N", "HF*"]
    theirs = (reproduced / "summary.md").read_text().replace("![curves-ae](curves-ae.png)\n", "")
    assert (art / "summary.md").read_text() == theirs
    for f in art.iterdir():  # no machine path anywhere
        assert str(reproduced.parent).encode() not in f.read_bytes(), f.name


def test_a_command_that_did_not_make_the_runs_is_refused(reproduced, tmp_path):
    other = command(reproduced).replace("0.01,0.005", "0.01")
    with pytest.raises(InputError, match="command: it plans 4 runs that differ from the 6"):
        evidence.build(reproduced, tmp_path / "a", other, plan=reproduce_command(other))
    with pytest.raises(InputError, match="lies inside the source folder"):
        evidence.build(reproduced, reproduced / "art", command(reproduced))
    assert reproduce_command("hessfree train curves-ae") is None
    assert reproduce_command("nice -n 10 " + command(reproduced))[0].table == "table1"
    with pytest.raises(InputError, match="command: expected"):
        evidence.build(reproduced, tmp_path / "b", " ")


def test_a_queued_run_is_an_artifact_of_its_plan_and_is_rebuilt_as_it_goes(
        capsys, reproduced, tmp_path):
    cmd = command(tmp_path / "not-yet")
    art = evidence.build(tmp_path / "not-yet", tmp_path / "art", cmd,
                         note="queued behind another run", plan=reproduce_command(cmd))
    ev = evidence.read(art)
    assert ev.runs == {} and ev.finished == 0 and len(ev.planned) == 6
    assert ev.meta["finished"] == "0 of 6" and not (art / "summary.h5").exists()
    assert ev.planned == [f"curves-ae/{j.name}" for j in reproduce_command(cmd)[1]]
    with pytest.raises(InputError, match="no summary.h5"):
        ev.summary()
    # later: the same artifact rebuilt from where the runs went, its command and note kept
    code, _, err = run(capsys, "artifact", reproduced, "--out", art)
    assert code == 0, err
    ev = evidence.read(art)
    assert ev.finished == 6 and ev.meta["note"] == "queued behind another run"
    assert ev.command == command(tmp_path / "not-yet")
    code, _, err = run(capsys, "artifact", reproduced, "--out", tmp_path / "new")
    assert code == 2 and "command: expected the command that made the runs" in err


def test_an_unfinished_run_is_kept_as_far_as_it_got(capsys, tmp_path):
    src = tmp_path / "runs"
    code, _, err = run(capsys, "train", "curves-ae", "--optimizer", "hf", "--steps", "2",
                       "--out", src, "--name", "hf", "--eval-every", "1", *SMALL_AE)
    assert code == 0, err
    with h5py.File(src / "curves-ae" / "hf" / "results.h5", "a") as f:
        f.attrs["status"] = "stopped: the machine was needed"  # as a stopped run records
    ev = evidence.read(evidence.build(src, tmp_path / "art", "hessfree train ..."))
    (r,) = ev.runs.values()
    assert not r.finished and r.status == "unfinished (stopped: the machine was needed)"
    assert ev.meta["finished"] == "0 of 1" and ev.planned == ["curves-ae/hf"]
    assert r.final("train_error") == r.eval["train_error"][-1]
    assert r.at("train_error", r.eval["grad_equiv"][1]) == r.eval["train_error"][1]
    with pytest.raises(InputError, match="no evaluation at or before"):
        r.at("train_error", -1.0)


def test_comparisons_and_texts_beside_the_runs_are_kept(capsys, tmp_path):
    src = tmp_path / "fig5"
    code, _, err = run(capsys, "train", "curves-ae", "--optimizer", "hf", "--steps", "2",
                       "--save-quadratics-every", "1", "--out", src, "--name", "hf", *SMALL_AE)
    assert code == 0, err
    code, stdout, err = run(capsys, "compare", f"{src}/curves-ae/hf/results.h5:quadratics/1",
                            "--iters", "12", "--save", src / "comparison.json")
    assert code == 0, err
    (src / "compare.txt").write_text(stdout)
    ev = evidence.read(evidence.build(src, tmp_path / "art", "hessfree compare ..."))
    record = ev.comparison()
    assert record == json.loads((src / "comparison.json").read_text())
    assert ev.texts["compare.txt"] == stdout
    back = Comparison.from_dict(record)
    assert back.iters == 12 and set(back.methods) == {"cg", "nag", "cm", "gd"}
    assert back.format() in stdout  # the same table, from the record alone
    assert all(math.isfinite(v) for v in back.values["cg"])
    with pytest.raises(InputError, match="no comparison"):
        ev.comparison("other.json")


def test_an_artifact_folder_must_be_one(tmp_path):
    with pytest.raises(InputError, match="has no ARTIFACT.json"):
        evidence.read(tmp_path)
    (tmp_path / "ARTIFACT.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(InputError, match="is not of format"):
        evidence.read(tmp_path)
