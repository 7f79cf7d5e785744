"""Results files written by an earlier hessfree still read, report, plot and resume.

``fixtures/runs-0081983/nag`` was written by hessfree at commit 0081983 (before the family
registry and the run session) with::

    hessfree train toy-quartic --optimizer nag --steps 4 --checkpoint-every 2 --eval-every 2 \\
        --dtype float64 --name nag

(its columns then copied with gzip compression, to keep the file small; the layout is as
written). Resumed to 6 steps by today's code, it must hold exactly the rows of an uninterrupted
6-step run of today's code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from hessfree.runs.cli import main
from hessfree.runs.results import read_results

OLD = Path(__file__).resolve().parent / "fixtures" / "runs-0081983" / "nag"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_an_old_run_reads_reports_plots_and_resumes_as_if_never_stopped(capsys, tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(OLD, folder)
    old = read_results(folder / "results.h5")
    assert old.attrs["git_commit"].startswith("0081983") and len(old.steps["step"]) == 4
    code, out, err = run(capsys, "report", folder / "results.h5")
    assert code == 0 and "| toy-quartic | nag | finished | 4 |" in out, err
    code, out, err = run(capsys, "plot", folder / "results.h5", "--out", tmp_path / "p.png")
    assert code == 0 and (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG", err
    code, _, err = run(capsys, "train", "--resume", folder, "--steps", 6, "--quiet")
    assert code == 0, err
    code, out, err = run(capsys, "train", "toy-quartic", "--optimizer", "nag", "--steps", 6,
                         "--checkpoint-every", 2, "--eval-every", 2, "--dtype", "float64",
                         "--quiet", "--out", tmp_path / "new")
    assert code == 0, err
    resumed, fresh = read_results(folder / "results.h5"), read_results(out.strip())
    for table in ("steps", "eval"):
        a, b = resumed.table(table), fresh.table(table)
        assert list(a) == list(b)
        for k in a:
            if not k.startswith("seconds"):
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{table}/{k}")
    for k, v in fresh.params("final").items():
        np.testing.assert_array_equal(resumed.params("final")[k], v, err_msg=k)
    assert resumed.attrs["status"] == "finished" and resumed.attrs["resumes"][0]["at_step"] == 4
