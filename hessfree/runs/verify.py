"""Published numbers against committed artifacts: the check behind ``hessfree verify``.

A *registry* (a Python file; the repository's is ``benchmarks/claims.py``) says where every
published number comes from:

- :class:`Claim`: a number (or a few) recomputed from an artifact by a function, formatted,
  and the phrase that must appear, with that formatted value, in each document named;
- :class:`Block`: a piece of a document generated from artifacts (a table), kept between
  ``<!-- evidence:ID -->`` and ``<!-- /evidence:ID -->``; it must equal what its render
  function gives now (``write=True`` rewrites it);
- :class:`Given`: a phrase whose numbers are not results (a command's argument, a setting, the
  papers' number), with the reason;
- :class:`Figure`: an image drawn from artifacts (``write=True`` redraws it);
- ``SCANNED``: the (document, heading) sections in which every number must lie in a claim's
  phrase, a block, a given phrase, inline code, a link target or an image, so a number added
  without its artifact fails, and so does one that disagrees with its artifact.

An artifact is a folder written by :func:`hessfree.runs.evidence.build` (read as an
:class:`~hessfree.runs.evidence.Evidence`) or a committed text file of a benchmark's output that
names its command on a line starting ``Command:`` (read as a :class:`TextArtifact`). Documents are
compared with runs of whitespace collapsed, so a phrase may wrap across lines.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hessfree._files import write_text
from hessfree.errors import InputError

__all__ = ["Block", "Claim", "Figure", "Given", "Outcome", "Registry", "TextArtifact",
           "load_registry", "verify"]

_NUMBER = re.compile(r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?")
_COVERED = (re.compile(r"`[^`]*`"), re.compile(r"!\[[^\]]*\]\([^)]*\)"),
            re.compile(r"\]\([^)]*\)"), re.compile(r"<!--.*?-->"))
_BLOCK = "<!-- evidence:{id} -->", "<!-- /evidence:{id} -->"


@dataclass(frozen=True)
class Claim:
    """A published number recomputed from an artifact.

    Attributes:
        id: a stable name (``"demo.nag.train_error"``).
        artifact: the artifact's path in the repository (a tuple: several, passed in order).
        compute: the artifact(s) -> the value (a number, or a tuple for several placeholders).
        text: the phrase the documents contain, ``{}`` where the value goes (``{0}``, ``{1}``
            for a tuple).
        fmt: a format spec applied to each value (``".3g"``, ``",d"``) or a function.
        where: the documents (paths in the repository) that must contain the phrase.
    """

    id: str
    artifact: str | tuple[str, ...]
    compute: Callable[..., Any]
    text: str
    fmt: str | Callable[[Any], str] = ".3g"
    where: tuple[str, ...] = ("README.md",)


@dataclass(frozen=True)
class Block:
    """A generated part of a document: ``render(*artifacts)`` between its two markers."""

    id: str
    artifact: str | tuple[str, ...]
    render: Callable[..., str]
    where: tuple[str, ...] = ("README.md",)


@dataclass(frozen=True)
class Given:
    """A phrase whose numbers are inputs, not results (``why`` says which)."""

    text: str
    why: str
    where: tuple[str, ...] = ("README.md",)


@dataclass(frozen=True)
class Figure:
    """An image in the repository drawn from artifacts by ``draw(path, *artifacts)``."""

    path: str
    artifact: str | tuple[str, ...]
    draw: Callable[..., Any]


@dataclass(frozen=True)
class TextArtifact:
    """A committed benchmark output: its text and the command it names."""

    path: Path
    text: str

    @property
    def command(self) -> str:
        """The command named on the ``Command:`` line."""
        for line in self.text.splitlines():
            if line.strip().startswith("Command:"):
                return line.split("Command:", 1)[1].strip().strip("`")
        raise InputError(f"artifact: {self.path} names no command (a line 'Command: ...')")


@dataclass
class Registry:
    """What a registry file defines (missing names are empty)."""

    claims: Sequence[Claim] = ()
    blocks: Sequence[Block] = ()
    givens: Sequence[Given] = ()
    figures: Sequence[Figure] = ()
    scanned: Sequence[tuple[str, str]] = ()


@dataclass
class Outcome:
    """One check: its kind and name, whether it held, and what was found."""

    kind: str
    id: str
    ok: bool
    detail: str = ""


@dataclass
class _Context:
    root: Path
    artifacts: dict[str, Any] = field(default_factory=dict)
    documents: dict[str, str] = field(default_factory=dict)

    def artifact(self, name: str) -> Any:
        if name not in self.artifacts:
            self.artifacts[name] = _load_artifact(self.root, name)
        return self.artifacts[name]

    def args(self, spec: str | tuple[str, ...]) -> list[Any]:
        return [self.artifact(a) for a in ((spec,) if isinstance(spec, str) else spec)]

    def document(self, name: str) -> str:
        if name not in self.documents:
            path = self.root / name
            if not path.is_file():
                raise InputError(f"document: {name} does not exist")
            self.documents[name] = path.read_text()
        return self.documents[name]


def _load_artifact(root: Path, name: str) -> Any:
    from hessfree.runs import evidence

    path = root / name
    if path.is_dir():
        return evidence.read(path)
    if path.is_file():
        art = TextArtifact(path, path.read_text())
        art.command  # noqa: B018 (a text artifact without its command is refused here)
        return art
    raise InputError(f"artifact: {name} does not exist")


def load_registry(path: str | os.PathLike) -> Registry:
    """The ``CLAIMS``, ``BLOCKS``, ``GIVENS``, ``FIGURES`` and ``SCANNED`` of a registry file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--claims: no registry file {os.fspath(path)!r}")
    spec = importlib.util.spec_from_file_location(f"_hessfree_claims_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Registry(*(tuple(getattr(module, n, ())) for n in
                      ("CLAIMS", "BLOCKS", "GIVENS", "FIGURES", "SCANNED")))


def _squash(text: str) -> str:
    return " ".join(text.split())


def _format(value: Any, fmt: str | Callable[[Any], str]) -> str:
    return fmt(value) if callable(fmt) else format(value, fmt)


def phrase(claim: Claim, value: Any) -> str:
    """The claim's phrase with ``value`` formatted into it."""
    values = value if isinstance(value, tuple) else (value,)
    return claim.text.format(*(_format(v, claim.fmt) for v in values))


def _check_claim(ctx: _Context, claim: Claim) -> tuple[Outcome, str | None]:
    try:
        value = claim.compute(*ctx.args(claim.artifact))
        text = phrase(claim, value)
    except Exception as err:  # a claim that cannot be recomputed fails, with its reason
        return Outcome("claim", claim.id, False, f"cannot recompute: {err}"), None
    missing = [d for d in claim.where if _squash(text) not in _squash(ctx.document(d))]
    if missing:
        return Outcome("claim", claim.id, False,
                       f"{', '.join(missing)} should say {text!r} (recomputed from "
                       f"{claim.artifact})"), text
    return Outcome("claim", claim.id, True, text), text


def _markers(block_id: str) -> tuple[str, str]:
    return _BLOCK[0].format(id=block_id), _BLOCK[1].format(id=block_id)


def _block_span(doc: str, block_id: str) -> tuple[int, int] | None:
    """(start, end) of the block's content in ``doc`` (between its markers), or None."""
    begin, end = _markers(block_id)
    i = doc.find(begin)
    j = doc.find(end, i + 1) if i >= 0 else -1
    return (i + len(begin), j) if i >= 0 and j > i else None


def _norm_block(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def _check_block(ctx: _Context, block: Block, write: bool) -> list[Outcome]:
    try:
        want = _norm_block(block.render(*ctx.args(block.artifact)))
    except Exception as err:  # a block that cannot be rendered fails, with its reason
        return [Outcome("block", block.id, False, f"cannot render: {err}")]
    out = []
    for d in block.where:
        doc = ctx.document(d)
        span = _block_span(doc, block.id)
        if span is None:
            out.append(Outcome("block", block.id, False, f"{d} has no markers "
                               f"{' ... '.join(_markers(block.id))}"))
            continue
        if _norm_block(doc[span[0]:span[1]]) == want:
            out.append(Outcome("block", block.id, True, d))
        elif write:
            ctx.documents[d] = doc[:span[0]] + "\n" + want + "\n" + doc[span[1]:]
            out.append(Outcome("block", block.id, True, f"{d} rewritten"))
        else:
            out.append(Outcome("block", block.id, False, f"{d} differs from what "
                               f"{block.artifact} gives now (hessfree verify --write)"))
    return out


def _section(doc: str, heading: str) -> tuple[int, int]:
    """(start, end) of the section under ``heading`` (to the next heading of its level or up)."""
    level = len(heading) - len(heading.lstrip("#"))
    m = re.search(rf"^{re.escape(heading)}\s*$", doc, flags=re.M)
    if m is None:
        raise InputError(f"SCANNED: no heading {heading!r}")
    nxt = re.search(rf"^#{{1,{level}}} ", doc[m.end():], flags=re.M)
    return m.start(), m.end() + (nxt.start() if nxt else len(doc) - m.end())


def _covered(text: str, phrases: Sequence[str]) -> list[bool]:
    """Which characters of ``text`` (squashed) lie in a phrase, code, link, image or comment."""
    mask = [False] * len(text)

    def cover(i: int, j: int) -> None:
        mask[i:j] = [True] * (j - i)

    for rx in _COVERED:
        for m in rx.finditer(text):
            cover(m.start(), m.end())
    for p in {_squash(p) for p in phrases if p}:
        start = text.find(p)
        while start >= 0:
            cover(start, start + len(p))
            start = text.find(p, start + 1)
    return mask


def _scan(ctx: _Context, reg: Registry, document: str, heading: str,
          phrases: dict[str, list[str]]) -> list[Outcome]:
    doc = ctx.document(document)
    start, end = _section(doc, heading)
    section = doc[start:end]
    for b in reg.blocks:  # generated blocks are checked as blocks
        if document in b.where and (span := _block_span(section, b.id)) is not None:
            section = section[:span[0]] + " " + section[span[1]:]
    text = _squash(section)
    mask = _covered(text, phrases.get(document, []))
    loose = [m for m in _NUMBER.finditer(text) if not all(mask[m.start():m.end()])]
    name = f"{document} {heading.lstrip('# ')}"
    if not loose:
        return [Outcome("scan", name, True, "every number has a claim, block or given")]
    return [Outcome("scan", name, False, f"{m.group()!r} has no claim, block or given: "
                    f"...{text[max(0, m.start() - 50):m.end() + 30]}...") for m in loose]


def _check_figure(ctx: _Context, fig: Figure, write: bool) -> Outcome:
    path = ctx.root / fig.path
    if write:
        try:
            fig.draw(path, *ctx.args(fig.artifact))
        except Exception as err:  # reported, like a claim that cannot be recomputed
            return Outcome("figure", fig.path, False, f"cannot draw: {err}")
        return Outcome("figure", fig.path, True, "redrawn")
    if not path.is_file():
        return Outcome("figure", fig.path, False, "missing (hessfree verify --write)")
    return Outcome("figure", fig.path, True, f"drawn from {fig.artifact}")


def verify(root: str | os.PathLike, registry: Registry, write: bool = False) -> list[Outcome]:
    """Check (or with ``write`` also regenerate blocks and figures) every entry of ``registry``.

    Args:
        root: the repository root (documents and artifacts are paths below it).
        registry: what :func:`load_registry` read.
        write: rewrite blocks that differ and redraw figures (documents written atomically).
    """
    ctx = _Context(Path(root))
    out: list[Outcome] = []
    phrases: dict[str, list[str]] = {}
    for c in registry.claims:
        result, text = _check_claim(ctx, c)
        out.append(result)
        for d in c.where:
            phrases.setdefault(d, []).append(text or "")
    for g in registry.givens:
        for d in g.where:
            phrases.setdefault(d, []).append(g.text)
            found = _squash(g.text) in _squash(ctx.document(d))
            out.append(Outcome("given", g.text, found, g.why if found else
                               f"{d} does not contain it"))
    for b in registry.blocks:
        out += _check_block(ctx, b, write)
    for f in registry.figures:
        out.append(_check_figure(ctx, f, write))
    for document, heading in registry.scanned:
        out += _scan(ctx, registry, document, heading, phrases)
    if write:
        for name, text in ctx.documents.items():
            path = ctx.root / name
            if path.read_text() != text:
                write_text(path, text)
    return out
