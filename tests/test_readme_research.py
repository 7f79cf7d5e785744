"""The code of the README's "Curvature in your research" section runs and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

from extras import require

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks() -> list[str]:
    text = README.read_text()
    section = text.split("## Curvature in your research", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_solve_diagonal_blocks_and_report(capsys):
    code = blocks()[0]
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    lines = capsys.readouterr().out.strip().splitlines()
    res, G = ns["res"], ns["G"]
    assert tuple(res.x.shape) == (3, G.dim, 8) and res.shifted and res.converged
    assert lines[0].startswith("torch.Size([3, %d, 8])" % G.dim)
    assert float(lines[0].split()[-1]) <= 1e-10  # the certified relative residual
    assert ns["exact"].passes == 2
    assert float(lines[1]) < 3  # GNB's errors are a few of its standard errors
    assert ns["last"].dim == 32 * 3 + 3
    assert sum(line.startswith("| 0 |") or line.startswith("| 2 |") for line in lines) == 2


def test_laplace_snippet(capsys):
    require("laplace")
    ns: dict = {}
    first, second = blocks()[:2]
    exec(compile(first, "README.md", "exec"), ns)
    capsys.readouterr()
    exec(compile(second, "README.md", "exec"), ns)
    value = float(capsys.readouterr().out.strip())
    assert value < 0 and ns["la"].H.shape == (ns["G"].dim, ns["G"].dim)
