"""GGN products on the RNN of the pathological tasks (Martens & Sutskever 2011), by backend.

The ``addition`` experiment's model (100 tanh units, ESN init) on its HF curvature batch of 1000
sequences (T' = 88 steps for T = 80), float32. For each backend, with and without structural
damping (μ = 0.03): the operator's set-up and the median product ``(G + λI) v``, as ratios to a
gradient evaluation on the same batch. Tells which backend ``auto`` should pick for RNNs.

    python benchmarks/bench_rnn.py [--repeats 7] [--cases 1000] [--T 80]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import hessfree
from hessfree.runs import experiments


def median_seconds(f, repeats: int) -> float:
    """Median wall time of ``f()`` over ``repeats`` calls after one warm-up call."""
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--T", type=int, default=80)
    args = ap.parse_args()
    exp = experiments.get("addition")
    s = exp.settings_for("hf", {"T": str(args.T)})
    model = exp.model(s, torch.Generator().manual_seed(0))
    batch = exp.data(s, 0).fresh(args.cases, 1)
    problem = hessfree.Problem(model, exp.loss(s))
    params = problem.resolve_params()
    t_grad = median_seconds(lambda: problem.value_and_grad(params, batch), args.repeats)
    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores, "
          f"threads {torch.get_num_threads()}; inputs {tuple(batch[0].shape)}")
    print(f"gradient: {t_grad * 1e3:.1f} ms\n")
    print(f"{'backend':22s} {'mu':>5s} {'set-up':>10s} {'product':>10s} {'set-up/grad':>12s} "
          f"{'product/grad':>13s}")
    v = None
    for backend in ("double-backward", "forward", "auto"):
        for mu in (0.0, 0.03):
            t0 = time.perf_counter()
            G = hessfree.GGN(problem, batch, backend=backend, structural_damping=mu)
            t_setup = time.perf_counter() - t0
            v = torch.randn(G.dim, generator=torch.Generator().manual_seed(1)) if v is None else v
            D = G.damped(1.0)
            t_prod = median_seconds(lambda: D @ v, args.repeats)
            name = backend if backend != "auto" else f"auto={G.backend}"
            print(f"{name:22s} {mu:5.2f} {t_setup * 1e3:8.0f}ms {t_prod * 1e3:8.1f}ms "
                  f"{t_setup / t_grad:12.2f} {t_prod / t_grad:13.2f}")


if __name__ == "__main__":
    main()
