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
