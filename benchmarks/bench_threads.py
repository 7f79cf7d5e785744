"""Update, step and product times of the built-in experiments at 1 and 2 threads.

The measurements behind ``--threads auto`` (:mod:`hessfree.runs.threads`). For each workload
it alternates the thread counts repeat by repeat in one process (``torch.set_num_threads``), so
a change of the machine's load during the run falls on both alike, and prints the medians, the
ratio and the load average seen (before, during, after).

Workloads (the built-in experiments as ``hessfree train`` builds them, default settings):

* a NAG update (minibatch 200 on the autoencoders, 100 sequences on ``addition``);
* an HF step on ``curves-small`` (the demo's problem; Martens' settings);
* a GGN product on the HF curvature chunk (CURVES 5,000 cases, MNIST 7,500; ``addition``: 100
  sequences with structural damping);
* a gradient over the whole training set (``curves-ae``, 20,000 cases).

Commands (``benchmarks/RESULTS.md``, "Threads"):

    python benchmarks/bench_threads.py                  # the machine as it is (idle: a quiet one)
    python benchmarks/bench_threads.py --load 2         # 2 busy processes added: a loaded machine
    python benchmarks/bench_threads.py --quick          # a smoke test (seconds)

``--load K`` starts K processes that spin on the CPU for the whole measurement and stops them
at the end, so the loaded case can be measured on a quiet machine too. MNIST rows need the data
(``$HESSFREE_DATA``); they are skipped, with a line saying so, where it is missing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hessfree import batches
from hessfree.curvature import GGN
from hessfree.runs import experiments
from hessfree.runs.threads import cores, load
from hessfree.runs.trainer import RunSpec, _Run

THREADS = (1, 2)


def _spin() -> None:  # pragma: no cover - runs in the load processes
    while True:
        pass


def _run(experiment: str, optimizer: str, **overrides) -> _Run:
    """The run ``hessfree train`` would build (data, model, problem, runner), not started."""
    exp = experiments.get(experiment)
    data, opt = exp.settings_for(optimizer, overrides)
    spec = RunSpec(experiment=experiment, optimizer=optimizer, steps=1, quiet=True,
                   out=tempfile.gettempdir(), overrides=overrides)
    return _Run(spec, exp, data, opt)


def _update(experiment: str, optimizer: str, **overrides) -> Callable[[], None]:
    run = _run(experiment, optimizer, **overrides)
    return lambda: run.runner.step(None)


def _product(experiment: str, cases: int | None = None, **overrides) -> Callable[[], None]:
    run = _run(experiment, "hf", **overrides)
    s = run.opt_settings
    train = run.data.fresh(s.curv_cases or run.data.n_train, 0) if run.data.fresh else \
        run.data.train
    n = cases or batches.count(train[0]) // s.numchunks
    G = GGN(run.problem, batches.split(train, n)[0],
            structural_damping=s.config.structural_damping)
    v = torch.randn(G.dim, generator=torch.Generator().manual_seed(0))
    return lambda: G @ v


def _gradient(experiment: str) -> Callable[[], None]:
    run = _run(experiment, "hf")
    params = {k: p.detach() for k, p in run.model.named_parameters()}
    chunks = batches.split(run.data.train, run.opt_settings.grad_chunk)
    return lambda: run.problem.value_and_grad(params, chunks)


def workloads(quick: bool) -> list[tuple[str, Callable[[], Callable[[], None]], int]]:
    """(name, builder, repeats); the builder makes the timed function (set-up not timed)."""
    small = {"n_train": 2000} if quick else {}
    r = 3 if quick else 1
    return [
        ("NAG update, curves-ae (200 cases)", lambda: _update("curves-ae", "nag", **small),
         60 // r),
        ("NAG update, mnist-ae (200 cases)", lambda: _update("mnist-ae", "nag", **small),
         40 // r),
        ("NAG update, addition T = 80 (100 sequences)", lambda: _update("addition", "nag"),
         40 // r),
        ("HF step, curves-small (demo)", lambda: _update("curves-small", "hf"), 4 if quick else 8),
        ("GGN product, curves-ae curvature chunk", lambda: _product("curves-ae", **small),
         20 // r),
        ("GGN product, mnist-ae curvature chunk", lambda: _product("mnist-ae", **small),
         12 // r),
        ("GGN product, addition T = 80 (structural damping)", lambda: _product("addition"),
         20 // r),
        ("gradient, curves-ae training set", lambda: _gradient("curves-ae"), 1 if quick else 8),
    ]


def measure(fn: Callable[[], None], repeats: int) -> dict[int, float]:
    """Median seconds per call at each thread count, the counts alternating every repeat."""
    times: dict[int, list[float]] = {n: [] for n in THREADS}
    for n in THREADS:  # warm-up at each count (first-call costs, thread-pool start)
        torch.set_num_threads(n)
        fn()
    for _ in range(repeats):
        for n in THREADS:
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            fn()
            times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(t) for n, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--load", type=int, default=0, help="busy processes to start (default 0)")
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke test)")
    p.add_argument("--only", default="", help="run the workloads whose name contains this")
    p.add_argument("--json", help="also write the numbers to this file")
    a = p.parse_args()
    if os.environ.get("OMP_NUM_THREADS"):
        print(f"note: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} is set; this script sets "
              "the thread count itself for each measurement")
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(a.load)]
    for s in spinners:
        s.start()
    if spinners:
        time.sleep(5)  # let the load average see them
    before = load()
    rows = []
    try:
        for name, build, repeats in workloads(a.quick):
            if a.only and a.only not in name:
                continue
            try:
                fn = build()
            except (ValueError, OSError) as err:  # MNIST missing: skip, saying so
                print(f"skipped {name}: {err}")
                continue
            med = measure(fn, repeats)
            rows.append({"workload": name, "repeats": repeats, "load": load(),
                         **{f"seconds_{n}": med[n] for n in THREADS}})
            print(f"{name}: 1 thread {med[1] * 1e3:.1f} ms, 2 threads {med[2] * 1e3:.1f} ms "
                  f"(load {load():.1f})", flush=True)
    finally:
        for s in spinners:
            s.terminate()
    after = load()
    print(f"\n{cores()} cores; load average {before:.1f} before, {after:.1f} after; "
          f"{a.load} busy processes added; torch {torch.__version__}; "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| workload | 1 thread | 2 threads | 2 threads / 1 thread | load |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workload']} | {r['seconds_1'] * 1e3:.1f} ms | {r['seconds_2'] * 1e3:.1f} ms "
              f"| {r['seconds_2'] / r['seconds_1']:.2f} | {r['load']:.1f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"cores": cores(), "load_before": before,
                                            "load_after": after, "added_load": a.load,
                                            "date": time.strftime("%Y-%m-%d"), "rows": rows},
                                           indent=1))


if __name__ == "__main__":
    main()
