"""``hessfree verify``: a published number without its artifact, or against it, fails."""

from __future__ import annotations

import textwrap

import pytest

from hessfree.runs.cli import main
from hessfree.runs.verify import Block, Claim, Figure, Given, Registry, load_registry, verify

OUTPUT = """Command: `python bench.py --repeats 3`

| operation | ms |
|---|---:|
| gradient | 40.0 |
| product | 50.0 |
"""

README = """# tool

## Results

The product costs **1.25** gradients (`python bench.py --repeats 3`, on a
2-core CPU; [details](RESULTS-2026.md)).

![figure](fig-2.png)

<!-- evidence:times -->
| operation | ms |
|---|---:|
| gradient | 40.0 |
<!-- /evidence:times -->

## Other

Numbers here (7, 8.5) are not scanned.
"""


def ms(art, name):
    for line in art.text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == name:
            return float(cells[1])
    raise KeyError(name)


def ratio(art):
    return ms(art, "product") / ms(art, "gradient")


def render(art):
    return "| operation | ms |\n|---|---:|\n| gradient | " + f"{ms(art, 'gradient'):.1f} |"


def registry(**changes):
    base = dict(
        claims=[Claim("product", "bench.md", ratio, "costs **{}** gradients", ".2f")],
        blocks=[Block("times", "bench.md", render)],
        givens=[Given("2-core CPU", "the machine")],
        scanned=[("README.md", "## Results")])
    base.update(changes)
    return Registry(**base)


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "bench.md").write_text(OUTPUT)
    (tmp_path / "README.md").write_text(README)
    return tmp_path


def failures(outcomes):
    return [(o.kind, o.id, o.detail) for o in outcomes if not o.ok]


def test_a_repository_that_follows_its_artifacts_passes(repo):
    outcomes = verify(repo, registry())
    assert failures(outcomes) == []
    assert {o.kind for o in outcomes} == {"claim", "block", "given", "scan"}
    assert next(o for o in outcomes if o.kind == "claim").detail == "costs **1.25** gradients"


def test_a_number_that_disagrees_with_its_artifact_fails(repo):
    (repo / "bench.md").write_text(OUTPUT.replace("50.0", "52.0"))
    (bad,) = failures(verify(repo, registry()))[:1]
    assert bad[:2] == ("claim", "product")
    assert "README.md should say 'costs **1.30** gradients' (recomputed from bench.md)" in bad[2]
    kinds = {f[0] for f in failures(verify(repo, registry()))}
    assert kinds == {"claim", "scan"}  # and 1.25 is then a number without a claim


def test_a_number_without_its_artifact_fails(repo):
    (repo / "README.md").write_text(README.replace("on a\n2-core CPU", "on a\n2-core CPU, "
                                                   "3.3x faster than the peer"))
    bad = failures(verify(repo, registry()))
    assert [(k, i) for k, i, _ in bad] == [("scan", "README.md Results")]
    assert ("'3.3' has no claim, block or given: ... (`python bench.py --repeats 3`, on a "
            "2-core CPU, 3.3x faster") in bad[0][2]
    (repo / "bench.md").unlink()
    bad = failures(verify(repo, registry()))
    assert ("claim", "product", "cannot recompute: artifact: bench.md does not exist") in bad


def test_an_artifact_must_name_its_command(repo):
    (repo / "bench.md").write_text(OUTPUT.replace("Command:", "Run:"))
    bad = failures(verify(repo, registry()))
    assert any("names no command" in d for _, _, d in bad)


def test_a_phrase_may_wrap_and_numbers_in_code_links_images_are_not_results(repo):
    text = README.replace("costs **1.25** gradients", "costs **1.25**\ngradients")
    (repo / "README.md").write_text(text)
    assert failures(verify(repo, registry())) == []
    # without the given, "2" of "2-core CPU" is a number without a claim
    bad = failures(verify(repo, registry(givens=[])))
    assert [d.split(" has")[0] for _, _, d in bad] == ["'2'"]
    # a given the document does not contain is itself a failure
    bad = failures(verify(repo, registry(givens=[Given("2-core CPU", "x"), Given("8 GPUs", "y")])))
    assert bad == [("given", "8 GPUs", "README.md does not contain it")]


def test_a_block_is_checked_and_rewritten(repo):
    (repo / "README.md").write_text(README.replace("| gradient | 40.0 |\n<!--",
                                                   "| gradient | 41.0 |\n<!--"))
    bad = failures(verify(repo, registry()))
    assert bad == [("block", "times", "README.md differs from what bench.md gives now "
                    "(hessfree verify --write)")]
    assert failures(verify(repo, registry(), write=True)) == []
    assert (repo / "README.md").read_text() == README
    (repo / "README.md").write_text(README.replace("<!-- /evidence:times -->", ""))
    bad = failures(verify(repo, registry()))
    assert ("block", "times", "README.md has no markers <!-- evidence:times --> ... "
            "<!-- /evidence:times -->") in bad


def test_figures_are_drawn_from_artifacts(repo):
    def draw(path, art):
        path.write_text(f"{ratio(art):.2f}")

    reg = registry(figures=[Figure("fig-2.png", "bench.md", draw)])
    assert failures(verify(repo, reg)) == [("figure", "fig-2.png",
                                            "missing (hessfree verify --write)")]
    assert failures(verify(repo, reg, write=True)) == []
    assert (repo / "fig-2.png").read_text() == "1.25"


def test_the_command_line(capsys, repo):
    claims = repo / "claims.py"
    claims.write_text(textwrap.dedent('''
        from hessfree.runs.verify import Claim, Given

        def ratio(art):
            rows = {l.split("|")[1].strip(): l.split("|")[2] for l in art.text.splitlines()
                    if l.startswith("| ") and "ms" not in l}
            return float(rows["product"]) / float(rows["gradient"])

        CLAIMS = [Claim("product", "bench.md", ratio, "costs **{}** gradients", ".2f")]
        GIVENS = [Given("2-core CPU", "the machine"), Given("40.0", "a generated table")]
        SCANNED = [("README.md", "## Results")]
    '''))
    assert len(load_registry(claims).claims) == 1
    assert main(["verify", "--root", str(repo), "--claims", str(claims)]) == 0
    assert "4 of 4 checks hold (1 claim, 2 given, 1 scan)" in capsys.readouterr().out
    (repo / "bench.md").write_text(OUTPUT.replace("50.0", "60.0"))
    assert main(["verify", "--root", str(repo), "--claims", str(claims)]) == 1
    out = capsys.readouterr().out
    assert "FAIL claim product: README.md should say 'costs **1.50** gradients'" in out
    assert main(["verify", "--root", str(repo), "--claims", str(repo / "none.py")]) == 2
    assert "--claims: no registry file" in capsys.readouterr().err
