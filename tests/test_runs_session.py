"""The run session: lock and writer owned by one context, a typed null writer off rank 0."""

from __future__ import annotations

import errno
import inspect
import os

import pytest
import torch

from hessfree.errors import RunError
from hessfree.runs import checkpoint
from hessfree.runs.checkpoint import CheckpointError
from hessfree.runs.lock import LockError, lock_holder
from hessfree.runs.results import ResultsError, ResultsWriter, read_results
from hessfree.runs.session import NullWriter, RunSession, Writer

ATTRS = {"experiment": "toy", "optimizer": "nag", "status": "running"}


def _public(cls) -> set[str]:
    return {n for n, v in vars(cls).items() if not n.startswith("_") and callable(v)}


def test_the_null_writer_is_the_writer_typed_and_answers_no_other_name():
    protocol = _public(Writer)
    assert protocol == _public(NullWriter)
    assert protocol <= _public(ResultsWriter)
    for name in protocol:  # same arguments as the real writer
        real = inspect.signature(getattr(ResultsWriter, name)).parameters
        null = inspect.signature(getattr(NullWriter, name)).parameters
        assert list(real) == list(null), name
    w = NullWriter(rank=3)
    w.append_step({"step": 0})
    w.set_attrs(status="x")
    assert w.n_rows("eval") == 0
    with pytest.raises(AttributeError):
        w.append_stpe({"step": 0})  # a typo is an error, not a silent no-op
    with pytest.raises(RunError, match="rank 3 has no results file"):
        w.quadratic_group(0)


def _create(tmp_path, name="run"):
    def make_folder():
        folder = tmp_path / name
        folder.mkdir()
        return folder
    return RunSession.create(make_folder, ATTRS)


def test_a_new_session_holds_the_lock_until_it_ends(tmp_path):
    with _create(tmp_path) as s:
        assert s.lead and isinstance(s.writer, ResultsWriter)
        assert lock_holder(s.folder)["pid"] == os.getpid()
        s.write_step(1, {"step": 0, "loss": 1.0})
        s.write_eval(1, {"step": 1, "train_error": 0.5})
        s.write_checkpoint(1, {"step": 1})
        s.write_params(1, "final", {"w": torch.ones(2)})
        s.finish(1, "finished")
    assert lock_holder(s.folder) is None
    with pytest.raises(ResultsError, match="closed"):
        s.writer.file  # noqa: B018 (closed with the session)
    res = read_results(s.path)
    assert res.attrs["status"] == "finished" and res.attrs["steps_done"] == 1
    assert len(res.steps["step"]) == 1 and "final" in res.param_sets
    assert checkpoint.load(s.checkpoint_path)["step"] == 1 and s.checkpoint_step == 1


def test_an_exception_inside_marks_the_run_stopped_and_lets_go(tmp_path):
    with pytest.raises(KeyboardInterrupt), _create(tmp_path) as s:
        s.write_step(1, {"step": 0, "loss": 1.0})
        raise KeyboardInterrupt
    res = read_results(s.path)
    assert res.attrs["status"] == "stopped: KeyboardInterrupt" and res.attrs["steps_done"] == 1
    assert lock_holder(s.folder) is None


def test_a_write_fault_names_its_stage_and_what_was_kept(tmp_path, monkeypatch):
    s = _create(tmp_path)
    with s:
        s.write_step(1, {"step": 0, "loss": 1.0})
        s.write_checkpoint(1, {"step": 1})

        def full(*a, **kw):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(ResultsWriter, "append_step", full)
        with pytest.raises(RunError) as info:
            s.write_step(2, {"step": 1, "loss": 1.0})
    msg = str(info.value)
    assert msg.startswith("writing the results failed at step 2 (No space left on device)")
    assert "the last checkpoint (step 1) and every committed row are kept" in msg
    assert f"--resume {s.folder}" in msg
    status = read_results(s.path).attrs["status"]
    assert status == "failed: writing the results (No space left on device)"
    assert lock_holder(s.folder) is None


def test_creation_fault_leaves_no_folder(tmp_path, monkeypatch):
    def full(self, attrs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(ResultsWriter, "_create", full)
    with pytest.raises(RunError, match="creating the results file .* failed .*nothing was "
                                       "written"):
        _create(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_reopen_cuts_rows_after_the_checkpoint_and_keeps_the_rest(tmp_path):
    with _create(tmp_path) as s:
        for k in range(5):
            s.write_step(k + 1, {"step": k, "loss": float(k)})
            s.write_eval(k + 1, {"step": k + 1, "train_error": 1.0 / (k + 1)})
    seen = {}

    def attrs(old):
        seen.update(old)
        return {"status": "running", "resumes": [{"at_step": 3}]}

    session, kept = RunSession.reopen(s.path, 3, 4, attrs)
    with session:
        assert kept == 4 and session.checkpoint_step == 3
        assert lock_holder(s.folder)["pid"] == os.getpid()
        with pytest.raises(LockError, match="being written by pid"):
            RunSession.reopen(s.path, 3, 4, attrs)  # one writer per run
    assert seen["experiment"] == "toy"
    res = read_results(s.path)
    assert list(res.steps["step"]) == [0, 1, 2] and len(res.eval["step"]) == 4
    assert res.attrs["resumes"] == [{"at_step": 3}] and lock_holder(s.folder) is None
    with pytest.raises(CheckpointError, match="is at step 9 but .* holds 3 committed steps"):
        RunSession.reopen(s.path, 9, 0, attrs)
    assert lock_holder(s.folder) is None


def test_off_rank_0_nothing_is_written(tmp_path):
    path = tmp_path / "results.h5"
    with RunSession(path, NullWriter(1), None, rank=1, checkpoint_step=None) as s:
        assert not s.lead
        s.write_step(1, {"step": 0})
        s.write_checkpoint(1, {"step": 1})
        s.finish(1, "finished")
    assert list(tmp_path.iterdir()) == [] and s.checkpoint_step is None
