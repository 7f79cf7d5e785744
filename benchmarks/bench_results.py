"""Milliseconds to append (and flush) one ``StepStats``-shaped row to a results file.

python benchmarks/bench_results.py --rows 1000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hessfree.hf.stats import StepStats
from hessfree.runs.results import ResultsWriter


def row_write_ms(n: int = 1000) -> float:
    """Average milliseconds per appended and flushed row over ``n`` rows."""
    samples = {"float": 0.5, "int": 7, "bool": True, "str": "accepted"}
    row = {f: samples[str(t)] for f, t in StepStats.__annotations__.items()}
    with tempfile.TemporaryDirectory() as tmp:
        with ResultsWriter(Path(tmp, "results.h5"), {"experiment": "b", "optimizer": "hf"}) as w:
            w.append_step(row)  # creates the columns
            start = time.perf_counter()
            for _ in range(n):
                w.append_step(row)
            return (time.perf_counter() - start) / n * 1e3


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1000)
    print(f"{row_write_ms(p.parse_args().rows):.3f} ms per row")
