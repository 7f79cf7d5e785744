"""Every number of README "Results" recomputed from the committed artifacts (``hessfree verify``).

The registry is ``benchmarks/claims.py``; the artifacts are ``benchmarks/artifacts/*/`` and the
saved benchmark outputs of ``benchmarks/results/``. A number in the scanned sections without a
claim, a claim whose artifact says otherwise, a generated table that differs from what its
artifact gives, or a background run whose state the README misstates fails here. An unfinished
background run is not skipped: its artifact records how far it had got, and the documents must
say exactly that.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hessfree.runs import evidence
from hessfree.runs.verify import TextArtifact, load_registry, verify

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = load_registry(ROOT / "benchmarks" / "claims.py")


def _artifacts() -> list[str]:
    names: set[str] = set()
    for entry in (*REGISTRY.claims, *REGISTRY.blocks, *REGISTRY.figures):
        names.update((entry.artifact,) if isinstance(entry.artifact, str) else entry.artifact)
    return sorted(names)


def test_every_published_number_follows_its_artifact():
    failed = [f"{o.kind} {o.id}: {o.detail}" for o in verify(ROOT, REGISTRY) if not o.ok]
    assert failed == []


def test_the_readme_results_are_scanned_whole():
    assert ("README.md", "## Results") in REGISTRY.scanned
    claimed = {d for c in REGISTRY.claims for d in c.where}
    assert "README.md" in claimed and len(REGISTRY.claims) >= 20


@pytest.mark.parametrize("name", _artifacts())
def test_every_artifact_names_the_command_that_made_it(name):
    path = ROOT / name
    if path.is_dir():
        art = evidence.read(path)
        assert art.command.strip() and "hessfree" in art.command
        for run in art.runs.values():  # the code that made them is named too
            assert len(run.attrs["git_commit"]) == 40
    else:
        assert TextArtifact(path, path.read_text()).command.startswith("python benchmarks/")


def test_artifacts_stay_small():
    """Tables, not parameters: a few kB a run (Table 1's 96 runs, finished, about 400 kB)."""
    size = sum(f.stat().st_size for f in (ROOT / "benchmarks" / "artifacts").rglob("*")
               if f.is_file())
    assert size < 1_000_000, f"{size:,} bytes of artifacts"


@pytest.mark.parametrize("figure", REGISTRY.figures, ids=lambda f: f.path)
def test_every_figure_draws_from_its_artifacts(figure, tmp_path):
    names = (figure.artifact,) if isinstance(figure.artifact, str) else figure.artifact
    out = tmp_path / Path(figure.path).name
    figure.draw(out, *(evidence.read(ROOT / n) for n in names))
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert (ROOT / figure.path).is_file()


def _claims_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("claims", ROOT / "benchmarks" / "claims.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hf_star(status: str, errors: list[float]) -> evidence.Evidence:
    """A one-run artifact of Martens' HF at a budget, with the given evaluations."""
    import numpy as np

    n = len(errors)
    run = evidence.EvidenceRun(
        "curves-ae/hf-seed0",
        {"status": status, "seed": 0, "budget": {"budget": 3500.0}, "rows": 2 * (n - 1),
         "grad_equiv": 300.0 * (n - 1)},
        {"step": np.arange(n) * 2, "grad_equiv": np.arange(n) * 300.0,
         "train_error": np.asarray(errors, dtype=float)}, None)
    return evidence.Evidence(ROOT / "hf-star", {"command": "hessfree train"}, {run.key: run})


@pytest.mark.parametrize(("last", "verdict"), [
    (0.01, "HF* ends ahead"), (None, "a tie"), (16.8, "HF† ends ahead")])
def test_the_equal_cost_sentence_follows_hf_daggers_spread(last, verdict):
    claims = _claims_module()
    t1 = evidence.read(ROOT / claims.T1)
    keys = next(ks for c, _, ks in claims.cells(t1) if c == "HF†")
    ends = [t1.runs[k].final("train_error") for k in keys if t1.runs[k].finished]
    last = sum(ends) / len(ends) if last is None else last  # HF†'s own mean: a tie
    sentence = claims.hf_equal_cost(t1, _hf_star("finished", [270.0, 20.0, last]))
    assert verdict in sentence and f"ends at {claims.g3(last)}" in sentence


def test_an_unfinished_equal_cost_run_is_not_a_result():
    claims = _claims_module()
    t1 = evidence.read(ROOT / claims.T1)
    sentence = claims.hf_equal_cost(t1, _hf_star("unfinished (killed)", [270.0, 20.0]))
    assert "not a result yet" in sentence and "unfinished (killed)" in sentence
    assert "300 gradient-equivalents and 2 HF steps in" in sentence
    assert "ends at" not in sentence and "a tie" not in sentence


@pytest.mark.parametrize(("cm_mean", "verdict"), [
    (None, "NAG ahead by more than twice"), (0.0, "CM ahead by more than twice"),
    ("nag", "a tie within twice")])
def test_the_nag_vs_cm_sentence_follows_the_spread(monkeypatch, cm_mean, verdict):
    claims = _claims_module()
    t1 = evidence.read(ROOT / claims.T1)
    cells = claims.summary_cells(t1)
    if cm_mean is not None:  # move CM's mean at μ_max 0.99: to zero, or onto NAG's
        cells["0.99M"]["mean"] = cells["0.99N"]["mean"] if cm_mean == "nag" else cm_mean
    monkeypatch.setattr(claims, "summary_cells", lambda ev: cells)
    first = claims.nag_vs_cm(t1).split(" At μ_max")[0]
    assert first.startswith("At μ_max 0.99,") and verdict in first
