"""``hessfree demo`` end to end at a tiny budget: three runs, the quadratic comparison, files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hessfree.runs.cli import main
from hessfree.runs.results import read_results


def test_demo_writes_runs_table_and_figure(capsys, tmp_path):
    code = main(["demo", "--budget", "6", "--out", str(tmp_path), "--quiet",
                 "--set", "n_train=300", "--set", "n_test=100"])
    out, err = capsys.readouterr()
    assert code == 0, err
    (folder,) = list(tmp_path.glob("demo-*"))
    for opt in ("hf", "hf-momentum", "nag"):
        res = read_results(folder / "curves-small" / opt / "results.h5")
        assert res.attrs["status"].startswith("finished")
        assert res.eval["grad_equiv"][-1] >= 6  # equal cost: every budget spent
        assert res.eval["train_error"][-1] < res.eval["train_error"][0]
    assert read_results(folder / "curves-small" / "hf" / "results.h5").quadratics
    table = (folder / "demo.md").read_text()
    assert "| NAG (Eq. 3-5) |" in table and "| cg |" in table and "| nag |" in table
    assert (folder / "demo.png").read_bytes()[:4] == b"\x89PNG"
    assert "momentum-like HF (A.6)" in out


#: the check's peak memory must stay within this (an 8 GB laptop runs it beside the rest)
CHECK_PRODUCTS_RSS = 1.5 * 2**30

# VmHWM (the peak resident set of this process's memory since its exec), not ru_maxrss: Linux
# carries the parent's high-water mark across fork and exec into ru_maxrss, so a child of a
# large pytest process would report the parent's size
CHILD = """
import sys
from hessfree.runs.cli import main
code = main(["check-products", "--threads", "1"])
with open("/proc/self/status") as f:
    print("peak_rss_kb", next(ln.split()[1] for ln in f if ln.startswith("VmHWM:")))
sys.exit(code)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's VmHWM")
def test_check_products_passes_within_its_memory():
    """`hessfree check-products` in a process of its own: it passes, and its peak resident
    memory stays within 1.5 GiB — its dense reference is built a few cases at a time."""
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dense float64 reference" in done.stdout
    assert "between cases: largest entry 0.0e+00" in done.stdout
    peak = int(done.stdout.split("peak_rss_kb")[1].split()[0]) * 1024
    assert peak <= CHECK_PRODUCTS_RSS, f"peak RSS {peak / 2**30:.2f} GiB"


def _demo_in_subprocess(tmp_path, name, env):
    """The scaled demo as a user runs it (a fresh process); its stdout table and comparison."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / name
    done = subprocess.run(
        [sys.executable, "-m", "hessfree", "demo", "--budget", "8", "--out", str(out), "--quiet",
         "--set", "n_train=300", "--set", "n_test=100"],
        capture_output=True, text=True, check=False, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    (folder,) = list(out.glob("demo-*"))
    table = [line for line in done.stdout.splitlines() if str(out) not in line]
    return table, json.loads((folder / "comparison.json").read_text())


@pytest.mark.slow
def test_demo_prints_the_same_numbers_run_to_run(tmp_path):
    """Two runs of one command give the same printed table and the same q(x_k), bit for bit.

    The second process gets another thread count in its environment and another hash seed:
    the demo pins its threads (``--threads``, default 1) and nothing may depend on set order.
    """
    first, cmp1 = _demo_in_subprocess(tmp_path, "a", {"OMP_NUM_THREADS": "2",
                                                      "PYTHONHASHSEED": "1"})
    second, cmp2 = _demo_in_subprocess(tmp_path, "b", {"OMP_NUM_THREADS": "1",
                                                       "PYTHONHASHSEED": "2"})
    assert any(line.startswith("| NAG (Eq. 3-5) |") for line in first)
    assert any(line.startswith("| cg |") for line in first)
    assert first == second
    assert cmp1["values"] == cmp2["values"] and cmp1["q_star"] == cmp2["q_star"]
    assert "seconds" not in "\n".join(first)  # times are in demo.md, not in the printed table
