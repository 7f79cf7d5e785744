"""Curvature-product speed and memory on the CURVES autoencoder (issue: foundation benchmark).

The model is Hinton & Salakhutdinov's CURVES autoencoder, 784-400-200-100-50-25-6-25-50-100-
200-400-784 (logistic hidden units, linear code, BCE-with-logits output), batch 1000, float32.
Times are medians of repeats, interleaved; everything is a ratio to one loss+gradient of the
same model in the same run. Peers (curvlinops, BackPACK) are timed when importable.

Like for like: a *cached* product reuses the forward pass (and what the backward needs) across
products, as HF's CG does; an *uncached* product pays the forward pass every time. The second
table sets each of ours against the peer's product of the same kind, in the same run:

- cached: ours (sequential, double-backward) against BackPACK's ``ggn_vector_product`` on a stored
  output and loss (its graph kept between products); curvlinops (3.0.1) has no option to keep its
  forward pass, so it has no cached row;
- uncached: ours with ``cache=False`` (double-backward) and a fresh operator per product
  (sequential: set-up + product) against curvlinops' ``GGNLinearOperator @ v`` (a forward pass in
  every product) and BackPACK with its forward pass redone per product.

Memory: each measurement runs in a fresh child process; peak RSS (VmHWM, reset through
/proc/self/clear_refs) minus the RSS before the operation, i.e. what the operation needs on top
of the model and the data. For the GGN this is the cached set-up plus one product.

    python benchmarks/bench_products.py [--repeats 15] [--batch 1000] [--no-memory] [--out F.md]

``--out`` writes the output, headed by its command line, as a committed artifact.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import hessfree


def setup(batch: int, seed: int = 0):
    torch.manual_seed(seed)
    model = hessfree.models.curves_autoencoder()
    x = torch.rand(batch, 784)
    problem = hessfree.Problem(model, hessfree.losses.BCEWithLogits())
    return model, x, problem


def peers(model: nn.Module, x: torch.Tensor, v: list[torch.Tensor]) -> dict[str, Callable]:
    """Peer products (curvlinops, BackPACK), each with the same loss (BCE, summed / N)."""
    out: dict[str, Callable] = {}
    plist = [p for p in model.parameters() if p.requires_grad]
    n = x.shape[0]
    try:
        from curvlinops import GGNLinearOperator

        lossf = nn.BCEWithLogitsLoss(reduction="sum")
        op = GGNLinearOperator(model, lossf, plist, [(x, x)], check_deterministic=False)
        flat = torch.cat([t.reshape(-1) for t in v])
        out[CURVLINOPS] = lambda: op @ flat
    except ImportError:
        pass
    try:
        from backpack.hessianfree.ggnvp import ggn_vector_product

        def loss_of(output: torch.Tensor) -> torch.Tensor:
            return nn.functional.binary_cross_entropy_with_logits(output, x, reduction="sum") / n

        output = model(x)
        loss = loss_of(output)
        out[BACKPACK] = lambda: ggn_vector_product(loss, output, model, v)

        def uncached() -> Any:
            fresh = model(x)
            return ggn_vector_product(loss_of(fresh), fresh, model, v)

        out[BACKPACK_UNCACHED] = uncached
    except ImportError:
        pass
    return out


OURS_SEQ = "GGN product, auto = sequential (cached)"
OURS_DB = "GGN product, double-backward (cached)"
OURS_UNCACHED = "GGN product, double-backward uncached (cache=False)"
OURS_FRESH = "GGN set-up + product, auto = sequential (uncached)"
CURVLINOPS = "curvlinops GGNLinearOperator @ v"
BACKPACK = "backpack ggn_vector_product (stored graph)"
BACKPACK_UNCACHED = "backpack forward + ggn_vector_product"
#: (kind, ours, peer): each of ours against the peer's product of the same kind
LIKE_FOR_LIKE = (("cached", OURS_SEQ, BACKPACK), ("cached", OURS_DB, BACKPACK),
                 ("uncached", OURS_FRESH, CURVLINOPS), ("uncached", OURS_UNCACHED, CURVLINOPS),
                 ("uncached", OURS_FRESH, BACKPACK_UNCACHED),
                 ("uncached", OURS_UNCACHED, BACKPACK_UNCACHED))


def like_for_like(t: dict[str, float], ref: float) -> list[str]:
    """The table of each of ours against the peer's product of the same kind."""
    lines = ["| kind | ours | ms | x gradient | peer | ms | x gradient | peer / ours |",
             "|---|---|---:|---:|---|---:|---:|---:|"]
    for kind, ours, peer in LIKE_FOR_LIKE:
        if ours in t and peer in t:
            lines.append(f"| {kind} | {ours} | {t[ours] * 1e3:.2f} | {t[ours] / ref:.2f} | "
                         f"{peer} | {t[peer] * 1e3:.2f} | {t[peer] / ref:.2f} | "
                         f"{t[peer] / t[ours]:.2f} |")
    if CURVLINOPS in t:
        lines.append(f"| (mixed: not like for like) | {OURS_SEQ} | {t[OURS_SEQ] * 1e3:.2f} | "
                     f"{t[OURS_SEQ] / ref:.2f} | {CURVLINOPS} | {t[CURVLINOPS] * 1e3:.2f} | "
                     f"{t[CURVLINOPS] / ref:.2f} | {t[CURVLINOPS] / t[OURS_SEQ]:.2f} |")
    return lines


def cases(model, x, problem) -> dict[str, Callable]:
    params = problem.parameters()
    batch = (x, x)
    G = hessfree.GGN(problem, batch)  # auto: the sequential backend for this model
    assert G.backend == "sequential", G.backend
    Gd = hessfree.GGN(problem, batch, backend="double-backward")
    Gf = hessfree.GGN(problem, batch, backend="forward")
    H = hessfree.Hessian(problem, batch)
    F = hessfree.EmpiricalFisher(problem, batch)
    v = torch.randn(G.dim)
    vl = list(G.layout.split(v).values())
    plist = list(params.values())

    def torch_grad():
        out = model(x)
        loss = nn.functional.binary_cross_entropy_with_logits(out, x, reduction="sum") / len(x)
        return torch.autograd.grad(loss, plist)

    Gu = hessfree.GGN(problem, batch, cache=False, backend="double-backward")
    c = {
        "loss+gradient (hessfree Problem.value_and_grad)": lambda: problem.value_and_grad(
            params, batch),
        "loss+gradient (plain torch autograd, F.bce_with_logits)": torch_grad,
        "GGN product, auto = sequential (cached)": lambda: G @ v,
        "GGN set-up, auto = sequential": lambda: hessfree.GGN(problem, batch, check=False),
        "GGN product, double-backward (cached)": lambda: Gd @ v,
        "GGN set-up, double-backward": lambda: hessfree.GGN(problem, batch, check=False,
                                                            backend="double-backward"),
        "GGN product, forward/linearize (cached)": lambda: Gf @ v,
        "GGN set-up, forward/linearize": lambda: hessfree.GGN(problem, batch, check=False,
                                                              backend="forward"),
        "GGN product, double-backward uncached (cache=False)": lambda: Gu @ v,
        OURS_FRESH: lambda: hessfree.GGN(problem, batch, check=False) @ v,
        "Hessian product, double-backward (cached)": lambda: H @ v,
        "Hessian set-up, double-backward": lambda: hessfree.Hessian(problem, batch, check=False),
        "EF product, auto = sequential (cached)": lambda: F @ v,
        "EF diagonal, Linear fast path": lambda: F.diagonal(method="linear"),
    }
    c.update(peers(model, x, vl))
    return c


def time_all(fns: dict[str, Callable], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():  # warm-up
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(t) for k, t in times.items()}


# -- memory: one child process per measurement ----------------------------------------------
def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def _memory_child(what: str, batch: int) -> None:
    model, x, problem = setup(batch)
    params = problem.parameters()
    v = torch.randn(sum(p.numel() for p in params.values()))
    if what == "curvlinops":
        from curvlinops import GGNLinearOperator
        op = GGNLinearOperator(model, nn.BCEWithLogitsLoss(reduction="sum"),
                               list(params.values()), [(x, x)], check_deterministic=False)
    base = _rss_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    if what == "gradient":
        problem.value_and_grad(params, (x, x))
    elif what == "ggn-sequential":
        G = hessfree.GGN(problem, (x, x), check=False)
        G @ v
    elif what == "ggn-double-backward":
        G = hessfree.GGN(problem, (x, x), check=False, backend="double-backward")
        G @ v
    elif what == "ggn-uncached":
        G = hessfree.GGN(problem, (x, x), check=False, cache=False, backend="double-backward")
        G @ v
    elif what == "ggn-forward":
        G = hessfree.GGN(problem, (x, x), check=False, backend="forward")
        G @ v
    elif what == "curvlinops":
        op @ v
    elif what == "backpack":
        from backpack.hessianfree.ggnvp import ggn_vector_product
        out = model(x)
        loss = nn.functional.binary_cross_entropy_with_logits(out, x, reduction="sum") / batch
        ggn_vector_product(loss, out, model, [torch.randn_like(p) for p in params.values()])
    peak = _rss_kb("VmHWM")
    print(json.dumps({"what": what, "peak_mb": (peak - base) / 1024}))


def memory(batch: int) -> dict[str, float]:
    res = {}
    for what in ("gradient", "ggn-sequential", "ggn-double-backward", "ggn-uncached", "ggn-forward",
                 "curvlinops", "backpack"):
        proc = subprocess.run([sys.executable, __file__, "--memory-child", what,
                               "--batch", str(batch)], capture_output=True, text=True)
        if proc.returncode == 0:
            res[what] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]
        else:
            res[what] = float("nan")
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-child", default=None)
    ap.add_argument("--out", default=None, help="also write the output to this file")
    args = ap.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child, args.batch)
        return
    lines = [f"Command: `python benchmarks/bench_products.py {' '.join(sys.argv[1:])}`", ""]
    model, x, problem = setup(args.batch)
    fns = cases(model, x, problem)
    t = time_all(fns, args.repeats)
    ref = t["loss+gradient (hessfree Problem.value_and_grad)"]
    lines += [f"CURVES autoencoder, {sum(p.numel() for p in model.parameters()):,} parameters, "
              f"batch {args.batch}, float32; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores; median of {args.repeats}", "",
              f"| {'operation':58s} | {'ms':>8s} | {'x gradient':>10s} |",
              f"|{'-' * 60}|{'-' * 10}|{'-' * 12}|"]
    lines += [f"| {k:58s} | {s * 1e3:8.2f} | {s / ref:10.2f} |" for k, s in t.items()]
    lines += ["", "Like for like (cached: the forward pass kept between products; uncached: "
              "redone in every product):", "", *like_for_like(t, ref)]
    if not args.no_memory:
        mem = memory(args.batch)
        g = mem["gradient"]
        lines += ["", f"| {'peak memory over model+data':30s} | {'MiB':>8s} | "
                  f"{'x gradient':>10s} |", f"|{'-' * 32}|{'-' * 10}|{'-' * 12}|"]
        lines += [f"| {k:30s} | {m:8.1f} | {m / g:10.2f} |" for k, m in mem.items()]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
