import datetime
import logging
import math
import os
import subprocess

import h5py
import numpy as np
import pytest
import torch

import hessfree
from hessfree.errors import InputError
from hessfree.hf.stats import StepStats
from hessfree.runs import results
from hessfree.runs.results import (
    SCHEMA_VERSION,
    ResultsError,
    ResultsWriter,
    list_runs,
    read_results,
)

ATTRS = {"experiment": "curves", "optimizer": "hf", "config": {"lr": 0.1, "layers": [784, 30]},
         "seed": 3, "device": "cpu", "dtype": "float32"}


def stats(i: int) -> StepStats:
    values = {}
    for k, t in StepStats.__annotations__.items():
        values[k] = {"float": 0.25 * i + 1e-17 * i, "int": 3 * i - 7, "bool": i % 2 == 0,
                     "str": f"reason {i} λ"}[t]
    values["loss_after"] = math.nan if i == 2 else -1.5 * i
    return StepStats(**values)


def nag_row(i: int) -> dict:
    return {"step": i, "loss": 1.0 / (i + 1), "mu": 0.9, "lr": 1e-3, "seconds": 0.01 * i}


def write_run(path, n_steps=5, n_evals=2, attrs=ATTRS, row=stats):
    with ResultsWriter(path, attrs) as w:
        for i in range(n_steps):
            w.append_step(row(i))
        for j in range(n_evals):
            w.append_eval({"step": j, "seconds": 0.5 * j, "train_error": 0.5 / (j + 1),
                           "test_error": 0.6 / (j + 1)})
    return path


# -- round trips -------------------------------------------------------------------------------
def test_steps_round_trip_every_dtype(tmp_path):
    res = read_results(write_run(tmp_path / "results.h5"))
    assert list(res.steps) == list(StepStats.field_names())
    for i in range(5):
        expected = stats(i).as_dict()
        for k, v in expected.items():
            got = res.steps[k][i]
            if isinstance(v, float) and math.isnan(v):
                assert math.isnan(got), k
            else:
                assert got == v and type(got.item() if hasattr(got, "item") else got) is type(v), k
    assert res.steps["rho"].dtype == np.float64 and res.steps["cg_iters"].dtype == np.int64
    assert res.steps["accepted"].dtype == np.bool_ and res.steps["reason"][3] == "reason 3 λ"
    with h5py.File(tmp_path / "results.h5") as f:
        assert h5py.check_string_dtype(f["steps/reason"].dtype).encoding == "utf-8"
        assert f["steps/loss_before"].maxshape == (None,) and f["steps/loss_before"].chunks


def test_eval_table_and_table_helper(tmp_path):
    res = read_results(write_run(tmp_path / "results.h5", n_evals=3))
    assert res.table("eval") is res.eval and res.table("steps") is res.steps
    np.testing.assert_array_equal(res.eval["train_error"], [0.5, 0.25, 0.5 / 3])
    assert list(res.eval) == ["step", "seconds", "train_error", "test_error"]
    with pytest.raises(InputError, match="table"):
        res.table("params")


def test_strings_unicode_and_empty(tmp_path):
    words = ["", "accepted", "négative curvature ∞", "x" * 500]
    with ResultsWriter(tmp_path / "r.h5", ATTRS) as w:
        for s in words:
            w.append_step({"reason": s})
    assert list(read_results(tmp_path / "r.h5").steps["reason"]) == words


def test_nag_rows_have_their_own_fields(tmp_path):
    res = read_results(write_run(tmp_path / "r.h5", row=nag_row, n_evals=0))
    assert list(res.steps) == ["step", "loss", "mu", "lr", "seconds"]
    np.testing.assert_array_equal(res.steps["loss"], [1.0 / (i + 1) for i in range(5)])
    assert res.eval == {}


def test_root_attributes(tmp_path):
    extra = {"note": "x", "ratio": 0.5, "flag": False, "n_train": np.int64(20000),
             "sizes": [1, 2, 3], "nothing": None, "nested": {"a": [1.5, "b"]}}
    res = read_results(write_run(tmp_path / "r.h5", attrs={**ATTRS, **extra}))
    a = res.attrs
    assert a["format"] == "hessfree.results" and a["schema_version"] == SCHEMA_VERSION == 2
    assert a["hessfree_version"] == hessfree.__version__ and a["torch_version"] == torch.__version__
    assert a["config"] == ATTRS["config"]
    assert (a["experiment"], a["optimizer"], a["seed"], a["device"]) == ("curves", "hf", 3, "cpu")
    assert a["note"] == "x" and a["ratio"] == 0.5 and a["flag"] is False and a["n_train"] == 20000
    assert a["sizes"] == [1, 2, 3] and a["nothing"] is None and a["nested"] == {"a": [1.5, "b"]}
    created = datetime.datetime.fromisoformat(a["created"])
    assert abs((datetime.datetime.now(datetime.timezone.utc) - created).total_seconds()) < 600
    assert "git_commit" not in a or len(a["git_commit"]) == 40


def test_string_attr_that_looks_like_json_stays_a_string(tmp_path):
    res = read_results(write_run(tmp_path / "r.h5", attrs={**ATTRS, "label": "[1, 2]"}))
    assert res.attrs["label"] == "[1, 2]"


def test_config_given_as_json_string(tmp_path):
    res = read_results(write_run(tmp_path / "r.h5", attrs={**ATTRS, "config": '{"a": 1}'}))
    assert res.attrs["config"] == {"a": 1}


def test_set_attrs_updates(tmp_path):
    with ResultsWriter(tmp_path / "r.h5", ATTRS) as w:
        w.set_attrs(status="running", stop={"reason": "steps"})
        w.set_attrs(status="done", stop="steps")
    a = read_results(tmp_path / "r.h5").attrs
    assert a["status"] == "done" and a["stop"] == "steps"


def test_uncommitted_rows_are_invisible(tmp_path):
    path = write_run(tmp_path / "r.h5", row=nag_row, n_evals=0)
    with h5py.File(path, "r+") as f:  # as if killed after writing rows 3 and 4, before counting
        f["steps"].attrs["n_rows"] = 3
    np.testing.assert_array_equal(read_results(path).steps["step"], [0, 1, 2])
    with ResultsWriter(path, mode="append") as w:
        assert w.n_rows() == 3
        w.append_step(nag_row(7))
    np.testing.assert_array_equal(read_results(path).steps["step"], [0, 1, 2, 7])


def test_damaged_tail_keeps_readable_prefix(tmp_path, caplog):
    path = tmp_path / "r.h5"
    with ResultsWriter(path, ATTRS) as w:
        for i in range(5):  # the last string gets its own heap collection at the end of the file
            w.append_step({"step": i, "reason": "r" * (10 if i < 4 else 100_000)})
    with open(path, "r+b") as f:  # superblock v0: end-of-file address at byte 40 (8 bytes)
        f.seek(40)
        eoa = int.from_bytes(f.read(8), "little")
        assert eoa == os.path.getsize(path)
        f.seek(40)
        f.write((eoa - 1000).to_bytes(8, "little"))  # as a kill inside a growing flush leaves it
    with caplog.at_level(logging.WARNING, logger="hessfree.runs.results"):
        res = read_results(path)
    assert "/steps/reason is readable up to row 4 of 5" in caplog.text
    np.testing.assert_array_equal(res.steps["step"], range(4))
    assert list(res.steps["reason"]) == ["r" * 10] * 4


def test_bad_attrs(tmp_path):
    with pytest.raises(TypeError, match="'model'"):
        ResultsWriter(tmp_path / "a.h5", {**ATTRS, "model": object()})
    with pytest.raises(ValueError, match="'schema_version'"):
        ResultsWriter(tmp_path / "b.h5", {**ATTRS, "schema_version": 7})
    with pytest.raises(ValueError, match=r"missing \['optimizer'\]"):
        ResultsWriter(tmp_path / "c.h5", {"experiment": "x"})
    with pytest.raises(ValueError, match="'config': a string config must be JSON"):
        ResultsWriter(tmp_path / "d.h5", {**ATTRS, "config": "lr=0.1"})
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_git_commit_is_silent_without_git(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    results.git_commit.cache_clear()
    monkeypatch.setattr(subprocess, "run", no_git)
    try:
        assert results.git_commit() is None
    finally:
        results.git_commit.cache_clear()


# -- params and quadratics ---------------------------------------------------------------------
def test_params_round_trip_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"encoder.0.weight": torch.randn(4, 3, generator=g),
               "encoder.0.bias": torch.randn(4, dtype=torch.float64, generator=g),
               "steps": torch.arange(5), "mask": torch.tensor([True, False]),
               "half": torch.randn(3, generator=g).bfloat16(), "arr": np.linspace(0, 1, 7)}
    with ResultsWriter(tmp_path / "r.h5", ATTRS) as w:
        w.save_params("final", tensors)
        w.save_params("checkpoint_3", {"w": torch.ones(2)})
    res = read_results(tmp_path / "r.h5")
    assert sorted(res.param_sets) == ["checkpoint_3", "final"]
    back = res.params("final")
    assert list(back) == list(tensors)
    for k, t in tensors.items():
        expected = t.float().numpy() if k == "half" else np.asarray(t)
        assert back[k].dtype == expected.dtype and np.array_equal(back[k], expected), k
    with h5py.File(tmp_path / "r.h5") as f:
        assert f["params/final/half"].attrs["torch_dtype"] == "bfloat16"
    with pytest.raises(ResultsError, match="checkpoint_9"):
        res.params("checkpoint_9")


def test_params_overwrite(tmp_path):
    with ResultsWriter(tmp_path / "r.h5", ATTRS) as w:
        w.save_params("final", {"a": torch.zeros(3), "b": torch.zeros(2)})
        w.save_params("final", {"a": torch.ones(3)})
        with pytest.raises(ValueError, match="'x/y'"):
            w.save_params("final", {"x/y": torch.ones(1)})
    res = read_results(tmp_path / "r.h5")
    assert res.param_sets == ["final"]
    back = res.params("final")
    assert list(back) == ["a"] and np.array_equal(back["a"], np.ones(3, np.float32))


def test_quadratic_group_round_trip(tmp_path):
    from hessfree.quadratic import Quadratic

    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    q = Quadratic.from_dense(A, torch.tensor([1.0, -1.0], dtype=torch.float64))
    with ResultsWriter(tmp_path / "r.h5", ATTRS) as w:
        w.quadratic_group(3).attrs["junk"] = 1
        q.save(w.quadratic_group(3))  # replaced: must be empty again
        q.save(w.quadratic_group(10))
    assert read_results(tmp_path / "r.h5").quadratics == ["3", "10"]
    with h5py.File(tmp_path / "r.h5") as f:
        back = Quadratic.load(f["quadratics/3"])
        assert "junk" not in f["quadratics/3"].attrs
    assert torch.equal(back.dense(), A)


# -- modes, resume -----------------------------------------------------------------------------
def test_new_refuses_existing_file(tmp_path):
    path = write_run(tmp_path / "results.h5")
    before = path.read_bytes()
    with pytest.raises(ResultsError, match="results.h5: a results file already exists"):
        ResultsWriter(path, ATTRS)
    assert path.read_bytes() == before


def test_append_missing_file_and_bad_mode(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        ResultsWriter(tmp_path / "nope.h5", mode="append")
    with pytest.raises(ValueError, match="mode"):
        ResultsWriter(tmp_path / "x.h5", ATTRS, mode="w")


def test_resume_continues_identical_trajectory(tmp_path):
    straight = read_results(write_run(tmp_path / "a.h5", n_steps=10, n_evals=0))
    path = tmp_path / "b.h5"
    with ResultsWriter(path, ATTRS) as w:  # run to step 8, checkpoint was at step 6 / eval 2
        for i in range(8):
            w.append_step(stats(i))
            if i % 3 == 0:
                w.append_eval({"step": i, "train_error": 1.0 / (i + 1)})
    with ResultsWriter(path, {"resumed": 1}, mode="append") as w:
        assert (w.n_rows("steps"), w.n_rows("eval")) == (8, 3)
        w.truncate(6, 2)
        for i in range(6, 10):
            w.append_step(stats(i))
            if i % 3 == 0:
                w.append_eval({"step": i, "train_error": 1.0 / (i + 1)})
    res = read_results(path)
    for k, col in straight.steps.items():
        np.testing.assert_array_equal(res.steps[k], col, err_msg=k)
    np.testing.assert_array_equal(res.eval["step"], [0, 3, 6, 9])
    assert res.attrs["resumed"] == 1 and res.attrs["config"] == ATTRS["config"]


def test_truncate_beyond_length(tmp_path):
    write_run(tmp_path / "r.h5")
    with ResultsWriter(tmp_path / "r.h5", mode="append") as w:
        with pytest.raises(ValueError, match="/steps: cannot truncate to 6 rows; it holds 5"):
            w.truncate(6, 0)


def test_uneven_columns_read_and_resume_to_shortest(tmp_path):
    path = write_run(tmp_path / "r.h5", row=nag_row, n_evals=0)
    with h5py.File(path, "r+") as f:  # as a run killed between two columns' writes can leave
        f["steps/loss"].resize((6,))
    assert len(read_results(path).steps["loss"]) == 5
    with ResultsWriter(path, mode="append") as w:
        assert w.n_rows() == 5
        w.append_step(nag_row(5))
    res = read_results(path)
    np.testing.assert_array_equal(res.steps["loss"], [1.0 / (i + 1) for i in range(6)])


# -- bad rows ----------------------------------------------------------------------------------
def test_bad_rows_name_the_fields(tmp_path):
    with ResultsWriter(tmp_path / "r.h5", ATTRS) as w:
        w.append_step(nag_row(0))
        bad = {**nag_row(1), "extra": 1.0}
        del bad["mu"]
        with pytest.raises(ValueError, match=r"/steps row 1.*missing \['mu'\].*\['extra'\]"):
            w.append_step(bad)
        with pytest.raises(TypeError, match="/steps/loss row 1: the column holds float, got str"):
            w.append_step({**nag_row(1), "loss": "1.0"})
        with pytest.raises(TypeError, match="/steps/step row 1: the column holds int"):
            w.append_step({**nag_row(1), "step": 1.5})
        with pytest.raises(TypeError, match="non-empty mapping"):
            w.append_step([1, 2])
        with pytest.raises(TypeError, match=r"/eval/x: expected float, int, bool or str"):
            w.append_eval({"x": [1.0]})
        w.append_step(nag_row(1))
    res = read_results(tmp_path / "r.h5")
    np.testing.assert_array_equal(res.steps["step"], [0, 1])
    assert res.eval == {}


def test_numpy_scalars_and_ints_in_float_columns(tmp_path):
    with ResultsWriter(tmp_path / "r.h5", ATTRS) as w:
        w.append_step({"loss": np.float32(0.5), "n": np.int64(2), "ok": np.bool_(True)})
        w.append_step({"loss": 3, "n": 4, "ok": False})
    s = read_results(tmp_path / "r.h5").steps
    assert list(s["loss"]) == [0.5, 3.0] and list(s["n"]) == [2, 4]
    assert list(s["ok"]) == [True, False]


# -- reading -----------------------------------------------------------------------------------
def test_newer_schema_version_is_refused(tmp_path):
    path = write_run(tmp_path / "r.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    newer = rf"r\.h5.*version {SCHEMA_VERSION + 1}.*upgrade the hessfree package"
    with pytest.raises(ResultsError, match=newer):
        read_results(path)
    with pytest.raises(ResultsError, match=f"version {SCHEMA_VERSION + 1}"):
        ResultsWriter(path, mode="append")


def test_not_a_results_file(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(ResultsError, match="other.h5: not a hessfree results file"):
        read_results(tmp_path / "other.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(ResultsError, match="text.h5: cannot open as HDF5"):
        read_results(tmp_path / "text.h5")
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        read_results(tmp_path / "missing.h5")


def test_list_runs_sorted_by_creation(tmp_path, caplog):
    order = ["zeta/hf-1", "alpha/nag-2", "mid/hf-3"]
    for k, name in enumerate(order):
        os.makedirs(tmp_path / name)
        opt = name.split("/")[1].split("-")[0]
        write_run(tmp_path / name / "results.h5", n_steps=k + 1, n_evals=k,
                  attrs={**ATTRS, "experiment": name.split("/")[0], "optimizer": opt})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.h5").write_text("not hdf5")
    with caplog.at_level(logging.WARNING, logger="hessfree.runs.results"):
        runs = list_runs(tmp_path)
    assert "broken" in caplog.text
    assert [str(r.path.relative_to(tmp_path).parent) for r in runs] == order
    assert [(r.experiment, r.optimizer, r.n_steps) for r in runs] == [
        ("zeta", "hf", 1), ("alpha", "nag", 2), ("mid", "hf", 3)]
    assert runs[0].final_train_error is None and runs[2].final_train_error == 0.25
    assert runs[0].created < runs[1].created < runs[2].created
    with pytest.raises(InputError, match="nowhere"):
        list_runs(tmp_path / "nowhere")


def test_exception_in_user_leaves_closed_readable_file(tmp_path):
    path = tmp_path / "r.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with ResultsWriter(path, ATTRS) as w:
            for i in range(3):
                w.append_step(stats(i))
            raise RuntimeError("boom")
    with pytest.raises(ResultsError, match="closed"):
        w.append_step(stats(3))
    with h5py.File(path, "r+"):  # nothing holds it open any more
        pass
    assert len(read_results(path).steps["step"]) == 3


def test_schema_written_in_module_docstring():
    doc = results.__doc__
    for part in ("schema_version", "/steps/<field>", "/eval/<field>", "/params/<name>",
                 "/quadratics/<k>", "json_attrs", "SIGKILL"):
        assert part in doc, part


def test_a_live_run_can_be_read_while_it_is_written(tmp_path):
    from hessfree.runs.results import ResultsWriter, read_results

    path = tmp_path / "live.h5"
    with ResultsWriter(path, {"experiment": "e", "optimizer": "o"}) as w:
        for k in range(3):
            w.append_step({"step": k, "loss": 1.0 / (k + 1)})
        r = read_results(path)  # the writer still holds the file open
        assert list(r.steps["step"]) == [0, 1, 2]
        w.append_step({"step": 3, "loss": 0.25})
    assert list(read_results(path).steps["step"]) == [0, 1, 2, 3]
