"""Phases: an HF run as a validated sequence of settings, owned by the optimizer.

The momentum-like HF of Sutskever et al. (2013, appendix A.6; ``docs/references.md`` [S13 A.6])
changes its settings as it goes: minibatches of 1/16 of the data, 50 CG steps, ζ raised and ε
decayed, then "a more traditional version of HF" on the whole training set with 200 CG steps, then
less weight decay. Martens' HF is the one-phase case. A :class:`PhaseSchedule` holds such a
sequence; :class:`hessfree.HessianFree` advances through it by its own counters (HF steps or CG
iterations, as A.6 counts) and nothing else changes an optimizer's config or a problem's
objective mid-run.

Each :class:`Phase` says

* how long it lasts: ``steps`` (HF updates) or ``cg_steps`` (CG iterations summed over its updates),
  or neither for the last phase (until the run's budget ends);
* which cases the gradient and the curvature are computed on (:class:`BatchSpec`: the whole
  training set, one of ``parts`` fixed chunks cycled as in Martens' HFDemo, a fresh minibatch of
  a fraction or a size, or — for the curvature — the gradient batch itself);
* the complete :class:`~hessfree.HFConfig` of its updates (CG cap, ζ, ε — numbers or schedules of
  the global update counter —, line search, backtracking, rejection);
* the weight decay of its objective (``None``: the problem's).

The batches are drawn by the optimizer itself from a :class:`BatchSource` it was given
(``hessfree.runs`` gives its ``BatchDrawer``), one per role of :data:`ROLES` that the phase
names, or given to ``HessianFree.step`` directly; the optimizer records the phase index in every
``StepStats``. The phase of the next step is a pure read (:meth:`PhaseSchedule.advance` moves
the counters after each step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from hessfree import _checks
from hessfree.errors import InputError, InputTypeError
from hessfree.hf.config import HFConfig

__all__ = ["BATCH_KINDS", "ROLES", "BatchSource", "BatchSpec", "Phase", "PhaseSchedule"]

#: the batches of one HF step, by role; a role's position is its code (it seeds fresh draws in
#: ``hessfree.runs``): the gradient, the curvature, the held-out ρ batch (``heldout``), the
#: held-out CG-backtracking and step-size search batches ([HF-RNN])
ROLES = ("gradient", "curvature", "heldout", "backtrack", "search")

#: "all": the whole set; "chunk": one of ``parts`` fixed pieces, piece ``t mod parts`` at update
#: t; "minibatch": a fresh random minibatch (``fraction`` of the set or ``size`` cases) drawn
#: without replacement within an epoch; "same": the gradient batch (curvature only); "piece":
#: piece ``index`` of ``parts`` equal pieces of this update's gradient batch (not for the
#: gradient itself; [HF-RNN] cuts its gradient batches into curvature, backtracking and
#: line-search batches this way)
BATCH_KINDS = ("all", "chunk", "minibatch", "same", "piece")


@dataclass(frozen=True)
class BatchSpec:
    """Which training cases one HF update computes a quantity on (see :data:`BATCH_KINDS`).

    Args:
        kind: ``"all"``, ``"chunk"``, ``"minibatch"`` or ``"same"``.
        parts: for ``"chunk"``: the number of fixed pieces (HFDemo ``numchunks``).
        fraction: for ``"minibatch"``: the fraction of the training set (A.6: 1/16, 1/20).
        size: for ``"minibatch"``: a fixed number of cases instead (and for generated data,
            where every batch is drawn fresh, the number of cases of any kind).
        index: for ``"piece"``: which of the ``parts`` pieces (0-based).
    """

    kind: str = "all"
    parts: int | None = None
    fraction: float | None = None
    size: int | None = None
    index: int | None = None

    def __post_init__(self) -> None:
        """Check the combination."""
        _checks.choice(self.kind, "kind", BATCH_KINDS)
        if self.parts is not None:
            _checks.integer(self.parts, "parts", minimum=1)
        if self.fraction is not None:
            _checks.number(self.fraction, "fraction", 0.0, 1.0, strict_min=True)
        if self.size is not None:
            _checks.integer(self.size, "size", minimum=1)
        if self.kind in ("chunk", "piece") and self.parts is None:
            raise InputError(f"parts: a {self.kind!r} batch needs the number of pieces "
                             "(parts >= 1)")
        if (self.kind == "piece") != (self.index is not None):
            raise InputError("index: a 'piece' batch needs it, other kinds take none")
        if self.index is not None:
            _checks.integer(self.index, "index", 0, int(self.parts) - 1)
        if self.kind == "minibatch" and (self.fraction is None) == (self.size is None):
            raise InputError("fraction/size: a 'minibatch' batch needs exactly one of them")
        if self.kind in ("all", "same") and (self.parts or self.fraction):
            raise InputError(f"parts/fraction: not used by a {self.kind!r} batch")

    def cases(self, n: int) -> int:
        """How many of ``n`` training cases one such batch holds."""
        if self.kind == "minibatch":
            if self.size is not None:
                return min(self.size, n)
            return max(1, int(math.floor(n * float(self.fraction) + 1e-9)))
        if self.kind in ("chunk", "piece"):
            return n // int(self.parts)
        return n

    def describe(self) -> str:
        """A few words for messages and tables."""
        if self.kind == "chunk":
            return f"1/{self.parts} chunk"
        if self.kind == "piece":
            return f"piece {self.index} of {self.parts} of the gradient batch"
        if self.kind == "minibatch":
            return f"minibatch of {self.size}" if self.size else f"minibatch {self.fraction:g}"
        return {"all": "whole set", "same": "gradient batch"}[self.kind]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return {k: v for k, v in vars(self).items() if v is not None}


#: the batches of a phase besides the gradient and curvature ones, each a step argument
_HELD_OUT = ROLES[2:]


class BatchSource(Protocol):
    """Where an optimizer draws the batches of a step (``hessfree.runs.batching.BatchDrawer``)."""

    def draw(self, spec: BatchSpec, t: int, role: int) -> Any:  # pragma: no cover - protocol
        """The batch ``spec`` describes for update ``t`` and role ``ROLES[role]``.

        None for ``BatchSpec("same")``; the gradient batch is drawn first in a step.
        """
        ...


@_checks.accepts_renamed
@dataclass(frozen=True)
class Phase:
    """One stretch of an HF run with fixed batches, config and objective (module docstring).

    Args:
        name: a label (unique within the schedule).
        steps: length in HF updates; or
        cg_steps: length in CG iterations summed over the phase's updates ([S13 A.6] counts
            these); neither: until the end (last phase only).
        gradient: the gradient (and line-search) batch.
        curvature: the curvature batch (``BatchSpec("same")``: the gradient batch).
        config: the HFConfig of the phase's updates; None: the optimizer's ``config``.
        weight_decay: L2 coefficient of the phase's objective; None: the problem's.
        heldout: a batch the step is not fitted to, on which ρ and the rejection test measure it
            (``HessianFree.step``'s ``heldout_batch``); None: the curvature batch (HFDemo).
        backtrack: the held-out CG-backtracking batch (``HessianFree.step``'s
            ``backtrack_batch``, used when the config says ``backtrack_batch="heldout"``).
        search: the held-out step-size search batch (``search_batch``; ``ls_batch="heldout"``).
    """

    name: str = "main"
    steps: int | None = None
    cg_steps: int | None = None
    gradient: BatchSpec = field(default_factory=BatchSpec)
    curvature: BatchSpec = field(default_factory=lambda: BatchSpec("same"))
    config: HFConfig | None = None
    weight_decay: float | None = None
    heldout: BatchSpec | None = None
    backtrack: BatchSpec | None = None
    search: BatchSpec | None = None

    def __post_init__(self) -> None:
        """Check every field."""
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"name: expected a non-empty string, got {self.name!r}")
        where = f"phase {self.name!r}"
        if self.steps is not None and self.cg_steps is not None:
            raise InputError(f"{where}: give its length in steps or in cg_steps, not both")
        if self.steps is not None:
            _checks.integer(self.steps, f"{where}: steps", minimum=1)
        if self.cg_steps is not None:
            _checks.integer(self.cg_steps, f"{where}: cg_steps", minimum=1)
        for role in ("gradient", "curvature"):
            if not isinstance(getattr(self, role), BatchSpec):
                raise InputTypeError(f"{where}: {role}: expected a BatchSpec, got "
                                     f"{type(getattr(self, role)).__name__}")
        if self.gradient.kind in ("same", "piece"):
            raise InputError(f"{where}: gradient: {self.gradient.kind!r} is only meaningful for "
                             "the curvature and held-out batches")
        for role in _HELD_OUT:
            spec = getattr(self, role)
            if spec is not None and (not isinstance(spec, BatchSpec) or spec.kind == "same"):
                raise InputError(f"{where}: {role}: expected a BatchSpec of its own cases, got "
                                 f"{spec!r}")
        if self.config is not None and not isinstance(self.config, HFConfig):
            raise InputTypeError(f"{where}: config: expected an HFConfig, got "
                                 f"{type(self.config).__name__}")
        if self.weight_decay is not None:
            _checks.number(self.weight_decay, f"{where}: weight_decay", 0.0)

    @property
    def bounded(self) -> bool:
        """Whether the phase has a length."""
        return self.steps is not None or self.cg_steps is not None

    def done(self, steps: int, cg_steps: int) -> bool:
        """Whether a phase that has run ``steps`` updates and ``cg_steps`` CG iterations is over."""
        if self.steps is not None:
            return steps >= self.steps
        return self.cg_steps is not None and cg_steps >= self.cg_steps

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (config as :meth:`HFConfig.to_dict`)."""
        return {"name": self.name, "steps": self.steps, "cg_steps": self.cg_steps,
                "gradient": self.gradient.to_dict(), "curvature": self.curvature.to_dict(),
                "config": None if self.config is None else self.config.to_dict(),
                "weight_decay": self.weight_decay,
                **{role: getattr(self, role).to_dict() for role in _HELD_OUT
                   if getattr(self, role) is not None},
                **({} if self.heldout is not None else {"heldout": None})}

    #: keys an earlier hessfree wrote, by today's name (the held-out batch was ``check``)
    RENAMED: ClassVar[dict[str, str]] = {"check": "heldout"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Phase:
        """Inverse of :meth:`to_dict`; reads the old keys of :attr:`RENAMED` too."""
        d = dict(d)
        for old, new in cls.RENAMED.items():
            if old in d:
                value = d.pop(old)
                d.setdefault(new, value)
        cfg = d.pop("config", None)
        held = {role: d.pop(role, None) for role in _HELD_OUT}
        return cls(**{**d, "gradient": BatchSpec(**d.get("gradient", {})),
                      "curvature": BatchSpec(**d.get("curvature", {"kind": "same"})),
                      "config": None if cfg is None else HFConfig.from_dict(cfg),
                      **{role: None if v is None else BatchSpec(**v)
                         for role, v in held.items()}})


@dataclass(frozen=True)
class PhaseSchedule:
    """A sequence of :class:`Phase` s; every phase but the last needs a length.

    Args:
        phases: the phases in order (a list or tuple; at least one).
    """

    phases: tuple[Phase, ...]

    def __post_init__(self) -> None:
        """Check the sequence."""
        phases = tuple(self.phases) if isinstance(self.phases, (list, tuple)) else None
        if not phases:
            raise InputError("phases: expected a non-empty list of Phase")
        for p in phases:
            if not isinstance(p, Phase):
                raise InputTypeError(f"phases: expected Phase objects, got {type(p).__name__}")
        names = [p.name for p in phases]
        if len(set(names)) != len(names):
            raise InputError(f"phases: names must be unique, got {names}")
        for p in phases[:-1]:
            if not p.bounded:
                raise InputError(f"phase {p.name!r}: only the last phase may run without a "
                                 "length (steps or cg_steps); it is followed by "
                                 f"{names[names.index(p.name) + 1]!r}")
        object.__setattr__(self, "phases", phases)

    def __len__(self) -> int:
        return len(self.phases)

    def __getitem__(self, i: int) -> Phase:
        return self.phases[i]

    def advance(self, index: int, steps: int, cg_steps: int) -> tuple[int, int, int]:
        """The counters ``(phase, steps in it, CG iterations in it)`` past finished phases."""
        while index + 1 < len(self.phases) and self.phases[index].done(steps, cg_steps):
            index, steps, cg_steps = index + 1, 0, 0
        return index, steps, cg_steps

    @classmethod
    def single(cls, gradient: BatchSpec | None = None, curvature: BatchSpec | None = None,
               config: HFConfig | None = None) -> PhaseSchedule:
        """One unbounded phase (Martens' HF)."""
        return cls((Phase("main", gradient=gradient or BatchSpec("all"),
                          curvature=curvature or BatchSpec("same"), config=config),))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (saved in results files and checkpoints)."""
        return {"phases": [p.to_dict() for p in self.phases]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhaseSchedule:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, dict) or not isinstance(d.get("phases"), list):
            raise InputError(f"phases: expected {{'phases': [...]}}, got {d!r}")
        return cls(tuple(Phase.from_dict(p) for p in d["phases"]))
