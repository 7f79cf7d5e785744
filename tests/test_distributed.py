"""Data parallelism with real process groups: gloo on 127.0.0.1, processes started like torchrun.

Each rank is a separate Python process with torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Shards are uneven (N not a multiple of the world size).
Checked against one process on the joined batch: products, gradients, values and the EF diagonal
(float64, relative 1e-12, one all-reduce per product), HF and NAG trajectories through the
trainer (float64, 1e-9), resuming with another number of processes, and a killed rank ending the
run with a one-line error and a readable results file.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import hessfree
from hessfree.distributed import shard, shard_range
from hessfree.runs.results import read_results

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], world: int, cwd: Path, timeout: float = 300,
           kill_rank: int | None = None, kill_when=None) -> list[subprocess.CompletedProcess]:
    """Start ``world`` processes with torchrun's environment; wait for all of them."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, *argv], env=env, cwd=cwd,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    if kill_rank is not None:
        deadline = time.time() + timeout
        while not kill_when() and time.time() < deadline:
            time.sleep(0.05)
        procs[kill_rank].send_signal(signal.SIGKILL)
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


def test_shards_are_contiguous_uneven_and_cover_the_batch():
    for n, world in ((23, 2), (20, 3), (7, 7), (10, 4)):
        ranges = [shard_range(n, r, world) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1
    x = torch.arange(10.0).reshape(10, 1)
    parts = [shard([(x[:4], x[:4]), (x[4:], x[4:])], r, 3) for r in range(3)]
    joined = torch.cat([c[0] for p in parts for c in (p if isinstance(p, list) else [p])])
    assert torch.equal(joined, x)
    with pytest.raises(ValueError, match="cannot be shared by 4 ranks"):
        shard((x[:3], x[:3]), 0, 4)


@pytest.mark.parametrize("world, n", [(2, 23), (3, 20)])
def test_reduced_quantities_equal_the_joined_batch(tmp_path, world, n):
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from _dist_products import case, quantities, token_case, token_quantities
    from curvature_cases import TokenMSE

    done = launch([str(HERE / "_dist_products.py"), str(tmp_path), str(n), "7"], world,
                  tmp_path)
    assert all(p.returncode == 0 for p in done), [p.stderr[-3000:] for p in done]
    model, x, g = case(n, 7)
    problem = hessfree.Problem(model, hessfree.losses.BCEWithLogits(), weight_decay=1e-3)
    dim = sum(p.numel() for p in model.parameters())
    v = torch.randn(dim, generator=g, dtype=torch.float64)
    V = torch.randn(dim, 3, generator=g, dtype=torch.float64)
    ref = quantities(problem, (x, x), v, V)
    tmodel, tbatch, tv = token_case(n, 7)
    ref.update(token_quantities(hessfree.Problem(tmodel, TokenMSE(), weight_decay=1e-3),
                                tbatch, tv))
    for r in range(world):
        got = torch.load(tmp_path / f"rank{r}.pt")
        setup_calls, product_calls = got.pop("calls").tolist()
        assert setup_calls == 1 and product_calls == 1  # one all-reduce each
        for k, want in ref.items():
            assert got[k].shape == want.shape, k
            assert rel(got[k].double(), want.double()) < 1e-12, (k, rel(got[k], want))


def _train(tmp_path: Path, world: int, *args: str, timeout: float = 300):
    return launch(["-m", "hessfree", "train", *args, "--dtype", "float64", "--quiet"], world,
                  tmp_path, timeout=timeout)


def _results(tmp_path: Path, name: str) -> Path:
    (path,) = list(tmp_path.glob(f"runs/*/{name}/results.h5"))
    return path


SMALL = ["--set", "n_train=61", "--set", "n_test=16"]


@pytest.mark.parametrize("optimizer, steps, extra", [
    ("hf", 10, ["--set", "numchunks=2", "--set", "grad_chunk=25", "--set", "cg_max_iters=12"]),
    ("nag", 200, ["--set", "batch_size=29", "--set", "lr=0.05"]),
])
def test_hf_and_nag_trajectories_equal_one_process(tmp_path, optimizer, steps, extra):
    args = ["curves-ae", "--optimizer", optimizer, "--steps", str(steps), "--eval-every", "50",
            *SMALL, *extra, "--out", "runs"]
    one = _train(tmp_path, 1, *args, "--name", "one")
    two = _train(tmp_path, 2, *args, "--name", "two")
    assert all(p.returncode == 0 for p in one + two), [p.stderr[-3000:] for p in one + two]
    assert two[1].stdout.strip() == ""  # only rank 0 prints and writes
    a, b = read_results(_results(tmp_path, "one")), read_results(_results(tmp_path, "two"))
    assert b.attrs["world_size"] == 2 and b.attrs["backend"] == "gloo"
    assert a.attrs["world_size"] == 1
    for k in ("loss", "grad_equiv") + (("rho", "lambda_after", "cg_iters") if optimizer == "hf"
                                       else ("mu",)):
        np.testing.assert_allclose(b.steps[k], a.steps[k], rtol=1e-9, atol=1e-12, err_msg=k)
    for k, v in a.params("final").items():
        np.testing.assert_allclose(b.params("final")[k], v, rtol=1e-9, atol=1e-12, err_msg=k)


def test_resume_with_another_number_of_processes(tmp_path):
    args = ["curves-ae", "--optimizer", "hf-momentum", *SMALL, "--set", "batch_divisor=3",
            "--set", "cg_max_iters=6", "--eval-every", "2", "--checkpoint-every", "3"]
    ref = _train(tmp_path, 1, *args, "--steps", "6", "--out", "runs", "--name", "ref")
    part = _train(tmp_path, 2, *args, "--steps", "3", "--out", "runs", "--name", "part")
    assert all(p.returncode == 0 for p in ref + part), [p.stderr[-3000:] for p in ref + part]
    folder = _results(tmp_path, "part").parent
    more = launch(["-m", "hessfree", "train", "--resume", str(folder), "--steps", "6",
                   "--quiet"], 3, tmp_path)
    assert all(p.returncode == 0 for p in more), [p.stderr[-3000:] for p in more]
    a, b = read_results(_results(tmp_path, "ref")), read_results(folder / "results.h5")
    np.testing.assert_allclose(b.steps["loss"], a.steps["loss"], rtol=1e-9)
    assert [r["world_size"] for r in b.attrs["resumes"]] == [3]
    for k, v in a.params("final").items():
        np.testing.assert_allclose(b.params("final")[k], v, rtol=1e-9, atol=1e-12)


def test_a_killed_rank_ends_the_run_cleanly(tmp_path):
    args = ["curves-ae", "--optimizer", "nag", *SMALL, "--set", "batch_size=8",
            "--steps", "100000", "--eval-every", "10", "--checkpoint-every", "10",
            "--timeout", "30", "--out", "runs", "--name", "killed"]

    def started() -> bool:
        found = list(tmp_path.glob("runs/*/killed/results.h5"))
        if not found:
            return False
        try:
            return len(read_results(found[0]).steps.get("step", [])) >= 20
        except Exception:
            return False

    t0 = time.time()
    done = launch(["-m", "hessfree", "train", *args, "--dtype", "float64", "--quiet"], 2,
                  tmp_path, timeout=120, kill_rank=1, kill_when=started)
    assert time.time() - t0 < 100
    lead = done[0]
    assert lead.returncode == 2, lead.stderr[-3000:]
    err = lead.stderr.strip().splitlines()
    assert len(err) == 1 and "rank" in err[0] and "Traceback" not in lead.stderr
    res = read_results(_results(tmp_path, "killed"))
    assert len(res.steps["step"]) >= 20 and not res.attrs["status"].startswith("finished")
