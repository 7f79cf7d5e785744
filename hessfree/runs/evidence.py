"""Evidence: small artifacts of runs, committed with the numbers they support.

A results file holds every step and the parameters (megabytes); what a published number needs
is its tables. :func:`build` reads a folder of runs (a ``hessfree reproduce`` folder, a demo
folder, or any folder holding ``results.h5`` files) and writes an *artifact* folder:

- ``ARTIFACT.json``: the exact command that made the runs, when and by which code (the runs'
  git commits), which runs it planned (a ``hessfree reproduce`` command is planned again with
  :func:`hessfree.runs.reproduce.plan` and must match the folder's ``plan.json``), and each
  run's status, so an unfinished run is an artifact of what it had reached, and says so;
- ``evidence.h5``: per run its attributes (experiment, optimizer, seed, settings, status,
  commit), its whole ``/eval`` table, and its ``/steps`` table when it has at most ``max_rows``
  rows (HF runs: every step's ρ, λ, CG iterations, rejection), else the step counts that matter
  (rows, updates not accepted and why, largest μ, totals); never parameters. Also every
  comparison record (``hessfree compare --save``, the demo's ``comparison.json``) and every small
  text file (``demo.md``, a command's saved output) found in the folder;
- for a ``hessfree reproduce`` command, the package's own ``summary.md`` and ``summary.h5``,
  computed from the runs present (unfinished and missing runs listed); no figures (images are
  drawn from the artifact where they are published).

No machine path is written: runs are named by their path inside the folder.
:func:`read` gives an artifact back as an :class:`Evidence`.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hessfree import _checks
from hessfree._files import atomic_path, write_text
from hessfree._h5 import open_file
from hessfree._version import __version__
from hessfree.errors import InputError
from hessfree.runs.report import run_status
from hessfree.runs.results import read_results

__all__ = ["ARTIFACT_FILE", "EVIDENCE_FILE", "FORMAT", "Evidence", "EvidenceRun", "build", "read"]

FORMAT = "hessfree.evidence/1"
ARTIFACT_FILE = "ARTIFACT.json"
EVIDENCE_FILE = "evidence.h5"
#: text files kept whole (a command's saved output, the demo's table), at most this many bytes
TEXT_LIMIT = 64 * 1024
_TEXTS = (".md", ".txt")
_COMPRESS = {"compression": "gzip", "compression_opts": 9, "shuffle": True}


@dataclass
class EvidenceRun:
    """One run of an artifact: its attributes and tables (``steps`` None when summarized).

    ``attrs`` also holds, for every run, ``rows`` (updates), ``not_accepted``, ``reasons``
    (count of each step reason), ``grad_equiv`` and ``seconds`` (totals) and ``mu_max`` (largest
    μ, momentum runs).
    """

    key: str
    attrs: dict[str, Any]
    eval: dict[str, np.ndarray]
    steps: dict[str, np.ndarray] | None

    @property
    def status(self) -> str:
        """The run's status when the artifact was built (``finished``, ``running``, ...)."""
        return str(self.attrs["status"])

    @property
    def finished(self) -> bool:
        """Whether the run had finished."""
        return self.status.startswith("finished")

    def final(self, column: str) -> float:
        """The last evaluation's ``column`` (NaN without one)."""
        values = self.eval.get(column)
        return float(values[-1]) if values is not None and len(values) else math.nan

    def at(self, column: str, grad_equiv: float) -> float:
        """``column`` at the last evaluation at or before ``grad_equiv`` gradient-equivalents."""
        ge = self.eval["grad_equiv"]
        idx = np.nonzero(ge <= grad_equiv + 1e-9)[0]
        if not len(idx):
            raise InputError(f"{self.key}: no evaluation at or before {grad_equiv:g} "
                             "gradient-equivalents")
        return float(self.eval[column][idx[-1]])


@dataclass
class Evidence:
    """An artifact folder read back (:func:`read`)."""

    path: Path
    meta: dict[str, Any]
    runs: dict[str, EvidenceRun] = field(default_factory=dict)
    comparisons: dict[str, dict[str, Any]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

    @property
    def command(self) -> str:
        """The command that made the runs."""
        return str(self.meta["command"])

    @property
    def planned(self) -> list[str]:
        """The runs the command plans (their keys), or the runs present if it plans none."""
        return list(self.meta.get("planned") or self.runs)

    @property
    def finished(self) -> int:
        """How many planned runs had finished."""
        return sum(1 for k in self.planned if k in self.runs and self.runs[k].finished)

    def run(self, key: str) -> EvidenceRun:
        """The run ``key`` (its folder inside the source folder, e.g. ``curves-ae/hf``)."""
        if key not in self.runs:
            raise InputError(f"{self.path.name}: no run {key!r}; runs: {sorted(self.runs)}")
        return self.runs[key]

    def comparison(self, key: str | None = None) -> dict[str, Any]:
        """A comparison record (the only one when ``key`` is None)."""
        if key is None and len(self.comparisons) == 1:
            return next(iter(self.comparisons.values()))
        if key not in self.comparisons:
            raise InputError(f"{self.path.name}: no comparison {key!r}; comparisons: "
                             f"{sorted(self.comparisons)}")
        return self.comparisons[key]

    def summary(self) -> dict[str, Any]:
        """``summary.h5`` of a reproduce artifact: its attributes and (experiment × cell) arrays."""
        path = self.path / "summary.h5"
        if not path.is_file():
            raise InputError(f"{self.path.name}: no summary.h5 (no run had an evaluation)")
        with open_file(path, "r", what="summary") as f:
            out: dict[str, Any] = {k: (json.loads(v) if k in ("experiments", "cells", "seeds")
                                       else v) for k, v in f.attrs.items()}
            for k, d in f.items():
                if isinstance(d, h5py.Dataset):
                    out[k] = d[()]
            out["runs"] = {k: _decode(d[()]) for k, d in f["runs"].items()}
        return out


# -- building -----------------------------------------------------------------------------------
def _results_files(source: Path) -> list[Path]:
    return sorted(source.rglob("results.h5")) if source.is_dir() else []


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


def _run_attrs(res: Any) -> dict[str, Any]:
    a = res.attrs
    spec = a.get("spec") if isinstance(a.get("spec"), dict) else {}
    keep = {k: a[k] for k in ("experiment", "optimizer", "seed", "device", "dtype", "created",
                              "git_commit", "torch_version", "hessfree_version", "world_size")
            if k in a}
    keep["config"] = _json(a.get("config"))
    keep["phases"] = _json(a.get("phases"))
    keep["budget"] = _json({k: spec.get(k) for k in ("steps", "seconds", "budget")})
    keep["status"] = run_status(res)
    return keep


def _step_attrs(steps: dict[str, np.ndarray]) -> dict[str, Any]:
    accepted = np.asarray(steps.get("accepted", []), dtype=bool)
    reasons: dict[str, int] = {}
    for r in steps.get("reason", []):
        reasons[str(r)] = reasons.get(str(r), 0) + 1
    mu = steps.get("mu")
    return {"rows": int(len(steps.get("step", []))), "not_accepted": int((~accepted).sum()),
            "reasons": _json(reasons),
            "grad_equiv": float(np.sum(steps["grad_equiv"])) if "grad_equiv" in steps else 0.0,
            "seconds": float(np.sum(steps["seconds"])) if "seconds" in steps else 0.0,
            "mu_max": float(np.max(mu)) if mu is not None and len(mu) else math.nan}


def _write_table(group: h5py.Group, table: dict[str, np.ndarray]) -> None:
    """A table as two datasets: numeric columns (2-D float64) and text columns (JSON).

    Bool and int columns are exact in float64; few objects keep the file small.
    """
    kinds = {n: np.asarray(v).dtype.kind for n, v in table.items()}
    numeric = [n for n, k in kinds.items() if k in "fiub"]
    group.attrs["fields"] = _json(list(table))
    group.attrs["kinds"] = _json(kinds)
    rows = len(next(iter(table.values()))) if table else 0
    data = np.array([np.asarray(table[n], dtype=np.float64) for n in numeric]).reshape(
        len(numeric), rows)
    group.create_dataset("numbers", data=data, **(_COMPRESS if data.size else {}))
    _put_text(group, "text", _json({n: [str(v) for v in table[n]] for n in table
                                    if n not in numeric}))


def _put_text(group: h5py.Group, name: str, text: str) -> None:
    """UTF-8 text as a compressed byte dataset (JSON of many runs compresses tenfold)."""
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    group.create_dataset(name, data=data, **(_COMPRESS if data.size else {}))


def _get_text(group: h5py.Group, name: str) -> str:
    return group[name][()].tobytes().decode("utf-8")


def _check_plan(source: Path, jobs: list[Any]) -> None:
    """The folder's ``plan.json`` must list the jobs the command plans."""
    path = source / "plan.json"
    if not path.is_file():
        return
    theirs = sorted(f"{j['experiment']}/{j['name']}" for j in json.loads(path.read_text())["jobs"])
    ours = sorted(f"{j.experiment}/{j.name}" for j in jobs)
    if theirs != ours:
        raise InputError(f"command: it plans {len(ours)} runs that differ from the "
                         f"{len(theirs)} of {path.name} in the source folder; give the command "
                         "that made these runs")


def _summary(out: Path, args: Any, jobs: list[Any], source: Path) -> None:
    """The package's summary of the runs present (paths inside the source folder)."""
    from hessfree.runs.summary import outcome, summarize

    present, missing = [], []
    for j in jobs:
        path = source / j.experiment / j.name / "results.h5"
        (present if path.is_file() else missing).append((j, path))
    outcomes = [outcome(j, p) for j, p in present]
    outcomes = [o for o in outcomes if len(read_results(o.path).eval.get("step", []))]
    if not outcomes:
        return
    planned = source / "plan.json"
    stages = json.loads(planned.read_text()).get("mu_stages", args.mu_stages) \
        if planned.is_file() else args.mu_stages
    scratch = out / ".summary"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        summarize(args.table, args.fraction, scratch, outcomes, [j for j, _ in missing], stages)
        keys = [str(o.path.parent.relative_to(source).as_posix()) for o in outcomes]
        _copy_summary(scratch / "summary.h5", out / "summary.h5", keys)
        md = (scratch / "summary.md").read_text().splitlines()
        write_text(out / "summary.md",
                   "\n".join(line for line in md if not line.startswith("![")) + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _copy_summary(src: Path, dst: Path, keys: list[str]) -> None:
    """``summary.h5`` with its runs named by their keys: no machine path.

    None is left in the file either (a deleted dataset's bytes stay in an HDF5 file), so
    everything is copied to a new one.
    """
    with open_file(src, "r", what="summary") as a, atomic_path(dst) as tmp, \
            open_file(tmp, "w", what="summary") as b:
        b.attrs.update(dict(a.attrs))
        for name, obj in a.items():
            if name != "runs":
                a.copy(obj, b, name)
        runs = b.create_group("runs")
        for name, obj in a["runs"].items():
            if name != "path":
                a.copy(obj, runs, name)
        runs.create_dataset("path", data=np.array(keys, dtype=object),
                            dtype=h5py.string_dtype())


def build(source: str | os.PathLike, out: str | os.PathLike, command: str | None = None,
          note: str | None = None, max_rows: int = 1000,
          plan: tuple[Any, list[Any]] | None = None) -> Path:
    """Write the artifact of the runs in ``source`` into the folder ``out``; return ``out``.

    Args:
        source: the folder the command wrote (it may not exist yet: a queued run is an
            artifact with no runs, and its planned runs are listed as missing).
        out: the artifact folder (created; its previous files are replaced).
        command: the exact command that wrote ``source``, as one would type it; None: the
            command of the artifact already in ``out`` (rebuilding it as the runs go on).
        note: anything the reader should know (where it ran, what shared the machine); None:
            the existing artifact's note.
        max_rows: a run with more updates keeps its step counts, not its step table.
        plan: for a ``hessfree reproduce`` command, its parsed arguments and jobs
            (:func:`hessfree.runs.cli.reproduce_command`; ``hessfree artifact`` passes them):
            checked against the folder's ``plan.json``, listed as the planned runs, and
            summarized.
    """
    _checks.integer(max_rows, "max_rows", minimum=1)
    source, out = Path(source), Path(out)
    before = json.loads((out / ARTIFACT_FILE).read_text()) if (out / ARTIFACT_FILE).is_file() \
        else {}
    command = before.get("command") if command is None else command
    note = before.get("note", "") if note is None else note
    if not isinstance(command, str) or not command.strip():
        raise InputError("command: expected the command that made the runs, got nothing (give "
                         "--command, or rebuild an artifact that names it)")
    if source.exists() and not source.is_dir():
        raise InputError(f"source: {source} is not a folder of runs")
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise InputError(f"out: {out} lies inside the source folder; write artifacts elsewhere")
    planned = plan
    if planned is not None:
        _check_plan(source, planned[1])
    out.mkdir(parents=True, exist_ok=True)
    for old in (EVIDENCE_FILE, "summary.h5", "summary.md"):
        (out / old).unlink(missing_ok=True)
    runs = _write_evidence(source, out / EVIDENCE_FILE, max_rows)
    if planned is not None:
        _summary(out, planned[0], planned[1], source)
    keys = [f"{j.experiment}/{j.name}" for j in planned[1]] if planned else None
    meta = {"format": FORMAT, "name": out.name, "command": command.strip(), "note": note,
            "source": source.name,
            "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "built_by": f"hessfree {__version__}",
            "git_commits": sorted({r.get("git_commit", "unknown") for r in runs.values()}),
            "planned": keys,
            "runs": {k: r["status"] for k, r in runs.items()}}
    done = sum(1 for k in (keys or runs) if str(runs.get(k, {}).get("status", "")).startswith(
        "finished"))
    meta["finished"] = f"{done} of {len(keys or runs)}"
    write_text(out / ARTIFACT_FILE, json.dumps(meta, indent=1) + "\n")
    return out


def _concat(tables: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Tables stacked with a ``run`` column (their index); a column a table lacks is NaN / ''."""
    names = list(dict.fromkeys(n for t in tables for n in t))
    out: dict[str, list[Any]] = {"run": [], **{n: [] for n in names}}
    for i, t in enumerate(tables):
        rows = len(next(iter(t.values()))) if t else 0
        out["run"] += [i] * rows
        for n in names:
            out[n] += list(t[n]) if n in t else [math.nan] * rows
    return {n: np.asarray(v) if n == "run" or _same_kind(v) else
            np.array([str(x) for x in v], dtype=object) for n, v in out.items()}


def _same_kind(values: list[Any]) -> bool:
    kinds = {np.asarray(v).dtype.kind for v in values}
    return not kinds or kinds <= set("fiub")


def _write_evidence(source: Path, path: Path, max_rows: int) -> dict[str, dict[str, Any]]:
    """Write ``evidence.h5``; return each run's attributes by key.

    Every run's attributes are one JSON list (settings stored once), all ``/eval`` tables are
    stacked, so are the ``/steps`` tables of the runs with at most ``max_rows`` rows, and the
    comparison records and texts are one JSON object: a few datasets in all.
    """
    runs: dict[str, dict[str, Any]] = {}
    settings: list[str] = []
    evals, steps = [], []
    for results in _results_files(source):
        res = read_results(results)
        key = results.parent.relative_to(source).as_posix()
        attrs = {"key": key, **_run_attrs(res), **_step_attrs(res.steps)}
        for name in ("config", "phases"):
            if attrs[name] not in settings:
                settings.append(attrs[name])
            attrs[name] = settings.index(attrs[name])
        attrs["has_steps"] = attrs["rows"] <= max_rows
        attrs["eval_fields"] = [[n, np.asarray(v).dtype.kind] for n, v in res.eval.items()]
        attrs["step_fields"] = [[n, np.asarray(v).dtype.kind] for n, v in res.steps.items()] \
            if attrs["has_steps"] else []
        evals.append(res.eval)
        steps.append(res.steps if attrs["has_steps"] else {})
        runs[key] = attrs
    extras: dict[str, dict[str, Any]] = {"comparisons": {}, "texts": {}}
    for key, kind, text in _extra_files(source):
        extras["comparisons" if kind == 0 else "texts"][key] = \
            json.loads(text) if kind == 0 else text
    with atomic_path(path) as tmp, open_file(tmp, "w", what="artifact") as f:
        f.attrs["format"] = FORMAT
        _put_text(f, "runs", _json(list(runs.values())))
        _put_text(f, "settings", _json(settings))
        _put_text(f, "extras", _json(extras))
        _write_table(f.create_group("eval"), _concat(evals))
        _write_table(f.create_group("steps"), _concat(steps))
    return runs


def _extra_files(source: Path) -> Iterator[tuple[str, int, str]]:
    """(key, 0 comparison / 1 text, content) of the small files beside the runs."""
    if not source.is_dir():
        return
    for p in sorted(source.rglob("*")):
        if not p.is_file() or p.stat().st_size > TEXT_LIMIT:
            continue
        key = p.relative_to(source).as_posix()
        if p.suffix == ".json" and p.name != "plan.json":
            text = p.read_text()
            try:
                record = json.loads(text)
            except ValueError:
                continue
            if isinstance(record, dict) and str(record.get("format", "")).startswith(
                    "hessfree.comparison/"):
                yield key, 0, text
        elif p.suffix in _TEXTS and p.name != "summary.md":
            yield key, 1, p.read_text()


# -- reading ------------------------------------------------------------------------------------
def _decode(values: Any) -> Any:
    if isinstance(values, bytes):
        return values.decode()
    if isinstance(values, np.ndarray) and values.dtype.kind == "O":
        return np.array([v.decode() if isinstance(v, bytes) else v for v in values],
                        dtype=object)
    return values


def _table(group: h5py.Group) -> dict[str, np.ndarray]:
    names, kinds = json.loads(group.attrs["fields"]), json.loads(group.attrs["kinds"])
    numbers = group["numbers"][()]
    text = json.loads(_get_text(group, "text"))
    numeric = [n for n in names if kinds[n] in "fiub"]
    out: dict[str, np.ndarray] = {}
    for n in names:
        if n in text:
            out[n] = np.array(text[n], dtype=object)
        else:
            col = numbers[numeric.index(n)]
            out[n] = col.astype(bool) if kinds[n] == "b" else \
                col.astype(np.int64) if kinds[n] in "iu" else col
    return out


def read(path: str | os.PathLike) -> Evidence:
    """The artifact in the folder ``path`` (:func:`build`)."""
    path = Path(path)
    index = path / ARTIFACT_FILE
    if not index.is_file():
        raise InputError(f"artifact: {path} has no {ARTIFACT_FILE} (not an artifact folder)")
    meta = json.loads(index.read_text())
    if meta.get("format") != FORMAT:
        raise InputError(f"artifact: {index} is not of format {FORMAT!r}")
    ev = Evidence(path, meta)
    with open_file(path / EVIDENCE_FILE, "r", what="artifact") as f:
        runs = json.loads(_get_text(f, "runs"))
        settings = json.loads(_get_text(f, "settings"))
        extras = json.loads(_get_text(f, "extras"))
        evals, steps = _table(f["eval"]), _table(f["steps"])
    for i, attrs in enumerate(runs):
        for k in ("config", "phases"):
            attrs[k] = json.loads(settings[attrs[k]])
        for k in ("budget", "reasons"):
            attrs[k] = json.loads(attrs[k])
        ev.runs[attrs["key"]] = EvidenceRun(
            attrs["key"], attrs, _rows(evals, i, attrs["eval_fields"]),
            _rows(steps, i, attrs["step_fields"]) if attrs["has_steps"] else None)
    ev.comparisons, ev.texts = extras["comparisons"], extras["texts"]
    return ev


def _rows(table: dict[str, np.ndarray], run: int, fields: list[list[str]]
          ) -> dict[str, np.ndarray]:
    """Run ``run``'s rows of a stacked table: its own columns, of their own kinds."""
    mine = table["run"] == run if "run" in table else np.zeros(0, dtype=bool)
    out = {}
    for n, kind in fields:
        col = table[n][mine]
        out[n] = col.astype(bool) if kind == "b" else col.astype(np.int64) if kind in "iu" \
            else col.astype(np.float64) if kind == "f" else col.astype(object)
    return out
