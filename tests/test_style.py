"""House style the linter does not check: no function over 60 lines without a reason.

A function of ``hessfree/`` (methods and nested functions included) longer than
``MAX_LINES`` lines, counted from its ``def`` line to its last line with its docstring, must say
why in its docstring, in a sentence that begins "Over 60 lines" and gives the reason, e.g.
"(Over 60 lines for the documentation of every argument; the loop is short.)".
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hessfree"
MAX_LINES = 60
#: the marker: "Over 60 lines" and at least three more words (the reason)
REASON = re.compile(r"over 60 lines\W+\w+\W+\w+\W+\w+", re.IGNORECASE)


def long_functions(source: str, where: str = "<string>") -> list[str]:
    """``where:line name (n lines)`` for each function over ``MAX_LINES`` without a reason."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        length = node.end_lineno - node.lineno + 1
        doc = " ".join((ast.get_docstring(node) or "").split())
        if length > MAX_LINES and not REASON.search(doc):
            found.append(f"{where}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_long_function_without_a_reason():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50
    offenders = [hit for path in files
                 for hit in long_functions(path.read_text(), str(path.relative_to(PACKAGE)))]
    assert offenders == [], "functions over 60 lines whose docstring gives no reason:\n" + \
        "\n".join(offenders)


def _function(lines: int, doc: str | None, indent: str = "") -> str:
    body = [f'{indent}    """{doc}"""'] if doc is not None else []
    body += [f"{indent}    x{i} = {i}" for i in range(lines - 1 - len(body))]
    return "\n".join([f"{indent}def f():", *body]) + "\n"


def test_the_check_finds_long_functions_and_reads_reasons():
    assert long_functions(_function(60, None)) == []
    assert long_functions(_function(61, None), "m.py") == ["m.py:1 f (61 lines)"]
    assert long_functions(_function(61, "Short.")) != []
    assert long_functions(_function(61, "Over 60 lines.")) != []        # no reason given
    assert long_functions(_function(61, "Does x. (Over 60 lines for its argument table.)")) == []
    method = "class C:\n" + _function(70, "Does y.", indent="    ")
    assert long_functions(method) == ["<string>:2 f (70 lines)"]
    nested = "def outer():\n    '''Short.'''\n" + _function(61, None, indent="    ")
    assert [hit.split()[1] for hit in long_functions(nested)] == ["outer", "f"]
