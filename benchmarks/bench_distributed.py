"""Data-parallel HF on this machine: one process against two (gloo), and the all-reduce's cost.

    python benchmarks/bench_distributed.py --steps 3 --cg 40

1. One HF step on ``curves-ae`` with Martens' batches (gradient on all 20,000 cases in chunks of
   5000, curvature on one fixed quarter, 5000 cases), ``--cg`` CG iterations exactly (so every
   configuration does the same work), float32: one process with one thread against two processes
   with one thread each (gloo on 127.0.0.1, started as torchrun starts them). Median step time,
   speed-up, and the share of a CG iteration spent in the all-reduce (timed inside the Reducer).
2. The all-reduce alone, two processes, for flat float32 vectors of the CURVES (842,340) and
   MNIST (2,837,314) autoencoders' parameter counts: median of repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CURVES_PARAMS, MNIST_PARAMS = 842_340, 2_837_314


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, args: list[str]) -> list[dict]:
    port = free_port()
    out = Path(tempfile.mkdtemp())
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", str(out), *args],
                                      env=env))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a worker failed (exit {p.returncode})")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def worker(folder: str, steps: int, cg: int, what: str, repeats: int) -> None:
    import torch.distributed as dist

    import hessfree
    from hessfree.distributed import Reducer, shard
    from hessfree.models.init import sparse_init_

    torch.set_num_threads(1)
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    if world > 1:
        dist.init_process_group("gloo")
    result: dict = {}
    if what == "allreduce":
        for name, n in (("curves", CURVES_PARAMS), ("mnist", MNIST_PARAMS)):
            buf = torch.randn(n)
            times = []
            for _ in range(repeats + 2):
                dist.barrier()
                t0 = time.perf_counter()
                dist.all_reduce(buf)
                times.append(time.perf_counter() - t0)
            result[name] = statistics.median(times[2:])
    else:
        model = sparse_init_(hessfree.models.curves_autoencoder(),
                             generator=torch.Generator().manual_seed(0))
        x, _ = hessfree.data.curves(n_train=20000, n_test=1, seed=0)
        group = "world" if world > 1 else None
        problem = hessfree.Problem(model, hessfree.losses.BCEWithLogits(), weight_decay=2e-5,
                                   group=group)
        grad = shard([(x[i:i + 5000], x[i:i + 5000]) for i in range(0, 20000, 5000)], rank,
                     world)
        curv = shard((x[:5000], x[:5000]), rank, world)
        cfg = hessfree.HFConfig.martens2010(cg_max_iters=cg, cg_fixed_iters=True,
                                            backtracking=False, line_search=False,
                                            reject_worse=False)
        opt = hessfree.HessianFree(problem, config=cfg)
        spent = {"allreduce_cg": 0.0}
        if group is not None:
            real = Reducer.sum_
            in_cg = {"on": False}

            def timed(self, buf):
                t0 = time.perf_counter()
                out = real(self, buf)
                if in_cg["on"]:
                    spent["allreduce_cg"] += time.perf_counter() - t0
                return out

            Reducer.sum_ = timed
            real_solve = hessfree.cg.solve

            def solve(*a, **kw):
                in_cg["on"] = True
                try:
                    return real_solve(*a, **kw)
                finally:
                    in_cg["on"] = False

            hessfree.hf.optimizer.cg.solve = solve
        step_s, cg_s, ar_s = [], [], []
        for _ in range(steps + 1):
            spent["allreduce_cg"] = 0.0
            if world > 1:
                dist.barrier()
            t0 = time.perf_counter()
            s = opt.step(grad, curv)
            step_s.append(time.perf_counter() - t0)
            cg_s.append(s.seconds_cg / max(s.cg_iters, 1))
            ar_s.append(spent["allreduce_cg"] / max(s.cg_iters, 1))
        result = {"step": statistics.median(step_s[1:]), "cg_iter": statistics.median(cg_s[1:]),
                  "allreduce_per_iter": statistics.median(ar_s[1:]), "cg_iters": s.cg_iters}
    Path(folder, f"rank{rank}.json").write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--cg", type=int, default=40)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--what", default="step", help=argparse.SUPPRESS)
    a, rest = p.parse_known_args()
    if a.worker:
        worker(a.worker, a.steps, a.cg, a.what, a.repeats)
        return
    one = launch(1, ["--steps", str(a.steps), "--cg", str(a.cg)])[0]
    two = launch(2, ["--steps", str(a.steps), "--cg", str(a.cg)])
    ar = launch(2, ["--what", "allreduce", "--repeats", str(a.repeats)])
    lead = two[0]
    print(f"torch {torch.__version__}, {os.cpu_count()} cores; curves-ae, gradient on 20000 "
          f"cases, curvature on 5000, {a.cg} CG iterations per step, float32; median of "
          f"{a.steps} steps after one warm-up")
    print("| configuration | HF step (s) | CG iteration (ms) | all-reduce per CG iteration (ms) "
          "| share |")
    print("|---|---:|---:|---:|---:|")
    print(f"| 1 process x 1 thread | {one['step']:.2f} | {1e3 * one['cg_iter']:.1f} | - | - |")
    share = lead["allreduce_per_iter"] / lead["cg_iter"]
    print(f"| 2 processes x 1 thread (gloo) | {lead['step']:.2f} | {1e3 * lead['cg_iter']:.1f} "
          f"| {1e3 * lead['allreduce_per_iter']:.2f} | {100 * share:.1f}% |")
    print(f"speed-up of an HF step: {one['step'] / lead['step']:.2f}x (target >= 1.6x); "
          f"all-reduce share of a CG iteration {100 * share:.1f}% (target <= 10%)")
    r = ar[0]
    print(f"all-reduce of a float32 vector, 2 processes, gloo on 127.0.0.1, median of "
          f"{a.repeats}: CURVES {CURVES_PARAMS:,} parameters ({4 * CURVES_PARAMS / 1e6:.1f} MB) "
          f"{1e3 * r['curves']:.2f} ms; MNIST {MNIST_PARAMS:,} ({4 * MNIST_PARAMS / 1e6:.1f} MB) "
          f"{1e3 * r['mnist']:.2f} ms")


if __name__ == "__main__":
    main()
