"""Host syncs per HF step: how often a step reads a tensor's value back to Python.

On a GPU each such read (``.item()``, ``float(t)``, ``bool(t)``, ``int(t)``, ``.tolist()``,
``.numpy()``) waits for the device to finish everything queued; on the CPU it costs nothing
measurable, but the count is the same, so it is counted here by wrapping those methods of
``torch.Tensor`` during the steps (nothing else is changed). CG's two reads per iteration are
inherent to the algorithm (``pᵀAp`` before the update, then ``rᵀz`` and ``φ``); the count is
split into those and the rest of the step.

Cases (float64, seeded, a few steps after a first one; medians over the steps):

* ``martens``: Martens' HF on an autoencoder like the CURVES one (784-400-200-100-30 and back,
  smaller than the paper's so that it runs in seconds), gradient on 2 chunks of 256 cases, the
  curvature on 128 of them, CG capped at ``--cg`` iterations;
* ``momentum-like``: the momentum-like HF on minibatches of 128 cases with a check batch
  (HFConfig.momentum_like(), 20 CG iterations).

    python benchmarks/count_syncs.py [--steps 4] [--cg 20]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections import Counter
from collections.abc import Iterator

import torch
from torch import nn

import hessfree
from hessfree.hf import HessianFree, HFConfig

_METHODS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def counting(counter: Counter) -> Iterator[None]:
    """Count reads of tensor values (by method) while the block runs."""
    saved = {m: getattr(torch.Tensor, m) for m in _METHODS}

    def wrap(name: str, fn):
        def read(self, *args, **kwargs):
            counter[name] += 1
            return fn(self, *args, **kwargs)
        return read

    try:
        for m, fn in saved.items():
            setattr(torch.Tensor, m, wrap(m, fn))
        yield
    finally:
        for m, fn in saved.items():
            setattr(torch.Tensor, m, fn)


def autoencoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # the initial weights
    sizes = [784, 400, 200, 100, 30, 100, 200, 400, 784]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 and b != 30:
            layers.append(nn.Sigmoid())
    return nn.Sequential(*layers).double()


def steps(name: str, opt: HessianFree, batches, n: int) -> list[tuple[int, int, int]]:
    """``(syncs, cg_iters, objective evaluations)`` of ``n`` steps after a first one."""
    out = []
    for k in range(n + 1):
        grad, curv, check = batches(k)
        counter: Counter = Counter()
        with counting(counter):
            stats = opt.step(grad, curv, heldout_batch=check)
        if k:
            out.append((sum(counter.values()), stats.cg_iters, stats.forwards))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--cg", type=int, default=20)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(512, 784, generator=g, dtype=torch.float64)
    loss = hessfree.losses.BCEWithLogits()

    results = {}
    problem = hessfree.Problem(autoencoder(), loss, weight_decay=2e-5)
    opt = HessianFree(problem, config=HFConfig.martens2010(cg_max_iters=args.cg))
    chunks = [(x[:256], x[:256]), (x[256:], x[256:])]
    results["martens"] = steps("martens", opt, lambda k: (
        chunks, (x[128 * (k % 4):128 * (k % 4 + 1)],) * 2, None), args.steps)

    problem = hessfree.Problem(autoencoder(), loss, weight_decay=2e-5)
    opt = HessianFree(problem, config=HFConfig.momentum_like(cg_max_iters=args.cg,
                                                             initial_lambda=1.0))
    results["momentum-like"] = steps("momentum-like", opt, lambda k: (
        (x[128 * (k % 4):128 * (k % 4 + 1)],) * 2, None,
        (x[128 * ((k + 1) % 4):128 * ((k + 1) % 4 + 1)],) * 2), args.steps)

    print(f"host syncs per HF step (median of {args.steps} steps after the first; "
          f"torch {torch.__version__})")
    print("| case | syncs per step | CG iterations | CG's own (2 per iteration) | the rest "
          "| objective evaluations |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        syncs = statistics.median(s for s, _, _ in rows)
        iters = statistics.median(i for _, i, _ in rows)
        rest = statistics.median(s - 2 * i for s, i, _ in rows)
        evals = statistics.median(e for _, _, e in rows)
        print(f"| {name} | {syncs:g} | {iters:g} | {2 * iters:g} | {rest:g} | {evals:g} |")
    for name, rows in results.items():
        print(f"{name}: (syncs, CG iterations, evaluations) per step: {rows}")


if __name__ == "__main__":
    main()
