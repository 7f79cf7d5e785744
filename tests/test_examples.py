"""The examples run at a small size and print what they claim (not just exit 0).

Each runs the command its docstring shows, scaled down by its ``--scale`` option (the same code
path at a smaller size), on the built-in data (``HESSFREE_DATA`` cleared).
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def documented(name: str) -> list[str]:
    """The arguments of the command in the example's docstring (its first such line)."""
    doc = ast.get_docstring(ast.parse((EXAMPLES / name).read_text()))
    line = next(ln.strip() for ln in doc.splitlines()
                if ln.strip().startswith(f"python examples/{name}"))
    return shlex.split(line.split("#")[0])[2:]


def run_documented(name: str, scale: float, tmp_path: Path) -> str:
    """The docstring's command at ``--scale scale``."""
    return run(name, *documented(name), "--scale", str(scale), tmp_path=tmp_path)


def run(name: str, *args: str, tmp_path: Path) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path,
                          env={**__import__("os").environ, "HESSFREE_DATA": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def number(text: str, pattern: str) -> float:
    m = re.search(pattern, text)
    assert m, (pattern, text)
    return float(m.group(1))


#: the examples CI runs as their docstrings say, scaled down by ``--scale``
SCALED = ("cg_vs_nag_on_a_quadratic.py", "curvature_in_your_research.py", "influence.py",
          "train_your_model.py")


def test_every_scaled_example_documents_a_command_with_its_time():
    for name in SCALED:
        path = EXAMPLES / name
        args = documented(path.name)
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert "--scale" in doc, path.name  # CI runs the documented command scaled down
        line = next(ln for ln in doc.splitlines() if ln.strip().startswith("python examples/"))
        assert re.search(r"# (about|under) [0-9.]+ (min|s) ", line), (path.name, line)  # its time
        assert "--out" in args


@pytest.mark.slow
def test_train_your_model(tmp_path):
    out = run_documented("train_your_model.py", 0.15, tmp_path)
    assert "data: generated" in out and "SmallCNN" in out
    hf = number(out, r"HF   : .* train error ([0-9.]+)")
    adam = number(out, r"Adam : .* train error ([0-9.]+)")
    assert 0 <= hf < 0.9 and 0 <= adam < 0.9  # both learned something (10 classes: 0.9)
    ge = number(out, r"equal gradient-equivalents \(([0-9.]+)\)")
    assert ge > 0
    # equal time, honestly: each method's clock within its budget (HF's last step ends on
    # time: CG stops at the deadline), 0.15 x 60 s
    for who in ("HF   ", "Adam "):
        assert number(out, who + r": .* gradient-equivalents, ([0-9.]+) s") <= 9.0 + 5.0
    assert (tmp_path / "cnn.png").read_bytes()[:4] == b"\x89PNG"


def test_cg_vs_nag_on_a_quadratic(tmp_path):
    out = run_documented("cg_vs_nag_on_a_quadratic.py", 0.3, tmp_path)
    step_cg = number(out, r"HF's CG ran (\d+) iterations")
    assert step_cg >= 15  # a mid-run quadratic (0.3 x 50 iterations), not a plateau one
    cg = number(out, r"cg : .*products to 90% of the gap: (\d+)")
    nag = re.search(r"nag: .*products to 90% of the gap: (>?\d+)", out).group(1)
    assert nag.startswith(">") or cg <= float(nag)  # CG is the better method on it ([S13 §5])
    assert (tmp_path / "fig5.png").read_bytes()[:4] == b"\x89PNG"


def test_curvature_in_your_research(tmp_path):
    out = run_documented("curvature_in_your_research.py", 0.125, tmp_path)
    assert number(out, r"max relative difference ([0-9.e+-]+)") < 1e-6  # eigsh = scipy
    estimate = number(out, r"trace: ([0-9.e+-]+) \+-")
    exact = number(out, r"exact ([0-9.e+-]+)")
    stderr = number(out, r"\+- ([0-9.e+-]+)")
    assert abs(estimate - exact) < 5 * stderr
    assert number(out, r"relative residual ([0-9.e+-]+)") < 1e-2
    assert (tmp_path / "density.png").read_bytes()[:4] == b"\x89PNG"


def test_the_readme_quick_start_runs_and_learns(capsys):
    readme = (EXAMPLES.parent / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    import torch
    torch.manual_seed(0)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 10 and ns["stats"].accepted
    first, last = float(printed[0].split()[0]), float(printed[-1].split()[0])
    assert last < 0.3 * first  # the labelling is learnable: the objective falls


def test_influence(tmp_path):
    """The influence example at a tenth of its size: solves checked, kronfluence compared."""
    from extras import require

    require("kronfluence")
    out = run_documented("influence.py", 0.1, tmp_path)
    assert "data: generated" in out  # HESSFREE_DATA is cleared: the built-in data
    assert number(out, r"solve vs dense torch.linalg.solve: max relative difference "
                       r"([0-9.e+-]+)") < 1e-8
    assert number(out, r"certified relative residual ([0-9.e+-]+)") <= 1e-10 * 1.01
    assert number(out, r"hessfree CG vs exact: Spearman ([0-9.e+-]+)") > 0.999
    rho = number(out, r"kronfluence EK-FAC vs exact: Spearman (-?[0-9.e+-]+)")
    assert -1 <= rho <= 1
    assert (tmp_path / "influence.png").read_bytes()[:4] == b"\x89PNG"
