"""Child process for tests/test_results_kill.py: appends rows until killed.

Usage: python _writer_child.py PATH SLEEP_SECONDS [CHUNK_ROWS] [MAX_ROWS]
Prints the number of completed (flushed) step rows after each one; stops after MAX_ROWS rows
if given (also used by tests/test_runs_faults.py as a live writer).
"""

import sys
import time

from hessfree.runs import results


def row(i: int) -> dict:
    return {"step": i, "loss": 0.5 * i, "accepted": i % 3 != 0, "reason": f"r{i}-ü" * (i % 4),
            "cg_iters": 2 * i}


def main() -> None:
    path, sleep = sys.argv[1], float(sys.argv[2])
    if len(sys.argv) > 3 and int(sys.argv[3]):
        results._CHUNK_ROWS = int(sys.argv[3])
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
    with results.ResultsWriter(path, {"experiment": "kill", "optimizer": "hf"}) as w:
        i = 0
        while limit is None or i < limit:
            w.append_step(row(i))
            if i % 5 == 0:
                w.append_eval({"step": i, "train_error": 1.0 / (i + 1)})
            i += 1
            print(i, flush=True)
            if sleep:
                time.sleep(sleep)


if __name__ == "__main__":
    main()
