"""Fingerprint of training trajectories, to check that a refactor changes no number.

Runs every optimizer on ``toy-quartic`` and a few steps of HF / momentum-like HF / NAG on a
small ``curves-ae`` and ``addition`` in float64, and HF and NAG on ``curves-ae`` with two
processes (gloo on 127.0.0.1, started as torchrun starts them: uneven shards, one all-reduce per
reduction), and writes every step and evaluation row (timings dropped) and a hash of the final
parameters to a JSON file. Two such files from before and after a change must be identical
(``--compare OLD.json``).

    python benchmarks/trajectories.py --out before.json
    python benchmarks/trajectories.py --out after.json --compare before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from hessfree.runs.cli import main as cli
from hessfree.runs.results import RENAMED_COLUMNS, read_results

SMALL_AE = ["--set", "n_train=512", "--set", "n_test=128"]
RUNS = {
    **{f"toy-quartic/{o}": ["toy-quartic", "--optimizer", o, "--steps", "30", "--eval-every", "5"]
       + (["--set", "check=false"] if o == "hf-momentum" else [])  # one case: no held-out one
       for o in ("hf", "hf-momentum", "nag", "cm", "sgd")},
    "curves-ae/hf": ["curves-ae", "--optimizer", "hf", "--steps", "4", "--eval-every", "2",
                     *SMALL_AE, "--set", "grad_chunk=256", "--set", "cg_max_iters=20"],
    "curves-ae/hf-momentum": ["curves-ae", "--optimizer", "hf-momentum", "--steps", "8",
                              "--eval-every", "4", *SMALL_AE, "--set", "minibatch_cg_steps=250",
                              "--set", "full_cg_steps=20", "--set", "full_cg_iters=10",
                              "--set", "decay_switch=3", "--set", "lr_origin=3",
                              "--set", "lr_begin=3", "--set", "final_cg_steps=30"],
    # the measurement switches off the presets' paths: ρ before backtracking, the curvature
    # batch for backtracking and the preconditioner, a fixed rate judged on the curvature batch
    "curves-ae/hf-switches": ["curves-ae", "--optimizer", "hf", "--steps", "4", "--eval-every",
                              "2", *SMALL_AE, "--set", "grad_chunk=256", "--set",
                              "cg_max_iters=20", "--set", "backtrack_batch=curvature", "--set",
                              "precond_batch=curvature", "--set", "rho_after_backtracking=false",
                              "--set", "line_search=false", "--set", "learning_rate=0.9",
                              "--set", "rho_damped=true"],
    # a fixed rate judged on the check batch (too large: some steps are rejected)
    "curves-ae/hf-momentum-fixed": ["curves-ae", "--optimizer", "hf-momentum", "--steps", "6",
                                    "--eval-every", "3", *SMALL_AE, "--set",
                                    "minibatch_cg_steps=250", "--set", "cg_max_iters=10",
                                    "--set", "line_search=false", "--set",
                                    "reject_on_heldout=true", "--set", "learning_rate=3.0",
                                    "--set", "lr_origin=100", "--set", "lr_begin=100"],
    "curves-ae/nag": ["curves-ae", "--optimizer", "nag", "--steps", "50", "--eval-every", "25",
                      *SMALL_AE, "--set", "batch_size=64"],
    "addition/hf": ["addition", "--optimizer", "hf", "--steps", "2", "--eval-every", "1",
                    "--set", "T=20", "--set", "n_hidden=8", "--set", "grad_cases=64",
                    "--set", "curv_cases=32", "--set", "cg_max_iters=8", "--set", "n_test=64",
                    "--set", "n_train=64"],
    # HF-RNN's first-decrease search and its backtracking on the gradient batch
    "addition/hf-gradient-search": ["addition", "--optimizer", "hf", "--steps", "2",
                                    "--eval-every", "1", "--set", "T=20", "--set", "n_hidden=8",
                                    "--set", "grad_cases=64", "--set", "curv_cases=32", "--set",
                                    "cg_max_iters=8", "--set", "n_test=64", "--set",
                                    "n_train=64", "--set", "ls_batch=gradient", "--set",
                                    "backtrack_batch=gradient"],
}
#: runs with two processes (``--set`` values give uneven shards of 61 cases)
DIST_SMALL = ["--set", "n_train=61", "--set", "n_test=16"]
DIST_RUNS = {
    "dist2/curves-ae/hf": ["curves-ae", "--optimizer", "hf", "--steps", "4", "--eval-every", "2",
                           *DIST_SMALL, "--set", "numchunks=2", "--set", "grad_chunk=25",
                           "--set", "cg_max_iters=12"],
    "dist2/curves-ae/nag": ["curves-ae", "--optimizer", "nag", "--steps", "30",
                            "--eval-every", "15", *DIST_SMALL, "--set", "batch_size=29",
                            "--set", "lr=0.05"],
}


def _clean(table: dict) -> dict:
    out = {}
    for k, v in table.items():
        if k.startswith("seconds"):
            continue
        vals = v.tolist()
        k = "loss" if k == "loss_before" else k  # schema 1 name of HF's loss column
        out[k] = [None if isinstance(x, float) and math.isnan(x) else x for x in vals]
    return out


def _print(res_path: str) -> dict:
    res = read_results(res_path)
    h = hashlib.sha256()
    for k, arr in res.params("final").items():
        h.update(k.encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return {"steps": _clean(res.steps), "eval": _clean(res.eval), "params": h.hexdigest()}


def fingerprint(name: str, argv: list[str], tmp: Path) -> dict:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli(["train", *argv, "--dtype", "float64", "--quiet", "--out", str(tmp)])
    if code != 0:
        raise SystemExit(f"{name}: exit {code}")
    return _print(buf.getvalue().strip().splitlines()[-1])


def distributed_fingerprint(name: str, argv: list[str], tmp: Path, world: int = 2) -> dict:
    """The same, with ``world`` processes given torchrun's environment (gloo on 127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "hessfree", "train", *argv, "--dtype", "float64", "--quiet",
             "--out", str(tmp)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"{name}: exit {[p.returncode for p in procs]}\n"
                         + "\n".join(err[-2000:] for _, err in outs))
    return _print(outs[0][0].strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--compare")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {name: fingerprint(name, argv, Path(tmp)) for name, argv in RUNS.items()}
        result.update({name: distributed_fingerprint(name, argv, Path(tmp))
                       for name, argv in DIST_RUNS.items()})
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True))
    if args.compare:
        old = json.loads(Path(args.compare).read_text())
        bad = 0
        for name in [*RUNS, *DIST_RUNS]:
            a, b = old.get(name), result[name]
            same_params = a is not None and a["params"] == b["params"]
            diffs = []
            for table in ("steps", "eval"):
                for col, vals in (a or {}).get(table, {}).items():
                    if col == "loss_before":
                        col = "loss"
                    col = RENAMED_COLUMNS.get(col, col)
                    if col not in b[table]:
                        diffs.append(f"{table}/{col} (gone)")
                    elif b[table][col] != vals:
                        diffs.append(f"{table}/{col}")
            print(f"{name:24s} params {'same' if same_params else 'DIFFER'}; "
                  f"columns differing: {diffs or 'none'}")
            bad += (not same_params) or bool(diffs)
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
