"""Faults while a run writes: full disk and I/O errors at each stage, two writers, live readers.

Disk faults are injected by making the writer raise ``OSError(ENOSPC)`` or ``OSError(EIO)`` at
file creation, at a row write, at a checkpoint write and at the final-parameter write (no root
needed). After each: one line on stderr, exit code 2, every committed row and the previous
checkpoint intact, no temporary file left, the run marked unfinished — and ``--resume`` finishes
the run with the same rows an uninterrupted run writes.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hessfree.runs import checkpoint, results
from hessfree.runs.cli import main
from hessfree.runs.lock import LOCK_NAME, RunLock, lock_holder
from hessfree.runs.report import run_status
from hessfree.runs.results import ResultsWriter, read_results

ARGS = ["toy-quartic", "--optimizer", "nag", "--eval-every", "2", "--checkpoint-every", "3",
        "--quiet"]
ERRORS = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _fail_on(monkeypatch, target, name, at_call, code):
    """Make ``target.name`` raise OSError(code) on its ``at_call``-th call (1-based)."""
    real = getattr(target, name)
    calls = {"n": 0}

    def wrapper(*a, **kw):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise OSError(code, os.strerror(code))
        return real(*a, **kw)

    monkeypatch.setattr(target, name, wrapper)


def _only_run(tmp_path):
    runs = list((tmp_path / "toy-quartic").glob("*/results.h5"))
    assert len(runs) == 1
    return runs[0]


def _no_temporaries(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name == LOCK_NAME]


def _reference(capsys, tmp_path, steps=8):
    code, out, err = run(capsys, "train", *ARGS, "--steps", steps, "--out", tmp_path / "ref")
    assert code == 0, err
    return read_results(out.strip().splitlines()[-1])


def _resumes_to(capsys, path, ref, steps=8):
    """``--resume`` finishes the run with the rows of the uninterrupted reference."""
    code, _, err = run(capsys, "train", "--resume", path.parent, "--steps", steps, "--quiet")
    assert code == 0, err
    res = read_results(path)
    for k in ("step", "loss", "mu"):
        np.testing.assert_array_equal(res.steps[k], ref.steps[k], err_msg=k)
    assert res.attrs["status"] == "finished"


@pytest.mark.parametrize("kind", sorted(ERRORS))
def test_fault_at_creation_leaves_nothing(capsys, tmp_path, monkeypatch, kind):
    _fail_on(monkeypatch, ResultsWriter, "_create", 1, ERRORS[kind])
    code, out, err = run(capsys, "train", *ARGS, "--steps", 4, "--out", tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "creating the results file" in err
    assert not list((tmp_path / "toy-quartic").iterdir())  # no empty results.h5, no folder


@pytest.mark.parametrize("kind", sorted(ERRORS))
def test_fault_at_a_row_keeps_committed_rows_and_resumes(capsys, tmp_path, monkeypatch, kind):
    ref = _reference(capsys, tmp_path)
    _fail_on(monkeypatch, ResultsWriter, "append_step", 5, ERRORS[kind])  # step 5 (1-based)
    code, _, err = run(capsys, "train", *ARGS, "--steps", 8, "--out", tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "at step 5" in err and "checkpoint (step 3)" in err and "--resume" in err
    path = _only_run(tmp_path)
    res = read_results(path)
    assert len(res.steps["step"]) == 4  # the committed rows
    assert res.attrs["status"].startswith("failed") and "unfinished" in run_status(res)
    assert checkpoint.load(path.with_name("checkpoint.pt"))["step"] == 3
    assert _no_temporaries(path.parent) == []
    monkeypatch.undo()
    _resumes_to(capsys, path, ref)


def test_a_wall_clock_checkpoint_is_written_before_checkpoint_every(capsys, tmp_path,
                                                                   monkeypatch):
    """--checkpoint-minutes: a run of long steps is resumable long before --checkpoint-every
    steps (a checkpoint whenever either is due); with the default (10 minutes) these short
    steps checkpoint at the step count and the end only."""
    from hessfree.runs.session import RunSession

    seen: list[int] = []
    real = RunSession.write_checkpoint

    def spy(self, step, state):
        seen.append(step)
        return real(self, step, state)

    monkeypatch.setattr(RunSession, "write_checkpoint", spy)
    args = ["toy-quartic", "--optimizer", "nag", "--eval-every", "2", "--checkpoint-every",
            "50", "--steps", "6", "--quiet"]
    code, _, err = run(capsys, "train", *args, "--out", tmp_path / "default")
    assert code == 0, err
    assert seen == [6]  # only at the end: six fast steps are far from 10 minutes
    seen.clear()
    code, _, err = run(capsys, "train", *args, "--checkpoint-minutes", "1e-9", "--out",
                       tmp_path / "often")
    assert code == 0, err
    assert seen == [1, 2, 3, 4, 5, 6]  # every step ends a minute-interval here


def test_a_crash_before_checkpoint_every_resumes_from_the_wall_clock_checkpoint(
        capsys, tmp_path, monkeypatch):
    """The run that crashed at step 5 with --checkpoint-every 50 resumes from step 4 (its last
    wall-clock checkpoint) and writes the rows an uninterrupted run writes."""
    ref = _reference(capsys, tmp_path)
    _fail_on(monkeypatch, ResultsWriter, "append_step", 5, errno.EIO)  # step 5 (1-based)
    args = ["toy-quartic", "--optimizer", "nag", "--eval-every", "2", "--checkpoint-every",
            "50", "--checkpoint-minutes", "1e-9", "--quiet"]
    code, _, err = run(capsys, "train", *args, "--steps", 8, "--out", tmp_path)
    assert code == 2 and "checkpoint (step 4)" in err and "--resume" in err
    path = _only_run(tmp_path)
    assert checkpoint.load(path.with_name("checkpoint.pt"))["step"] == 4
    monkeypatch.undo()
    _resumes_to(capsys, path, ref)


@pytest.mark.parametrize("kind", sorted(ERRORS))
def test_fault_at_a_checkpoint_keeps_the_previous_one(capsys, tmp_path, monkeypatch, kind):
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *a, **kw):  # fails half-way through writing the second checkpoint
        calls["n"] += 1
        if calls["n"] == 2:
            Path(f).write_bytes(b"half a checkpoint")
            raise OSError(ERRORS[kind], os.strerror(ERRORS[kind]))
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    code, _, err = run(capsys, "train", *ARGS, "--steps", 8, "--out", tmp_path)
    assert code == 2 and "writing the checkpoint" in err and "Traceback" not in err
    path = _only_run(tmp_path)
    assert checkpoint.load(path.with_name("checkpoint.pt"))["step"] == 3
    assert _no_temporaries(path.parent) == []  # checkpoint.pt.tmp removed, lock released
    assert len(read_results(path).steps["step"]) == 6
    assert "unfinished" in run_status(read_results(path))


@pytest.mark.parametrize("kind", sorted(ERRORS))
def test_fault_at_the_final_parameters(capsys, tmp_path, monkeypatch, kind):
    _fail_on(monkeypatch, ResultsWriter, "save_params", 1, ERRORS[kind])
    code, _, err = run(capsys, "train", *ARGS, "--steps", 4, "--out", tmp_path)
    assert code == 2 and "writing the final parameters" in err
    path = _only_run(tmp_path)
    res = read_results(path)
    assert len(res.steps["step"]) == 4 and "final" not in res.param_sets
    assert "unfinished" in run_status(res)
    monkeypatch.undo()
    code, _, err = run(capsys, "train", "--resume", path.parent, "--steps", 4, "--quiet")
    assert code == 0, err
    assert "final" in read_results(path).param_sets


def test_second_writer_is_refused_while_the_first_writes(capsys, tmp_path):
    code, out, err = run(capsys, "train", *ARGS, "--steps", 3, "--out", tmp_path)
    folder = Path(out.strip().splitlines()[-1]).parent
    with RunLock(folder):  # another process writes this run
        code, _, err = run(capsys, "train", "--resume", folder, "--steps", 6, "--quiet")
        assert code == 2 and "being written by pid" in err and "Traceback" not in err
    assert lock_holder(folder) is None


@pytest.mark.slow
def test_two_resumes_of_one_run_one_is_refused_the_file_stays_whole(tmp_path):
    code = main(["train", *ARGS, "--steps", "3", "--out", str(tmp_path)])
    assert code == 0
    folder = _only_run(tmp_path).parent
    cmd = [sys.executable, "-m", "hessfree", "train", "--resume", str(folder), "--steps", "5000",
           "--eval-every", "1000", "--checkpoint-every", "1000", "--quiet"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while lock_holder(folder) is None and first.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 2 and "being written by pid" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    res = read_results(folder / "results.h5")
    assert len(res.steps["step"]) == 5000 and res.attrs["status"] == "finished"
    assert len(res.params("final")) == 1


def test_a_stale_lock_of_a_dead_process_is_removed(capsys, tmp_path, caplog):
    code, out, _ = run(capsys, "train", *ARGS, "--steps", 3, "--out", tmp_path)
    folder = Path(out.strip().splitlines()[-1]).parent
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import json
    import socket
    (folder / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                "started": "earlier"}))
    code, _, err = run(capsys, "train", "--resume", folder, "--steps", 5, "--quiet")
    assert code == 0, err
    assert "stale lock" in caplog.text
    assert len(read_results(folder / "results.h5").steps["step"]) == 5


def test_a_lock_from_another_host_says_how_to_proceed(capsys, tmp_path):
    code, out, _ = run(capsys, "train", *ARGS, "--steps", 3, "--out", tmp_path)
    folder = Path(out.strip().splitlines()[-1]).parent
    (folder / LOCK_NAME).write_text('{"pid": 1, "host": "elsewhere", "started": "t"}')
    code, _, err = run(capsys, "train", "--resume", folder, "--steps", 5, "--quiet")
    assert code == 2 and "cannot be checked" in err and f"delete {folder / LOCK_NAME}" in err


def test_reader_during_writes_sees_only_whole_rows(tmp_path, caplog):
    """A live run read many times while it writes: every read is whole, no warning is logged."""
    folder = tmp_path / "live"
    folder.mkdir()
    path = folder / "results.h5"
    child = subprocess.Popen([sys.executable, str(Path(__file__).parent / "_writer_child.py"),
                              str(path), "0", "64", "3000"], stdout=subprocess.PIPE,
                             text=True)
    with RunLock(folder):  # the child is the writer: mark the run live as the trainer would
        seen = []
        deadline = time.time() + 120
        while child.poll() is None and time.time() < deadline:
            if path.exists():
                try:
                    res = read_results(path)
                except results.ResultsError:
                    continue  # not yet a results file (being created)
                n = len(res.steps.get("step", []))
                assert all(len(v) == n for v in res.steps.values())
                np.testing.assert_array_equal(res.steps.get("step", []), np.arange(n))
                seen.append(n)
    child.wait(timeout=120)
    assert len(seen) > 3 and seen == sorted(seen)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
