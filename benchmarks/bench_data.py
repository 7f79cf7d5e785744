"""Data-set speed and calibration: CURVES and FACES generation, MNIST loading, RNN batches.

Times are medians of repeats (wall clock, one process, torch's default threads). The
calibration section recomputes the check figures of docs/references.md for the generated sets:
CURVES' pixel statistics ([Data: CURVES]) and FACES' 30-D PCA test error ([Data: FACES]).

The data root is --root, else $HESSFREE_DATA, else the shared/data folder beside the repository.

    python benchmarks/bench_data.py [--repeats 5] [--root DIR] [--out benchmarks/results/data.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import hessfree.data as data
from hessfree._files import write_text
from hessfree.data.faces import FILTER, WINDOW

HERE = Path(__file__).resolve().parent


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls (the first, cold call included) and the last result."""
    times, result = [], None
    for _ in range(repeats):
        result = None  # free the previous result before the next call
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.double().clamp(1e-12, 1 - 1e-12)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def curves_figures(x_train: torch.Tensor, x_test: torch.Tensor) -> list[str]:
    x = x_train.double()
    return [
        f"| sum of per-pixel variances (train / test) | 16.9 | "
        f"{x.var(0, unbiased=False).sum():.2f} / "
        f"{x_test.double().var(0, unbiased=False).sum():.2f} |",
        f"| binary entropy of the mean image, nats | ≈ 124 | "
        f"{binary_entropy(x.mean(0)).sum():.1f} |",
        f"| mean per-image binary entropy, nats | ≤ 54.7 | "
        f"{binary_entropy(x).sum(1).mean():.1f} |",
    ]


def pca30_test_error(whole: torch.Tensor) -> float:
    """30-D PCA fitted on subjects 1-30, mean squared reconstruction error on 31-40."""
    train, test = whole[:124200].double(), whole[-41400:].double()
    mu = train.mean(0)
    _, vectors = torch.linalg.eigh((train - mu).T @ (train - mu) / len(train))
    top = vectors[:, -30:]
    residual = (test - mu) - (test - mu) @ top @ top.T
    return residual.pow(2).sum(1).mean().item()


def run(root: Path, repeats: int) -> tuple[list[str], list[str]]:
    rows, calibration = [], []
    seconds, (x_train, x_test) = median_time(lambda: data.curves(20000, 10000, seed=0), repeats)
    rows.append(f"| CURVES `curves(20000, 10000)` | 30,000 x 784 | {seconds:.2f} |")
    calibration += curves_figures(x_train, x_test)
    seconds, whole = median_time(lambda: data.faces("all", root), repeats)
    rows.append(f"| FACES `faces('all')` (incl. reading the .mat) | 165,600 x 625 | "
                f"{seconds:.2f} |")
    seconds, _ = median_time(lambda: data.faces("train", root, n=1000), repeats)
    rows.append(f"| FACES `faces('train', n=1000)` (whole-set statistics) | 1,000 x 625 | "
                f"{seconds:.2f} |")
    whole_var = whole.double().var(0, unbiased=False).mean().item()
    calibration += [
        f"| FACES 30-D PCA test error (subjects 31-40) | 135 (H&S 2006) | "
        f"{pca30_test_error(whole):.1f} |",
        f"| FACES average per-pixel variance (whole set) | 1 | {whole_var:.4f} |",
    ]
    del whole
    for check in (True, False):
        seconds, _ = median_time(lambda: data.mnist(root, check=check), repeats)
        rows.append(f"| MNIST `mnist(root, check={check})` (.gz) | 70,000 x 784 | {seconds:.2f} |")
    for task in ("addition", "temporal_order", "random_permutation", "memorization_20bit"):
        seconds, batch = median_time(lambda: data.pathological(task, 200, 1000, 0), repeats)
        shape = " x ".join(str(s) for s in batch[0].shape)
        rows.append(f"| `pathological('{task}', T=200, n=1000)` | {shape} | {seconds:.3f} |")
    return rows, calibration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "data.md")
    args = parser.parse_args()
    root = args.root or Path(os.environ.get("HESSFREE_DATA") or HERE.parents[1] / "shared" / "data")
    rows, calibration = run(root, args.repeats)
    command = "python benchmarks/bench_data.py " + " ".join(sys.argv[1:])
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Data sets: generation and loading times, calibration",
        "",
        f"Machine: {os.cpu_count()}-core CPU ({cpu}), no GPU; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}.",
        f"Command: `{command.strip()}` (medians of {args.repeats} repeats, wall clock).",
        "The machine is shared with other jobs; repeated runs differ by up to about 2x.",
        f"FACES defaults: filter={FILTER!r}, window={WINDOW} (see "
        "`hessfree.data.faces.WINDOW` for the choice).",
        "",
        "| what | size | seconds |",
        "| --- | --- | --- |",
        *rows,
        "",
        "## Calibration against docs/references.md [Data]",
        "",
        "| figure | target | ours |",
        "| --- | --- | --- |",
        *calibration,
        "",
    ]
    text = "\n".join(lines)
    print(text)
    write_text(args.out, text)


if __name__ == "__main__":
    main()
