"""The package's shape: imports point downward, no cycle, no global state changed on import.

The allowed directions are the layers of ``docs/architecture.md``: a component may import
components of lower layers only (and itself). The graph is read from the source with ``ast``,
imports inside functions included.
"""

from __future__ import annotations

import ast
import collections
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import hessfree

PACKAGE = Path(hessfree.__file__).resolve().parent

#: component -> layer (``docs/architecture.md``); a component imports lower layers only
LAYERS = {
    "_version": 0, "errors": 0,
    "_checks": 1, "vectors": 1,
    "schedules": 2, "batches": 2, "linops": 2, "_files": 2, "_h5": 2,
    "distributed": 3, "cg": 3,
    "curvature": 4, "models": 4, "data": 4,
    "quadratic": 5, "momentum": 5,
    "hf": 6,
    "runs": 7, "integrations": 7,
    "__main__": 8, "<facade>": 8,
}
#: the linear solver knows nothing about networks (DESIGN.md): flat vectors and the operator base
CG_MAY_IMPORT = {"cg", "vectors", "linops", "_checks", "errors"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        rel = p.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = p
    return out


def _graph() -> dict[str, set[str]]:
    """Module -> hessfree modules it imports (anywhere in the file)."""
    mods = _modules()
    edges: dict[str, set[str]] = collections.defaultdict(set)
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges[name].update(a.name for a in node.names if a.name.startswith("hessfree"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                if not base.startswith("hessfree"):
                    continue
                subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods}
                edges[name].update(subs if len(subs) == len(node.names) else subs | {base})
    return edges


def _component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<facade>"


def test_every_component_has_a_layer():
    assert {_component(m) for m in _modules()} <= set(LAYERS)


def test_imports_point_downward():
    bad = []
    for a, targets in _graph().items():
        ca = _component(a)
        for b in targets:
            cb = _component(b)
            if ca != cb and not LAYERS[cb] < LAYERS[ca]:
                bad.append(f"{a} -> {b}")
            if ca == "cg" and cb not in CG_MAY_IMPORT:
                bad.append(f"{a} -> {b} (cg imports nothing of ours but vectors and linops)")
    assert not bad, "imports against the layers of docs/architecture.md:\n" + "\n".join(bad)


def test_no_import_cycle():
    """No strongly connected component of more than one module (in-function imports count)."""
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            # a package's __init__ importing its own modules is not a cycle by itself
            real = [m for m in comp if not any(m != o and o.startswith(m + ".") for o in comp)]
            if len(comp) > 1 and len(real) > 1:
                cycles.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_core_never_imports_the_integrations():
    """Integrations are adapters on top of the core: nothing else imports them, but the facade
    (``import hessfree`` imports ``hessfree.integrations``, whose Hugging Face adapter imports
    nothing of its tool and registers itself with ``curvature.adapters``)."""
    bad = [f"{a} -> {b}" for a, targets in _graph().items() for b in targets
           if _component(b) == "integrations"
           and _component(a) not in ("integrations", "<facade>")]
    assert not bad, bad
    assert "hessfree.integrations.laplace" not in _graph()["hessfree.integrations"]


def test_no_import_below_code():
    """Imports sit at the top of a file (no ``noqa: E402`` workaround in the package)."""
    offenders = [str(p) for p in PACKAGE.rglob("*.py") if "noqa: E402" in p.read_text()]
    assert not offenders


def test_each_subpackage_imports_alone():
    """Import every module first, with no other hessfree module loaded: a cycle would fail."""
    modules = sorted(_modules())
    script = textwrap.dedent("""
        import importlib, json, sys
        failures = {}
        for name in json.loads(sys.argv[1]):
            for m in [k for k in sys.modules if k == "hessfree" or k.startswith("hessfree.")]:
                del sys.modules[m]
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as e:
                # an integration whose optional tool is not installed (an extra)
                if not (name.startswith("hessfree.integrations.")
                        and not (e.name or "").startswith("hessfree")):
                    failures[name] = f"{type(e).__name__}: {e}"
            except Exception as e:
                failures[name] = f"{type(e).__name__}: {e}"
        print(json.dumps(failures))
    """)
    out = subprocess.run([sys.executable, "-c", script, json.dumps(modules)], capture_output=True,
                         text=True, timeout=300, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}


def test_import_changes_no_global_state():
    """``import hessfree`` (and its subpackages) leaves env, torch and numpy settings alone."""
    script = textwrap.dedent("""
        import json, logging, os, warnings
        import numpy as np
        import torch
        def snap():
            return {"env": dict(os.environ), "dtype": str(torch.get_default_dtype()),
                    "threads": torch.get_num_threads(), "grad": torch.is_grad_enabled(),
                    "np": repr(np.get_printoptions()), "root_handlers": len(logging.root.handlers),
                    "warnings": len(warnings.filters), "rng": torch.get_rng_state().sum().item()}
        # third-party modules first: their own import-time settings are not ours
        import h5py, scipy.io, scipy.ndimage, scipy.sparse.linalg, threadpoolctl, tqdm
        before = snap()
        import hessfree, hessfree.runs.cli, hessfree.runs.trainer, hessfree.data
        hessfree.runs, hessfree.data
        after = snap()
        print(json.dumps({k: [before[k], after[k]] for k in before if before[k] != after[k]}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}


#: a bracket that is not an index or a type argument: ``[KEY]``, ``[KEY part]``, ``[A; B]``
_BRACKET = re.compile(r"(?<![\w\[\]])\[([A-Z][^\[\]\n]{0,80})\]")
#: what a citation key looks like: author letters and a two-digit year (``M10``, ``H&S06``,
#: ``Sut13T``), or one of the named sources without a year
_KEY_SHAPE = re.compile(r"[A-Z][A-Za-z&\-]*\d\d[A-Za-z]?")
_NAMED = ("HFDemo", "HF-RNN", "K-FAC", "ARPACK", "Data", "Other")


def _reference_keys() -> set[str]:
    """The keys docs/references.md defines: bracketed headings and ``**[KEY]**`` entries."""
    text = (PACKAGE.parent / "docs" / "references.md").read_text()
    return set(re.findall(r"^#+ \[([^\]]+)\]", text, re.M)) | set(
        re.findall(r"\*\*\[([^\]]+)\]\*\*", text))


def _citations(text: str) -> list[str]:
    """Every citation in ``text``: the key of each ``[KEY ...]`` (split at ``;``)."""
    out = []
    for m in _BRACKET.finditer(text):
        for part in m.group(1).split(";"):
            part = part.strip()
            head = re.split(r"[\s:,]", part, maxsplit=1)[0]
            if not (_KEY_SHAPE.fullmatch(head) or head in _NAMED):
                continue  # an index or a formula, not a citation
            if head == "Data" and ":" in part:  # [Data: CURVES]
                head = "Data: " + part.split(":", 1)[1].strip().split()[0]
            elif head == "Other":
                head = " ".join(part.split()[:3])
            out.append(head)
    return out


def test_the_citation_scanner_finds_citations_and_only_them():
    found = _citations("as in [M10 §4.1], [S13 Table 1]; [HFDemo: matching losses] and "
                       "[Data: FACES], [Ste01; WS00], [Other HF codes] but not x[N, T], "
                       "list[str], [None, :], [J_out v] or [0, 1]; unknown [Zz99 §2]")
    assert found == ["M10", "S13", "HFDemo", "Data: FACES", "Ste01", "WS00", "Other HF codes",
                     "Zz99"]


@pytest.mark.parametrize("path", sorted(str(p.relative_to(PACKAGE.parent))
                                        for p in PACKAGE.rglob("*.py")))
def test_citations_resolve_inside_the_repository(path):
    """Every ``[KEY ...]`` cited in the package is a key of ``docs/references.md``, and no
    docstring points to notes outside the repository."""
    text = (PACKAGE.parent / path).read_text()
    for outside in ("papers.md", "anchors.md", "datasets.md", "DESIGN.md"):
        assert outside not in text, f"{path} cites {outside}, which is not in the repository"
    keys = _reference_keys()
    unknown = sorted({k for k in _citations(text) if k not in keys})
    assert not unknown, f"{path} cites {unknown}, not keys of docs/references.md"


DOC = PACKAGE.parent / "docs" / "architecture.md"


def _doc_section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _resolve(dotted: str) -> object:
    """``hessfree.<dotted>``: a module, or an attribute of the longest module prefix (the
    package itself for a name it exports, e.g. ``HessianFree.step``)."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), -1, -1):
        try:
            obj = importlib.import_module(".".join(["hessfree", *parts[:i]]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                raise AssertionError(f"{dotted} names nothing in hessfree")
        return obj
    raise AssertionError(f"{dotted} names nothing in hessfree")


def test_the_one_place_of_each_concept_exists():
    """Every module or name in the right column of "One place for each concept" resolves."""
    import re

    rows = [line for line in _doc_section("One place for each concept").splitlines()
            if line.startswith("| ") and not line.startswith("| concept")]
    assert len(rows) >= 10
    for row in rows:
        home = row.rstrip(" |").rsplit(" | ", 1)[1]
        names = [n for n in re.findall(r"`([A-Za-z_][\w.]*)`", home)
                 if "." in n or n.startswith("_") or n.islower()]
        assert names, row
        for name in names:
            if "." in name or (PACKAGE / f"{name}.py").exists() or (PACKAGE / name).is_dir():
                _resolve(name)


def _sources() -> dict[str, str]:
    return {str(p.relative_to(PACKAGE)): p.read_text() for p in PACKAGE.rglob("*.py")}


def test_every_sum_over_cases_is_reduced_by_the_accumulator():
    """Only the accumulator (and the reducer itself) all-reduces: one home for the reduction."""
    bad = [path for path, text in _sources().items()
           if path not in ("curvature/accumulate.py", "distributed.py")
           and (".sum_(" in text or "sum_parts(" in text)]
    assert not bad, f"reductions over ranks outside curvature/accumulate.py: {bad}"
    assert not [p for p, t in _sources().items() if "last_cases" in t]


def test_products_are_counted_in_one_place():
    """Operators count products only in linops' apply/apply_block; HF's record is fed by Counted."""
    import re

    counted = {path for path, text in _sources().items()
               if re.search(r"\bproducts\s*[+-]=", text)}
    assert counted <= {"linops.py", "hf/record.py"}, counted
    record = _sources()["hf/record.py"]
    assert "Counted(op" in record and "def product(self, cases" in record


def test_hf_keeps_no_identity_bookkeeping():
    """The HF driver passes values, not object identities (``id(...)`` / ``is`` on tensors)."""
    import re

    for path, text in _sources().items():
        if path.startswith("hf/"):
            assert not re.search(r"\bid\(", text), path


def _names_in(module: object, name: str) -> bool:
    """Whether ``name`` (or ``A.b``) is defined in ``module`` or by one of its classes."""
    obj: object = module
    try:
        for part in name.split("."):
            obj = getattr(obj, part)
        return True
    except AttributeError:
        pass
    return any(isinstance(v, type) and hasattr(v, name) for v in vars(module).values())


@pytest.mark.parametrize("section", ["One HF step", "The measurement policy"])
def test_the_hf_step_map_names_real_modules_and_functions(section):
    """Every ``path.py`` of the HF step's tables exists, and each name written right after it
    (``hf/optimizer.py`` ``_batches``) is defined there."""
    import importlib
    import re

    text = _doc_section(section)
    pairs = re.findall(r"`((?:\w+/)*\w+\.py)`((?:\s+`[\w.]+`)*)", text)
    assert len(pairs) >= (10 if section == "One HF step" else 1)
    for path, names in pairs:
        assert (PACKAGE / path).exists(), path
        module = importlib.import_module("hessfree." + path[:-3].replace("/", "."))
        for name in re.findall(r"`([\w.]+)`", names):
            assert _names_in(module, name), f"{path} has no {name}"


def test_the_measurement_table_is_the_resolvers():
    """The measurements the doc lists are the fields of ``Measures``."""
    import dataclasses

    from hessfree.hf.measure import Measures

    fields = {f.name for f in dataclasses.fields(Measures)}
    assert {"curvature", "precondition", "fused", "backtrack", "rho", "rho_backtracked",
            "search", "search_rule", "reject", "rate"} == fields
    text = _doc_section("The measurement policy")
    for switch in ("precond_batch", "backtrack_batch", "rho_after_backtracking", "ls_batch",
                   "reject_on_heldout", "reject_worse"):
        assert f"`{switch}`" in text


def test_the_layer_diagram_is_the_layer_table():
    """Each component sits in the diagram of docs/architecture.md on the layer the test uses."""
    import re

    text = _doc_section("Layers: imports point downward")
    diagram = text[text.index("```") + 3:text.rindex("```")]
    where: dict[str, int] = {}
    layer = None
    for line in diagram.splitlines():
        head = re.match(r"layer (\d+)\s+", line)
        if head:
            layer = int(head.group(1))
            line = " " * head.end() + line[head.end():]
        for name in re.findall(r"(?:^|\s{2,})([A-Za-z_]\w*)", line):
            key = "<facade>" if name == "hessfree" else name
            if key in LAYERS:
                where.setdefault(key, layer)
    assert where == LAYERS


def test_the_map_names_existing_modules_only():
    """Every ``path.py`` the architecture document names is a module of the package."""
    import re

    named = set(re.findall(r"`([a-z_]+(?:/[a-z_]+)*\.py)`", DOC.read_text()))
    assert named
    missing = sorted(p for p in named
                     if not (PACKAGE / p).is_file() and not (PACKAGE.parent / p).is_file())
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"


def test_every_runs_module_is_on_the_map():
    """A new module of ``runs`` gets its line in docs/architecture.md."""
    text = DOC.read_text()
    modules = sorted(str(p.relative_to(PACKAGE)) for p in (PACKAGE / "runs").glob("*.py")
                     if p.name != "__init__.py")
    absent = [m for m in modules
              if f"`{m}`" not in text and f"`runs.{Path(m).stem}" not in text]
    assert not absent, f"runs modules missing from docs/architecture.md: {absent}"


def test_the_runs_section_names_the_registry_and_session_api():
    """The names the section promises exist (a rename must update the map)."""
    from hessfree.runs import families, session, trainer

    section = _doc_section("Runs: the family registry, the session, the run path")
    for owner, names in ((families, ("Family", "register", "get", "names")),
                         (session.RunSession, ("create", "reopen", "write_step", "write_eval",
                                               "save_quadratic", "write_checkpoint",
                                               "write_params", "finish")),
                         (session, ("NullWriter",)), (trainer, ("train", "resume", "_loop"))):
        for name in names:
            assert f"{name}" in section and hasattr(owner, name), name
