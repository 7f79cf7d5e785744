"""A run killed with SIGKILL mid-write leaves a results file holding every completed row."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from hessfree.runs.results import ResultsWriter, read_results

sys.path.insert(0, str(Path(__file__).parent))
from _writer_child import row  # noqa: E402

CHILD = Path(__file__).with_name("_writer_child.py")
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def start(path, sleep, chunk_rows=None):
    args = [sys.executable, str(CHILD), str(path), str(sleep)]
    args += [] if chunk_rows is None else [str(chunk_rows)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_after(proc, rows):
    """SIGKILL ``proc`` once it reported ``rows`` completed rows; the last count it reported."""
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    last = 0
    try:
        for line in proc.stdout:
            last = int(line)
            if last >= rows:
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        watchdog.cancel()
        proc.wait()
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"child ended by itself: {err}"
    return last


def check_holds(path, completed):
    with open(path, "rb") as f:
        assert f.read(9)[8] == 0  # superblock version 0: no file-consistency flags to clear
    res = read_results(path)
    n = len(res.steps["step"])
    assert n >= completed
    for k in ("step", "loss", "accepted", "reason", "cg_iters"):
        np.testing.assert_array_equal(res.steps[k], [row(i)[k] for i in range(n)], err_msg=k)
    # the child evaluates after steps 0, 5, 10, ...: all of those it reported are in the file
    n_evals = len(res.eval["step"])
    assert len(range(0, completed, 5)) <= n_evals <= len(range(0, n, 5))
    np.testing.assert_array_equal(res.eval["step"], range(0, 5 * n_evals, 5))
    np.testing.assert_array_equal(res.eval["train_error"], 1.0 / (res.eval["step"] + 1))
    return n


def test_sigkill_at_several_moments_keeps_completed_rows_and_resumes(tmp_path):
    # two paced runs killed at different rows, and a tight loop (small chunks, so chunks and
    # string heaps are allocated all the time) killed while it is inside the writer
    plans = [(3, 0.002, None), (11, 0.002, None), (250, 0, 4)]
    procs = [(start(tmp_path / f"r{k}.h5", sleep, chunk), rows)
             for k, (rows, sleep, chunk) in enumerate(plans)]
    completed = [kill_after(p, rows) for p, rows in procs]
    for k, last in enumerate(completed):
        assert last >= plans[k][0]
        check_holds(tmp_path / f"r{k}.h5", last)
    path = tmp_path / "r1.h5"  # --resume from a checkpoint at step 5 in the killed file
    with ResultsWriter(path, {"status": "resumed"}, mode="append") as w:
        w.truncate(5, 1)
        for i in range(5, 14):
            w.append_step(row(i))
            if i % 5 == 0:
                w.append_eval({"step": i, "train_error": 1.0 / (i + 1)})
    assert check_holds(path, 14) == 14
    assert read_results(path).attrs["status"] == "resumed"
